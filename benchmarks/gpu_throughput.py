"""Training-step throughput per built-in architecture and size, data pipeline on and off, in one run.

For each architecture and image size: samples per second of a full training
step with the data pipeline on (batches composed from recipes, on the device
when CUDA is used, plus Kornia augmentation) and off (the same step on a
batch already resident on the device), and the share of the step the
pipeline takes: 1 - off/on time. Target on a GPU: at most 5%. At 224 px the
default architecture's peak memory for batch 64 is printed
(``torch.cuda.max_memory_allocated``; the 16 GB target).

    python benchmarks/gpu_throughput.py [--sizes 96 150 224] [--batch 64] [--steps 20] [--archs unet ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from losslab.core.config import resolve_variants
from losslab.core.plugin_manager import load_catalog
from losslab.core.trainer import Trainer


class _Progress:
    def update(self, n: int) -> None:
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(arch: str, size: int, batch: int, steps: int, catalog) -> Trainer:
    raw = {
        "name": "throughput",
        "data": {"source": {"kind": "synthetic", "n_bg": 20, "n_fg": 20, "size": 224},
                 "image_size": size, "train_limit": batch * steps, "val_limit": batch},
        "model": {"name": arch},
        "augment": [{"name": "geometric"}, {"name": "photometric"}],
        "train": {"epochs": 10_000, "batch_size": batch, "progress": False},
        "loss": {"mask": [{"name": "bce"}, {"name": "dice"}], "depth": [{"name": "l1"}, {"name": "ssim"}]},
    }
    (cfg,) = resolve_variants(raw, None, catalog)
    return Trainer(cfg, 0, catalog, Path("/tmp/losslab-throughput"))


def measure(trainer: Trainer, steps: int) -> tuple[float, float]:
    """(samples/s with the pipeline, samples/s on a resident batch), interleaved, median of 3."""
    device = trainer.device
    resident = next(iter(trainer.train_batches))
    for aug in trainer.augment:
        resident = aug(resident)
    batch = resident["bg"].shape[0]

    def resident_steps() -> float:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = trainer._run_model(trainer._inputs(resident))
            total, _ = trainer.objective(out, resident)
            trainer.optimizer.zero_grad(set_to_none=True)
            total.backward()
            trainer.optimizer.step()
        _sync(device)
        return steps * batch / (time.perf_counter() - t0)

    def pipeline_steps() -> float:
        _sync(device)
        t0 = time.perf_counter()
        trainer.train_epoch(_Progress())
        trainer.epoch += 1
        _sync(device)
        return steps * batch / (time.perf_counter() - t0)

    resident_steps(), pipeline_steps()  # warm-up
    on, off = [], []
    for _ in range(3):
        off.append(resident_steps())
        on.append(pipeline_steps())
    return statistics.median(on), statistics.median(off)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 150, 224])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--archs", nargs="+", default=None)
    args = parser.parse_args()
    catalog = load_catalog()
    archs = args.archs or catalog["architecture"].names()
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device: {device_name}  batch: {args.batch}  steps: {args.steps}  torch {torch.__version__}")
    print(f"{'architecture':<14}{'size':>6}{'pipeline on':>14}{'resident':>12}{'pipeline share':>16}")
    for arch in archs:
        for size in args.sizes:
            trainer = build(arch, size, args.batch, args.steps, catalog)
            on, off = measure(trainer, args.steps)
            share = 1.0 - on / off
            print(f"{arch:<14}{size:>6}{on:>12.1f}/s{off:>10.1f}/s{share * 100:>15.1f}%"
                  + ("" if trainer.device.type != "cuda" else f"   ({'met' if share <= 0.05 else 'NOT met'})"))
            if torch.cuda.is_available() and size == 224 and arch == "unet":
                torch.cuda.reset_peak_memory_stats()
                measure(trainer, 3)
                peak = torch.cuda.max_memory_allocated() / 2**30
                print(f"  peak memory, unet 224px batch {args.batch}: {peak:.2f} GiB (target: fits 16 GB)")
            del trainer
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
