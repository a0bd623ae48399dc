"""Does DP-SGD blunt the loss attack? A diffusion model trained long on few patients, with and without DP.

Runs the audit through the Python API on a small phantom cohort (default 30 patients: 12 members), trains the
diffusion model for many steps without DP and at ε = 8 (patient-level DP-SGD), runs the white-box loss attack
(Carlini et al. 2023; signal chosen on reference patients) and prints each model's AUC with its patient-bootstrap
95% CI at slice and patient level, and the accountant's ε. Expect the non-DP model's AUC above the DP model's.
As in ``cmraudit run``, the DP model first trains without DP on public data (``--dp-pretrain``, default the
phantom with seed 1, which shares no patient with the audited one; ``none`` for DP-SGD from scratch).

    python benchmarks/bench_dp_membership.py [--patients 30] [--steps 600] [--dp-pretrain none] [--out DIR]
"""
from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=30)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dp-pretrain", default=None, help="public pretraining data of the DP model, or none")
    parser.add_argument("--out", default=None, help="run folder (default: a fresh temporary one)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from cmraudit.run import open_run

    out = args.out or tempfile.mkdtemp(prefix="cmraudit-dp-membership-")
    start = time.perf_counter()
    run = open_run(out, overrides={"data": f"phantom:{args.patients}", "profile": "quick",
                                   "generators": ["diffusion"], "dp_epsilons": ["inf", args.epsilon],
                                   "attacks": ["loss"], "metrics": [], "train": {"steps": args.steps},
                                   **({"dp_pretrain": args.dp_pretrain} if args.dp_pretrain else {})})
    doc = run.run()
    print(f"phantom:{args.patients}, diffusion, {args.steps} steps, loss attack; {time.perf_counter() - start:.0f} s")
    print(f"{'model':16} {'epsilon':>8} {'slice AUC':>10} {'95% CI':>16} {'patient AUC':>12} {'95% CI':>16}")
    for name, model in doc["models"].items():
        attack = model["attacks"].get("loss", {})
        if attack.get("status") != "ok":
            print(f"{name:16} {attack.get('status')}: {attack.get('error') or attack.get('reason')}")
            continue
        dp = (model.get("training") or {}).get("dp") or {}
        eps = f"{dp['epsilon']:.2f}" if dp.get("epsilon") is not None else "inf"
        ci, pci = attack["auc_ci"], attack["patient"]["auc_ci"]
        print(f"{name:16} {eps:>8} {attack['auc']:>10.3f} {f'[{ci[0]:.2f}, {ci[1]:.2f}]':>16} "
              f"{attack['patient']['auc']:>12.3f} {f'[{pci[0]:.2f}, {pci[1]:.2f}]':>16}")
    print(f"run folder: {out}")


if __name__ == "__main__":
    main()
