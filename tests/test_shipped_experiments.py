"""Shipped experiments are package data: found by name from any directory, listed with their description."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from losslab.core.cli.main import app
from losslab.core.experiment.shipped import ExperimentNotFound, resolve_experiment, shipped_experiments

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_every_yaml_in_experiments_is_shipped_with_its_description(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    shipped = {s.name: s for s in shipped_experiments()}
    on_disk = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
    assert sorted(shipped) == on_disk and "bce_vs_dice" in shipped
    for name, item in shipped.items():
        raw = yaml.safe_load((ROOT / "experiments" / f"{name}.yaml").read_text())
        assert item.description == raw["description"] and item.description


def test_pyproject_installs_experiments_as_package_data() -> None:
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setup["package-dir"]["losslab.experiments"] == "experiments"
    assert "losslab.experiments" in setup["packages"]
    assert setup["package-data"]["losslab.experiments"] == ["*.yaml"]


@pytest.mark.parametrize("ref", ["bce_vs_dice", "bce_vs_dice.yaml", "experiments/bce_vs_dice.yaml"])
def test_a_shipped_name_resolves_from_any_directory(ref, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = resolve_experiment(ref)
    assert path.is_file() and path.read_bytes() == (ROOT / "experiments" / "bce_vs_dice.yaml").read_bytes()


def test_a_path_wins_over_a_shipped_name(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "bce_vs_dice.yaml"
    mine.write_text("name: mine\n")
    assert resolve_experiment("bce_vs_dice.yaml") == Path("bce_vs_dice.yaml")
    assert resolve_experiment(str(mine)) == mine


def test_an_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    names = r"shipped names: bce_vs_dice, depth_losses, mask_gt_noise, tune_loss_weights"
    with pytest.raises(ExperimentNotFound, match=r"bce_vs_dise: .*" + names):
        resolve_experiment("bce_vs_dise")
    with pytest.raises(ExperimentNotFound):
        resolve_experiment("elsewhere/bce_vs_dice.yaml")  # a path with a folder is a path, not a name


def test_lab_experiments_lists_names_and_descriptions(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["experiments"])
    assert result.exit_code == 0
    for item in shipped_experiments():
        assert any(line.split()[0] == item.name and line.endswith(item.description)
                   for line in result.output.splitlines() if line.strip())


def test_lab_run_by_name_from_another_directory_reads_the_shipped_file(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # an invalid override stops before any training, naming the shipped file that was read
    result = runner.invoke(app, ["run", "bce_vs_dice", "--set", "train.epochs=0"])
    assert result.exit_code == 2
    assert "bce_vs_dice.yaml" in result.output and "train.epochs" in result.output
    assert "not found" not in result.output
    missing = runner.invoke(app, ["run", "nope"])
    assert missing.exit_code == 2 and "shipped names: bce_vs_dice" in missing.output


def test_lab_version_prints_the_installed_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"losslab {metadata.version('losslab')}"
