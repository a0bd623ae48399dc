"""Built-in dataset sources (a plugin like any other) and ``open_source("scheme:arg")``."""
from __future__ import annotations

from ..api import DatasetSource
from ..errors import UsageError
from ..hookspecs import hookimpl


@hookimpl
def cmraudit_register_datasets(register) -> None:
    from .acdc import AcdcSource
    from .mnms import MnmsSource
    from .phantom import PhantomSource

    register(PhantomSource)
    register(AcdcSource)
    register(MnmsSource)


def parse_spec(spec: str) -> tuple[str, str | None]:
    scheme, _, arg = spec.partition(":")
    return scheme.strip().lower(), (arg or None)


def open_source(spec: str) -> DatasetSource:
    """The DatasetSource for ``phantom``, ``phantom:N``, ``acdc:PATH``, ``mnms:PATH`` or a plugin's scheme."""
    from ..registry import registered

    scheme, arg = parse_spec(spec)
    sources = registered("datasets")
    if scheme not in sources:
        raise UsageError(f"unknown data scheme {scheme!r} in {spec!r} (known: {', '.join(sorted(sources))})")
    return sources[scheme](arg)
