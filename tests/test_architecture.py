"""The floor plan holds: the import graph of ``core/``, ``plugins/`` and ``reports/`` read with ``ast``.

Rules (DESIGN.md, issue 13):

- the engine (``core/`` outside ``core/cli/``) never imports ``plugins/`` or ``reports/``;
- no import cycle between modules;
- no stage imports a later stage. Stages, in data-flow order: hub (``core/__init__``, ``config``, ``device``,
  ``names``, ``paths``, ``progress``) < plugin (``core/plugin/``) < data < data.generate < train < experiment
  < cli. The hub may import the plugin stage (the config checks names against the registry), nothing later.
- ``core/`` keeps at most 8 modules at its top, no two module files of the same name, one class per name.

How imports are read:

- every ``import`` / ``from ... import`` at any depth counts, lazy ones inside functions included;
- imports under ``if TYPE_CHECKING:`` are left out: they never run, and annotations may look across stages;
- ``from pkg import name`` is an import of ``pkg.name`` when that is a module, else of ``pkg``;
- importing ``a.b.c`` is an edge to ``a.b.c`` only, not to its parent packages (Python initialises those first,
  so a module importing a sibling through its package is no cycle);
- ``core/__init__.py`` is the hub and the plugin authors' facade at once. Its module-level imports obey the hub
  rule; the lazy re-exports in its ``__getattr__`` (``Recipe`` from the data stage) run only when an author asks
  for the name, the engine itself imports the defining module. They are checked for cycles and for the
  engine -> plugins/reports rule, and exempt from the stage order only.
``plugins/`` and ``reports/`` stand outside the stage order: they may use any engine stage, the engine none of them.
"""

from __future__ import annotations

import ast
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STAGES = ("hub", "plugin", "data", "data.generate", "train", "experiment", "cli")
HUB_MODULES = {
    "losslab.core", "losslab.core.config", "losslab.core.device", "losslab.core.names", "losslab.core.paths",
    "losslab.core.progress",
}
FACADE = "losslab.core"


def package_dirs() -> dict[str, Path]:
    """pyproject's ``[tool.setuptools] package-dir``: ``losslab.core -> core/`` and so on."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {package: ROOT / folder for package, folder in mapping.items()}


def module_files() -> dict[str, Path]:
    """Every module's dotted name and its file, following the package-dir mapping."""
    modules: dict[str, Path] = {}
    for package, folder in package_dirs().items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    path: Path
    line: int
    lazy: bool  # inside a function body

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.source} -> {self.target}"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _collect(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def add(target: str, node: ast.stmt, lazy: bool) -> None:
        if target.split(".")[0] == "losslab":
            found.append(Import(module, target, path, node.lineno, lazy))

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, lazy)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, lazy)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, is_package, node)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                add(candidate if candidate in modules else base, node, lazy)
        inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def import_graph() -> list[Import]:
    modules = module_files()
    imports: list[Import] = []
    for module, path in modules.items():
        imports.extend(_collect(module, path, modules))
    return imports


def stage(module: str) -> str | None:
    """The pipeline stage of an engine module, ``None`` outside ``losslab.core``."""
    if module in HUB_MODULES:
        return "hub"
    parts = module.split(".")
    if parts[:2] != ["losslab", "core"] or len(parts) < 3:
        return None
    if parts[2] == "data" and len(parts) > 3 and parts[3] == "generate":
        return "data.generate"
    if parts[2] in STAGES:
        return parts[2]
    raise AssertionError(f"{module} is in no stage: put it in a room of core/ or add it to the hub list")


def find_cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself), Tarjan's way."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strongconnect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                strongconnect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return cycles


def engine_reaching_out(imports: list[Import]) -> list[Import]:
    outside = ("losslab.plugins", "losslab.reports")
    return [
        imp
        for imp in imports
        if stage(imp.source) not in (None, "cli")
        and any(imp.target == p or imp.target.startswith(p + ".") for p in outside)
    ]


def backwards(imports: list[Import]) -> list[Import]:
    bad = []
    for imp in imports:
        src, dst = stage(imp.source), stage(imp.target)
        if src is None or dst is None:
            continue
        if imp.source == FACADE and imp.lazy:
            continue  # the facade's lazy re-exports: see the module docstring
        if src == "hub" and dst == "plugin":
            continue
        if STAGES.index(dst) > STAGES.index(src):
            bad.append(imp)
    return bad


def test_graph_is_read_at_every_depth():
    """The walker itself: it must see lazy imports and resolve modules, or the rules below prove nothing."""
    imports = import_graph()
    assert len(imports) > 200
    lazy = {(i.source, i.target) for i in imports if i.lazy}
    # the CLI imports the report package inside a command; the facade resolves its exports lazily
    assert any(src.startswith("losslab.core.cli") and dst.startswith("losslab.reports") for src, dst in lazy)
    assert ("losslab.core", "losslab.core.plugin.manager") in lazy
    # `from losslab.core.data import formats` is an import of the module formats, not of the package
    assert any(i.target == "losslab.core.data.formats" for i in imports)


def test_cycle_finder_finds_a_cycle():
    def edge(a: str, b: str) -> Import:
        return Import(a, b, ROOT / "pyproject.toml", 1, False)

    assert find_cycles([edge("a", "b"), edge("b", "c"), edge("c", "a"), edge("c", "d")]) == [["a", "b", "c"]]
    assert find_cycles([edge("a", "b"), edge("b", "c")]) == []


def _report(problem: str, lines: list[str]) -> None:
    if lines:
        pytest.fail(problem + ":\n" + "\n".join(dict.fromkeys(lines)), pytrace=False)


def test_engine_never_imports_plugins_or_reports():
    bad = engine_reaching_out(import_graph())
    _report("the engine imports a built-in plugin or the reports (only core/cli/ may)", [i.where() for i in bad])


def test_no_import_cycles():
    imports = import_graph()
    cycles = find_cycles(imports)
    lines = []
    for cycle in cycles:
        members = set(cycle)
        lines.append("cycle: " + ", ".join(cycle))
        lines.extend("  " + i.where() for i in imports if i.source in members and i.target in members)
    _report("import cycles (lazy imports included)", lines)


def test_no_stage_imports_a_later_stage():
    bad = backwards(import_graph())
    _report(f"an earlier stage imports a later one (order: {' < '.join(STAGES)})",
            [f"{imp.where()} ({stage(imp.source)} -> {stage(imp.target)})" for imp in bad])


def test_core_top_level_stays_small():
    core = package_dirs()["losslab.core"]
    top = sorted(p.name for p in core.glob("*.py"))
    assert len(top) <= 8, f"{len(top)} modules directly in core/ (at most 8): {top}"


def test_module_file_names_are_unique_under_core():
    core = package_dirs()["losslab.core"]
    paths = [p for p in core.rglob("*.py") if p.name != "__init__.py"]
    counts = Counter(p.name for p in paths)
    twins = {
        name: sorted(str(p.relative_to(ROOT)) for p in paths if p.name == name) for name, n in counts.items() if n > 1
    }
    assert not twins, f"module file names used twice under core/: {twins}"


def test_class_names_are_unique_under_core():
    core = package_dirs()["losslab.core"]
    where: dict[str, list[str]] = {}
    for path in sorted(core.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    twins = {name: places for name, places in where.items() if len(places) > 1}
    assert not twins, f"class names defined twice under core/: {twins}"
