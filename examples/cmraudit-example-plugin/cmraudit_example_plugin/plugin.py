"""The hook implementations cmraudit finds through the entry point ``example`` (see pyproject.toml).

Imports happen inside the hooks so that ``cmraudit --help`` stays fast with this plugin installed.
"""
from __future__ import annotations

from cmraudit import hookimpl


@hookimpl
def cmraudit_register_generators(register):
    from .unet import ExampleUNetGenerator

    register(ExampleUNetGenerator)


@hookimpl
def cmraudit_register_attacks(register):
    from .attack import CalibratedNearestNeighbourAttack

    register(CalibratedNearestNeighbourAttack)


@hookimpl
def cmraudit_register_metrics(register):
    from .metric import StructureIntensityError

    register(StructureIntensityError)


@hookimpl
def cmraudit_register_report_sections(register):
    from .section import ExampleSection

    register(ExampleSection)
