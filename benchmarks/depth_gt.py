"""Benchmark: depth ground truth from a monocular model against the ground-plane geometry, in the same run.

Run by hand::

    python benchmarks/depth_gt.py                     # 8 bgs, CPU (and CUDA when there is one)
    python benchmarks/depth_gt.py --n-bg 32 --threads 4 --devices cpu cuda

One torch thread by default, as in each worker of ``lab data generate``
(which runs one worker per core). On a loaded machine more threads than free
cores make OpenMP wait at every barrier: measured here with the load at 16 on
2 cores, the tiny model took 1408 ms per bg with 2 threads against 39 ms with 1.

Nothing is downloaded: the models are randomly initialised Depth Anything
networks built from transformers' config classes and saved to a temp folder,

- **tiny**: a 2-layer, 32-wide DINOv2 backbone (~84 k parameters, 56 px input);
- **v2-small**: the size of Depth Anything V2 Small (ViT-S/14 backbone:
  hidden 384, 12 layers, 6 heads; DPT neck 48/96/192/384; ~25 M parameters;
  518 px input, as its image processor), so its cost is the real model's
  (weights do not change the arithmetic).

For each, on synthetic bgs at ``--size`` px, it times the depth of one grid
of samples per bg (``--placements`` fg placements, fresh producer, so each bg
is predicted once and aligned to its ground plane), and the same samples
with ``ground-plane`` depth; it prints the cost per bg, the samples per
second, and the ratio model / ground-plane (how many times slower a dataset's
depth gets). ``per-sample`` times the original work's mode (the network on
every fg_bg) for the tiny model, on ``--per-sample-n`` samples.

The random weights are drawn with unit gain (std 1/sqrt(fan-in)), not
transformers' default std 0.02: with those, activations shrink into
denormal floats, whose slow CPU path costs ~20x (measured: 1.57 s against
0.078 s for 8 images through the tiny model), and the output is constant,
so no scale could be fitted. A trained network's activations are like the
unit-gain ones, so the figures are those of the real arithmetic.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from losslab.core.data.batch_compositor import BatchCompositor
from losslab.core.data.sources import SyntheticSources
from losslab.plugins.generators import GridGenerator
from losslab.plugins.ground_truth import GroundPlaneDepth, ModelDepth


def save_depth_anything(folder: Path, *, hidden: int, layers: int, heads: int, neck: list[int], fusion: int,
                        head: int, factors: list[float], image: int) -> int:
    """A random Depth Anything with a DINOv2 backbone of the given size, saved with its processor; its parameters."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    stages = [f"stage{round(layers * (i + 1) / len(neck))}" for i in range(len(neck))]
    backbone = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=4 * hidden, patch_size=14, image_size=image, out_features=stages,
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=hidden, neck_hidden_sizes=neck,
                                 fusion_hidden_size=fusion, head_hidden_size=head, reassemble_factors=factors,
                                 patch_size=14, depth_estimation_type="relative")
    torch.manual_seed(0)
    model = DepthAnythingForDepthEstimation(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))
        model.head.conv3.bias.fill_(1.0)
    model.save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DPTImageProcessor(size={"height": image, "width": image}, keep_aspect_ratio=True, ensure_multiple_of=14,
                          image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


MODELS = {
    "tiny": {"hidden": 32, "layers": 2, "heads": 2, "neck": [16, 32], "fusion": 16, "head": 8, "factors": [1, 0.5],
             "image": 56},
    "v2-small": {"hidden": 384, "layers": 12, "heads": 6, "neck": [48, 96, 192, 384], "fusion": 64, "head": 32,
                 "factors": [4, 2, 1, 0.5], "image": 518},
}


def time_depth(producer, sources, recipes, compositor, batch: int = 32) -> float:
    """Seconds for the depth of every recipe (composition excluded: it is the same for both)."""
    batches = [recipes[i : i + batch] for i in range(0, len(recipes), batch)]
    composed = [compositor.compose_batch(b) for b in batches]
    start = time.perf_counter()
    for b, c in zip(batches, composed, strict=True):
        producer(c, b, sources)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-bg", type=int, default=8)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--placements", type=int, default=20, help="grid cells per bg (rows x cols)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: what each `lab data generate` worker uses; 0: torch's)")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--per-sample-n", type=int, default=32)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    sources = SyntheticSources(args.n_bg, 1, size=args.size)
    cols = max(1, args.placements // 4)
    generator = GridGenerator(rows=4, cols=cols, flips=False)
    recipes = generator.recipes(list(range(args.n_bg)), [0], (args.size, args.size))
    compositor = BatchCompositor(sources)
    n = len(recipes)
    print(f"{args.n_bg} bgs x {n // args.n_bg} samples at {args.size} px, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads", file=sys.stderr)
    header = f"{'depth':34s} {'device':6s} {'ms/bg':>10s} {'img/s':>10s} {'x ground-plane':>15s}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        saved = {}
        for name in args.models:
            params = save_depth_anything(Path(tmp) / name, **MODELS[name])
            saved[name] = (Path(tmp) / name, params)
        for device in devices:
            base = time_depth(GroundPlaneDepth(), sources, recipes, compositor)
            print(f"{'ground-plane':34s} {device:6s} {1e3 * base / args.n_bg:10.3f} {n / base:10.0f} {1.0:15.1f}")
            for name, (folder, params) in saved.items():
                producer = ModelDepth(str(folder), device=device)
                producer.check()  # load once, outside the timing (a worker loads it once per run)
                warm = ModelDepth(str(folder), device=device)
                warm._model = producer.model()
                time_depth(warm, sources, recipes[: n // args.n_bg], compositor)  # warm-up: first call
                base = time_depth(GroundPlaneDepth(), sources, recipes, compositor)
                seconds = time_depth(producer, sources, recipes, compositor)
                label = f"model {name} ({params / 1e6:.2f} M params)"
                print(f"{label:34s} {device:6s} {1e3 * seconds / args.n_bg:10.1f} {n / seconds:10.1f} "
                      f"{seconds / base:15.0f}")
                if name == "tiny":
                    per = ModelDepth(str(folder), device=device, per_sample=True)
                    per._model = producer.model()
                    few = recipes[: args.per_sample_n]
                    s = time_depth(per, sources, few, compositor)
                    b = time_depth(GroundPlaneDepth(), sources, few, compositor)
                    label = "  per-sample (every fg_bg)"
                    print(f"{label:34s} {device:6s} {'':>10s} {len(few) / s:10.1f} {s / b:15.0f}")


if __name__ == "__main__":
    main()
