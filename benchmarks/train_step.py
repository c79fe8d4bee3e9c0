"""Engine overhead: a full `lab` training step against the bare model step, in the same run.

Full step: compose a batch from recipes (virtual dataset), resize, move to
the device, run the configured augmentations, forward, every loss term,
backward, optimizer and scheduler step, metric accumulation: exactly
``Trainer.train_epoch``. Bare step: the same model, forward, a trivial loss,
backward and optimizer step on tensors already in memory. The engine's
overhead is (full - bare) / bare; the target is at most 15%.

    python benchmarks/train_step.py [--experiment experiments/bce_vs_dice.yaml] [--steps 30] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from losslab.core.config import load_experiment
from losslab.core.plugin_manager import load_catalog
from losslab.core.trainer import Trainer


class _Progress:
    def update(self, n: int) -> None:
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=Path("experiments/bce_vs_dice.yaml"))
    parser.add_argument("--variant", default="bce+dice")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()

    catalog = load_catalog()
    configs = load_experiment(args.experiment, ["train.progress=false", *args.sets], catalog)
    cfg = next((c for c in configs if c.variant == args.variant), configs[0])
    batch = cfg.train.batch_size if isinstance(cfg.train.batch_size, int) else 32
    limit = batch * args.steps
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train_limit": limit}),
                                 "train": cfg.train.model_copy(update={"epochs": 10_000})})
    trainer = Trainer(cfg, 0, catalog, Path("/tmp/losslab-bench"))
    device = trainer.device
    x_batch = next(iter(trainer.train_loader))
    x = trainer._inputs(x_batch)
    model, optimizer = trainer.model, trainer.optimizer

    def bare_steps() -> float:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            out = trainer._run_model(x)
            loss = out["mask"].float().mean() + out["depth"].float().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        return args.steps * batch / (time.perf_counter() - t0)

    def full_steps() -> float:
        _sync(device)
        t0 = time.perf_counter()
        trainer.train_epoch(_Progress())
        trainer.epoch += 1
        _sync(device)
        return args.steps * batch / (time.perf_counter() - t0)

    bare_steps(), full_steps()  # warm-up: caches of fitted fgs, allocator, kernels
    bare, full = [], []
    for _ in range(args.repeats):  # interleaved, so a change of machine load hits both alike
        bare.append(bare_steps())
        full.append(full_steps())
    best_bare, best_full = statistics.median(bare), statistics.median(full)
    overhead = best_bare / best_full - 1.0
    print(f"device: {device}  model: {cfg.model.name} {cfg.model.params}  batch: {batch}  "
          f"image: {cfg.data.image_size}px  threads: {torch.get_num_threads()}")
    print(f"augment: {[a.name for a in cfg.augment]}  losses: "
          f"{[t.name for t in cfg.loss.mask]} + {[t.name for t in cfg.loss.depth]}")
    print(f"bare model step (fwd+bwd+opt, tensors in memory): {best_bare:8.1f} samples/s  (runs: "
          + ", ".join(f"{v:.1f}" for v in bare) + ")")
    print(f"full lab step (data+aug+losses+logging):           {best_full:8.1f} samples/s  (runs: "
          + ", ".join(f"{v:.1f}" for v in full) + ")")
    print(f"ratio full/bare time: {best_bare / best_full:.3f}  -> engine overhead {overhead * 100:.1f}% "
          f"(target <= 15%: {'met' if overhead <= 0.15 else 'NOT met'})")


if __name__ == "__main__":
    main()
