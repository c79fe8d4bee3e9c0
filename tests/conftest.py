"""Shared fixtures: a tiny experiment that trains in seconds, and an isolated MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Small test tensors gain nothing from 2 threads, and oversubscribed cores slow them a lot."""
    import torch

    torch.set_num_threads(1)

TINY = {
    "name": "tiny",
    "seeds": [0],
    "data": {
        "source": {"kind": "synthetic", "n_bg": 4, "n_fg": 2, "seed": 0, "size": 64},
        "image_size": 32,
        "val_split": 0.25,
        "train_limit": 64,
        "val_limit": 24,
    },
    "model": {"name": "unet", "params": {"base_channels": 4, "depth": 2}},
    "train": {"epochs": 2, "batch_size": 16, "lr": 0.01, "progress": False, "num_threads": 1, "val_samples": 4},
    "loss": {"mask": [{"name": "bce"}], "depth": [{"name": "l1"}]},
    "metrics": {"mask": ["iou"], "depth": ["rmse"]},
}


def write_experiment(path: Path, **overrides) -> Path:
    """TINY with ``overrides`` merged in; a ``data.source`` of another kind replaces TINY's synthetic one
    whole (a source kind's keys are its own: folders or a dataset take no ``n_bg``)."""
    from losslab.core.config import deep_merge

    raw = deep_merge(TINY, overrides)
    source = (overrides.get("data") or {}).get("source") or {}
    if source.get("kind", "synthetic") != "synthetic":
        raw["data"]["source"] = dict(source)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def tiny_experiment(tmp_path: Path) -> Path:
    return write_experiment(tmp_path / "tiny.yaml")


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
