"""The plugin manager: loads the builtins and every `deltaprop` entry point, each guarded.

A plugin implements `register_activations`, `register_loggers` or both. One that fails to import,
raises in a hook, implements a misspelt hook, or registers a duplicate name, a non-jitted function
or a logger factory that is not callable is recorded as broken with the reason; the others load.
`DELTAPROP_LOAD_PLUGINS=a,b` limits which entry points load (empty: none). Builtins always load.
"""

import os
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from ..errors import PluginError
from . import builtin, hookspecs
from .activation import Activation
from .fingerprint import uncache_helpers
from .gradcheck import CheckResult, check_derivative
from .logger import LoggerSpec

BUILTIN_SOURCE = "deltaprop"


@dataclass
class PluginInfo:
    name: str
    source: str  # distribution name
    version: str
    status: str = "ok"  # ok | broken
    reason: str = ""
    activations: list[str] = field(default_factory=list)
    loggers: list[str] = field(default_factory=list)


# The run's own record (metrics.jsonl, steps.jsonl): always on, not a plugin (training/loggers.py)
RESERVED_LOGGERS = ("jsonl",)


@dataclass
class Registry:
    """Activations and loggers by name, and what happened to every plugin that tried to register."""

    activations: dict[str, Activation]
    plugins: list[PluginInfo]
    _checks: dict[str, CheckResult] = field(default_factory=dict)
    loggers: dict[str, LoggerSpec] = field(default_factory=dict)

    def logger(self, name: str) -> LoggerSpec:
        """The registered logger `name`; a PluginError names a broken plugin that meant to give it."""
        if name in self.loggers:
            return self.loggers[name]
        broken = [p for p in self.plugins if p.status == "broken" and name in (p.name, *p.loggers)]
        if broken:
            p = broken[0]
            raise PluginError(f"logger {name!r} comes from plugin {p.name!r} ({p.source} {p.version}), "
                              f"which is broken: {p.reason}")
        raise PluginError(f"unknown logger {name!r}; registered: "
                          f"{', '.join(sorted([*RESERVED_LOGGERS, *self.loggers]))}")

    def get(self, name: str) -> Activation:
        if name in self.activations:
            return self.activations[name]
        broken = [p for p in self.plugins if p.status == "broken" and name in (p.name, *p.activations)]
        if broken:
            p = broken[0]
            raise PluginError(f"activation {name!r} comes from plugin {p.name!r} ({p.source} {p.version}), "
                              f"which is broken: {p.reason}")
        raise PluginError(f"unknown activation {name!r}; registered: {', '.join(sorted(self.activations))}")

    def check(self, name: str) -> CheckResult:
        """The numerical derivative check of `name` (run once per process)."""
        if name not in self._checks:
            act = self.get(name)
            try:
                self._checks[name] = check_derivative(act)
            except Exception as exc:  # not callable as f(x), fails to compile, raises...
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise PluginError(f"activation {name!r} (from {act.source} {act.version}) cannot be "
                                  f"evaluated as a scalar function f(x): {type(exc).__name__}: {first}") from None
        return self._checks[name]

    def require_checked(self, name: str) -> Activation:
        """The activation, refused with a PluginError if its derivative disagrees with f."""
        act = self.get(name)
        result = self.check(name)
        if not result.ok:
            raise PluginError(
                f"activation {name!r} (from {act.source} {act.version}) fails its derivative check: "
                f"the derivative differs from central differences by {result.worst_error:.3g} at "
                f"x = {result.worst_at:.4g}; refusing to train with it "
                f"(`deltaprop plugins check {name}` shows the check)."
            )
        return act


def make_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("deltaprop")
    pm.add_hookspecs(hookspecs)
    return pm


def _dist_of(ep) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    return (dist.name, dist.version) if dist is not None else (ep.value.split(".")[0], "")


def _selected_entry_points():
    eps = list(metadata.entry_points(group="deltaprop"))
    wanted = os.environ.get("DELTAPROP_LOAD_PLUGINS")
    if wanted is None:
        return eps, []
    names = {w.strip() for w in wanted.split(",") if w.strip()}
    return [ep for ep in eps if ep.name in names], sorted(names - {ep.name for ep in eps})


