"""Training label noise (core/experiment/label_noise.py) and the validation mask truth (data.ground_truth.val_mask)."""

from __future__ import annotations

import numpy as np
import pytest

from losslab.core.config import ConfigError, resolve_variants
from losslab.core.experiment.label_noise import (
    ALL,
    LabelNoise,
    count_errors,
    describe,
    measure_label_noise,
    percent,
    study_label_noise,
)
from losslab.core.plugin.manager import load_catalog


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def hand_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8 x 8, band 1 px. True fg: rows 2-5, cols 2-5 (16 px). Dilated by 1: rows/cols 1-6 (36 px); eroded
    by 1: rows/cols 3-4 (4 px) = the fg interior; boundary band = 36 - 4 = 32 px. Background (28 px):
    depth 50 m on rows 0-3 (the far plane: row 0, 8 px, and cols 0 and 7 of rows 1-3, 6 px: wall-sky 14 px)
    and 20-35 m on rows 4-7 (cols 0 and 7 of rows 4-6, 6 px, and row 7, 8 px: ground 14 px).

    The noisy labels are wrong at: (3, 3) in the interior (fg 1 of 4); (2, 2) missed and (1, 1) added
    (boundary 2 of 32); (0, 0) added (wall-sky 1 of 14); (7, 7) and (7, 0) added (ground 2 of 14): 6 of 64.
    """
    truth = np.zeros((1, 8, 8), np.uint8)
    truth[0, 2:6, 2:6] = 1
    depth = np.zeros((1, 8, 8), np.float32)
    depth[0, :4] = 50.0
    depth[0, 4:] = np.array([20.0, 25.0, 30.0, 35.0])[:, None]
    noisy = truth.copy()
    noisy[0, 3, 3] = 0
    noisy[0, 2, 2] = 0
    for r, c in ((1, 1), (0, 0), (7, 7), (7, 0)):
        noisy[0, r, c] = 1
    return noisy, truth, depth


def test_error_counts_per_region_match_the_hand_count():
    noisy, truth, depth = hand_scene()
    wrong, pixels = count_errors(noisy, truth, depth)
    assert pixels == {ALL: 64, "fg": 4, "boundary": 32, "ground": 14, "wall-sky": 14}
    assert wrong == {ALL: 6, "fg": 1, "boundary": 2, "ground": 2, "wall-sky": 1}
    noise = LabelNoise("diff", "diff", "alpha", 1, 10, 8, wrong, pixels)
    assert noise.rates() == {ALL: 6 / 64, "fg": 0.25, "boundary": 2 / 32, "ground": 2 / 14, "wall-sky": 1 / 14}
    assert noise.metrics()["labelnoise/diff/boundary"] == pytest.approx(0.0625)
    assert describe(noise) == ("diff labels 9.4% of training pixels wrongly against alpha: 25% of the fg interior, "
                               "6.2% of the boundary band, 14% of the ground, 7.1% of the wall or sky (1 of 10 "
                               "training images at 8 px)")


def test_identical_labels_have_no_errors_and_shapes_must_agree():
    _, truth, depth = hand_scene()
    wrong, _ = count_errors(truth, truth, depth)
    assert set(wrong.values()) == {0}
    with pytest.raises(ValueError, match="one \\(N, H, W\\) shape"):
        count_errors(truth[:, :4], truth, depth)


def test_percent_keeps_two_significant_digits():
    assert [percent(x) for x in (0.031, 0.23, 0.0004, 0.0, float("nan"))] == ["3.1%", "23%", "0.04%", "0%", "n/a"]


def tiny(**ground_truth) -> dict:
    return {"name": "t", "seeds": [0],
            "data": {"source": {"kind": "synthetic", "n_bg": 5, "n_fg": 2, "seed": 0, "size": 64},
                     "image_size": 32, "val_split": 0.2, "ground_truth": ground_truth},
            "train": {"epochs": 1, "batch_size": 4, "device": "cpu"}}


def study(**variants) -> dict:
    raw = tiny(mask={"name": "alpha"}, val_mask={"name": "alpha"})
    raw["variants"] = variants
    return raw


def messages(raw: dict, catalog) -> str:
    with pytest.raises(ConfigError) as err:
        resolve_variants(raw, catalog=catalog)
    return str(err.value)


def test_val_mask_is_checked_like_every_component(catalog):
    text = messages(tiny(val_mask={"name": "alhpa"}), catalog)
    assert "data.ground_truth.val_mask.name: unknown ground_truth 'alhpa'; did you mean 'alpha'?" in text
    text = messages(tiny(val_mask={"name": "ground-plane"}), catalog)
    assert "data.ground_truth.val_mask.name: ground truth 'ground-plane' produces depth, not mask" in text
    text = messages(tiny(val_mask={"name": "alpha", "params": {"treshold": 0.4}}), catalog)
    assert "data.ground_truth.val_mask.params.treshold: unknown parameter; did you mean 'threshold'?" in text
    text = messages(tiny(val_masks={"name": "alpha"}), catalog)
    assert "data.ground_truth.val_masks: unknown key; did you mean 'val_mask' or 'mask'?" in text


def test_val_mask_needs_recipes_not_a_stored_dataset(catalog):
    raw = tiny(val_mask={"name": "alpha"})
    raw["data"]["source"] = {"kind": "dataset", "path": "somewhere"}
    text = messages(raw, catalog)
    assert "data: ground_truth.val_mask relabels the held-out split" in text
    assert "source kind 'dataset' reads the masks stored when it was generated" in text


def test_variants_scored_on_different_truths_are_refused_with_the_fix(catalog):
    raw = tiny(mask={"name": "alpha"})
    raw["variants"] = {"alpha": {}, "diff": {"data.ground_truth.mask": {"name": "diff"}}}
    text = messages(raw, catalog)
    assert "different held-out mask truths (alpha: alpha; diff: diff)" in text
    assert "set data.ground_truth.val_mask in the base config (e.g. val_mask: {name: alpha})" in text
    resolved = resolve_variants(study(alpha={}, diff={"data.ground_truth.mask": {"name": "diff"}}), catalog=catalog)
    assert [c.data.ground_truth.validation_mask().name for c in resolved] == ["alpha", "alpha"]


def test_held_out_split_and_floors_use_the_validation_truth(catalog):
    from losslab.core.data.datasets import build_samples
    from losslab.core.experiment.floors import measure_floors, study_floors
    from losslab.core.train.builder import build_split

    alpha, diff = resolve_variants(study(alpha={}, diff={"data.ground_truth.mask": {"name": "diff"}}),
                                   catalog=catalog)
    samples, val_samples, train_idx, val_idx = build_split(diff, catalog)
    reference = build_samples(alpha.data, catalog)
    assert np.array_equal(val_samples.get(val_idx[:6])["mask"], reference.get(val_idx[:6])["mask"])
    assert np.array_equal(val_samples.get(val_idx[:6])["fg_bg"], samples.get(val_idx[:6])["fg_bg"])
    trained = samples.get(train_idx[:6])["mask"]
    assert not np.array_equal(trained, reference.get(train_idx[:6])["mask"])  # diff, not alpha, is trained on
    # one set of floors for both variants, fitted and scored against alpha: the same numbers either way
    logged: list = []

    class Tracker:
        def set_tags(self, *args):
            pass

        def log_metrics(self, run_id, values, step):
            logged.append(values)

    floors = study_floors([alpha, diff], catalog, Tracker(), "p", lambda _: None)
    assert floors is not None
    assert floors.metrics() == measure_floors(alpha, catalog).metrics() == measure_floors(diff, catalog).metrics()


def test_label_noise_counts_every_sampled_pixel_once_and_is_logged(catalog):
    alpha, diff = resolve_variants(study(alpha={}, diff={"data.ground_truth.mask": {"name": "diff"}}),
                                   catalog=catalog)
    assert measure_label_noise(alpha, catalog) is None
    noise = measure_label_noise(diff, catalog, limit=12)
    assert noise is not None and noise.n_images == 12 and noise.image_size == 32
    assert noise.pixels[ALL] == 12 * 32 * 32
    assert sum(noise.pixels[r] for r in ("fg", "boundary", "ground", "wall-sky")) == noise.pixels[ALL]
    assert sum(noise.wrong[r] for r in ("fg", "boundary", "ground", "wall-sky")) == noise.wrong[ALL] > 0
    logged: dict = {}
    lines: list[str] = []

    class Tracker:
        def log_metrics(self, run_id, values, step):
            logged.update(values)

    records = study_label_noise([alpha, diff], catalog, Tracker(), "p", lines.append)
    assert [r["variant"] for r in records] == ["diff"]
    assert set(logged) == {f"labelnoise/diff/{lv}" for lv in (ALL, "fg", "boundary", "ground", "wall-sky")}
    assert lines[0].startswith("losslab: label noise of diff: diff labels ")
    assert "against alpha" in lines[0]


def test_device_composed_validation_reads_the_validation_truth(catalog):
    """On the device path (run here on the CPU) the held-out batches carry val_mask's labels, training mask's not."""
    import torch

    from losslab.core.data.datasets import BatchLoader
    from losslab.core.train.builder import build_split, device_loaders

    cfg = resolve_variants(tiny(mask={"name": "alpha", "params": {"threshold": 0.9}},
                                val_mask={"name": "alpha", "params": {"threshold": 0.1}}), catalog=catalog)[0]
    samples, val_samples, train_idx, val_idx = build_split(cfg, catalog)
    common = dict(batch_size=8, image_size=32, max_depth=50.0, device=torch.device("cpu"), shuffle=False)
    train, val = BatchLoader(samples, train_idx, **common), BatchLoader(val_samples, val_idx, **common)
    on_train, on_val = device_loaders(True, samples, torch.device("cpu"), train, val, val_samples)
    host_val, device_val = next(iter(val)), next(iter(on_val))
    assert torch.equal(device_val["mask"], host_val["mask"])
    assert not torch.equal(device_val["mask"], train.load(val_idx[:8].tolist())["mask"])  # 0.1 marks more than 0.9
    assert torch.equal(next(iter(on_train))["mask"], next(iter(train))["mask"])
