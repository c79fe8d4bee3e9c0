"""Training-step throughput per built-in architecture and size, data pipeline on and off, in one run.

For each architecture and image size: samples per second of a full training
step with the data pipeline on (batches composed from recipes, on the device
when CUDA is used, plus Kornia augmentation) and off (the same step on a
batch already resident on the device), and the share of the step the
pipeline takes: 1 - off/on time. Target on a GPU: at most 5%.

Memory (the target: at 224 px the default architecture, ``unet``, trains with
batch 64 on a 16 GB GPU): the peak of one training step is estimated on fake
tensors for every architecture and size (``losslab.core.train.memory``: PyTorch's
MemTracker, nothing allocated, so it runs on a CPU too), with the default
architecture's estimate for several batches and the largest power-of-two
batch that fits. On CUDA the measured ``torch.cuda.max_memory_allocated`` of
the default architecture at 224 px is printed next to its estimate, with the
ratio measured/estimated that calibrates the estimate. ``--memory-only`` skips
the throughput runs (on a CPU a 224 px run is slow; the estimate takes seconds).

    python benchmarks/gpu_throughput.py [--sizes 96 150 224] [--batch 64] [--steps 20] [--archs unet ...] [--compile]
    python benchmarks/gpu_throughput.py --memory-only [--memory-batches 16 32 64 128] [--gpu-gb 16]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import torch

from losslab.core.config import ExperimentConfig, resolve_variants
from losslab.core.plugin.manager import load_catalog
from losslab.core.train.memory import GB, GIB, MemoryEstimate, estimate_for_config
from losslab.core.train.step import model_inputs, run_model
from losslab.core.train.trainer import Trainer

#: the architecture and size the memory target names
TARGET_ARCH, TARGET_SIZE = "unet", 224


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def config(arch: str, size: int, batch: int, steps: int, catalog, compile: bool | str = False) -> ExperimentConfig:
    raw = {
        "name": "throughput",
        "data": {"source": {"kind": "synthetic", "n_bg": 20, "n_fg": 20, "size": 224},
                 "image_size": size, "train_limit": batch * steps, "val_limit": batch},
        "model": {"name": arch},
        "augment": [{"name": "geometric"}, {"name": "photometric"}],
        "train": {"epochs": 10_000, "batch_size": batch, "progress": False, "compile": compile},
        "loss": {"mask": [{"name": "bce"}, {"name": "dice"}], "depth": [{"name": "l1"}, {"name": "ssim"}]},
    }
    (cfg,) = resolve_variants(raw, None, catalog)
    return cfg


def build(arch: str, size: int, batch: int, steps: int, catalog, compile: bool | str = False) -> Trainer:
    cfg = config(arch, size, batch, steps, catalog, compile)
    return Trainer(cfg, 0, catalog, Path("/tmp/losslab-throughput"))


def measure(trainer: Trainer, steps: int) -> tuple[float, float]:
    """(samples/s with the pipeline, samples/s on a resident batch), interleaved, median of 3."""
    parts = trainer.parts
    device = parts.device
    resident = next(iter(parts.train_batches))
    for aug in parts.augment:
        resident = aug(resident)
    batch = resident["bg"].shape[0]

    def resident_steps() -> float:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = run_model(parts.forward, model_inputs(resident, parts.precision), parts.precision, device)
            total, _ = parts.objective(out, resident)
            parts.optimizer.zero_grad(set_to_none=True)
            total.backward()
            parts.optimizer.step()
        _sync(device)
        return steps * batch / (time.perf_counter() - t0)

    def pipeline_steps() -> float:
        _sync(device)
        t0 = time.perf_counter()
        trainer.loop.train_epoch()
        trainer.loop.state.epoch += 1
        _sync(device)
        return steps * batch / (time.perf_counter() - t0)

    resident_steps(), pipeline_steps()  # warm-up
    on, off = [], []
    for _ in range(3):
        off.append(resident_steps())
        on.append(pipeline_steps())
    return statistics.median(on), statistics.median(off)


def measured_peak(trainer: Trainer) -> float:
    """Bytes: ``max_memory_allocated`` over a few steps with the pipeline and on a resident batch (CUDA only)."""
    torch.cuda.reset_peak_memory_stats()
    measure(trainer, 3)
    return torch.cuda.max_memory_allocated()


@functools.cache
def estimate(arch: str, size: int, batch: int, catalog) -> MemoryEstimate:
    return estimate_for_config(config(arch, size, batch, 1, catalog), catalog, batch=batch)


def fits_note(est: MemoryEstimate, capacity: float) -> str:
    return f"fits {capacity / GB:g} GB" if est.fits(capacity) else f"does NOT fit {capacity / GB:g} GB"


def memory_report(archs: list[str], sizes: list[int], batch: int, batches: list[int], capacity: float,
                  catalog, measured: float | None) -> None:
    """Estimated peaks: every architecture and size at ``batch``; the default architecture by batch."""
    print(f"\npeak memory of one training step, estimated (losslab.core.train.memory: MemTracker on fake tensors; "
          f"target {capacity / GB:g} GB = {capacity / GIB:.2f} GiB)")
    print(f"{'architecture':<14}{'size':>6}{'batch':>7}{'estimated':>12}  at the peak (GiB)")
    for arch in archs:
        for size in sizes:
            est = estimate(arch, size, batch, catalog)
            parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in est.at_peak.items() if v >= 0.005 * GIB)
            print(f"{arch:<14}{size:>6}{batch:>7}{est.peak / GIB:>8.2f} GiB  {parts}"
                  f"{'' if est.fits(capacity) else f'  (does NOT fit {capacity / GB:g} GB)'}")
    if TARGET_ARCH not in archs:
        return
    size = TARGET_SIZE if TARGET_SIZE in sizes else max(sizes)
    target = estimate(TARGET_ARCH, size, batch, catalog)
    line = (f"{TARGET_ARCH} {size}px batch {batch}: estimated {target.peak / GIB:.2f} GiB "
            f"(autocast {str(target.autocast).removeprefix('torch.')}, traced on fake {target.device}) "
            f"-> {fits_note(target, capacity)}")
    if measured is not None:
        line += (f"; measured max_memory_allocated {measured / GIB:.2f} GiB, "
                 f"measured/estimated {measured / target.peak:.2f}")
    print(line)
    peaks = {b: estimate(TARGET_ARCH, size, b, catalog).peak for b in sorted(set(batches))}
    b = max(peaks)
    while peaks[b] <= capacity and b < 8192:  # on to the first power-of-two batch that does not fit
        b = 1 << b.bit_length()
        peaks[b] = estimate(TARGET_ARCH, size, b, catalog).peak
    print(f"{TARGET_ARCH} {size}px by batch: " + "  ".join(f"{b}: {p / GIB:.2f}" for b, p in peaks.items()) + " GiB")
    fitting = [b for b, p in peaks.items() if p <= capacity]
    print(f"largest of these batches that fits {capacity / GB:g} GB: {max(fitting) if fitting else 'none'} "
          "(the estimate leaves out the CUDA context, cuDNN/cuBLAS workspaces and allocator fragmentation)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 150, 224])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--archs", nargs="+", default=None)
    parser.add_argument("--compile", nargs="?", const="default", default=False,
                        choices=["default", "reduce-overhead", "max-autotune"],
                        help="train.compile for the throughput runs (torch.compile mode; the warm-up pays compilation)")
    parser.add_argument("--memory-only", action="store_true",
                        help="skip the throughput runs; print the memory estimates (and, on CUDA, the measured peak)")
    parser.add_argument("--memory-batches", type=int, nargs="+", default=[16, 32, 64, 128],
                        help="batches whose estimated peak is printed for the default architecture")
    parser.add_argument("--gpu-gb", type=float, default=16.0,
                        help="GPU memory to fit, in GB (10^9 bytes, as cards are sold; 16 GB = 14.9 GiB)")
    args = parser.parse_args()
    if args.batch < 1 or min(args.memory_batches) < 1 or min(args.sizes) < 1 or args.gpu_gb <= 0:
        parser.error("--batch, --memory-batches and --sizes must be at least 1, and --gpu-gb positive")
    catalog = load_catalog()
    archs = args.archs or catalog["architecture"].names()
    capacity = args.gpu_gb * GB
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device: {device_name}  batch: {args.batch}  steps: {args.steps}  torch {torch.__version__}"
          f"  compile: {args.compile or 'off'}")
    measured: float | None = None
    if args.memory_only:
        if torch.cuda.is_available() and TARGET_ARCH in archs and TARGET_SIZE in args.sizes:
            trainer = build(TARGET_ARCH, TARGET_SIZE, args.batch, 3, catalog)
            measured = measured_peak(trainer)
            del trainer
            torch.cuda.empty_cache()
        memory_report(archs, args.sizes, args.batch, args.memory_batches, capacity, catalog, measured)
        return
    print(f"{'architecture':<14}{'size':>6}{'pipeline on':>14}{'resident':>12}{'pipeline share':>16}")
    for arch in archs:
        for size in args.sizes:
            trainer = build(arch, size, args.batch, args.steps, catalog, args.compile)
            on, off = measure(trainer, args.steps)
            share = 1.0 - on / off
            print(f"{arch:<14}{size:>6}{on:>12.1f}/s{off:>10.1f}/s{share * 100:>15.1f}%"
                  + ("" if trainer.parts.device.type != "cuda" else f"   ({'met' if share <= 0.05 else 'NOT met'})"))
            if size == TARGET_SIZE and arch == TARGET_ARCH:
                est = estimate(arch, size, args.batch, catalog)
                line = (f"  peak memory, {arch} {size}px batch {args.batch}: estimated {est.peak / GIB:.2f} GiB "
                        f"-> {fits_note(est, capacity)}")
                if torch.cuda.is_available():
                    measured = measured_peak(trainer)
                    line += (f"; measured {measured / GIB:.2f} GiB (max_memory_allocated), "
                             f"measured/estimated {measured / est.peak:.2f}")
                print(line)
            del trainer
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    memory_report(archs, args.sizes, args.batch, args.memory_batches, capacity, catalog, measured)


if __name__ == "__main__":
    main()
