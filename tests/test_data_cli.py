"""`lab data generate` and `lab data stats` through the command line (typer's CliRunner).

Bad input is exercised with real files: one bad file costs only itself, a
run that can produce nothing fails with the files named. Statistics are
checked against numpy on the same samples.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from losslab.core.cli.data_commands import data_app, parse_params
from losslab.core.data.readers import dataset_bytes, open_dataset
from losslab.core.data.sources import SyntheticSources
from losslab.plugins.ground_truth import ModelDepth

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(data_app, [str(a) for a in args])


def _folders(root: Path) -> tuple[Path, Path]:
    """Two good bgs (one small), one corrupt bg; one good fg, one without alpha, one empty file."""
    sources = SyntheticSources(2, 1, size=150)
    bg_dir, fg_dir = root / "bg", root / "fg"
    bg_dir.mkdir(parents=True)
    fg_dir.mkdir(parents=True)
    cv2.imwrite(str(bg_dir / "a.jpg"), cv2.cvtColor(sources.bg(0), cv2.COLOR_RGB2BGR))
    (bg_dir / "b.jpg").write_bytes(b"\xff\xd8 broken")
    cv2.imwrite(str(bg_dir / "c.jpg"), cv2.resize(cv2.cvtColor(sources.bg(1), cv2.COLOR_RGB2BGR), (48, 48)))
    Image.fromarray(sources.fg(0), mode="RGBA").save(fg_dir / "a.png")
    Image.fromarray(sources.fg(0)[..., :3], mode="RGB").save(fg_dir / "b.png")
    (fg_dir / "c.png").write_bytes(b"")
    return bg_dir, fg_dir


def test_generate_then_stats_match_numpy(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = invoke("generate", "--synthetic", 2, 2, "--image-size", 64, "--out", out, "--workers", 2)
    assert result.exit_code == 0, result.output
    assert "160 samples (seed layout)" in result.output and "KB per sample" in result.output

    result = invoke("stats", out, "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    samples = open_dataset(out)
    arrays = samples.get(range(len(samples)))
    assert stats["count"] == 160 and stats["n_bg"] == 2 and stats["n_fg"] == 2 and stats["examined"] == 160
    for key in ("fg_bg", "bg"):
        pixels = arrays[key].reshape(-1, 3).astype(np.float64)
        np.testing.assert_allclose(stats[f"{key}_mean"], pixels.mean(axis=0), rtol=1e-9)
        np.testing.assert_allclose(stats[f"{key}_std"], pixels.std(axis=0), rtol=1e-6)
    coverage = arrays["mask"].reshape(160, -1).mean(axis=1)
    assert stats["mask_coverage_mean"] == pytest.approx(coverage.mean())
    assert stats["mask_coverage_min"] == pytest.approx(coverage.min())
    assert stats["depth_min"] == pytest.approx(arrays["depth"].min())
    assert stats["depth_max"] == pytest.approx(arrays["depth"].max())
    assert stats["depth_p50"] == pytest.approx(np.median(arrays["depth"]), abs=0.001)
    assert stats["bytes_per_sample"] == pytest.approx(dataset_bytes(out) / 160)

    table = invoke("stats", out, "--limit", 10, "--no-progress")
    assert table.exit_code == 0 and "statistics over 10 evenly spaced" in table.output
    assert "mask coverage" in table.output and "KB per sample" in table.output


def test_shards_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    result = invoke("generate", "--synthetic", 2, 1, "--image-size", 64, "--out", out, "--layout", "shards",
                    "--chunk-size", 30, "--no-progress")
    assert result.exit_code == 0, result.output
    assert len(list((out / "shards").glob("shard_*.npz"))) == 3
    stats = json.loads(invoke("stats", out, "--json").output)
    assert stats["layout"] == "shards" and stats["count"] == 80


def test_bad_files_are_skipped_and_listed(tmp_path: Path) -> None:
    bg_dir, fg_dir = _folders(tmp_path)
    out = tmp_path / "ds"
    # photos need their geometry stated (these were drawn with the synthetic scenes' default one)
    result = invoke("generate", "--bg-dir", bg_dir, "--fg-dir", fg_dir, "--out", out, "--no-progress",
                    "--depth-param", "horizon=0.3333", "--depth-param", "camera_height=1.6")
    assert result.exit_code == 0, result.output
    assert "skipped 3 file(s)" in result.output
    assert f"{bg_dir / 'b.jpg'}: cannot be decoded" in result.output
    assert f"{fg_dir / 'b.png'}: foreground is RGB without an alpha channel" in result.output
    assert f"{fg_dir / 'c.png'}: the file is empty" in result.output
    assert f"{bg_dir / 'c.jpg'}: bg is 48x48 px, smaller than the largest fg box" in result.output
    samples = open_dataset(out)
    assert len(samples) == 2 * 1 * 40
    assert sorted(set(samples.bg_ids().tolist())) == [0, 2]  # bg indices are the sorted files' positions
    assert (out / "fgbg_3" / "bg3_0_0_fg_1.jpg").is_file() and not (out / "fgbg_2").exists()  # named from 1
    meta = json.loads((out / "dataset.json").read_text())
    assert len(meta["resolved"]["skipped"]) == 3


def test_nothing_to_produce_fails_with_the_files_named(tmp_path: Path) -> None:
    bg_dir, fg_dir = _folders(tmp_path)
    (fg_dir / "a.png").unlink()
    result = invoke("generate", "--bg-dir", bg_dir, "--fg-dir", fg_dir, "--out", tmp_path / "ds")
    assert result.exit_code == 1
    assert "no usable fg image, nothing can be produced" in result.output
    assert str(fg_dir / "b.png") in result.output and str(fg_dir / "c.png") in result.output
    missing = invoke("generate", "--bg-dir", tmp_path / "nowhere", "--fg-dir", fg_dir, "--out", tmp_path / "x")
    assert missing.exit_code == 1 and f"bg folder {tmp_path / 'nowhere'} does not exist" in missing.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--synthetic", "1", "1", "--generator", "random", "--rows", "2"), "are for --generator grid"),
        (("--synthetic", "1", "1", "--gen-param", "rows"), "expected KEY=VALUE"),
        (("--synthetic", "1", "1", "--generator", "grud"), "did you mean 'grid'"),
        (("--synthetic", "1", "1", "--sizes", "60,90"), "sizes must shrink row by row"),
        (("--synthetic", "1", "1", "--rows", "3"), "sizes has 4 entries but rows=3"),
        (("--synthetic", "1", "1", "--layout", "shards", "--depth-format", "jpg8"), "for the seed layout only"),
        (("--synthetic", "1", "1", "--depth", "alpha"), "produces mask, not depth"),
        (("--synthetic", "1", "1", "--depth", "model"), "path"),
        (("--synthetic", "1", "1", "--depth", "model", "--depth-param", f"path={__file__}"), "not a TorchScript"),
        (("--synthetic", "1", "1", "--bg-dir", "x"), "not both"),
        ((), "give --bg-dir and --fg-dir"),
    ],
)
def test_wrong_options_are_explained(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = invoke("generate", "--out", tmp_path / "ds", *args)
    assert result.exit_code == 1, result.output
    assert re.search(message, result.output), result.output


def test_params_are_read_as_yaml() -> None:
    assert parse_params(["per_pair=10", "sizes=[60, 40]", "path=model.pt", "flips=false"], "--gen-param") == {
        "per_pair": 10, "sizes": [60, 40], "path": "model.pt", "flips": False,
    }


def test_model_depth_end_to_end(tmp_path: Path) -> None:
    net = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0 / 3.0)
    path = tmp_path / "gray.pt"
    torch.jit.script(net).save(str(path))
    out = tmp_path / "ds"
    result = invoke("generate", "--synthetic", 1, 1, "--image-size", 64, "--out", out, "--no-progress",
                    "--depth", "model", "--depth-param", f"path={path}", "--depth-param", "scale=10",
                    "--workers", 2, "--chunk-size", 20)
    assert result.exit_code == 0, result.output
    samples = open_dataset(out)
    from losslab.core.data.datasets import VirtualSamples
    from losslab.plugins.generators import GridGenerator
    from losslab.plugins.ground_truth import AlphaMask

    recipes = GridGenerator().recipes([0], [0], (64, 64))
    virtual = VirtualSamples(SyntheticSources(1, 1, size=64), recipes, AlphaMask(), ModelDepth(str(path), scale=10.0))
    np.testing.assert_allclose(samples.get(range(40))["depth"], virtual.get(range(40))["depth"], atol=0.0005 + 1e-6)
