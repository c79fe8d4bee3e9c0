"""How much of a training step do the loss terms cost? Timed against the default model, same run.

Run by hand::

    python benchmarks/losses.py                 # batch 16 at 64x64 on CPU
    python benchmarks/losses.py --size 64 150   # also at the documented 150x150
    python benchmarks/losses.py --device cuda   # on a GPU (synchronised timings)

For each image size it times, as the median of ``--repeats`` runs after
warm-up:

- the baseline: the default architecture (``unet`` from the catalog) forward
  and backward on a ``(B, 6, H, W)`` batch, with a trivial loss (a mean) so
  that only the network is measured;
- the loss terms of a typical config, forward and backward on leaf tensors
  shaped like the network's outputs: mask ``bce + dice`` (dice on the
  sigmoid, as the engine hands it) and depth ``l1 + ssim + gradient``;
  each term alone, and all five together.

It prints the times and the ratio losses / model; the target is at most
10%: loss terms must not be what makes a study slow.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from losslab.core.plugin.manager import load_catalog

MASK_TERMS = ("bce", "dice")
DEPTH_TERMS = ("l1", "ssim", "gradient")
TARGET_RATIO = 0.10


def timed(fns: dict[str, Callable[[], None]], repeats: int, warmup: int,
          device: torch.device) -> dict[str, float]:
    """Median wall time of each ``fn`` in seconds, CUDA synchronised.

    The functions are run in turn within each repeat (not one after the
    other), so a load change on a shared machine hits all of them alike and
    the ratios stay fair.
    """
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench(size: int, batch: int, repeats: int, warmup: int, device: torch.device) -> dict[str, float]:
    catalog = load_catalog()
    model = catalog.create("architecture", "unet").to(device).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 6, size, size, generator=gen).to(device)
    mask_t = (torch.rand(batch, 1, size, size, generator=gen) > 0.7).float().to(device)
    depth_t = torch.rand(batch, 1, size, size, generator=gen).to(device)
    logits = torch.randn(batch, 1, size, size, generator=gen).to(device).requires_grad_(True)
    depth = (depth_t + 0.1 * torch.randn(batch, 1, size, size, generator=gen).to(device)).requires_grad_(True)
    terms = {name: catalog.create("loss", name) for name in MASK_TERMS + DEPTH_TERMS}

    def model_step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(x)
        (out["mask"].mean() + out["depth"].mean()).backward()

    def term_value(name: str) -> torch.Tensor:
        loss = terms[name]
        if loss.task == "mask":
            pred = torch.sigmoid(logits) if loss.input_kind == "probabilities" else logits
            return loss(pred, mask_t)
        return loss(depth, depth_t)

    def one(name: str) -> Callable[[], None]:
        def step() -> None:
            logits.grad = depth.grad = None
            term_value(name).backward()
        return step

    def all_terms() -> None:
        logits.grad = depth.grad = None
        torch.stack([term_value(n) for n in terms]).sum().backward()

    fns = {"model": model_step, **{name: one(name) for name in terms}, "all losses": all_terms}
    return timed(fns, repeats, warmup, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[64], help="image sides to time (default 64)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"losses vs model, forward + backward, median of {args.repeats} | device {device} | "
          f"torch {torch.__version__} | {torch.get_num_threads()} CPU threads")
    print(f"terms: mask {' + '.join(MASK_TERMS)}, depth {' + '.join(DEPTH_TERMS)}")
    worst = 0.0
    for size in args.size:
        r = bench(size, args.batch, args.repeats, args.warmup, device)
        print(f"\nbatch {args.batch} x {size}x{size}")
        print(f"  {'unet fwd+bwd (baseline)':<26}{r['model'] * 1e3:9.2f} ms")
        for name in (*MASK_TERMS, *DEPTH_TERMS):
            print(f"  {name:<26}{r[name] * 1e3:9.2f} ms   {r[name] / r['model']:6.1%} of the model")
        ratio = r["all losses"] / r["model"]
        worst = max(worst, ratio)
        print(f"  {'all losses together':<26}{r['all losses'] * 1e3:9.2f} ms   {ratio:6.1%} of the model")
    verdict = "meets" if worst <= TARGET_RATIO else "MISSES"
    print(f"\nworst ratio {worst:.1%}: {verdict} the target of at most {TARGET_RATIO:.0%}")


if __name__ == "__main__":
    main()