def load_registry(extra: tuple = (), entry_points: bool = True) -> Registry:
    """Build a fresh registry: builtins, then entry points, then `extra` (name, module) pairs."""
    pm = make_plugin_manager()
    registry = Registry({}, [])
    candidates = [(BUILTIN_SOURCE, lambda: builtin, PluginInfo("builtin", BUILTIN_SOURCE, _own_version()))]
    if entry_points:
        selected, missing = _selected_entry_points()
        for ep in selected:
            source, version = _dist_of(ep)
            candidates.append((ep.name, ep.load, PluginInfo(ep.name, source, version)))
        for name in missing:
            registry.plugins.append(PluginInfo(name, "", "", "broken", "named in DELTAPROP_LOAD_PLUGINS, "
                                                                       "but no such entry point is installed"))
    for name, module in extra:
        candidates.append((name, lambda m=module: m, PluginInfo(name, getattr(module, "__name__", name), "")))
    for name, load, info in candidates:
        registry.plugins.append(info)
        _load_one(pm, registry, name, load, info)
    return registry


def _load_one(pm, registry: Registry, name: str, load, info: PluginInfo) -> None:
    """Import, register and call one plugin's hook; on any failure mark it broken, keep going."""
    try:
        module = load()
    except BaseException as exc:  # a plugin may raise anything, even SystemExit, at import
        info.status, info.reason = "broken", f"import failed: {type(exc).__name__}: {exc}"
        return
    try:
        pm.register(module, name=name)
        pm.check_pending()
    except Exception as exc:
        if pm.is_registered(module):
            pm.unregister(module)
        info.status, info.reason = "broken", f"invalid hooks: {exc}"
        return
    found: list[Activation] = []
    loggers: list[LoggerSpec] = []
    hook = "register_activations"
    try:
        for impl in pm.hook.register_activations.get_hookimpls():
            if impl.plugin is module:
                impl.function(register=found.append)
        hook = "register_loggers"
        for impl in pm.hook.register_loggers.get_hookimpls():
            if impl.plugin is module:
                impl.function(register=lambda name, factory: loggers.append(LoggerSpec(name, factory)))
    except BaseException as exc:
        info.status, info.reason = "broken", f"{hook} raised {type(exc).__name__}: {exc}"
        return
    problems = []
    for act in found:
        if not isinstance(act, Activation):
            problems.append(f"registered {act!r}, not a deltaprop.Activation")
            continue
        problems += [f"activation {act.name!r}: {p}" for p in act.problems()]
        if act.name in registry.activations:
            other = registry.activations[act.name]
            problems.append(f"activation {act.name!r} is already registered by {other.source}")
    for spec in loggers:
        problems += spec.problems()
        if spec.name in RESERVED_LOGGERS:
            problems.append(f"logger name {spec.name!r} is reserved (deltaprop's own record)")
        elif spec.name in registry.loggers:
            problems.append(f"logger {spec.name!r} is already registered by {registry.loggers[spec.name].source}")
    names = [a.name for a in found if isinstance(a, Activation)]
    logger_names = [s.name for s in loggers]
    if len(set(names)) < len(names) or len(set(logger_names)) < len(logger_names):
        problems.append("registers the same name twice")
    info.activations = [str(n) for n in names]
    info.loggers = [str(n) for n in logger_names]
    if problems:
        info.status, info.reason = "broken", "; ".join(problems)
        return
    for act in found:
        uncache_helpers(act.forward)  # no stale machine code after an edit elsewhere in the plugin
        uncache_helpers(act.derivative)
        registry.activations[act.name] = _with_source(act, info)
    for spec in loggers:
        registry.loggers[spec.name] = _with_source(spec, info)


def _with_source(item, info: PluginInfo):
    from dataclasses import replace
    return replace(item, source=info.source, version=info.version)


def _own_version() -> str:
    from .. import __version__
    return __version__


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use (never at import)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = load_registry()
    return _REGISTRY
