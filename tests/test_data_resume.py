"""Interrupted generation: kill -9 and Ctrl-C mid-run, then --resume gives a complete, valid dataset.

The subprocess tests run the real command line in a child process and stop
it once it has finished at least one chunk; every file under a final name
must then decode (none is truncated), and the resumed dataset must hold the
same pixels as the virtual dataset.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from losslab.core.cli.data_commands import data_app
from losslab.core.data.datasets import VirtualSamples
from losslab.core.data.generate import GenerationError, GenerationInterrupted, GenerationPlan, InputSpec, generate
from losslab.core.data.generate import pipeline as runner_module
from losslab.core.data.readers import DatasetError, open_dataset
from losslab.core.data.sources import SyntheticSources
from losslab.plugins.generators import GridGenerator
from losslab.plugins.ground_truth import AlphaMask, GroundPlaneDepth

#: The child needs only the built-in data plugins; blocking the others spares it importing torch.
_BLOCKED = ["losslab.augmentations", "losslab.architectures", "losslab.losses", "losslab.metrics"]
_BLOCKED += [ep.name for ep in metadata.entry_points(group="losslab")]
CHILD_ENV = {**os.environ, "LAB_DISABLE_PLUGINS": ",".join(_BLOCKED)}
CHILD = [sys.executable, "-c", "from losslab.core.cli.data_commands import data_app; data_app()"]
#: Ctrl-C as a terminal delivers it: a shell that starts a job in the background (`cmd &`, CI runners, nohup)
#: makes it ignore SIGINT, and Python keeps an inherited SIG_IGN, so the test restores Python's own handler
INTERRUPTIBLE = [sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "from losslab.core.cli.data_commands import data_app; data_app()"]


def _args(out: Path, n_bg: int, n_fg: int, size: int, *extra: str) -> list[str]:
    return ["generate", "--synthetic", str(n_bg), str(n_fg), "--image-size", str(size), "--image-format", "png",
            "--out", str(out), "--no-progress", *extra]


def _start(args: list[str], child: list[str] = CHILD) -> subprocess.Popen:
    return subprocess.Popen(child + args, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _wait_for_a_chunk(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 120
    progress = out / ".progress"
    while time.monotonic() < deadline:
        if progress.is_dir() and any(p.name.startswith("chunk_") for p in progress.iterdir()):
            return
        if proc.poll() is not None:
            pytest.fail(f"the child ended before its first chunk: {proc.communicate()}")
        time.sleep(0.002)
    pytest.fail("no chunk completed within 120 s")


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of a process group that still run (zombies waiting for init to reap them do not)."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            alive.append(int(entry))
    return alive


def _wait_until_gone(pgid: int) -> None:
    """Every process of the child's session has exited (workers die with their parent)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not _alive_in_group(pgid):
            return
        time.sleep(0.01)
    os.killpg(pgid, signal.SIGKILL)
    pytest.fail("worker processes outlived the killed parent")


def _final_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file() and ".staging" not in p.parts and ".progress" not in p.parts
            and not p.name.startswith(".")]


