"""The MLflow names live in one module (``core/names.py``) and ``docs/tracking.md`` documents each of them."""

from __future__ import annotations

import ast
from pathlib import Path

from losslab.core import names
from losslab.core.plugin.manager import BUILTIN_PLUGINS

ROOT = Path(__file__).resolve().parents[1]
#: The trainer is being split by another change; its literals move to core/names.py after that lands.
PENDING: tuple[Path, ...] = ()


def _constants() -> dict[str, str]:
    return {k: v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}


def test_every_name_is_documented_in_the_tracking_contract():
    doc = (ROOT / "docs" / "tracking.md").read_text()
    missing = {k: v for k, v in _constants().items() if v not in doc}
    assert not missing, f"docs/tracking.md does not mention {missing}"


def test_names_are_distinct():
    seen: dict[str, str] = {}
    for key, value in _constants().items():
        if value in seen and not {key, seen[value]} == {"CONFIG_HASH_TAG", "CONFIG_HASH_ATTR"}:
            raise AssertionError(f"{key} and {seen[value]} are both {value!r}")
        seen[value] = key


def test_no_module_spells_a_name_itself():
    """A tag, artifact or metric-prefix literal outside core/names.py is a name that can drift from the reader."""
    spelled = {v for v in _constants().values() if "." in v or "/" in v}  # "run", "child" are common words
    plugin_names = {name for name, _module in BUILTIN_PLUGINS}
    modules = ("losslab.core", "losslab.plugins", "losslab.reports", "losslab.experiments")  # packages, not tags
    found = []
    for folder in ("core", "plugins", "reports"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "core" / "names.py" or any(p in path.parents for p in PENDING):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                    continue
                value = node.value
                tag_like = value.startswith(names.TAG_PREFIX) and not value.startswith(modules)
                if value in spelled or (tag_like and value not in plugin_names):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {value!r}")
    assert not found, "use the constants of losslab.core.names instead:\n" + "\n".join(found)
