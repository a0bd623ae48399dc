"""`cmraudit plugins`: what is installed and what each plugin registers."""
from __future__ import annotations

import dataclasses

import typer

from . import app, echo_json


@app.command("plugins")
def plugins_command(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List every plugin: source (built-in / entry point / -p), version and what it registers."""
    from ..registry import KINDS, describe_plugins

    infos = describe_plugins()
    if as_json:
        echo_json([dataclasses.asdict(i) for i in infos])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("plugin", "source", "version", *[k.replace("_", " ") for k in KINDS])
    for info in infos:
        table.add_row(info.name, info.source, info.version, *[", ".join(info.registers.get(k, [])) for k in KINDS])
    Console().print(table)
