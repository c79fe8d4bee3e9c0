"""Registries: the catalog of named components, one registry per kind.

Names are the user-facing identity of a component (timm's style): configs
refer to them, ``lab plugins`` lists them, and an unknown name is answered
with the nearest registered ones.

A factory may be given lazily, as an import string ``"package.module:attr"``:
the module is imported the first time the component is built (or its
parameters are asked for), not when the catalog is filled. That keeps
``lab plugins`` and ``lab --help`` from importing torch. A lazy component
states its metadata (``task``, ``input_kind``, ``target``, ...) at
registration; when the factory is imported, metadata the factory also carries
as an attribute must agree, so the two cannot drift apart silently.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

KINDS: tuple[str, ...] = (
    "generator",
    "ground_truth",
    "augmentation",
    "architecture",
    "loss",
    "metric",
    "weighting",
    "baseline",
)


#: Metadata keys a factory may also carry as a class attribute; a lazy registration's value must match it.
CHECKED_META: tuple[str, ...] = ("task", "input_kind", "target", "higher_is_better")

_IMPORT_STRING = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class RegistryError(Exception):
    """A component could not be registered or found; the message says why and what to do."""


@dataclass(frozen=True)
class Component:
    """One registered component: what a config name resolves to.

    ``target`` is the factory itself or its import string (``"pkg.mod:attr"``);
    :attr:`factory` imports it on first use.
    """

    kind: str
    name: str
    target: Callable[..., Any] | str
    summary: str
    plugin: str
    distribution: str
    version: str
    meta: dict[str, Any] = field(default_factory=dict)
    _resolved: list[Callable[..., Any]] = field(default_factory=list, repr=False, compare=False)

    @property
    def lazy(self) -> bool:
        """True while the factory is still an import string that has not been imported."""
        return isinstance(self.target, str) and not self._resolved

    @property
    def factory(self) -> Callable[..., Any]:
        """The callable that builds the component (imported now if it was registered lazily)."""
        if not isinstance(self.target, str):
            return self.target
        if not self._resolved:
            self._resolved.append(self._import())
        return self._resolved[0]

    def _import(self) -> Callable[..., Any]:
        module_name, _, attr = str(self.target).partition(":")
        where = f"{self.kind} {self.name!r} of plugin {self.plugin!r} ({self.distribution})"
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # report any import failure of a plugin's component by name
            raise RegistryError(
                f"{where}: cannot import its factory {self.target!r}: {type(exc).__name__}: {exc}; "
                f"fix the plugin, or block it with LAB_DISABLE_PLUGINS={self.plugin}"
            ) from None
        if not callable(obj):
            raise RegistryError(f"{where}: {self.target!r} is a {type(obj).__name__}, not a callable factory")
        for key in CHECKED_META:
            declared, carried = self.meta.get(key), getattr(obj, key, None)
            if declared is not None and carried is not None and declared != carried:
                raise RegistryError(
                    f"{where}: registered with {key}={declared!r} but {self.target} has {key}={carried!r}; "
                    "make the registration agree with the class"
                )
        return obj

    def info(self, key: str, default: Any = None) -> Any:
        """A metadata value: as registered, else the factory's attribute (imports a lazy factory)."""
        if key in self.meta:
            return self.meta[key]
        return getattr(self.factory, key, default)

    def create(self, **params: Any) -> Any:
        """Build the component with its config params."""
        return self.factory(**params)

    @property
    def origin(self) -> str:
        """Who provides it, for messages: ``plugin 'name' (distribution version)``."""
        version = f" {self.version}" if self.version else ""
        return f"plugin {self.plugin!r} ({self.distribution}{version})"


def create_module(component: Component, params: dict[str, Any], *, where: str,
                  error: type[Exception] = RuntimeError, hint: str = "") -> Any:
    """Build ``component`` with ``params`` and check that it is a ``torch.nn.Module``.

    The one place where the engine turns a config's component into a network part
    (architecture, loss term, metric): a factory that raises, or returns something
    else than a module, is reported as ``error`` naming ``where`` (the config key),
    the component and the plugin that registered it. ``hint`` ends the wrong-type
    message (what to return instead).
    """
    from torch import nn  # lazy: `lab plugins` lists components without importing torch

    try:
        built = component.create(**params)
    except Exception as exc:
        raise error(f"{where}: could not build {component.name!r} with params {params} "
                    f"from {component.origin}: {exc}") from exc
    if not isinstance(built, nn.Module):
        raise error(f"{where}: {component.kind} {component.name!r} from {component.origin} built a "
                    f"{type(built).__name__}, not a torch.nn.Module{hint}")
    return built


