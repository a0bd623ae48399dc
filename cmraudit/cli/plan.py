"""`cmraudit plan`: how small an AUC, and how large an ε, an audit of this data set (and of N canaries) can show,
before anything is trained. The statistics are cmraudit.stats's; this module only counts and prints."""
from __future__ import annotations

import math
from typing import Any, Optional

import typer

from . import app, echo_json
from .data import SPEC_HELP, load_table

IMAGE_SIZE = 64
ALPHA, POWER, BETA = 0.05, 0.8, 0.05


def _audit(n_members: int, n_nonmembers: int, max_auc: float) -> dict[str, Any]:
    from ..stats import null_auc_sd, ruled_out_auc

    out: dict[str, Any] = {"members": n_members, "nonmembers": n_nonmembers, "null_auc_sd": None,
                           "ruled_out_auc": None, "rules_out_max_auc": False}
    if n_members >= 1 and n_nonmembers >= 1:
        out["null_auc_sd"] = null_auc_sd(n_members, n_nonmembers)
        out["ruled_out_auc"] = ruled_out_auc(n_members, n_nonmembers, ALPHA, POWER)
        out["rules_out_max_auc"] = out["ruled_out_auc"] <= max_auc
    return out


def plan(spec: str, canaries: int | None, max_auc: float) -> dict[str, Any]:
    """The numbers `cmraudit plan` prints (its --json output)."""
    from ..data.splits import DEFAULT_FRACTIONS, make_split
    from ..stats import DEFAULT_GUESS_FRACTIONS, one_run_eps_from_counts, units_needed

    table = load_table(spec, IMAGE_SIZE)
    split = make_split(table, seed=0)
    roles = {role: len(getattr(split, role)) for role in split.ROLES}
    total = sum(DEFAULT_FRACTIONS.values())
    share = {role: f / total for role, f in DEFAULT_FRACTIONS.items()}
    n1, n2 = units_needed(max_auc, share["nonmembers"] / share["members"], ALPHA, POWER)
    c1, _ = units_needed(max_auc, 1.0, ALPHA, POWER)
    out: dict[str, Any] = {
        "data": spec, "patients": sum(roles.values()), "roles": roles,
        "alpha": ALPHA, "power": POWER, "max_auc": max_auc,
        "patient_audit": _audit(roles["members"], roles["nonmembers"], max_auc),
        "patients_needed": {"members": n1, "nonmembers": n2,
                            "patients": max(math.ceil(n1 / share["members"] - 1e-9),
                                            math.ceil(n2 / share["nonmembers"] - 1e-9))},
        "canaries_needed": {"in": c1, "out": c1, "canaries": 2 * c1},
        "canary_audit": None,
    }
    if canaries is not None:
        half = canaries // 2
        out["canary_audit"] = {
            "canaries": canaries, **_audit(half, canaries - half, max_auc), "beta": BETA,
            # every one of N guesses right, one pre-registered guess fraction (f = 1)
            "perfect_attack_eps": one_run_eps_from_counts(canaries, canaries, BETA),
            # the same through the default grid of guess fractions (union bound, β / 4), exactly half in
            "perfect_attack_eps_grid": one_run_eps_from_counts(2 * half, 2 * half, BETA / len(DEFAULT_GUESS_FRACTIONS)),
        }
    return out


def _describe(audit: dict[str, Any]) -> str:
    if audit["null_auc_sd"] is None:
        return "needs at least one member and one non-member"
    bound = audit["ruled_out_auc"]
    ruled = f"rules out AUC ≥ {bound:.3f}" if bound <= 1 else "cannot rule out any AUC"
    return f"null AUC SD {audit['null_auc_sd']:.3f}, {ruled}"


@app.command("plan")
def plan_command(data: str = typer.Option(..., "--data", help=SPEC_HELP),
                 canaries: Optional[int] = typer.Option(None, "--canaries", min=2,
                                                        help="Canaries, each in training with probability ½."),
                 max_auc: float = typer.Option(0.6, "--max-auc",
                                               help="The AUC the audit should be able to rule out."),
                 as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """What an audit of this data set can show: the AUC it rules out for a non-leaking model (80% power,
    two-sided 95%), the best one-run ε lower bound N canaries allow, and the patients or canaries needed."""
    if not 0.5 < max_auc <= 1:
        from ..errors import UsageError

        raise UsageError(f"--max-auc must lie in (0.5, 1], the AUC of no leakage being 0.5 (got {max_auc:g})")
    result = plan(data, canaries, max_auc)
    if as_json:
        echo_json(result)
        return
    roles, pa, need = result["roles"], result["patient_audit"], result["patients_needed"]
    lines = [
        f"data set {data}: {result['patients']} patients "
        f"({', '.join(f'{n} {role}' for role, n in roles.items())}; split seed 0)",
        f"patient audit {pa['members']} members × {pa['nonmembers']} non-members: {_describe(pa)} "
        f"(80% power, two-sided 95%)",
        f"to rule out AUC {max_auc:g}: {need['members']} members × {need['nonmembers']} non-members, "
        f"about {need['patients']} patients in all",
        f"  or {result['canaries_needed']['canaries']} canaries ({result['canaries_needed']['in']} in, "
        f"{result['canaries_needed']['out']} out on average)",
    ]
    ca = result["canary_audit"]
    if ca is not None:
        lines += [
            f"canary audit {ca['canaries']} canaries (~{ca['members']} in × {ca['nonmembers']} out): {_describe(ca)}",
            f"  best one-run ε lower bound a perfect attack could show (β = {ca['beta']:g}, δ = 0): "
            f"{ca['perfect_attack_eps']:.2f} ({ca['perfect_attack_eps_grid']:.2f} through the default "
            "guess-fraction grid)",
        ]
    for line in lines:
        typer.echo(line)
