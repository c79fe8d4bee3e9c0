"""Engine overhead: the full `lab` training step against a hand-written plain PyTorch loop, in the same run.

Lab step: the next batch from the trainer's own loader (composed from
recipes by the virtual dataset, resized, moved to the device), then
``TrainLoop.run_step`` (through ``Trainer.train_step``): the configured
augmentations, forward, every loss term with its checks (and the finiteness
read-back the loop does on CPU), backward, optimizer and scheduler step, and
the per-term accumulation ``train_epoch`` does for logging.

Plain loop: what a user writes by hand for the same work. A copy of the same
model, a fresh optimizer and scheduler of the same kind, fresh instances of
the same augmentations, the same loss modules called directly and summed
with their weights, ``zero_grad`` / ``backward`` / ``step``, and the running
loss kept on the device. Its data is already in memory: batches the loader
made before the timing, cycled.

Bare step (for reference): forward, a trivial loss, backward and optimizer
step on one resident batch.

The three alternate step by step, in repeats whose order rotates, so a change
of machine load hits all alike; medians are compared. The target is the lab
step at most 5% slower than the plain loop (ratio <= 1.05). With
``--resident`` the lab step also takes its batches from memory, which
separates the loader's cost from the step's.

    python benchmarks/train_step.py [--experiment experiments/bce_vs_dice.yaml] [--steps 60] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from losslab.core.config import load_experiment
from losslab.core.plugin.manager import load_catalog
from losslab.core.train.builder import optimizer_for, scheduler_for
from losslab.core.train.step import model_inputs, run_model
from losslab.core.train.trainer import Trainer

RESIDENT_BATCHES = 8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(step: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=Path("experiments/bce_vs_dice.yaml"))
    parser.add_argument("--variant", default="bce+dice")
    parser.add_argument("--steps", type=int, default=60, help="timed steps of each kind")
    parser.add_argument("--resident", action="store_true", help="the lab step, too, reads batches from memory")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()

    catalog = load_catalog()
    configs = load_experiment(args.experiment, ["train.progress=false", *args.sets], catalog)
    cfg = next((c for c in configs if c.variant == args.variant), configs[0])
    trainer = Trainer(cfg, 0, catalog, Path("/tmp/losslab-bench"))
    parts = trainer.parts
    device, model, optimizer = parts.device, parts.model, parts.optimizer
    model.train()

    # the plain loop's own copies, made before the lab trains, so both start from the same weights
    plain_model = copy.deepcopy(model)
    plain_opt = optimizer_for(cfg.train, plain_model)
    plain_sched = scheduler_for(cfg.train, plain_opt, max(1, len(parts.train_loader)) * cfg.train.epochs)
    plain_aug = [catalog.create("augmentation", a.name, seed=parts.seed, **a.params) for a in cfg.augment]
    terms = [(t.task, t.weight, t.module) for t in parts.objective.terms if t.weight]
    resident = [b for _, b in zip(range(RESIDENT_BATCHES), iter(parts.train_batches), strict=False)]
    x_bare = model_inputs(resident[0], parts.precision)
    batch = x_bare.shape[0]
    counter = {"plain": 0, "lab": 0}
    running = torch.zeros((), device=device)

    def plain_step() -> None:
        nonlocal running
        b = resident[counter["plain"] % len(resident)]
        counter["plain"] += 1
        for aug in plain_aug:
            b = aug(b)
        x = torch.cat([b["bg"], b["fg_bg"]], dim=1)
        if parts.precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = run_model(plain_model, x, parts.precision, device)
        loss = sum(w * fn(out[task], b[task]).float() for task, w, fn in terms)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        plain_opt.step()
        if plain_sched is not None:
            plain_sched.step()
        running = running + loss.detach()  # type: ignore[union-attr]

    def bare_step() -> None:
        out = run_model(parts.forward, x_bare, parts.precision, device)
        loss = out["mask"].float().mean() + out["depth"].float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    sums: dict[str, torch.Tensor] = {}
    batches = iter(parts.train_batches)

    def lab_step() -> None:
        nonlocal batches
        if args.resident:
            loaded = resident[counter["lab"] % len(resident)]
        else:
            try:
                loaded = next(batches)
            except StopIteration:
                parts.train_batches.epoch += 1
                batches = iter(parts.train_batches)
                loaded = next(batches)
        check = device.type == "cpu"  # what train_epoch asks on CPU
        n, values = trainer.train_step(loaded, check=check)
        counter["lab"] += 1
        for key, value in values.items():  # what train_epoch accumulates for the per-epoch log
            sums[key] = sums.get(key, 0.0) + value.float() * n

    kinds: dict[str, Callable[[], None]] = {"lab": lab_step, "plain": plain_step, "bare": bare_step}
    for _ in range(3):  # warm-up: fitted-fg cache, allocator, kernels
        for step in kinds.values():
            step()
    times: dict[str, list[float]] = {k: [] for k in kinds}
    order = list(kinds)
    for i in range(args.steps):
        rotated = order[i % len(order):] + order[:i % len(order)]  # no kind always runs first
        for kind in rotated:
            times[kind].append(_timed(kinds[kind], device))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["lab"] / med["plain"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device: {device}  model: {cfg.model.name} {cfg.model.params}  batch: {batch}  "
          f"image: {cfg.data.image_size}px  threads: {torch.get_num_threads()}  steps: {args.steps}  "
          f"load(1 min): {load:.2f}  OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"augment: {[a.name for a in cfg.augment]}  losses: "
          f"{[t.name for t in cfg.loss.mask]} + {[t.name for t in cfg.loss.depth]}")
    for kind, label in (("bare", "bare model step (fwd+bwd+opt, trivial loss)"),
                        ("plain", "plain PyTorch loop (aug+losses, data in memory)"),
                        ("lab", "lab step (" + ("data in memory" if args.resident else "its loader")
                         + "+aug+losses+checks+logging)")):
        q1, q3 = statistics.quantiles(times[kind], n=4)[0], statistics.quantiles(times[kind], n=4)[2]
        print(f"{label:<58} {batch / med[kind]:8.1f} samples/s  ({med[kind] * 1000:6.1f} ms median, "
              f"IQR {q1 * 1000:.1f}-{q3 * 1000:.1f})")
    print(f"ratio lab/plain time: {ratio:.3f}  -> lab {(ratio - 1) * 100:+.1f}% against the plain loop "
          f"(target <= +5%: {'met' if ratio <= 1.05 else 'NOT met'})")
    print(f"ratio lab/bare time: {med['lab'] / med['bare']:.3f}  (augmentations and losses included)")


if __name__ == "__main__":
    main()
