"""Small things a new user meets: plain progress lines in logs, 1-based epochs, source keys the kind ignores,
and how many backgrounds val_split held out."""

from __future__ import annotations

import copy
import io
import re
import types

import numpy as np
import pytest

from losslab.core.config import ConfigError, dump_yaml, resolve_variants
from losslab.core.data.datasets import describe_split, held_out_count, split_by_bg
from losslab.core.progress import LineProgress, progress_bar
from tests.conftest import TINY


def _with_source(**source):
    raw = copy.deepcopy(TINY)
    raw["data"]["source"] = source
    return raw


@pytest.mark.parametrize(("source", "ignored", "reads"), [
    ({"kind": "folders", "bg_dir": "b", "fg_dir": "f", "path": "data/seed"}, "path", "'dataset'"),
    ({"kind": "dataset", "path": "data/seed", "n_bg": 5}, "n_bg", "'synthetic'"),
    ({"kind": "synthetic", "bg_dir": "b"}, "bg_dir", "'folders'"),
])
def test_a_key_the_source_kind_ignores_is_an_error(source, ignored, reads) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_variants(_with_source(**source), [])
    message = str(info.value)
    assert f"data.source: source kind {source['kind']!r} does not use {ignored}" in message
    assert f"{ignored}: {reads}" in message


def test_a_resolved_config_read_back_stays_valid() -> None:
    import yaml

    for source in ({"kind": "synthetic", "n_bg": 4, "n_fg": 2, "size": 64}, {"kind": "dataset", "path": "d"}):
        (cfg,) = resolve_variants(_with_source(**source), [])
        (again,) = resolve_variants(yaml.safe_load(dump_yaml(cfg)), [])  # every default written out
        assert again == cfg


@pytest.mark.parametrize(("n_bg", "val_split", "expected"), [(4, 0.2, 1), (5, 0.2, 1), (10, 0.25, 2), (4, 0.9, 3),
                                                             (2, 0.01, 1), (24, 0.2, 5)])
def test_held_out_backgrounds_round_and_keep_one_for_training(n_bg, val_split, expected) -> None:
    assert held_out_count(n_bg, val_split) == expected
    samples = types.SimpleNamespace(bg_ids=lambda: np.repeat(np.arange(n_bg), 3))
    _, val_idx = split_by_bg(samples, val_split)
    assert len(np.unique(samples.bg_ids()[val_idx])) == expected


def test_the_split_line_says_how_val_split_rounded() -> None:
    samples = types.SimpleNamespace(bg_ids=lambda: np.repeat(np.arange(4), 10))
    _, val_idx = split_by_bg(samples, 0.2)
    line = describe_split(samples, val_idx, 0.2)
    assert line.startswith("validation holds out 1 of 4 backgrounds (0.2 x 4 = 0.8, rounded to 1); 10 of 40 samples")
    exact = types.SimpleNamespace(bg_ids=lambda: np.repeat(np.arange(5), 2))
    assert "rounded" not in describe_split(exact, split_by_bg(exact, 0.2)[1], 0.2)


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal() -> None:
    buf = io.StringIO()  # not a tty, as a redirected log
    bar = progress_bar(total=10, unit="img", desc="generate seed", file=buf, dynamic_ncols=True, smoothing=0.05)
    assert isinstance(bar, LineProgress)
    bar.interval = 0.0
    for _ in range(10):
        bar.update(1)
    bar.set_postfix({"iou": "0.500"})
    bar.close()
    bar.close()  # a second close writes nothing
    text = buf.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 11 and lines[0].startswith("generate seed: 1/10 img (10%)")
    assert re.match(r"generate seed: 10/10 img \(100%\), [\d.]+ img/s, \d+ s \[iou=0.500\]$", lines[-1])


def test_progress_lines_are_throttled() -> None:
    buf = io.StringIO()
    bar = LineProgress(total=1000, file=buf, interval=3600)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert len(buf.getvalue().splitlines()) == 1  # the final line only


def test_disabled_progress_writes_nothing() -> None:
    buf = io.StringIO()
    bar = progress_bar(total=3, file=buf, disable=True)
    bar.update(3)
    bar.close()
    assert buf.getvalue() == ""


def test_lab_run_counts_epochs_from_one_and_prints_the_split(tmp_path, tracking_uri) -> None:
    from losslab.core.experiment.runner import run_experiment
    from tests.conftest import write_experiment

    said: list[str] = []
    exp = write_experiment(tmp_path / "tiny.yaml", train={"epochs": 2})
    result = run_experiment(exp, [], tracking_uri=tracking_uri, runs_dir=tmp_path / "runs",
                            echo=said.append)
    done = next(m for m in said if " done in " in m)
    best = re.search(r"best epoch (\d+) of 2", done)
    assert best and 1 <= int(best.group(1)) <= 2
    from mlflow.tracking import MlflowClient

    logged = MlflowClient(tracking_uri).get_run(result.children[0].run_id).data.metrics["best/epoch"]
    assert int(best.group(1)) == int(logged) + 1  # MLflow keeps the 0-based step
    assert any("base-s0: validation holds out 1 of 4 backgrounds" in m for m in said)
