"""Every import the documentation and the examples show a user (``from cmraudit.x import y``, ``import cmraudit.x``)
works: moving a module must not break what a plugin author copies from the docs."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").rglob("*.md")),
           *sorted((ROOT / "examples").rglob("*.py"))]
FROM_IMPORT = re.compile(r"^\s*from (cmraudit(?:\.\w+)*) import \(?([\w, \n]+?)\)?\s*(?:#.*)?$", re.M)
IMPORT = re.compile(r"^\s*import (cmraudit(?:\.\w+)*)\b(?!_)", re.M)


def documented_imports() -> list[tuple[str, str, str | None]]:
    found = []
    for path in SOURCES:
        text = path.read_text()
        where = str(path.relative_to(ROOT))
        for module, names in FROM_IMPORT.findall(text):
            found += [(where, module, name.strip()) for name in names.split(",") if name.strip()]
        found += [(where, module, None) for module in IMPORT.findall(text)]
    return sorted(set(found))


def test_the_docs_show_imports():
    modules = {module for _, module, _ in documented_imports()}
    assert {"cmraudit", "cmraudit.testing", "cmraudit.run"} <= modules


@pytest.mark.parametrize("where,module,name", documented_imports())
def test_documented_import_works(where, module, name):
    imported = importlib.import_module(module)
    if name is not None:
        assert hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}"), \
            f"{where}: `from {module} import {name}` fails"