def _check_complete(out: Path, n_bg: int, n_fg: int, size: int) -> None:
    assert (out / "dataset.json").is_file()
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".")]
    assert leftovers == [], leftovers  # no temp file, no staging or progress folder
    samples = open_dataset(out)
    recipes = GridGenerator().recipes(list(range(n_bg)), list(range(n_fg)), (size, size))
    assert len(samples) == len(recipes)
    virtual = VirtualSamples(SyntheticSources(n_bg, n_fg, size=size), recipes, AlphaMask(), GroundPlaneDepth())
    for start in range(0, len(samples), 120):  # decodes every file, compares every pixel
        indices = range(start, min(len(samples), start + 120))
        got, want = samples.get(indices), virtual.get(indices)
        for key in ("bg", "fg_bg", "mask"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        np.testing.assert_allclose(got["depth"], want["depth"], atol=0.0005 + 1e-6, rtol=0)


@pytest.mark.parametrize("extra", [(), ("--chunk-size", "30")], ids=["staged-per-bg", "file-by-file"])
def test_kill_9_mid_run_then_resume(tmp_path: Path, extra: tuple[str, ...]) -> None:
    n_bg, n_fg, size = 5, 2, 96
    out = tmp_path / "ds"
    args = _args(out, n_bg, n_fg, size, "--workers", "2", *extra)
    proc = _start(args)
    _wait_for_a_chunk(proc, out)
    os.kill(proc.pid, signal.SIGKILL)  # the parent only, as `kill -9 PID` does
    proc.wait()
    _wait_until_gone(proc.pid)
    assert not (out / "dataset.json").exists(), "the run finished before it could be interrupted"
    for path in _final_files(out):  # nothing truncated under a final name, even before --resume
        if path.suffix == ".png":
            assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None, path
    with pytest.raises(DatasetError, match=r"did not finish.*--resume"):
        open_dataset(out)

    result = CliRunner().invoke(data_app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert "chunks already done" in result.output
    _check_complete(out, n_bg, n_fg, size)


def test_ctrl_c_stops_cleanly_then_resume(tmp_path: Path) -> None:
    n_bg, n_fg, size = 5, 2, 96
    out = tmp_path / "ds"
    args = _args(out, n_bg, n_fg, size, "--workers", "2")
    proc = _start(args, INTERRUPTIBLE)
    _wait_for_a_chunk(proc, out)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "--resume" in stderr
    _wait_until_gone(proc.pid)
    result = CliRunner().invoke(data_app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    _check_complete(out, n_bg, n_fg, size)


# -- in-process checks of the rules around resume -------------------------------------------------------


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, chunks: int) -> None:
    """Make the in-process run stop with KeyboardInterrupt after ``chunks`` chunks, as Ctrl-C would."""
    done = []
    original = runner_module.ChunkJob.run

    def run(self, *args, **kwargs):
        if len(done) == chunks:
            raise KeyboardInterrupt
        done.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(runner_module.ChunkJob, "run", run)


def test_resume_gives_the_same_bytes_as_an_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    plan = GenerationPlan(InputSpec.synthetic(3, 2, image_size=64), layout="shards", chunk_size=50)
    whole = generate(plan, tmp_path / "whole", workers=1, progress=False, log=lambda _m: None)
    assert whole.complete
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 2)
        with pytest.raises(GenerationInterrupted, match=r"2 of 5 chunks are complete.*--resume"):
            generate(plan, tmp_path / "cut", workers=1, progress=False, log=lambda _m: None)
    messages: list[str] = []
    report = generate(plan, tmp_path / "cut", workers=1, resume=True, progress=False, log=messages.append)
    assert report.complete and report.resumed_chunks == 2 and report.written == 240 - 100
    assert any("2 of 5 chunks already done" in m for m in messages)
    for name in ("manifest.jsonl", *(f"shards/shard_{k:06d}.npz" for k in range(5))):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_a_fresh_run_refuses_a_used_folder(tmp_path: Path, monkeypatch) -> None:
    plan = GenerationPlan(InputSpec.synthetic(2, 1, image_size=64))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(GenerationError, match="is not empty"):
        generate(plan, tmp_path / "busy", workers=1, progress=False)
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        with pytest.raises(GenerationInterrupted):
            generate(plan, tmp_path / "cut", workers=1, progress=False, log=lambda _m: None)
    with pytest.raises(GenerationError, match="holds an interrupted run; continue it with --resume"):
        generate(plan, tmp_path / "cut", workers=1, progress=False)
    assert generate(plan, tmp_path / "cut", workers=1, resume=True, progress=False, log=lambda _m: None).complete
    with pytest.raises(GenerationError, match="already holds a complete dataset"):
        generate(plan, tmp_path / "cut", workers=1, progress=False)
    again = generate(plan, tmp_path / "cut", workers=1, resume=True, progress=False, log=lambda _m: None)
    assert again.complete and again.written == 0  # nothing left to do


def test_resume_with_other_options_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    args = ["generate", "--synthetic", "2", "1", "--image-size", "64", "--out", str(out), "--no-progress"]
    assert CliRunner().invoke(data_app, args).exit_code == 0
    result = CliRunner().invoke(data_app, [*args, "--jpeg-quality", "80", "--resume"])
    assert result.exit_code == 1
    assert "started with other options" in result.output and "plan.jpeg_quality: was 95, now 80" in result.output
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["resolved"]["plan"]["jpeg_quality"] == 95


def test_a_failing_chunk_costs_only_itself(tmp_path: Path, monkeypatch) -> None:
    from losslab.core.data.generate import layouts

    plan = GenerationPlan(InputSpec.synthetic(3, 1, image_size=64))
    original = layouts.SeedWriter.write_chunk

    def flaky(self, chunk, recipes, producer, whole_bg=False):
        if chunk == 1:
            raise OSError(28, "No space left on device")
        return original(self, chunk, recipes, producer, whole_bg)

    with monkeypatch.context() as patch:
        patch.setattr(layouts.SeedWriter, "write_chunk", flaky)
        report = generate(plan, tmp_path / "ds", workers=1, progress=False, log=lambda _m: None)
    assert not report.complete and report.written == 80
    (failure,) = report.failures
    assert failure.startswith("chunk 1 (bg2_0_0_fg_1...): OSError") and "No space left" in failure
    assert not (tmp_path / "ds" / "dataset.json").exists()
    again = generate(plan, tmp_path / "ds", workers=1, resume=True, progress=False, log=lambda _m: None)
    assert again.complete and again.written == 40 and len(open_dataset(tmp_path / "ds")) == 120