class Registry:
    """All components of one kind; handed to ``lab_register_<kind>`` hooks.

    The plugin manager sets :attr:`current_plugin` (and its distribution)
    before calling each plugin's hook, so ``add`` records who registered what
    without the plugin having to say so.
    """

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise RegistryError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        self.kind = kind
        self._items: dict[str, Component] = {}
        self.current_plugin = "<unknown>"
        self.current_distribution = "<unknown>"
        self.current_version = ""

    def add(
        self,
        name: str,
        factory: Callable[..., Any] | str,
        *,
        summary: str = "",
        **meta: Any,
    ) -> Component:
        """Register ``factory`` (a callable, or a lazy ``"package.module:attr"`` import string) under ``name``.

        ``summary`` is the one line ``lab plugins`` shows; when empty, the first
        line of the factory's docstring is used (a lazy factory must give it,
        since its docstring is not read until it is imported). Extra keyword
        arguments are kept as metadata (for losses: ``task`` and
        ``input_kind``; give them with a lazy factory, so listing and config
        checks need no import). A name registered twice is an error naming
        both plugins.
        """
        if not isinstance(name, str) or not name.strip():
            raise RegistryError(
                f"plugin {self.current_plugin!r} ({self.current_distribution}) registered a {self.kind} "
                f"with an empty or non-string name {name!r}; give it a short lowercase name"
            )
        if isinstance(factory, str):
            if not _IMPORT_STRING.match(factory):
                raise RegistryError(
                    f"plugin {self.current_plugin!r} ({self.current_distribution}) registered {self.kind} "
                    f"{name!r} with factory {factory!r}; a lazy factory is an import string "
                    "'package.module:attr', e.g. 'my_plugin.losses:LogCoshLoss'"
                )
            if not summary:
                raise RegistryError(
                    f"plugin {self.current_plugin!r} ({self.current_distribution}) registered {self.kind} "
                    f"{name!r} lazily ({factory!r}) without summary=; give the one line `lab plugins` shows "
                    "(a lazy factory's docstring is not read until it is built)"
                )
        elif not callable(factory):
            raise RegistryError(
                f"plugin {self.current_plugin!r} ({self.current_distribution}) registered {self.kind} "
                f"{name!r} with a factory that is not callable ({type(factory).__name__})"
            )
        if name in self._items:
            first = self._items[name]
            raise RegistryError(
                f"{self.kind} {name!r} is registered twice: first by plugin {first.plugin!r} "
                f"({first.distribution}), again by plugin {self.current_plugin!r} "
                f"({self.current_distribution}); rename one of them, or block one with "
                f"LAB_DISABLE_PLUGINS={self.current_plugin}"
            )
        if not summary:
            doc = (getattr(factory, "__doc__", None) or "").strip()
            summary = doc.splitlines()[0] if doc else ""
        component = Component(
            kind=self.kind,
            name=name,
            target=factory,
            summary=summary,
            plugin=self.current_plugin,
            distribution=self.current_distribution,
            version=self.current_version,
            meta=dict(meta),
        )
        self._items[name] = component
        return component

    def get(self, name: str) -> Component:
        """The component called ``name``; an unknown name lists the nearest registered ones."""
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        near = self.nearest(name)
        hint = f"did you mean {', '.join(repr(n) for n in near)}? " if near else ""
        return (
            f"unknown {self.kind} {name!r}; {hint}registered: {', '.join(sorted(self._items)) or 'none'} "
            f"(see `lab plugins --kind {self.kind}`)"
        )

    def nearest(self, name: str, n: int = 3) -> list[str]:
        """Registered names closest to ``name`` (difflib ratio), best first."""
        return difflib.get_close_matches(str(name), list(self._items), n=n, cutoff=0.5)

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style pattern, e.g. ``"focal*"``."""
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[Component]:
        return iter(self._items[n] for n in sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)


class Catalog:
    """One registry per kind: everything the loaded plugins provide."""

    def __init__(self) -> None:
        self.registries: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}
        self.failures: list[PluginFailure] = []

    def __getitem__(self, kind: str) -> Registry:
        try:
            return self.registries[kind]
        except KeyError:
            raise RegistryError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}") from None

    def get(self, kind: str, name: str) -> Component:
        return self[kind].get(name)

    def create(self, kind: str, name: str, **params: Any) -> Any:
        return self[kind].get(name).create(**params)

    def components(self, kind: str | None = None) -> list[Component]:
        kinds = [kind] if kind else list(KINDS)
        return [c for k in kinds for c in self[k]]


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or registered, kept to report it, never to stop the rest."""

    plugin: str
    distribution: str
    error: str
