"""The GPU fast path: a training step that never makes the host wait for the device.

Checked on the CPU with the meta-device audit of ``losslab.core.plugin.host_sync`` (which
finds read-backs, blocking uploads and tensors built from host data without a
GPU), and on CUDA, where there is one, with ``torch.cuda.set_sync_debug_mode``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from losslab.core.config import resolve_variants
from losslab.core.data.device_data import DeviceBatchLoader, DeviceSamples
from losslab.core.device import upload
from losslab.core.plugin.host_sync import DEVICE, autocast_allowed_on_meta, host_round_trips, loss_host_round_trips
from losslab.core.plugin.manager import load_catalog
from losslab.core.train.builder import optimizer_for, scheduler_for
from losslab.core.train.trainer import Trainer

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

STEP = {
    "name": "fast-path",
    "data": {"source": {"kind": "synthetic", "n_bg": 6, "n_fg": 4, "size": 64}, "image_size": 32,
             "train_limit": 48, "val_limit": 24},
    "model": {"name": "unet", "params": {"base_channels": 4, "depth": 2}},
    "augment": [{"name": "geometric"}, {"name": "photometric", "params": {"hue": 0.05}}],
    "train": {"epochs": 1, "batch_size": 8, "progress": False, "num_threads": 1, "grad_clip": 1.0},
    "loss": {"mask": [{"name": "bce", "params": {"pos_weight": 2.0}}, {"name": "dice"}],
             "depth": [{"name": "l1"}, {"name": "ssim"}, {"name": "gradient"}]},
    "metrics": {"mask": ["iou"], "depth": ["rmse"]},
}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture
def meta_autocast():
    """Losses enter ``torch.autocast(device_type=x.device.type)``, which meta has not."""
    with autocast_allowed_on_meta():
        yield


def _on_meta(trainer: Trainer) -> Trainer:
    """Move a CPU-built trainer's parts to the meta device, as the builder puts them on CUDA (data composed there)."""
    parts = trainer.parts
    parts.device = DEVICE
    parts.model.to(DEVICE)
    parts.forward = parts.model
    parts.objective.to(DEVICE)
    parts.metrics = {name: metric.to(DEVICE) for name, metric in parts.metrics.items()}
    parts.optimizer = optimizer_for(parts.cfg.train, parts.model)
    parts.scheduler = scheduler_for(parts.cfg.train, parts.optimizer, 100)
    samples = DeviceSamples(parts.samples, DEVICE)
    parts.train_batches = DeviceBatchLoader(samples, parts.train_loader)
    parts.val_batches = DeviceBatchLoader(samples, parts.val_loader)
    return trainer


def _trainer(catalog, tmp_path, overrides: list[str] | None = None) -> Trainer:
    (cfg,) = resolve_variants(STEP, overrides, catalog)
    return _on_meta(Trainer(cfg, 0, catalog, tmp_path))


def test_the_audit_finds_each_kind_of_round_trip():
    """The audit is worth something only if it reports what it is meant to find."""
    x = torch.ones(4, device=DEVICE)
    with host_round_trips() as audit:
        bool((x > 0).all())                       # read-back
        x.cpu()                                   # read-back
        torch.ones(4).to(DEVICE)                  # blocking upload
        torch.empty(4, device=DEVICE).copy_(torch.ones(4))  # blocking upload
        torch.tensor(2.0, device=DEVICE)          # tensor from host data
        upload(torch.ones(4), DEVICE)             # allowed: the project's queued copy
        x.new_full((), 2.0) * x                   # allowed: device-side work only
    kinds = [r.kind for r in audit.found]
    assert kinds == ["read-back", "read-back", "blocking upload", "blocking upload", "tensor from host data"]
    assert all("test_gpu_fast_path.py" in r.where for r in audit.found), [str(r) for r in audit.found]


def test_a_training_step_never_waits_for_the_device(catalog, tmp_path, meta_autocast):
    """Data composed on the device, both augmentations, five loss terms, clipping, AdamW.

    (Photometric noise draws from a device generator, which meta has not: the CUDA test covers it.)
    """
    trainer = _trainer(catalog, tmp_path)
    trainer.parts.precision = type(trainer.parts.precision)(None, False, True)  # channels_last, as on CUDA
    batches = iter(trainer.parts.train_batches)
    with host_round_trips():  # the first step checks outputs and builds cached operators, once
        trainer.train_step(next(batches), check=False)
    with host_round_trips() as audit:
        for _ in range(2):
            n, values = trainer.train_step(next(batches), check=False)
    assert audit.found == [], "\n".join(map(str, audit.found))
    assert n == 8 and values["loss"].device == DEVICE


def test_the_checked_steps_are_the_only_ones_that_read_back(catalog, tmp_path, meta_autocast):
    trainer = _trainer(catalog, tmp_path)
    batches = iter(trainer.parts.train_batches)
    with host_round_trips():
        trainer.train_step(next(batches), check=False)
    with host_round_trips() as audit:
        trainer.train_step(next(batches), check=True)
    assert {r.kind for r in audit.found} == {"read-back"}
    assert all("objective.py" in r.where for r in audit.found), [str(r) for r in audit.found]


