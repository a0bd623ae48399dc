"""The ``cmraudit`` command line: a thin typer layer over the library.

This package is the only place that prints or imports rich, and the only place that turns CmrauditError into an
exit code (0 ok; 1 error or gate failed, the message says which; 2 usage) and a one-line message.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

import typer

from ..errors import CmrauditError

app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False,
                  help="Privacy audit of synthetic cardiac MRI generators: train, sample, attack, report, gate.")


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context,
          plugin: Optional[list[str]] = typer.Option(None, "-p", "--plugin", help="Load a plugin module or .py file "
                                                     "that is not installed (repeatable; also CMRAUDIT_PLUGINS)."),
          version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        from .. import __version__

        typer.echo(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


def _preparse_plugins(argv: list[str]) -> None:
    """-p must take effect before the app is built, so plugin sub-commands exist when typer parses argv."""
    from .. import registry as plugins

    for i, arg in enumerate(argv):
        if arg in ("-p", "--plugin") and i + 1 < len(argv):
            plugins.extra_plugins.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            plugins.extra_plugins.append(arg.split("=", 1)[1])


def _add_commands() -> None:
    from ..registry import load_plugins
    from . import data as _data  # noqa: F401  (each module registers its commands on `app`)
    from . import plan as _plan  # noqa: F401
    from . import plugins_cmd as _plugins  # noqa: F401
    from . import release as _release  # noqa: F401
    from . import run as _run  # noqa: F401

    load_plugins().hook.cmraudit_register_commands(app=app)


def _one_line_data_warnings() -> None:
    """A skipped patient is one stderr line (``cmraudit: warning: ...``), wherever in a command it happens."""
    import warnings

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if category.__name__ == "DataWarning":
            typer.echo(f"cmraudit: warning: {message}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _one_line_data_warnings()
    torch_threads = os.environ.get("CMRAUDIT_THREADS")
    if torch_threads:
        os.environ.setdefault("OMP_NUM_THREADS", torch_threads)
    from ..run.allocator import tune_malloc

    tune_malloc()  # before the first tensor: reuse freed activation buffers instead of page-faulting fresh ones
    try:
        _preparse_plugins(argv)
        _add_commands()
        app(args=argv, prog_name="cmraudit", standalone_mode=True)
    except CmrauditError as exc:
        typer.echo(f"cmraudit: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("cmraudit: interrupted; re-run the same command to resume", err=True)
        sys.exit(130)


def echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))
