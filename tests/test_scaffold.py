"""``lab new plugin NAME``: the package it writes is complete, lint-clean, and works once pip-installed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from losslab.core import Registry, load_catalog
from losslab.core.config import LossSpec, LossTermSpec
from losslab.core.plugin.scaffold import MAX_NAME, ScaffoldError, plugin_names, scaffold_plugin
from losslab.core.train.objective import Objective

EXPECTED_FILES = {
    "pyproject.toml",
    "README.md",
    "src/losslab_focal_edge/__init__.py",
    "src/losslab_focal_edge/losses.py",
    "tests/test_losslab_focal_edge.py",
}


class FakeEntryPoint:
    """What importlib.metadata would give for the generated package once installed."""

    def __init__(self, name: str, module: ModuleType, dist: str, version: str) -> None:
        self.name, self._module = name, module
        self.dist = type("Dist", (), {"name": dist, "version": version})()

    def load(self) -> ModuleType:
        return self._module


def import_by_path(root: Path, module: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The generated package imported from its ``src/`` (as pip would install it), forgotten after the test.

    Its loss is registered by an import string, so the package's submodules must be importable by name.
    """
    monkeypatch.syspath_prepend(str(root / "src"))
    for name in [n for n in sys.modules if n == module or n.startswith(f"{module}.")]:
        monkeypatch.delitem(sys.modules, name)
    loaded = importlib.import_module(module)
    assert Path(loaded.__file__ or "").resolve() == (root / "src" / module / "__init__.py").resolve()
    return loaded


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scaffold_plugin("Focal_Edge", tmp_path_factory.mktemp("scaffold"))


def test_names_are_normalised() -> None:
    assert plugin_names("Focal_Edge") == plugin_names("losslab-focal-edge") == {
        "short": "focal-edge",
        "dist": "losslab-focal-edge",
        "module": "losslab_focal_edge",
        "cls": "FocalEdgeLoss",
        "func": "focal_edge_loss",
        "all_items": '    "FocalEdgeLoss",\n    "focal_edge_loss",\n    "lab_register_losses",\n',
        "import_items": "    FocalEdgeLoss,\n    focal_edge_loss,\n    lab_register_losses,\n",
    }


@pytest.mark.parametrize("bad", ["", "9lives", "a--b", "dice!", "my loss", "-edge", "x" * (MAX_NAME + 1)])
def test_unusable_names_are_refused_with_the_rule(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError, match=r"lowercase letters|at most"):
        scaffold_plugin(bad, tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_taken_name_is_refused_naming_its_plugin(tmp_path: Path) -> None:
    taken = r"'dice' is already registered by plugin 'losslab.losses' \(losslab\)"
    with pytest.raises(ScaffoldError, match=taken):
        scaffold_plugin("dice", tmp_path)


def test_an_existing_package_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "losslab-focal-edge").mkdir()
    (tmp_path / "losslab-focal-edge" / "mine.py").write_text("keep me")
    with pytest.raises(ScaffoldError, match="already exists and is not empty"):
        scaffold_plugin("focal-edge", tmp_path)
    assert (tmp_path / "losslab-focal-edge" / "mine.py").read_text() == "keep me"


def test_package_files_and_entry_point(package: Path) -> None:
    assert package.name == "losslab-focal-edge"
    assert {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()} == EXPECTED_FILES
    meta = tomllib.loads((package / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "losslab-focal-edge"
    assert meta["project"]["entry-points"]["losslab"] == {"focal-edge": "losslab_focal_edge"}
    assert any(dep.startswith("losslab") for dep in meta["project"]["dependencies"])


@pytest.mark.parametrize("name", ["focal-edge", "l2", "x" * MAX_NAME])
def test_generated_code_passes_ruff(name: str, tmp_path: Path) -> None:
    root = scaffold_plugin(name, tmp_path)
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(root)],
                            capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_hook_registers_a_working_loss(package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = import_by_path(package, "losslab_focal_edge", monkeypatch)
    registry = Registry("loss")
    module.lab_register_losses(registry=registry)
    loss = registry.get("focal-edge").create(smooth=0.0)
    assert (loss.task, loss.input_kind) == ("mask", "probabilities")
    probs = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert loss(probs, target).item() == pytest.approx(1 - 3 / 3.5)
    rng = np.random.default_rng(0)  # against the formula in NumPy, on random inputs
    p, t = rng.random((3, 1, 5, 7)), (rng.random((3, 1, 5, 7)) > 0.5).astype(float)
    expected = 1 - (2 * (p * t).sum() + 1.0) / ((p * p).sum() + (t * t).sum() + 1.0)
    value = registry.get("focal-edge").create()(torch.from_numpy(p), torch.from_numpy(t))
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_generated_loss_runs_in_the_engine_under_its_plugin_name(package: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    module = import_by_path(package, "losslab_focal_edge", monkeypatch)
    ep = FakeEntryPoint("focal-edge", module, "losslab-focal-edge", "0.1.0")
    catalog = load_catalog(entry_points=[ep])
    component = catalog.get("loss", "focal-edge")
    assert component.lazy and "losslab_focal_edge.losses" not in sys.modules  # the catalog imported no loss code
    assert (component.plugin, component.distribution, component.version) == (
        "focal-edge", "losslab-focal-edge", "0.1.0")
    objective = Objective(LossSpec(mask=[LossTermSpec(name="focal-edge", weight=2.0)], depth=[]), catalog)
    logits = torch.zeros(2, 1, 4, 4, requires_grad=True)
    total, values = objective({"mask": logits, "depth": torch.zeros(2, 1, 4, 4)},
                              {"mask": torch.ones(2, 1, 4, 4), "depth": torch.zeros(2, 1, 4, 4)})
    # probabilities 0.5 everywhere, target all ones: 1 - (2*16 + 1) / (8 + 32 + 1)
    assert values["mask/focal-edge"].item() == pytest.approx(1 - 33 / 41)
    assert total.item() == pytest.approx(2 * (1 - 33 / 41))
    total.backward()
    assert logits.grad is not None and bool((logits.grad < 0).all())  # raising the logits lowers the loss


def test_installed_with_pip_its_tests_pass_and_the_catalog_lists_it(package: Path, tmp_path: Path) -> None:
    # offline build (no index, no isolation): it uses this environment's setuptools, as `pip install -e` does
    pytest.importorskip("setuptools", reason="building the package offline needs setuptools installed")
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(package)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert (site / "losslab_focal_edge").is_dir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=package, env=env,
    )
    # every generated test passes, including the one that checks the installed entry point (skipped otherwise)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "8 passed" in tests.stdout and "skipped" not in tests.stdout, tests.stdout


def test_cli_new_plugin(tmp_path: Path) -> None:
    from losslab.core.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["new", "plugin", "edge-tversky", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "created losslab-edge-tversky" in result.output
    assert f"pip install -e {tmp_path / 'losslab-edge-tversky'}" in result.output
    assert (tmp_path / "losslab-edge-tversky" / "src" / "losslab_edge_tversky" / "__init__.py").is_file()
    again = runner.invoke(app, ["new", "plugin", "edge-tversky", "--out", str(tmp_path)])
    assert again.exit_code == 2 and "already exists" in again.output
