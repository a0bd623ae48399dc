"""`cmraudit data ...`: inspect, preview and export data sets."""
from __future__ import annotations

import typer

from . import app

data_app = typer.Typer(help="Inspect, preview and export data sets (phantom, acdc:PATH, mnms:PATH).", no_args_is_help=True)
app.add_typer(data_app, name="data")
