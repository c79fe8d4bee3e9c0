"""Building the catalog: built-in plugins, third-party entry points, blocking and tracing.

Each entry point of the group ``losslab`` is loaded on its own, and each
plugin's registration hook is called on its own, so one broken plugin is
reported by name and skipped instead of stopping the others. After loading,
``check_pending()`` turns a misspelled hook name (``lab_register_lossses``)
into a loud error rather than a plugin that silently does nothing.

Environment variables:

- ``LAB_DISABLE_PLUGINS=name,...`` blocks plugins by name (entry-point names
  or built-in names such as ``losslab.losses``).
- ``LAB_TRACE_PLUGINS=1`` prints each hook call with its plugin on stderr.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from losslab.core.plugin import hookspecs
from losslab.core.plugin.markers import PROJECT_NAME
from losslab.core.plugin.registry import KINDS, Catalog, PluginFailure, Registry

ENTRY_POINT_GROUP = "losslab"

#: Built-in plugins: (plugin name, "module:object"). They go through the same hooks as everyone else's;
#: their registrations live in one light module (no torch), with lazy factories.
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("losslab.generators", "losslab.plugins.builtin:GENERATORS"),
    ("losslab.ground_truth", "losslab.plugins.builtin:GROUND_TRUTH_PLUGIN"),
    ("losslab.augmentations", "losslab.plugins.builtin:AUGMENTATIONS"),
    ("losslab.architectures", "losslab.plugins.builtin:ARCHITECTURES"),
    ("losslab.losses", "losslab.plugins.builtin:LOSSES_PLUGIN"),
    ("losslab.metrics", "losslab.plugins.builtin:METRICS_PLUGIN"),
    ("losslab.weightings", "losslab.plugins.builtin:WEIGHTINGS_PLUGIN"),
    ("losslab.baselines", "losslab.plugins.builtin:BASELINES_PLUGIN"),
)

HOOK_FOR_KIND: dict[str, str] = {
    "generator": "lab_register_generators",
    "ground_truth": "lab_register_ground_truth",
    "augmentation": "lab_register_augmentations",
    "architecture": "lab_register_architectures",
    "loss": "lab_register_losses",
    "metric": "lab_register_metrics",
    "weighting": "lab_register_weightings",
    "baseline": "lab_register_baselines",
}


class PluginError(Exception):
    """A plugin broke a rule the engine cannot work around (e.g. a misspelled hook)."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    version: str


