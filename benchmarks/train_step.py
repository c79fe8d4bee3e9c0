"""Engine overhead: a full `lab` training step against the bare model step, in the same run.

Full step: the next batch from the trainer's own loader (composed from recipes
by the virtual dataset, resized, moved to the device), then
``TrainLoop.run_step`` (through ``Trainer.train_step``): the configured augmentations, forward, every loss
term with its checks, backward, optimizer and scheduler step, and the
per-term accumulation ``train_epoch`` does for logging. Bare step: the same
model's forward, a trivial loss, backward and optimizer step on one batch
already in memory. The two alternate step by step, so a change of machine
load hits both alike; medians are compared. The engine's overhead is
full/bare - 1; the target is at most 15%.

    python benchmarks/train_step.py [--experiment experiments/bce_vs_dice.yaml] [--steps 40] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from losslab.core.config import load_experiment
from losslab.core.plugin.manager import load_catalog
from losslab.core.train.step import model_inputs, run_model
from losslab.core.train.trainer import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=Path("experiments/bce_vs_dice.yaml"))
    parser.add_argument("--variant", default="bce+dice")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()

    catalog = load_catalog()
    configs = load_experiment(args.experiment, ["train.progress=false", *args.sets], catalog)
    cfg = next((c for c in configs if c.variant == args.variant), configs[0])
    trainer = Trainer(cfg, 0, catalog, Path("/tmp/losslab-bench"))
    parts = trainer.parts
    device, model, optimizer = parts.device, parts.model, parts.optimizer
    model.train()
    resident = next(iter(parts.train_batches))
    x = model_inputs(resident, parts.precision)
    batch = x.shape[0]

    def bare_step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        out = run_model(parts.forward, x, parts.precision, device)
        loss = out["mask"].float().mean() + out["depth"].float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        return time.perf_counter() - t0

    sums: dict[str, torch.Tensor] = {}
    batches = iter(parts.train_batches)

    def full_step() -> float:
        nonlocal batches
        _sync(device)
        t0 = time.perf_counter()
        try:
            loaded = next(batches)
        except StopIteration:
            parts.train_batches.epoch += 1
            batches = iter(parts.train_batches)
            loaded = next(batches)
        n, values = trainer.train_step(loaded, check=device.type == "cpu")
        for key, value in values.items():  # what train_epoch accumulates for the per-epoch log
            sums[key] = sums.get(key, 0.0) + value.float() * n
        _sync(device)
        return time.perf_counter() - t0

    for _ in range(3):  # warm-up: fitted-fg cache, allocator, kernels
        bare_step(), full_step()
    bare, full = [], []
    for _ in range(args.steps):
        bare.append(bare_step())
        full.append(full_step())
    bare_s, full_s = statistics.median(bare), statistics.median(full)
    overhead = full_s / bare_s - 1.0
    print(f"device: {device}  model: {cfg.model.name} {cfg.model.params}  batch: {batch}  "
          f"image: {cfg.data.image_size}px  threads: {torch.get_num_threads()}  steps: {args.steps}")
    print(f"augment: {[a.name for a in cfg.augment]}  losses: "
          f"{[t.name for t in cfg.loss.mask]} + {[t.name for t in cfg.loss.depth]}")
    print(f"bare model step (fwd+bwd+opt, tensors in memory): {batch / bare_s:8.1f} samples/s  "
          f"({bare_s * 1000:.1f} ms, median)")
    print(f"full lab step (data+aug+losses+logging):           {batch / full_s:8.1f} samples/s  "
          f"({full_s * 1000:.1f} ms, median)")
    print(f"ratio full/bare time: {full_s / bare_s:.3f}  -> engine overhead {overhead * 100:.1f}% "
          f"(target <= 15%: {'met' if overhead <= 0.15 else 'NOT met'})")


if __name__ == "__main__":
    main()
