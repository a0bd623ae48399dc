"""Running the command line inside a test: exit code, stdout and the stderr lines cmraudit itself wrote."""
from __future__ import annotations

from cmraudit.cli import main


def run_cli(argv: list[str], capsys) -> tuple[int, str, list[str]]:
    """Exit code, stdout, and the stderr lines cmraudit itself wrote (plugin-loading notices aside); a traceback
    is always a failure: every error must be one line."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, [line for line in err.splitlines() if not line.startswith("cmraudit: skipping plugin")]
