"""Every hook is documented in docs/plugins.md with its signature, and exercised by at least one test."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from cmraudit import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("cmraudit_"))


def test_there_are_hooks():
    assert len(HOOKS) == 6


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_documented_with_matching_signature(hook):
    docs = (ROOT / "docs" / "plugins.md").read_text()
    params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert re.search(rf"^### {hook}\({re.escape(params)}\)$", docs, re.M), f"{hook}({params}) not documented"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    own = Path(__file__).name
    used = [p for p in (ROOT / "tests").rglob("*.py") if p.name != own and hook in p.read_text()]
    assert used, f"no test exercises {hook}"
