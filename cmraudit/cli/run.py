"""`cmraudit run | train | sample | audit | report | gate`: the audit pipeline on a run folder."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from . import app, echo_json

_RUN_DIR = typer.Argument(None, help="Run folder (the same as --out).", show_default=False)
_OUT = typer.Option(None, "--out", "-o", help="Run folder; re-running on it resumes. (default: cmraudit-run)")
_CONFIG = typer.Option(None, "--config", "-c", help="run.toml with the settings; flags override it.")
_DATA = typer.Option(None, "--data", help="Data: phantom, phantom:N, acdc:PATH, mnms:PATH. (default: phantom)")
_GEN = typer.Option(None, "--generator", "-g", help="Generators, comma-separated. (default: gan,vae,diffusion,flow "
                    "and diffusion at ε=8)")
_ATTACK = typer.Option(None, "--attack", "-a", help="mia, all, or attack names, comma-separated. (default: all)")
_METRIC = typer.Option(None, "--metric", "-m", help="all or metric names, comma-separated. (default: all)")
_EPS = typer.Option(None, "--dp-epsilon", help="DP budgets, one model variant each: 1,8,inf (inf = no DP).")
_PROFILE = typer.Option(None, "--profile", help="smoke | quick | standard. (default: quick)")
_SEED = typer.Option(None, "--seed", help="Seed of the split, training and sampling. (default: 0)")
_N = typer.Option(None, "--n", "--n-samples", help="Synthetic images per model (0: one per conditioning mask).")
_MASKS = typer.Option(None, "--mask-source", help="Split role whose masks condition the synthetic set, or "
                      "'generated': masks drawn by a mask model (two-stage generation, no real stencil in the cohort;"
                      " the family is the config's mask_generator, default mask-vae). (default: reference)")
_DEVICE = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps.")
_PRETRAIN = typer.Option(None, "--dp-pretrain", help="Public data (a data spec) each DP model is first trained on "
                         "without DP, or none. (default: phantom:200,seed=1)")
_CANARIES = typer.Option(None, "--canaries", help="Canary patients, each trained on with probability 1/2 and "
                         "audited apart for power; 0: none. (default: 100 on the quick profile)")
_CANARY_DATA = typer.Option(None, "--canary-data", help="Where canaries come from: phantom (its own seed) or a data "
                            "spec. (default: phantom)")
_SET = typer.Option(None, "--set", "-s", help="Any setting as KEY=VALUE (train.steps=50, generator.vae.lr=1e-3).")
_EXECUTOR = typer.Option(None, "--executor", help="Where the models' work runs: local (this process, model after "
                         "model) or ray (tasks on a Ray cluster; pip install \"cmraudit[ray]\"). (default: local)")
_ADDRESS = typer.Option(None, "--address", help="With --executor ray: the cluster to join (auto, HOST:PORT or "
                        "ray://HOST:10001); without it a local Ray instance is started.")
_MODEL = typer.Option(None, "--model", help="train only: the models to train, comma-separated (default: all). "
                      "Under torchrun the processes train each one together.")
_FORCE = typer.Option(False, "--force", help="Recompute finished stages instead of skipping them.")
_REDACT = typer.Option(False, "--redact", help="Report without real patient pixels (masks / blur instead).")
_POLICY = typer.Option(None, "--policy", help="Policy TOML for the report's pass/fail verdicts (default: built-in).")


def _flags(**kw: Any) -> dict[str, Any]:
    """Command-line flags as a config layer (only the flags that were given)."""
    from ..run.config import parse_set

    table = parse_set(kw.pop("assignments") or [])
    eps = kw.pop("dp_epsilon")
    if eps:
        table["dp_epsilons"] = [e.strip() for item in eps for e in item.split(",") if e.strip()]
    renames = {"generator": "generators", "attack": "attacks", "metric": "metrics", "n": "n_samples"}
    for key, value in kw.items():
        if value is not None:
            table[renames.get(key, key)] = value
    return table


def _pipeline_command(name: str, doc: str) -> None:
    """`cmraudit NAME`: the AuditRun method of that name on a run folder, with the full set of run options."""

    def command(run_dir: Optional[Path] = _RUN_DIR, out: Optional[Path] = _OUT, config: Optional[Path] = _CONFIG,
                data: Optional[str] = _DATA, generator: Optional[str] = _GEN, attack: Optional[str] = _ATTACK,
                metric: Optional[str] = _METRIC, dp_epsilon: Optional[list[str]] = _EPS,
                profile: Optional[str] = _PROFILE, seed: Optional[int] = _SEED, n: Optional[int] = _N,
                mask_source: Optional[str] = _MASKS, device: Optional[str] = _DEVICE,
                dp_pretrain: Optional[str] = _PRETRAIN, canaries: Optional[int] = _CANARIES,
                canary_data: Optional[str] = _CANARY_DATA, assignments: Optional[list[str]] = _SET,
                executor: Optional[str] = _EXECUTOR, address: Optional[str] = _ADDRESS,
                model: Optional[str] = _MODEL, force: bool = _FORCE, redact: bool = _REDACT, policy: Optional[Path] = _POLICY) -> None:
        from ..errors import UsageError
        from ..run.audit_run import open_run
        from .progress import ProgressView, console, summary_table

        if run_dir and out and Path(run_dir) != Path(out):
            raise UsageError(f"two run folders given: {run_dir} and --out {out}")
        if name != "run" and (redact or policy):
            raise UsageError("--redact and --policy shape the report: use them with `cmraudit run` or `cmraudit report`")
        if model and name != "train":
            raise UsageError("--model selects what `cmraudit train` trains")
        ranks = _join_torchrun(name, device, force)
        if ranks is not None and not ranks.main:  # rank 0 runs the pipeline; this rank trains along, silently
            from ..training.loop import follow

            return follow(ranks)
        flags = _flags(data=data, generator=generator, attack=attack, metric=metric, dp_epsilon=dp_epsilon,
                       profile=profile, seed=seed, n=n, mask_source=mask_source, device=device,
                       dp_pretrain=dp_pretrain, canaries=canaries, canary_data=canary_data,
                       assignments=assignments, executor=executor, ray_address=address)
        if (executor or address) and name != "run":
            raise UsageError("--executor and --address choose where `cmraudit run` runs its models")
        with ProgressView(console(stderr=True)) as view:
            run = open_run(run_dir or out, config_file=config, overrides=flags, force=force, progress=view)
            if name == "run":
                run.run(redact=redact, policy=policy)
            elif name == "train":
                with _leading(ranks):
                    run.train([m.strip() for m in model.split(",") if m.strip()] if model else None)
            else:
                getattr(run, name)()
        console().print(summary_table(run.results))
        if name == "run":
            typer.echo(f"report: {run.out / 'report.html'}")
        typer.echo(f"results: {run.folder.results_path}")
        for model, entry in run.results["models"].items():  # a refuted DP guarantee is never a footnote
            for rule in (entry.get("verdict") or {}).get("rules", []):
                if rule["rule"] == "dp_audit" and rule["verdict"] == "fail":
                    typer.echo(f"cmraudit: {model}: {rule['reason']}", err=True)
        failed = [m for m, e in run.results["models"].items() if e["status"] == "failed"]
        if failed:
            typer.echo(f"cmraudit: error: {len(failed)} model(s) failed: " + "; ".join(
                f"{m}: {run.results['models'][m]['error']}" for m in failed), err=True)
            raise typer.Exit(1)

    command.__doc__ = doc
    app.command(name)(command)


def _join_torchrun(name: str, device: Optional[str], force: bool) -> Any:
    """The process group when launched by torchrun with several processes (``cmraudit train`` only), else None."""
    import os

    from ..errors import UsageError

    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    if name != "train" or force:
        raise UsageError("under torchrun only `cmraudit train` runs (without --force): the processes train each "
                         "model together; sample, audit and report in one process afterwards")
    from ..training.distributed import init_from_env

    return init_from_env(device)


def _leading(ranks: Any) -> Any:
    """On rank 0 of a torchrun launch: every model it trains is trained by all the processes."""
    import contextlib

    from ..training.distributed import leading

    return leading(ranks) if ranks is not None else contextlib.nullcontext()


_pipeline_command("run", "Train, sample, audit and report: the whole audit in one run folder (resumable).")
_pipeline_command("train", "Train the run's models (resumes from checkpoints).")
_pipeline_command("sample", "Sample each trained model's synthetic set.")
_pipeline_command("audit", "Run attacks and metrics on each sampled model; write results.json.")


@app.command("report")
def report_command(run_dir: Path = typer.Argument(..., help="Run folder."),
                   redact: bool = _REDACT, policy: Optional[Path] = _POLICY,
                   output: Optional[Path] = typer.Option(None, "--output", help="Where to write (default: "
                                                         "RUN/report.html, RUN/report-redacted.html with --redact)")) -> None:
    """Write report.html for a run folder (self-contained; opens offline)."""
    from ..reports.html import write_report
    from ..run.folder import RunFolder

    target = output or run_dir / ("report-redacted.html" if redact else "report.html")
    typer.echo(f"report: {write_report(RunFolder(run_dir), target, redact=redact, policy=policy)}")


@app.command("gate")
def gate_command(
        results: Path = typer.Argument(..., help="Run folder or results.json."),
        policy: Optional[Path] = typer.Option(None, "--policy", help="Thresholds policy TOML (default: built-in)."),
        max_auc: Optional[float] = typer.Option(None, "--max-auc", help="Max MIA AUC (see --auc-on)."),
        auc_on: Optional[str] = typer.Option(None, "--auc-on", help="ci_upper (default) or point."),
        max_tpr: Optional[float] = typer.Option(None, "--max-tpr", help="Max TPR at --tpr-fpr."),
        tpr_fpr: Optional[float] = typer.Option(None, "--tpr-fpr", help="FPR for --max-tpr (default 0.01)."),
        max_memorised: Optional[float] = typer.Option(None, "--max-memorised-share", help="Max share of members "
                                                      "with a memorised synthetic image."),
        max_epsilon: Optional[float] = typer.Option(None, "--max-epsilon", help="Max DP ε (no DP = ∞)."),
        min_tstr_dice: Optional[float] = typer.Option(None, "--min-tstr-dice", help="Min TSTR Dice."),
        on_inconclusive: Optional[str] = typer.Option(None, "--on-inconclusive", help="What an inconclusive "
                                                      "verdict counts as: fail (default), pass or inconclusive."),
        junit: Optional[Path] = typer.Option(None, "--junit", help="Also write JUnit XML here."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Apply a thresholds policy to a run's results: exit 0 pass, 1 fail, 3 inconclusive (only when the policy's
    on_inconclusive is "inconclusive"; by default an inconclusive verdict fails, so the gate fails closed)."""
    import dataclasses

    from .. import results as R
    from ..gate import EXIT_CODES, evaluate, junit_xml, load_policy, outcome
    from ..io import atomic_write_text

    pol = load_policy(policy).with_overrides(max_mia_auc=max_auc, auc_on=auc_on, max_tpr_at_fpr=max_tpr,
                                             tpr_fpr=tpr_fpr, max_memorised_share=max_memorised,
                                             max_epsilon=max_epsilon, min_tstr_dice=min_tstr_dice,
                                             on_inconclusive=on_inconclusive)
    rules = evaluate(R.load(results), pol)
    verdict = outcome(rules, pol.on_inconclusive)
    if junit:
        atomic_write_text(junit, junit_xml(rules, pol))
    if as_json:
        echo_json(R.jsonable({"passed": verdict == "pass", "outcome": verdict, "policy": pol.source,
                               "on_inconclusive": pol.on_inconclusive,
                               "rules": [{**dataclasses.asdict(r), "passed": r.passed} for r in rules]}))
    else:
        from .progress import console, gate_table

        console().print(gate_table(rules, pol.source))
    counts = {v: sum(r.verdict == v for r in rules) for v in ("fail", "inconclusive")}
    tally = f"{counts['fail']} fail, {counts['inconclusive']} inconclusive of {len(rules)} rule(s)"
    if verdict != "pass":
        note = "" if pol.on_inconclusive == "inconclusive" or not counts["inconclusive"] else \
            f" (inconclusive counts as {pol.on_inconclusive}: on_inconclusive)"
        typer.echo(f"cmraudit: gate {verdict}: {tally}{note}", err=True)
        raise typer.Exit(EXIT_CODES[verdict])
    typer.echo(f"gate passed: {len(rules)} rule(s) hold" + (f", {counts['inconclusive']} inconclusive counted as pass"
                                                          if counts["inconclusive"] else ""))
