"""The device-side virtual dataset computes exactly what the CPU compositor computes (tested on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from losslab.core.config import resolve_variants
from losslab.core.data.datasets import build_samples
from losslab.core.data.device_data import DeviceSamples, device_arrays, supports_device
from losslab.core.plugin.manager import load_catalog
from losslab.core.train.trainer import Trainer


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _data(catalog, **data):
    raw = {"name": "dev", "data": {"source": {"kind": "synthetic", "n_bg": 3, "n_fg": 3, "size": 96}, **data}}
    (cfg,) = resolve_variants(raw, None, catalog)
    return cfg, build_samples(cfg.data, catalog)


@pytest.mark.parametrize(("generator", "depth", "size"), [
    ("grid", "ground-plane", 96),   # native resolution
    ("grid", "layers", 48),         # composed at a smaller training size
    ("random", "ground-plane", 64),
])
def test_device_path_equals_cpu_path_byte_for_byte(catalog, generator, depth, size):
    _, samples = _data(catalog, generator={"name": generator}, ground_truth={"depth": {"name": depth}},
                       image_size=size)
    assert supports_device(samples)
    on_device = DeviceSamples(samples, torch.device("cpu"))
    idx = np.random.default_rng(1).choice(len(samples), 40, replace=False)
    cpu, dev = samples.get(idx), device_arrays(on_device, idx)
    for key in ("bg", "fg_bg", "mask"):
        assert dev[key].dtype == cpu[key].dtype, key
        np.testing.assert_array_equal(dev[key], cpu[key], err_msg=key)
    np.testing.assert_array_equal(dev["depth"], cpu["depth"])
    assert cpu["mask"].any() and (cpu["fg_bg"] != cpu["bg"]).any()


def test_a_ground_truth_without_device_plan_keeps_the_cpu_path(catalog):
    _, samples = _data(catalog, ground_truth={"mask": {"name": "diff"}})
    assert not supports_device(samples)


def test_trainer_batches_agree_between_paths(catalog, tmp_path):
    raw = {"name": "dev", "data": {"source": {"kind": "synthetic", "n_bg": 4, "n_fg": 2, "size": 64},
                                   "image_size": 32, "train_limit": 32},
           "model": {"name": "unet", "params": {"base_channels": 4}},
           "train": {"batch_size": 16, "progress": False}}
    (cfg,) = resolve_variants(raw, ["data.device_compose=false"], catalog)
    (cfg_dev,) = resolve_variants(raw, ["data.device_compose=true"], catalog)
    cpu = next(iter(Trainer(cfg, 0, catalog, tmp_path / "a").parts.train_batches))
    dev = next(iter(Trainer(cfg_dev, 0, catalog, tmp_path / "b").parts.train_batches))
    for key in ("bg", "fg_bg", "mask", "depth", "index"):
        torch.testing.assert_close(dev[key], cpu[key], rtol=0, atol=0, msg=key)
