"""What each loss weighting costs: its training step against ``static``'s, in the same run.

One trainer per method is built from the same experiment (same seed, same
model initialisation) and each steps on the same batch, already on the
device: forward, every loss term, the weighting's combine and backward,
optimizer step. The methods take turns step by step, so a change of machine
load hits all alike; medians are compared. The gradient methods
(gradnorm, pcgrad, imtl-g, aligned-mtl) back-propagate once per task (two
here) with the graph kept between, and gather the shared parameters'
gradients into a (tasks x shared) matrix; the loss-based ones (uncertainty,
dwa) cost what static costs.

    python benchmarks/weighting.py [--experiment experiments/weighting.yaml] [--steps 20] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from losslab.core.config import load_experiment
from losslab.core.plugin.manager import load_catalog
from losslab.core.train.trainer import Trainer

METHODS = ("static", "uncertainty", "dwa", "gradnorm", "pcgrad", "imtl-g", "aligned-mtl")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=Path("experiments/weighting.yaml"))
    parser.add_argument("--variant", default="tuned", help="the variant whose terms every method combines")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()

    catalog = load_catalog()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "static" not in methods:
        methods.insert(0, "static")
    trainers: dict[str, Trainer] = {}
    for method in methods:
        sets = ["train.progress=false", f"variants.{args.variant}.loss.weighting.name={method}",
                f"variants.{args.variant}.loss.weighting.params={{}}", *args.sets]
        configs = load_experiment(args.experiment, sets, catalog)
        cfg = next(c for c in configs if c.variant == args.variant)
        trainers[method] = Trainer(cfg, 0, catalog, Path(f"/tmp/losslab-bench-weighting/{method}"))
    first = trainers["static"].parts
    device = first.device
    resident = next(iter(first.train_batches))

    def step(trainer: Trainer) -> float:
        _sync(device)
        t0 = time.perf_counter()
        trainer.train_step(dict(resident), check=False)
        _sync(device)
        return time.perf_counter() - t0

    for trainer in trainers.values():
        trainer.parts.model.train()
        for _ in range(2):  # warm-up: allocator, kernels
            step(trainer)
    times: dict[str, list[float]] = {m: [] for m in trainers}
    for _ in range(args.steps):
        for method, trainer in trainers.items():
            times[method].append(step(trainer))
    base = statistics.median(times["static"])
    cfg = first.cfg
    print(f"device: {device}  model: {cfg.model.name} {cfg.model.params}  batch: {resident['bg'].shape[0]}  "
          f"image: {cfg.data.image_size}px  threads: {torch.get_num_threads()}  steps: {args.steps} per method  "
          f"shared parameters: {sum(p.numel() for p in first.shared)} of "
          f"{sum(p.numel() for p in first.model.parameters())}")
    print(f"{'method':<12} {'median ms':>10} {'x static':>9}  backward passes per step")
    for method, values in times.items():
        median = statistics.median(values)
        passes = "one per task" if trainers[method].parts.weighting.needs_task_gradients else "one"
        print(f"{method:<12} {median * 1000:>10.1f} {median / base:>9.2f}  {passes}")


if __name__ == "__main__":
    main()
