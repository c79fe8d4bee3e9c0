"""The experiments that ship with losslab, found by name from any directory.

``experiments/*.yaml`` at the top of the repository is installed as package
data (``losslab.experiments``, through pyproject's package-dir mapping), so
``lab run bce_vs_dice`` works from any directory and ``lab experiments``
lists them. A path that exists always wins over a shipped name.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import losslab.core


class ExperimentNotFound(Exception):
    """Neither a file nor a shipped experiment's name; the message lists the shipped ones."""


@dataclass(frozen=True)
class Shipped:
    name: str
    path: Path
    description: str


def shipped_dir() -> Path | None:
    """Where the shipped YAML files are: the installed package data, else the source checkout's folder."""
    try:
        spec = importlib.util.find_spec("losslab.experiments")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    # a source checkout (editable install, or a PYTHONPATH shim): the folder beside core/
    checkout = Path(losslab.core.__file__).resolve().parents[1] / "experiments"
    return checkout if checkout.is_dir() else None


def shipped_experiments() -> list[Shipped]:
    """Every shipped experiment, by name, with the one-line ``description`` from its YAML."""
    import yaml

    folder = shipped_dir()
    out = []
    for path in sorted(folder.glob("*.yaml")) if folder else []:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            raw = {}
        description = str(raw.get("description", "")).strip() if isinstance(raw, dict) else ""
        out.append(Shipped(path.stem, path, description.splitlines()[0] if description else ""))
    return out


def resolve_experiment(ref: str | Path) -> Path:
    """A path to an experiment YAML: ``ref`` itself when it is a file, else the shipped one of that name.

    ``bce_vs_dice``, ``bce_vs_dice.yaml`` and ``experiments/bce_vs_dice.yaml``
    (from any directory) all find the shipped file when no such file exists here.
    """
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    shipped = {s.name: s for s in shipped_experiments()}
    stem = path.name[: -len(path.suffix)] if path.suffix in (".yaml", ".yml") else path.name
    plain = path.parent in (Path("."), Path("experiments"))
    if plain and stem in shipped:
        return shipped[stem].path
    names = ", ".join(shipped) or "none found"
    if path.exists():
        raise ExperimentNotFound(f"{ref}: not a file; pass an experiment YAML file or a shipped name ({names})")
    raise ExperimentNotFound(
        f"{ref}: experiment file not found, and not a shipped experiment; pass the path to a YAML experiment, "
        f"or one of the shipped names: {names} (see `lab experiments`)"
    )