def _losslab_version() -> str:
    try:
        return metadata.version("losslab")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def disabled_plugins() -> set[str]:
    raw = os.environ.get("LAB_DISABLE_PLUGINS", "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def tracing() -> bool:
    return os.environ.get("LAB_TRACE_PLUGINS", "").strip() not in ("", "0", "false", "no")


class LabPlugins:
    """Typed facade over pluggy: loads plugins and fills a :class:`Catalog`.

    The engine never calls ``pm.hook.*`` itself; it calls :meth:`register_kind`
    (through :func:`load_catalog`), which calls every plugin's hook one by one
    with the registry told who is registering.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []

    # -- loading -------------------------------------------------------------------------------------

    def load_builtins(self) -> None:
        blocked = disabled_plugins()
        version = _losslab_version()
        for name, target in BUILTIN_PLUGINS:
            if name in blocked:
                continue
            module_name, _, attr = target.partition(":")
            self._register_module(
                name, lambda m=module_name, a=attr: getattr(importlib.import_module(m), a), "losslab", version
            )

    def load_entry_points(self, entry_points: Iterable[Any] | None = None) -> None:
        """Load third-party plugins, each on its own; failures are recorded, not raised."""
        blocked = disabled_plugins()
        eps = entry_points if entry_points is not None else metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in eps:
            if ep.name in blocked:
                continue
            dist = getattr(ep, "dist", None)
            dist_name = getattr(dist, "name", None) or "<unknown distribution>"
            dist_version = getattr(dist, "version", None) or ""
            self._register_module(ep.name, ep.load, dist_name, dist_version)

    def _register_module(self, name: str, load: Any, distribution: str, version: str) -> None:
        if self.pm.has_plugin(name):
            first = self.info.get(name)
            owner = f" from {first.distribution} {first.version}".rstrip() if first else ""
            self.failures.append(
                PluginFailure(
                    name, distribution,
                    f"a plugin named {name!r}{owner} is already loaded; this one was skipped. "
                    "Give the entry point another name",
                )
            )
            return
        try:
            plugin = load()
            if isinstance(plugin, type) or (callable(plugin) and not isinstance(plugin, ModuleType)):
                plugin = plugin() if isinstance(plugin, type) else plugin
            self.pm.register(plugin, name=name)
        except Exception as exc:  # any import error of a plugin is reported, not fatal
            self.failures.append(PluginFailure(name, distribution, _describe(exc)))
            return
        self.info[name] = PluginInfo(name, distribution, version)

    def check_pending(self) -> None:
        """Fail loudly on a hook that losslab would never call.

        Two slips make a plugin silently do nothing: a misspelled hook name
        (``lab_register_lossses``), and a correctly named function without the
        ``@hookimpl`` marker (pluggy only collects marked functions). Both are
        reported with the plugin, its distribution and the nearest hook name.
        """
        known = sorted(HOOK_FOR_KIND.values())
        for plugin_name, plugin in self.pm.list_name_plugin():
            if plugin is None:  # blocked through pm.set_blocked
                continue
            for attr in dir(plugin):
                if not attr.startswith("lab_") or not callable(getattr(plugin, attr, None)):
                    continue
                opts = self.pm.parse_hookimpl_opts(plugin, attr)
                hook_name = (opts.get("specname") if opts else None) or attr
                if hook_name in known and opts is not None:
                    continue
                if hook_name in known:
                    problem = (f"function {attr!r} has no @hookimpl marker, so losslab never calls it; "
                               "decorate it with @hookimpl (from losslab.core import hookimpl)")
                else:
                    near = difflib.get_close_matches(hook_name, known, n=1, cutoff=0.6)
                    hint = f"did you mean {near[0]!r}? " if near else ""
                    problem = f"unknown hook {hook_name!r}; {hint}losslab's hooks are: {', '.join(known)}"
                raise PluginError(self._plugin_error(plugin_name, problem))
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            plugin_name = self.pm.get_name(exc.plugin) or "<unknown>"
            raise PluginError(
                self._plugin_error(plugin_name, f"{exc}; losslab's hooks are: {', '.join(known)}")
            ) from None

    def _plugin_error(self, plugin_name: str, problem: str) -> str:
        info = self.info.get(plugin_name)
        dist = f" ({info.distribution} {info.version})".replace(" )", ")") if info else ""
        return (
            f"plugin {plugin_name!r}{dist}: {problem}. Fix the plugin, or block it with "
            f"LAB_DISABLE_PLUGINS={plugin_name}"
        )

    # -- registration --------------------------------------------------------------------------------

    def register_kind(self, registry: Registry) -> None:
        """Call every plugin's registration hook for ``registry.kind``, isolating failures."""
        hook_name = HOOK_FOR_KIND[registry.kind]
        caller = getattr(self.pm.hook, hook_name)
        # pluggy keeps impls in registration order (and calls them in reverse); registering in
        # registration order lets built-ins claim their names first, so a third-party plugin that reuses
        # a built-in name is the one reported and skipped, never the built-ins.
        for impl in caller.get_hookimpls():
            name = impl.plugin_name
            info = self.info.get(name, PluginInfo(name, "<unknown>", ""))
            registry.current_plugin = name
            registry.current_distribution = info.distribution
            registry.current_version = info.version
            before = set(registry.names())
            if tracing():
                print(f"[losslab] {hook_name} -> plugin {name!r} ({info.distribution} {info.version})",
                      file=sys.stderr)
            try:
                impl.function(registry=registry)
            except Exception as exc:  # a broken plugin is reported and skipped
                for added in set(registry.names()) - before:
                    registry._items.pop(added, None)
                self.failures.append(
                    PluginFailure(name, info.distribution, f"{hook_name} failed: {_describe(exc)}")
                )
        registry.current_plugin = "<unknown>"
        registry.current_distribution = "<unknown>"
        registry.current_version = ""


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


_CACHE: dict[tuple[str, str], Catalog] = {}


def load_catalog(entry_points: Iterable[Any] | None = None, *, fresh: bool = False) -> Catalog:
    """Load built-ins and installed plugins, and fill one registry per kind.

    The result is cached per process (keyed on the blocking variable) unless
    ``entry_points`` are given or ``fresh`` is set, as tests do.
    """
    key = (os.environ.get("LAB_DISABLE_PLUGINS", ""), os.environ.get("LAB_TRACE_PLUGINS", ""))
    use_cache = entry_points is None and not fresh
    if use_cache and key in _CACHE:
        return _CACHE[key]
    plugins = LabPlugins()
    plugins.load_builtins()
    plugins.load_entry_points(entry_points)
    plugins.check_pending()
    catalog = Catalog()
    for kind in KINDS:
        plugins.register_kind(catalog[kind])
    catalog.failures = list(plugins.failures)
    for failure in catalog.failures:
        print(
            f"losslab: plugin {failure.plugin!r} ({failure.distribution}) was skipped: {failure.error}",
            file=sys.stderr,
        )
    if use_cache:
        _CACHE[key] = catalog
    return catalog
