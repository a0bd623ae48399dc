"""What a plugin author tests with: contract checks and tiny, honest stand-ins for data and generators.

    from cmraudit.testing import check_attack, check_generator, check_metric

    def test_my_generator():
        check_generator(MyGenerator)        # raises ContractViolation (a PluginError) naming the broken rule

``contracts`` and ``generator_contract`` hold the checks, ``cmraudit.testing.tiny`` the tiny data set, generator, step
runner and audit context they run on (usable in a plugin's own tests too).

The package is also a pytest plugin, loaded only on request (``pytest -p cmraudit.testing`` or
``pytest_plugins = ["cmraudit.testing"]``): it adds the fixtures ``cmraudit_tiny_table`` and
``cmraudit_audit_context``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..api import AuditContext
from ..data.types import SliceTable
from .contracts import ContractViolation, check_attack, check_metric
from .generator_contract import check_generator
from .tiny import PlainRunner, TinyGenerator, make_audit_context, tiny_table

__all__ = ["ContractViolation", "check_generator", "check_attack", "check_metric", "make_audit_context",
           "tiny_table", "TinyGenerator", "PlainRunner"]

# --------------------------------------------------------------------------------------------------- pytest plugin
# Fixtures exist only inside a pytest process (where pytest is already imported), so importing this module from a
# script never imports pytest.
pytest = sys.modules.get("pytest")
if pytest is not None:
    @pytest.fixture(scope="session")
    def cmraudit_tiny_table() -> SliceTable:
        """16 tiny patients (2 slices of 16x16 each) with ACDC labels, vendors and pathologies."""
        return tiny_table(n_patients=16)

    @pytest.fixture
    def cmraudit_audit_context(tmp_path: Path) -> AuditContext:
        """A small AuditContext around a trained TinyGenerator (see make_audit_context)."""
        return make_audit_context(workdir=tmp_path)
