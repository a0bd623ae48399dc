"""The plugin registry: built-ins, entry points (group "cmraudit"), ``-p`` / CMRAUDIT_PLUGINS, blocking.

(Named registry.py, not plugins.py, because ``cmraudit.plugins`` is the package of built-in generators.)

Plugins are loaded on first use, not when cmraudit is imported. A plugin that fails to import is reported once on
stderr and skipped, so ``--help``, ``plugins`` and every other plugin keep working.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

DEFAULT_PLUGINS = (
    "cmraudit.data.sources",
    "cmraudit.plugins.gan",
    "cmraudit.plugins.vae",
    "cmraudit.plugins.diffusion",
    "cmraudit.plugins.flow",
    "cmraudit.plugins.mask_vae",
    "cmraudit.attacks.membership",
    "cmraudit.attacks.memorization",
    "cmraudit.attacks.reidentification",
    "cmraudit.attacks.lira",
    "cmraudit.attacks.replay",
    "cmraudit.attacks.masks",
    "cmraudit.attacks.fidelity",
    "cmraudit.attacks.utility",
    "cmraudit.attacks.conditional",
    "cmraudit.reports.html",
    "cmraudit.reports.conditional",
)

KINDS = ("generators", "mask_generators", "attacks", "metrics", "datasets", "report_sections")


@dataclass
class PluginInfo:
    name: str
    source: str  # "built-in" | "entry point" | "-p"
    version: str
    registers: dict[str, list[str]] = field(default_factory=dict)


pm = pluggy.PluginManager("cmraudit")
pm.add_hookspecs(hookspecs)
_loaded = False
_sources: dict[str, tuple[str, str]] = {}  # plugin name -> (source, version)
_warned: set[str] = set()
extra_plugins: list[str] = []  # filled by the CLI's -p before first use


def _warn_once(name: str, error: BaseException) -> None:
    if name not in _warned:
        _warned.add(name)
        print(f"cmraudit: skipping plugin {name}: {type(error).__name__}: {error}".splitlines()[0], file=sys.stderr)


def _import_path_or_module(spec: str) -> ModuleType:
    if spec.endswith(".py") or os.sep in spec:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"no such plugin file: {path}")
        mod_spec = importlib.util.spec_from_file_location(f"cmraudit_local_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
        sys.modules[mod_spec.name] = module  # type: ignore[union-attr]
        mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    return importlib.import_module(spec)


def _register(module: Any, name: str, source: str, version: str) -> None:
    if name in _blocked() or pm.is_registered(module) or pm.has_plugin(name):
        return
    pm.register(module, name=name)
    _sources[name] = (source, version)


def _blocked() -> set[str]:
    return {n.strip() for n in os.environ.get("CMRAUDIT_DISABLE_PLUGINS", "").split(",") if n.strip()}


def load_plugins() -> pluggy.PluginManager:
    """Load built-ins, entry points and -p / CMRAUDIT_PLUGINS plugins once; return the manager."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    from . import __version__

    for modname in DEFAULT_PLUGINS:
        if modname in _blocked():
            continue
        try:
            _register(importlib.import_module(modname), modname, "built-in", __version__)
        except Exception as exc:  # a broken built-in must not take the CLI down either
            _warn_once(modname, exc)
    for ep in importlib.metadata.entry_points(group="cmraudit"):
        if ep.name in _blocked():
            continue
        try:
            dist = ep.dist.version if ep.dist else "?"
            _register(ep.load(), ep.name, "entry point", dist)
        except Exception as exc:
            _warn_once(ep.name, exc)
    env = [s for s in os.environ.get("CMRAUDIT_PLUGINS", "").split(",") if s.strip()]
    for spec in [*env, *extra_plugins]:
        spec = spec.strip()
        try:
            module = _import_path_or_module(spec)
            _register(module, spec, "-p", getattr(module, "__version__", "-"))
        except Exception as exc:
            _warn_once(spec, exc)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {pm.get_name(exc.plugin) or exc.plugin}: {exc}") from None
    return pm


def plugin_source(name: str) -> tuple[str, str]:
    return _sources.get(name, ("registered", "-"))


def _collect(kind: str) -> dict[str, tuple[Any, str]]:
    """name -> (class, plugin name) for one kind, calling each plugin's hook separately to know who registered what."""
    load_plugins()
    hook = getattr(pm.hook, f"cmraudit_register_{kind}")
    found: dict[str, tuple[Any, str]] = {}
    for impl in hook.get_hookimpls():  # registration order (pluggy calls them in reverse)
        plugin = impl.plugin_name

        def register(obj: Any, name: str | None = None, _plugin: str = plugin) -> None:
            key = name or getattr(obj, "name", None)
            if not key:
                raise PluginError(f"plugin {_plugin}: {kind[:-1]} {obj!r} has no name")
            if key in found:
                raise PluginError(f"{kind[:-1]} name {key!r} is registered twice: by {found[key][1]} and by {_plugin}")
            found[key] = (obj, _plugin)

        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:
            _warn_once(plugin, exc)
    return found


def registered(kind: str) -> dict[str, Any]:
    """Registered classes of one kind ("generators", "mask_generators", "attacks", "metrics", "datasets",
    "report_sections")."""
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}")
    return {name: obj for name, (obj, _) in _collect(kind).items()}


def get(kind: str, name: str) -> Any:
    table = registered(kind)
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise PluginError(f"no {kind[:-1].replace('_', ' ')} named {name!r} (known: {known})")
    return table[name]


def describe_plugins() -> list[PluginInfo]:
    """Every loaded plugin with its source, version and what it registers (for ``cmraudit plugins``)."""
    load_plugins()
    infos = {name: PluginInfo(name, *plugin_source(name)) for name, _ in pm.list_name_plugin() if name}
    for kind in KINDS:
        for key, (_, plugin) in _collect(kind).items():
            if plugin in infos:
                infos[plugin].registers.setdefault(kind, []).append(key)
    return list(infos.values())
