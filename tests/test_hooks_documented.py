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
    assert len(HOOKS) == 7


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


#: methods a plugin class may define to plug into the core, beyond the register hooks: (class, method, section)
CLASS_HOOKS = [
    ("Generator", "profile_config", "Generator"),
    ("Generator", "train_overrides", "Generator"),
    ("Attack", "profile_config", "Attack"),
    ("Attack", "applies_to", "Attack"),
    ("Metric", "profile_config", "Metric"),
    ("Metric", "applies_to", "Metric"),
    ("DenoiserView", "forward_noise", "Generator"),
    ("DenoiserView", "predict_x0_and_noise", "Generator"),
    ("AuditContext", "settings", "AuditContext"),
]


def _section(docs: str, title: str) -> str:
    start = re.search(rf"^### {title}$", docs, re.M)
    assert start, f"docs/plugins.md has no '### {title}' section"
    end = re.search(r"^## |^### ", docs[start.end():], re.M)
    return docs[start.end(): start.end() + end.start() if end else len(docs)]


@pytest.mark.parametrize("owner,method,section", CLASS_HOOKS, ids=[f"{o}.{m}" for o, m, _ in CLASS_HOOKS])
def test_base_class_hook_documented_with_matching_signature(owner, method, section):
    """Each overridable base-class method appears in its class's section as ``name(params)``, params as in api.py."""
    from cmraudit import api

    fn = inspect.getattr_static(getattr(api, owner), method)
    fn = fn.__func__ if isinstance(fn, (classmethod, staticmethod)) else fn
    params = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
    text = _section((ROOT / "docs" / "plugins.md").read_text(), section)
    assert re.search(rf"`{method}\({re.escape(', '.join(params))}[,)=]", text), \
        f"{owner}.{method}({', '.join(params)}) not documented under '### {section}'"