def test_evaluation_reads_back_once_however_many_batches(catalog, tmp_path, meta_autocast):
    counts = []
    for limit in (8, 24):  # one validation batch, then three
        trainer = _trainer(catalog, tmp_path / str(limit), [f"data.val_limit={limit}"])
        with host_round_trips() as audit:
            _, rows, samples = trainer.evaluate(keep=4)
        assert len(rows) == limit and len(samples["index"]) == 4
        counts.append(len(audit.found))
    assert counts[0] == counts[1], counts


def test_materialized_batches_go_up_without_blocking(catalog, tmp_path):
    """Data that is not virtual is composed on the host and queued to the device from pinned memory."""
    trainer = _trainer(catalog, tmp_path)
    loader = trainer.parts.train_loader
    loader.device = DEVICE
    with host_round_trips() as audit:
        batch = next(iter(loader))
    assert audit.found == [], "\n".join(map(str, audit.found))
    assert {batch[k].device for k in ("bg", "fg_bg", "mask", "depth")} == {DEVICE}


@pytest.mark.parametrize("name", load_catalog()["loss"].names())
def test_every_registered_loss_stays_on_the_device(catalog, name):
    """Built-in and installed third-party losses alike: forward and backward without a host round trip."""
    component = catalog.get("loss", name)
    found = loss_host_round_trips(component.create())
    assert found == [], f"loss {name!r} ({component.plugin}):\n" + "\n".join(map(str, found))


def test_a_loss_that_checks_its_input_on_the_host_is_reported():
    class Checked(torch.nn.Module):
        def forward(self, pred, target):
            if bool((target < 0).any()):
                raise ValueError("negative depth")
            weight = torch.tensor(2.0, device=pred.device)
            return (weight * (pred - target).abs()).mean()

    found = loss_host_round_trips(Checked())
    assert [r.kind for r in found] == ["read-back", "tensor from host data"]
    assert all("test_gpu_fast_path.py" in r.where and "in forward" in r.where for r in found)


@pytest.mark.parametrize("name", load_catalog()["architecture"].names())
def test_every_architecture_stays_on_the_device(catalog, name):
    model = catalog.get("architecture", name).create().to(DEVICE).to(memory_format=torch.channels_last)
    x = torch.empty(2, 6, 64, 64, device=DEVICE).contiguous(memory_format=torch.channels_last)
    with host_round_trips() as audit:
        out = model(x)
        (out["mask"].sum() + out["depth"].sum()).backward()
    assert audit.found == [], "\n".join(map(str, audit.found))


def test_upload_gives_the_same_values():
    t = torch.arange(12.0).view(3, 4)
    np.testing.assert_array_equal(upload(t, torch.device("cpu")).numpy(), t.numpy())


@needs_cuda
def test_upload_is_queued_from_pinned_memory_on_cuda():
    t = torch.arange(1 << 20, dtype=torch.float32)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = upload(t, torch.device("cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(out.cpu(), t)


@needs_cuda
def test_cuda_training_steps_do_not_synchronise(catalog, tmp_path):
    """On a GPU: the real thing, with PyTorch's own detector of synchronising calls set to fail."""
    noisy = {**STEP, "augment": [{"name": "geometric"}, {"name": "photometric", "params": {"noise_std": 0.02}}]}
    (cfg,) = resolve_variants(noisy, ["train.device=cuda"], catalog)
    trainer = Trainer(cfg, 0, catalog, tmp_path)
    batches = iter(trainer.parts.train_batches)
    trainer.train_step(next(batches), check=False)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step(next(batches), check=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_compiled_training_matches_eager_and_saves_plain_weights(catalog, tmp_path):
    """``train.compile: true`` trains the same network (fused kernels round differently) and checkpoints
    load into an uncompiled model (no ``_orig_mod.`` prefixes)."""
    from tests.conftest import TINY

    results = {}
    for compiled in ("false", "true"):
        (cfg,) = resolve_variants(TINY, [f"train.compile={compiled}", "train.epochs=1"], catalog)
        trainer = Trainer(cfg, 0, catalog, tmp_path / compiled)
        results[compiled] = trainer.fit()
    eager, compiled = results["false"].best, results["true"].best
    assert eager.keys() == compiled.keys()
    for key in eager:
        assert compiled[key] == pytest.approx(eager[key], rel=2e-3, abs=1e-4), key
    state = torch.load(results["true"].best_checkpoint, weights_only=True)["model"]
    fresh = catalog.get("architecture", "unet").create(**TINY["model"]["params"])
    fresh.load_state_dict(state)  # strict: every key is the plain module's


def test_compile_takes_a_mode_and_names_the_choices(catalog):
    (cfg,) = resolve_variants(STEP, ["train.compile=max-autotune"], catalog)
    assert cfg.train.compile == "max-autotune"
    with pytest.raises(Exception, match="reduce-overhead"):
        resolve_variants(STEP, ["train.compile=fastest"], catalog)



def test_the_audit_docstring_examples_hold():
    import doctest

    import losslab.core.plugin.host_sync as host_sync

    result = doctest.testmod(host_sync)
    assert result.attempted > 0 and result.failed == 0
