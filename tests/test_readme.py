"""The README's Python example runs as written (a smoke-sized audit), and its two set-up commands are the CI's."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    (snippet,) = re.findall(r"```python\n(.*?)```", README, re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    out = capsys.readouterr().out.split()
    assert out[-1] in ("pass", "fail", "inconclusive") and Path(out[0]).name == "report.html" and Path(out[0]).is_file()
    assert (tmp_path / "notebook-audit" / "results.json").is_file()


def test_setup_commands_come_first_and_ci_runs_the_test_command():
    commands = re.findall(r"^    (pip install .*)$", README, re.M)
    assert commands[:2] == ['pip install -e . && cmraudit run', 'pip install -e ".[dev]" && pytest']
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
