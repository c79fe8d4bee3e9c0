"""What the per-epoch training diagnostics cost: training with them against the same training without.

Trains one variant of an experiment (default: experiments/bce_vs_dice.yaml's first variant)
twice per repeat in this process (after one untimed warm-up fit), once with
``train.diagnostics`` off and once with the experiment's setting (or ``--batches``), alternating
so both see the same machine load, and prints (medians over the repeats)

- the ratio of the fit's CPU time (``time.process_time``: this process's CPU seconds, all its
  threads) with diagnostics to the one without (the target: at most 1.05), and the same for wall time;
- the diagnostics' own share within each fit with them: the CPU time spent in
  ``Diagnostics.measure`` over the rest of that fit (paired in one fit, so the least sensitive
  to other work on a shared machine).

Usage::

    python benchmarks/diagnostics.py                       # the experiment as shipped, 1 epoch
    python benchmarks/diagnostics.py --train-limit 640 --repeats 3 --threads 2

A shorter epoch (``--train-limit``) makes the per-epoch diagnostics a larger share; the
shipped experiment's epoch length is the one the 5% target is about.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from losslab.core.config import DiagnosticsSpec, load_experiment
from losslab.core.plugin.manager import load_catalog
from losslab.core.train import diagnostics as diag_module
from losslab.core.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=ROOT / "experiments" / "bce_vs_dice.yaml")
    parser.add_argument("--variant", default=None, help="variant to train (default: the first)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-limit", type=int, default=None, help="samples per epoch (default: the experiment's)")
    parser.add_argument("--val-limit", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None, help="diagnostic batches (default: the experiment's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    catalog = load_catalog()
    sets = [f"train.epochs={args.epochs}", "train.progress=false"]
    if args.train_limit:
        sets.append(f"data.train_limit={args.train_limit}")
    if args.val_limit:
        sets.append(f"data.val_limit={args.val_limit}")
    if args.threads:
        sets.append(f"train.num_threads={args.threads}")
    configs = load_experiment(args.experiment, sets, catalog)
    cfg = next((c for c in configs if c.variant == args.variant), configs[0]) if args.variant else configs[0]
    on = cfg.model_copy(deep=True)
    if args.batches:
        on.train.diagnostics = DiagnosticsSpec(batches=args.batches)
    if on.train.diagnostics is False:
        raise SystemExit("the experiment turns train.diagnostics off; pass --batches N to measure them")
    off = cfg.model_copy(deep=True)
    off.train.diagnostics = False

    spent = [0.0]
    original = diag_module.Diagnostics.measure

    def timed(self):  # type: ignore[no-untyped-def]
        t0 = time.process_time()
        try:
            return original(self)
        finally:
            spent[0] += time.process_time() - t0

    diag_module.Diagnostics.measure = timed  # type: ignore[method-assign]
    times: dict[str, list[float]] = {"off": [], "on": []}
    walls: dict[str, list[float]] = {"off": [], "on": []}
    shares: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        # untimed warm-up: the first fit in a process pays one-off costs (scene synthesis, caches, allocator)
        Trainer(off, 0, catalog, Path(tmp) / "warmup").fit()
        for r in range(args.repeats):
            for label, c in (("off", off), ("on", on)):
                trainer = Trainer(c, 0, catalog, Path(tmp) / f"{label}{r}")
                spent[0] = 0.0
                c0, w0 = time.process_time(), time.perf_counter()
                trainer.fit()
                times[label].append(time.process_time() - c0)
                walls[label].append(time.perf_counter() - w0)
                if label == "on":
                    shares.append(spent[0] / max(times[label][-1] - spent[0], 1e-9))
    steps = len(trainer.parts.train_loader)
    t_off, t_on = statistics.median(times["off"]), statistics.median(times["on"])
    w_off, w_on = statistics.median(walls["off"]), statistics.median(walls["on"])
    share = statistics.median(shares)
    spec = on.train.diagnostics
    print(f"experiment {args.experiment.name}, variant {cfg.variant}: {args.epochs} epoch(s) of {steps} steps, "
          f"batch {trainer.parts.batch_size}, image {cfg.data.image_size} px, {torch.get_num_threads()} thread(s); "
          f"diagnostics every {spec.every} epoch(s) on {spec.batches} batch(es); {args.repeats} repeat(s)")
    print(f"fit without diagnostics: {t_off:.2f} CPU s (runs: {', '.join(f'{t:.2f}' for t in times['off'])}); "
          f"wall {w_off:.2f} s")
    print(f"fit with diagnostics:    {t_on:.2f} CPU s (runs: {', '.join(f'{t:.2f}' for t in times['on'])}); "
          f"wall {w_on:.2f} s")
    print(f"ratio with / without: CPU {t_on / t_off:.3f}, wall {w_on / w_off:.3f}   (target <= 1.05)")
    print(f"Diagnostics.measure / the rest of the same fit (CPU): {share:.2%} "
          f"(runs: {', '.join(f'{x:.2%}' for x in shares)})")


if __name__ == "__main__":
    main()
