"""Registries: the catalog of named components, one registry per kind.

Names are the user-facing identity of a component (timm's style): configs
refer to them, ``lab plugins`` lists them, and an unknown name is answered
with the nearest registered ones.
"""

from __future__ import annotations

import difflib
import fnmatch
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
)


class RegistryError(Exception):
    """A component could not be registered or found; the message says why and what to do."""


@dataclass(frozen=True)
class Component:
    """One registered component: what a config name resolves to."""

    kind: str
    name: str
    factory: Callable[..., Any]
    summary: str
    plugin: str
    distribution: str
    version: str
    meta: dict[str, Any] = field(default_factory=dict)

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
        factory: Callable[..., Any],
        *,
        summary: str = "",
        **meta: Any,
    ) -> Component:
        """Register ``factory`` under ``name``.

        ``summary`` is the one line ``lab plugins`` shows; when empty, the first
        line of the factory's docstring is used. Extra keyword arguments are
        kept as metadata (for losses: ``task`` and ``input_kind``).
        A name registered twice is an error naming both plugins.
        """
        if not isinstance(name, str) or not name.strip():
            raise RegistryError(
                f"plugin {self.current_plugin!r} ({self.current_distribution}) registered a {self.kind} "
                f"with an empty or non-string name {name!r}; give it a short lowercase name"
            )
        if not callable(factory):
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
            factory=factory,
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
