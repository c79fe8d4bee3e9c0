"""Hostile files and hard inputs (issue 14): each case as a careless user or an attacker would try it.

Every test reproduces one hole the fault-injection pass found and checks the
behaviour that replaces it: a message in the tool's format (what, where, how to
fix), no write outside its root, nothing that hangs or eats memory, nothing
left RUNNING in MLflow. Cases that could hang if they regressed (FIFOs) run
under a time limit, so a regression fails instead of blocking the suite.
(Checkpoint cases live in ``test_checkpoints.py``.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from losslab.core.cli.main import app
from losslab.core.config import ConfigError, load_experiment, load_yaml
from losslab.core.data.formats import DatasetError
from losslab.core.data.sources import FolderSources, SourceError, SyntheticSources, read_rgb, read_rgba
from losslab.core.paths import UnsafePathError, check_out_dir, safe_join
from tests.conftest import TINY, write_experiment

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def _lab(*args: Any):
    return runner.invoke(app, [str(a) for a in args])


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it has not returned in time."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (blocked on a FIFO?)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _big_png(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit grayscale PNG of side x side pixels in about 50 KB (OpenCV decodes it to 8 bits a pixel)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compressobj(1)
    block = (b"\x00" + bytes((side + 7) // 8)) * 500
    tail = (b"\x00" + bytes((side + 7) // 8)) * (side % 500)
    body = b"".join(rows.compress(block) for _ in range(side // 500)) + rows.compress(tail) + rows.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def _folders(root: Path, n_bg: int = 3) -> tuple[Path, Path]:
    sources = SyntheticSources(n_bg, 1, size=64)
    bg_dir, fg_dir = root / "bgs", root / "fgs"
    bg_dir.mkdir(parents=True)
    fg_dir.mkdir(parents=True)
    for i in range(n_bg):
        cv2.imwrite(str(bg_dir / f"b{i}.jpg"), cv2.cvtColor(sources.bg(i), cv2.COLOR_RGB2BGR))
        geo = sources.geometry(i)  # photos need their geometry stated: these were drawn with this one
        (bg_dir / f"b{i}.geometry.json").write_text(json.dumps(
            {"horizon": geo.horizon, "camera_height": geo.camera_height, "wall_depth": geo.wall_depth}))
    cv2.imwrite(str(fg_dir / "f0.png"), cv2.cvtColor(sources.fg(0), cv2.COLOR_RGBA2BGRA))
    return bg_dir, fg_dir


def _runs(uri: str, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return list(client.search_runs([found.experiment_id])) if found else []


_START = """
import os, sys, time
import mlflow.tracking  # the slow import first, so both processes reach the store at the same instant
from losslab.core.experiment.tracking import Tracker
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.002)
tracker = Tracker(sys.argv[1])
print(tracker.start_run("race", "r", {}), flush=True)
"""


@pytest.fixture(scope="module")
def race(tmp_path_factory) -> tuple[str, list[tuple[int, str, str]]]:
    """Two processes starting at once on a fresh ``mlflow.db``: the store, and each one's (code, stdout, stderr).

    The tests that create runs then share this store (each in its own experiment), so MLflow's
    migrations, slow on a loaded machine, run once for the whole module.
    """
    folder = tmp_path_factory.mktemp("store")
    uri, go = f"sqlite:///{folder / 'mlflow.db'}", folder / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", _START, uri, str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]  # type: ignore[union-attr]
    go.touch()  # both create the tables and run the migrations now, where alembic used to race
    outs = [p.communicate(timeout=120) for p in procs]
    return uri, [(p.returncode, out, err) for p, (out, err) in zip(procs, outs, strict=True)]


@pytest.fixture(scope="module")
def store(race) -> str:
    return race[0]


# -- 2. names that become paths ----------------------------------------------------------------------------


def test_set_name_with_dot_dot_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    exp = write_experiment(tmp_path / "e.yaml")
    result = _lab("run", exp, "--set", "name=../../escape", "--runs-dir", tmp_path / "runs",
                  "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert result.exit_code == 2, result.output
    assert "name: a name must not hold a path separator" in result.output and "use e.g. 'escape'" in result.output
    assert "found '../../escape'" in result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path.parent / "escape").exists()


def test_absolute_experiment_name_is_refused(tmp_path: Path) -> None:
    exp = write_experiment(tmp_path / "e.yaml", name=str(tmp_path / "abs"))
    with pytest.raises(ConfigError, match=r"name: a name must not be an absolute path, since it names a folder"):
        load_experiment(exp)


def test_variant_name_with_separators_is_refused(tmp_path: Path) -> None:
    exp = write_experiment(tmp_path / "e.yaml", variants={"x/../../../../y": {}, "b": {}})
    with pytest.raises(ConfigError) as info:
        load_experiment(exp)
    assert "variants.x/../../../../y: variant: a name must not hold a path separator" in str(info.value)
    assert "use e.g. 'x_y'" in str(info.value)


@pytest.mark.parametrize("name", ["a..b", "caf\u00e9", ".hidden", "a b", "x" * 129])
def test_names_outside_the_safe_set_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"name: a name (must not|uses only|has at most)"):
        load_experiment(write_experiment(tmp_path / "e.yaml", name=name))


def test_study_name_is_checked_and_the_tune_folder_stays_under_the_runs_root(tmp_path: Path) -> None:
    from losslab.core.experiment.tuning.options import TuneOptions
    from losslab.core.experiment.tuning.study import StudyError
    from losslab.core.experiment.tuning.worker import run_tune

    exp = write_experiment(tmp_path / "e.yaml", search={"params": {"train.lr": {"low": 0.001, "high": 0.1}}})
    with pytest.raises(StudyError, match=r"study name '\.\./\.\./x': use letters, digits"):
        run_tune(exp, TuneOptions(trials=1, study="../../x", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert not (tmp_path / "mlflow.db").exists()


def test_plugin_name_that_is_a_path_is_refused(tmp_path: Path) -> None:
    from losslab.core.cli.main import app as lab_app

    result = runner.invoke(lab_app, ["new", "plugin", "../../evil", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "plugin name '../../evil' is not usable: use lowercase letters" in result.output
    assert list(tmp_path.iterdir()) == []


def test_safe_join_refuses_a_path_that_leaves_its_root(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "exp", "run1") == tmp_path / "exp" / "run1"
    for parts in (("..", "x"), ("a/../../x",), ("/etc",)):
        with pytest.raises(UnsafePathError, match=r"outside .*; use plain names"):
            safe_join(tmp_path, *parts)


# -- 3. inputs that hang or exhaust memory -----------------------------------------------------------------


def test_fifo_in_a_bg_folder_is_skipped_by_data_generate(tmp_path: Path) -> None:
    bg_dir, fg_dir = _folders(tmp_path)
    os.mkfifo(bg_dir / "pipe.jpg")
    result = _within(60, lambda: _lab("data", "generate", "--bg-dir", bg_dir, "--fg-dir", fg_dir, "--out",
                                      tmp_path / "ds", "--image-size", "32", "--no-progress", "--workers", "1"))
    assert result.exit_code == 0, result.output
    assert f"{bg_dir / 'pipe.jpg'}: is a FIFO (named pipe), not a regular image file" in result.output
    assert "move it out of the folder" in result.output
    assert sorted(p.name for p in (tmp_path / "ds" / "bg").iterdir()) == ["bg_1.jpg", "bg_2.jpg", "bg_3.jpg"]


def test_symlink_to_dev_zero_is_refused_without_reading_it(tmp_path: Path) -> None:
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")
    with pytest.raises(SourceError, match=r"zero\.jpg: is a character device \(a symlink to /dev/zero\), not a "
                                          r"regular image file"):
        _within(10, lambda: read_rgb(link))


def test_socket_named_like_an_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.png"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(SourceError, match=r"s\.png: is a socket, not a regular image file"):
            read_rgba(path)


def test_png_declaring_20000_x_20000_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    path = _big_png(tmp_path / "huge.png")
    assert path.stat().st_size < 2_000_000
    start = time.perf_counter()
    with pytest.raises(SourceError, match=r"huge\.png: 20000 x 20000 = 400000000 pixels, more than the "
                                          r"64000000-pixel cap .*LOSSLAB_MAX_IMAGE_PIXELS"):
        read_rgb(path)
    assert time.perf_counter() - start < 1.0  # the header was read, nothing decoded


def test_pixel_and_byte_caps_are_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "b.png"
    cv2.imwrite(str(path), np.full((40, 50, 3), 7, np.uint8))
    assert read_rgb(path).shape == (40, 50, 3)
    monkeypatch.setenv("LOSSLAB_MAX_IMAGE_PIXELS", "1999")
    with pytest.raises(SourceError, match=r"b\.png: 50 x 40 = 2000 pixels, more than the 1999-pixel cap"):
        read_rgb(path)
    monkeypatch.delenv("LOSSLAB_MAX_IMAGE_PIXELS")
    monkeypatch.setenv("LOSSLAB_MAX_IMAGE_BYTES", "100")
    size = path.stat().st_size
    with pytest.raises(SourceError, match=rf"b\.png: {size} bytes, more than the 100-byte cap .*raise "
                                          "LOSSLAB_MAX_IMAGE_BYTES"):
        read_rgb(path)


def test_jpeg_header_dimensions_are_read_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "b.jpg"
    cv2.imwrite(str(path), np.zeros((30, 70, 3), np.uint8))
    monkeypatch.setenv("LOSSLAB_MAX_IMAGE_PIXELS", "2099")
    with pytest.raises(SourceError, match=r"b\.jpg: 70 x 30 = 2100 pixels"):
        read_rgb(path)


def test_fifo_in_a_generated_dataset_does_not_block_the_reader(tmp_path: Path) -> None:
    from losslab.core.data.generate import GenerationPlan, InputSpec, generate
    from losslab.core.data.readers import open_dataset

    generate(GenerationPlan(InputSpec.synthetic(2, 1, image_size=32)), tmp_path / "ds", workers=1,
             progress=False, log=lambda _m: None)
    target = tmp_path / "ds" / "fgbg_1" / "bg1_0_0_fg_1.jpg"
    target.unlink()
    os.mkfifo(target)
    samples = open_dataset(tmp_path / "ds")
    index = next(i for i in range(len(samples)) if samples.recipe(i).stem == "bg1_0_0_fg_1")
    with pytest.raises(DatasetError, match=r"bg1_0_0_fg_1\.jpg: is a FIFO \(named pipe\)"):
        _within(10, lambda: samples.get([index]))


def test_yaml_alias_bomb_under_search_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["name: bomb", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    lines.append("search: {params: *a8}")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb\.yaml: a\d: expands to more than 100000 YAML nodes .*"
                                          "LOSSLAB_YAML_MAX_NODES"):
        load_yaml(path)
    assert time.perf_counter() - start < 5


def test_yaml_alias_bomb_under_train_epochs_is_a_config_error(tmp_path: Path) -> None:
    lines = ["name: bomb", "l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 7)]
    lines.append("train: {epochs: *l6}")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    result = _lab("run", path)
    assert result.exit_code == 2 and "expands to more than 100000 YAML nodes" in result.output


def test_a_large_found_value_is_shown_cut_short(tmp_path: Path) -> None:
    path = write_experiment(tmp_path / "e.yaml", train={"epochs": [[i] * 50 for i in range(200)]})
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    (line,) = [p for p in str(info.value).splitlines() if "train.epochs" in p]
    assert "found [[0, 0, 0, 0, 0, 0, 0, 0, ...]" in line and len(line) < 400


def test_duplicate_yaml_key_is_refused_with_its_path_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("name: dup\ntrain:\n  epochs: 1\n  lr: 0.1\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: train\.epochs: duplicate key at line 5 \(first at line 3\); "
                                          "YAML would keep only the last one"):
        load_yaml(path)
    path.write_text("name: dup\ntrain:\n  epochs: 1\n  epochs: 3\nloss:\n  mask: []\nloss:\n  depth: []\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert str(info.value).splitlines()[1:] == [
        "  - loss: duplicate key at line 7 (first at line 5); YAML would keep only the last one: merge the two "
        "blocks or rename one",
        "  - train.epochs: duplicate key at line 4 (first at line 3); YAML would keep only the last one: merge the "
        "two blocks or rename one"]


# -- 4. tracebacks where a message belongs -----------------------------------------------------------------


def test_out_that_is_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    result = _lab("data", "generate", "--synthetic", "2", "1", "--out", tmp_path / "taken")
    assert result.exit_code == 1 and f"--out {tmp_path / 'taken'} is a file, not a folder" in result.output
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
    result = _lab("predict", "--bg", img, "--fg-bg", img, "--out", tmp_path / "taken", "--checkpoint", img)
    assert result.exit_code == 2 and "is a file, not a folder; pass a folder path" in result.output
    assert (tmp_path / "taken").read_text() == "x"


def test_out_that_lies_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    below = tmp_path / "taken" / "sub" / "out"
    with pytest.raises(UnsafePathError, match=rf"--out {below} lies below {tmp_path / 'taken'}, which is a file"):
        check_out_dir(below)
    result = runner.invoke(app, ["report", "some-experiment", "--out", str(below)])
    assert result.exit_code == 1 and "which is a file, not a folder" in result.output
    result = runner.invoke(app, ["new", "plugin", "focal-edge", "--out", str(below)])
    assert result.exit_code == 2 and "which is a file, not a folder" in result.output
    result = _lab("run", write_experiment(tmp_path / "e.yaml"), "--runs-dir", below)
    assert result.exit_code == 2 and f"--runs-dir {below} lies below" in result.output


def test_non_utf8_experiment_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: tiny\ndescription: caf\xe9\n")
    result = _lab("run", path)
    assert result.exit_code == 2
    assert "latin1.yaml: not UTF-8 text (byte 0xe9 at line 2); save the file as UTF-8" in result.output


def test_unknown_tracking_uri_scheme(tmp_path: Path) -> None:
    exp = write_experiment(tmp_path / "e.yaml")
    result = _lab("run", exp, "--tracking-uri", "foo://bar", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2, result.output
    assert "tracking URI 'foo://bar': unknown scheme 'foo'; use sqlite:///" in result.output
    assert "Traceback" not in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_tracking_uri_fails_fast(tmp_path: Path) -> None:
    exp = write_experiment(tmp_path / "e.yaml")
    start = time.perf_counter()
    result = _lab("run", exp, "--tracking-uri", f"http://127.0.0.1:{_free_port()}", "--runs-dir", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert "no MLflow server answered within 5 s" in result.output and "LOSSLAB_TRACKING_TIMEOUT" in result.output
    assert time.perf_counter() - start < 15


def test_tracking_server_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from losslab.core.experiment.tracking import Tracker, TrackingError

    monkeypatch.setenv("LOSSLAB_TRACKING_TIMEOUT", "0.5")
    with socket.socket() as silent:  # accepts connections (backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        start = time.perf_counter()
        with pytest.raises(TrackingError, match=r"no MLflow server answered within 0\.5 s"):
            Tracker(f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert time.perf_counter() - start < 5


# -- 5. orphans and races ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "unfinished"])
def test_bad_dataset_fails_before_any_mlflow_run(tmp_path: Path, case: str) -> None:
    path = tmp_path / "ds"
    if case == "unfinished":
        (path / ".progress").mkdir(parents=True)
    exp = write_experiment(tmp_path / "e.yaml", data={"source": {"kind": "dataset", "path": str(path)}})
    result = _lab("run", exp, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--runs-dir", tmp_path / "r")
    assert result.exit_code == 2, result.output
    expected = "no such dataset folder" if case == "missing" else "generation did not finish; complete it"
    assert f"data.source.path: {path}: {expected}" in result.output
    assert not (tmp_path / "mlflow.db").exists()  # no store opened, so no run left RUNNING


def test_failure_after_runs_exist_ends_them_failed_with_the_reason(tmp_path: Path, monkeypatch, store) -> None:
    from losslab.core.experiment.runner import run_experiment
    from losslab.core.train import trainer

    class DiskVanished(Exception):
        pass

    def fit(self, resume: bool = False):
        raise DiskVanished("the runs folder went away")

    monkeypatch.setattr(trainer.Trainer, "fit", fit)
    with pytest.raises(DiskVanished):
        run_experiment(write_experiment(tmp_path / "e.yaml", name="vanished"), tracking_uri=store,
                       runs_dir=tmp_path / "r", echo=lambda _m: None)
    runs = _runs(store, "vanished")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FAILED"}
    for run in runs:
        assert run.data.tags["losslab.status"] == "failed"
        assert run.data.tags["losslab.error"] == "DiskVanished: the runs folder went away"


def test_fifo_in_a_folder_source_of_lab_run_is_skipped(tmp_path: Path, store: str) -> None:
    bg_dir, fg_dir = _folders(tmp_path, n_bg=4)
    os.mkfifo(bg_dir / "pipe.jpg")
    data = {**TINY["data"], "source": {"kind": "folders", "bg_dir": str(bg_dir), "fg_dir": str(fg_dir), "size": 64}}
    exp = write_experiment(tmp_path / "e.yaml", name="fifo", data=data, train={"epochs": 1})
    result = _within(120, lambda: _lab("run", exp, "--tracking-uri", store, "--runs-dir", tmp_path / "r",
                                       "--no-report"))
    assert result.exit_code == 0, result.output
    assert f"{bg_dir / 'pipe.jpg'}: is a FIFO (named pipe), not a regular image file" in result.output
    assert {r.info.status for r in _runs(store, "fifo")} == {"FINISHED"}


def test_two_processes_starting_at_once_on_a_fresh_store(race) -> None:
    uri, outcomes = race
    for code, out, err in outcomes:
        assert code == 0, err
        assert len(out.strip()) == 32  # a run id
    assert len(_runs(uri, "race")) == 2


def test_lab_ui_exits_non_zero_when_the_port_is_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: Any) -> None:
        raise AssertionError("lab ui tried to start MLflow on a busy port")

    monkeypatch.setattr(os, "execvp", never)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["ui", "--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot serve the MLflow UI on 127.0.0.1:{port}" in result.output and "pass --port N" in result.output


# -- 6. the tool's own files fit together ------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_dataset(tmp_path_factory) -> Path:
    from losslab.core.data.generate import GenerationPlan, InputSpec, generate

    out = tmp_path_factory.mktemp("seed") / "ds"
    generate(GenerationPlan(InputSpec.synthetic(3, 2, image_size=32)), out, workers=1, progress=False,
             log=lambda _m: None)
    return out


def test_seed_layout_numbers_from_one_as_documented(seed_dataset: Path) -> None:
    assert sorted(p.name for p in seed_dataset.glob("fgbg_*")) == ["fgbg_1", "fgbg_2", "fgbg_3"]
    assert sorted(p.name for p in (seed_dataset / "bg").iterdir()) == ["bg_1.jpg", "bg_2.jpg", "bg_3.jpg"]
    names = {p.name for p in (seed_dataset / "fgbg_3").iterdir()}
    assert "bg3_0_2_flip_fg_2.jpg" in names and not any("fg_0" in n for n in names)
    rows = [json.loads(line) for line in (seed_dataset / "manifest.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["name"] == "bg3_0_2_flip_fg_2")
    assert (row["bg"], row["fg"], row["flip"]) == (2, 1, True)  # recipes keep 0-based indices
    assert json.loads((seed_dataset / "dataset.json").read_text())["name_base"] == 1


def test_reader_accepts_a_seed_layout_numbered_from_zero(seed_dataset: Path, tmp_path: Path) -> None:
    """A dataset written before names counted from 1: same files, names one lower, no name_base."""
    from losslab.core.data.readers import open_dataset

    old = tmp_path / "old"
    shutil.copytree(seed_dataset, old)
    meta = json.loads((old / "dataset.json").read_text())
    del meta["name_base"]
    (old / "dataset.json").write_text(json.dumps(meta))
    one_lower = lambda m: f"{m[1]}{int(m[2]) - 1}{m[3]}{int(m[4]) - 1}"  # noqa: E731
    for path in sorted(old.glob("*fgbg_*/*")):
        path.rename(path.with_name(re.sub(r"^(\w*?bg)(\d+)(_.*fg_)(\d+)", one_lower, path.name)))
    for path in sorted((old / "bg").iterdir()):
        path.rename(path.with_name(re.sub(r"\d+", lambda m: str(int(m[0]) - 1), path.name)))
    for folder in sorted(old.glob("*fgbg_*")):
        head, number = folder.name.rsplit("_", 1)
        folder.rename(folder.with_name(f"{head}_{int(number) - 1}"))
    assert (old / "fgbg_2" / "bg2_0_2_flip_fg_1.jpg").is_file() and (old / "bg" / "bg_0.jpg").is_file()
    new, zero = open_dataset(seed_dataset), open_dataset(old)
    every = list(range(len(new)))
    for key, value in new.get(every).items():
        np.testing.assert_array_equal(zero.get(every)[key], value)


def test_predict_pairs_the_seed_layout_it_wrote(seed_dataset: Path) -> None:
    from losslab.core.experiment.predict import _pairs

    pairs = _pairs(seed_dataset / "bg", seed_dataset / "fgbg_2")
    assert len(pairs) == len(list((seed_dataset / "fgbg_2").iterdir())) > 0
    assert {bg.name for bg, _ in pairs} == {"bg_2.jpg"}
    assert all(fg_bg.name.startswith("bg2_") for _, fg_bg in pairs)


def test_predict_pairs_bg_k_jpg_with_zero_based_names(tmp_path: Path) -> None:
    from losslab.core.experiment.predict import PredictError, _pairs

    (tmp_path / "bg").mkdir()
    (tmp_path / "fgbg_0").mkdir()
    for name in ("bg/bg_0.jpg", "bg/bg_1.jpg", "fgbg_0/bg0_1_2_fg_0.jpg", "fgbg_0/bg0_x3_y4_s20_flip_fg_1.jpg"):
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8, 3), np.uint8))
    pairs = _pairs(tmp_path / "bg", tmp_path / "fgbg_0")
    assert [(b.name, f.name) for b, f in pairs] == [("bg_0.jpg", "bg0_1_2_fg_0.jpg"),
                                                    ("bg_0.jpg", "bg0_x3_y4_s20_flip_fg_1.jpg")]
    cv2.imwrite(str(tmp_path / "fgbg_0" / "bg7_0_0_fg_0.jpg"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(PredictError, match=r"no bg found for bg7_0_0_fg_0\.jpg .*bg_K\.jpg"):
        _pairs(tmp_path / "bg", tmp_path / "fgbg_0")


def test_folder_sources_report_every_unusable_file_by_name(tmp_path: Path) -> None:
    bg_dir, fg_dir = _folders(tmp_path)
    os.mkfifo(bg_dir / "pipe.jpg")
    (bg_dir / "zero.jpg").symlink_to("/dev/zero")
    _big_png(bg_dir / "huge.png", side=9000)
    check = _within(20, lambda: FolderSources(bg_dir, fg_dir, size=64).check())
    skipped = {Path(p.path).name: p.message for p in check.skipped}
    assert set(skipped) == {"pipe.jpg", "zero.jpg", "huge.png"}
    assert "9000 x 9000 = 81000000 pixels" in skipped["huge.png"] and skipped["huge.png"].endswith("; skipped")
    assert len(check.bg_ids) == 3  # the good ones keep their sorted-order indices
