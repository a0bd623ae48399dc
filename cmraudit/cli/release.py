"""`cmraudit release RUN --model NAME [--filter] [--out DIR] [--force] [--policy FILE]`: share a synthetic cohort."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from . import app


def _command_line(run_dir: Path, model: str, filter_: bool, out: Optional[Path], force: bool,
                  policy: Optional[Path]) -> str:
    """The exact command: sys.argv when cmraudit is the program, else (called in-process) rebuilt from the options."""
    if Path(sys.argv[0]).name in ("cmraudit", "__main__.py") and "release" in sys.argv[1:]:
        return shlex.join(["cmraudit", *sys.argv[1:]])
    args = ["cmraudit", "release", str(run_dir), "--model", model]
    args += ["--filter"] * filter_ + (["--out", str(out)] if out else []) + ["--force"] * force
    args += ["--policy", str(policy)] if policy else []
    return shlex.join(args)


@app.command("release")
def release_command(
        run_dir: Path = typer.Argument(..., help="Audited run folder."),
        model: str = typer.Option(..., "--model", "-m", help="The model whose synthetic set to release."),
        filter_: bool = typer.Option(False, "--filter", help="Remove every synthetic image the memorization or "
                                     "reidentification attack flagged, and re-measure fidelity and utility."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Release folder, replaced completely. "
                                           "(default: RUN/release/MODEL)"),
        force: bool = typer.Option(False, "--force", help="Release a model that did not pass its audit (the "
                                   "datasheet says so, with the rules it failed)."),
        policy: Optional[Path] = typer.Option(None, "--policy", help="Policy TOML to gate on (default: built-in).")
) -> None:
    """Gate, filter and export one model's synthetic cohort in ACDC layout, with a datasheet and a redacted report."""
    from ..release import release_model

    def note(message: str) -> None:
        typer.echo(f"release {model}: {message}", err=True)

    result = release_model(run_dir, model, filter=filter_, out=out, force=force, policy=policy, progress=note,
                           command=_command_line(run_dir, model, filter_, out, force, policy))
    check, sheet = result.gate, result.datasheet
    if check.forced:
        typer.echo(f"cmraudit: warning: model {model} did not pass its audit ({check.outcome}: "
                   f"{check.describe_blocking()}); released anyway (--force), and the datasheet says so", err=True)
    else:
        typer.echo(f"gate: {model} passes the {check.policy} ({len(check.rules)} rule(s))")
    if result.filter is None:
        typer.echo("filter: not applied (--filter removes images the memorization/reidentification attacks flag)")
    else:
        f = sheet["filter"]
        typer.echo(f"filter: {result.filter.describe()}")
        typer.echo(f"filter: ran {', '.join(f['attacks_used'])}; did not run: "
                   f"{', '.join(f['attacks_not_run']) or 'none'}")
        for row in sheet["metrics"]:
            after = row.get("after")
            typer.echo(f"  {row['metric']}.{row['value']}: {_num(row['before'])} -> "
                       f"{_num(after) if after is not None else row.get('after_note', '–')}"
                       + (f" ({row['direction']} is better)" if row.get("direction") else ""))
    c = sheet["cohort"]
    typer.echo(f"cohort: {c['patients']} synthetic patients, {c['slices']} slices "
               f"(dropped without ED or ES: {c['dropped_patients_without_ed_or_es']} patients, "
               f"{c['dropped_slices_without_partner_phase']} slices)")
    typer.echo(f"released: {result.out} (datasheet.md, datasheet.json, report-redacted.html; read the cohort with "
               f"`cmraudit data inspect acdc:{result.cohort_dir}`)")


def _num(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
