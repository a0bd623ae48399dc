"""`cmraudit data ...`: inspect, preview and export data sets."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer

from . import app, echo_json

data_app = typer.Typer(help="Inspect, preview and export data sets (phantom, acdc:PATH, mnms:PATH).", no_args_is_help=True)
app.add_typer(data_app, name="data")

SPEC_HELP = "Data set: phantom, phantom:N, acdc:PATH, mnms:PATH or a plugin's scheme."
SIZE_OPTION = typer.Option(64, "--size", min=8, max=1024, help="Square slice size in pixels after resampling.")


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    from ..data.nifti import DataWarning

    for w in caught:
        if issubclass(w.category, DataWarning):
            typer.echo(f"cmraudit: warning: {w.message}", err=True)
        else:  # not ours: hand back to Python's usual display
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def load_table(spec: str, size: int):
    """Open and load a data set, printing each skipped patient as one warning line on stderr."""
    from ..data.nifti import DataWarning
    from ..data.sources import open_source

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        try:
            return open_source(spec).load(size)
        finally:
            _print_warnings(caught)


@data_app.command("inspect")
def inspect_command(spec: str = typer.Argument(..., help=SPEC_HELP),
                    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
                    size: int = SIZE_OPTION) -> None:
    """Patients, slices, vendors, pathologies, label pixel fractions, image size and intensity statistics."""
    from ..data.inspect import summarize

    summary = summarize(load_table(spec, size))
    if as_json:
        echo_json(summary)
        return
    from rich.console import Console
    from rich.table import Table

    def fmt(value: object) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k} {v}" for k, v in value.items())
        return str(value)

    table = Table("", "", title=f"data set {summary['source']}", show_header=False)
    for key, value in summary.items():
        if key != "source":
            table.add_row(key.replace("_", " "), fmt(value))
    Console().print(table)


@data_app.command("preview")
def preview_command(spec: str = typer.Argument(..., help=SPEC_HELP),
                    out: Path = typer.Argument(..., help="PNG file to write."),
                    n: int = typer.Option(16, "--n", min=1, max=256, help="Number of slices in the grid."),
                    size: int = SIZE_OPTION) -> None:
    """Write a grid of slices with their masks overlaid (RV blue, MYO green, LV red) as a PNG."""
    from ..data.inspect import preview_png

    path = preview_png(load_table(spec, size), out, n=n)
    typer.echo(f"wrote {path}")


@data_app.command("export-phantom")
def export_phantom_command(out_dir: Path = typer.Argument(..., help="Folder to write (must be empty or new)."),
                           n: Optional[int] = typer.Option(None, "--n", min=1, help="Number of phantom patients."),
                           seed: int = typer.Option(0, "--seed", help="Phantom seed (as for phantom:N)."),
                           force: bool = typer.Option(False, "--force", help="Write into a non-empty folder, "
                                                      "replacing patients of the same id.")) -> None:
    """Write phantom patients in the ACDC layout (NIfTI with spacing, Info.cfg, _gt files) for `acdc:DIR`."""
    from ..data.export import export_acdc
    from ..data.phantom import PhantomSource

    source = PhantomSource(str(n) if n is not None else None, seed=seed)
    written = export_acdc(source.volumes(), out_dir, overwrite=force)
    typer.echo(f"wrote {len(written)} patients to {out_dir} (read them back with: cmraudit data inspect acdc:{out_dir})")
