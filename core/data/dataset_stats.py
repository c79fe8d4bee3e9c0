"""``lab data stats``: what a dataset holds, for a sanity check and for input normalisation.

Streams the samples in batches (any size of dataset fits in memory), so a
full pass over 400k samples costs one read of the data; ``limit`` examines
an evenly spaced subset instead. Channel means and standard deviations are
over every pixel examined, in 0..255, RGB order (divide by 255 for a
network's normalisation). Depth percentiles come from a 1 mm histogram.

A dataset whose depth came from a relative depth model aligned to each scene
(``--depth model``) keeps every bg's fit in ``dataset.json``; the stats
summarise their residuals (how far the model's depth, once scaled and
shifted, stays from the stated ground or anchors).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from losslab.core.data.readers import dataset_bytes
from losslab.core.progress import progress_bar

_BINS = 65536  # 1 mm bins over 0..65.535 m


@dataclass
class DatasetStats:
    """The figures ``lab data stats`` prints (``to_dict`` for ``--json``)."""

    path: str
    layout: str
    count: int
    n_bg: int
    n_fg: int
    examined: int
    fg_bg_mean: list[float]
    fg_bg_std: list[float]
    bg_mean: list[float]
    bg_std: list[float]
    mask_coverage_mean: float
    mask_coverage_min: float
    mask_coverage_max: float
    empty_masks: int
    depth_min: float
    depth_max: float
    depth_mean: float
    depth_p01: float
    depth_p50: float
    depth_p99: float
    bytes_total: int
    bytes_per_sample: float
    depth_alignment: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        def triple(v: list[float]) -> str:
            return "(" + ", ".join(f"{x:.2f}" for x in v) + ")"

        subset = "" if self.examined == self.count else f" (statistics over {self.examined} evenly spaced)"
        return "\n".join([
            f"dataset          {self.path}",
            f"layout           {self.layout}",
            f"samples          {self.count}{subset}",
            f"bgs, fgs         {self.n_bg} bg, {self.n_fg} fg",
            f"fg_bg RGB mean   {triple(self.fg_bg_mean)}   std {triple(self.fg_bg_std)}   (0..255)",
            f"bg RGB mean      {triple(self.bg_mean)}   std {triple(self.bg_std)}   (0..255)",
            f"mask coverage    mean {self.mask_coverage_mean:.2%}   min {self.mask_coverage_min:.2%}   "
            f"max {self.mask_coverage_max:.2%}   empty masks {self.empty_masks}",
            f"depth (m)        min {self.depth_min:.3f}   p1 {self.depth_p01:.3f}   "
            f"median {self.depth_p50:.3f}   p99 {self.depth_p99:.3f}   max {self.depth_max:.3f}   "
            f"mean {self.depth_mean:.3f}",
            f"disk             {self.bytes_total / 1e6:.1f} MB, "
            f"{self.bytes_per_sample / 1e3:.1f} KB per sample",
            *self._alignment_lines(),
        ])

    def _alignment_lines(self) -> list[str]:
        a = self.depth_alignment
        if not a:
            return []
        methods = ", ".join(f"{k} {v}" for k, v in sorted(a["methods"].items()))
        return [
            f"depth fit        {a['bgs']} bg ({methods}; per {a['per']}): rel. error mean {a['abs_rel_mean']:.2%}"
            f"   max {a['abs_rel_max']:.2%} (bg {a['worst_bg']})   rmse mean {a['rmse_mean']:.4g}"
            f" ({a['rmse_unit']})",
        ]



class _Moments:
    """Per-channel histograms of uint8 values: exact means and variances, one fast pass per batch."""

    def __init__(self) -> None:
        self.counts = np.zeros(3 * 256, dtype=np.int64)

    def add(self, images: np.ndarray) -> None:
        flat = images.reshape(-1, 3).astype(np.uint16) + np.array([0, 256, 512], dtype=np.uint16)
        self.counts += np.bincount(flat.ravel(), minlength=3 * 256)

    def result(self) -> tuple[list[float], list[float]]:
        counts = self.counts.reshape(3, 256).astype(np.float64)
        n = np.maximum(counts.sum(axis=1), 1)
        values = np.arange(256, dtype=np.float64)
        mean = counts @ values / n
        var = np.maximum(counts @ values**2 / n - mean**2, 0.0)
        return mean.tolist(), np.sqrt(var).tolist()


def alignment_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Summary of the per-bg fits stored in ``dataset.json`` (None when there are none).

    ``abs_rel`` is the mean of |aligned - known| / known over a bg's fitted
    pixels (its ground or anchors); ``rmse`` is the fit's own residual, in
    1/m for an inverse-depth model (disparity), in m for a metric one.
    """
    if not rows:
        return None
    methods: dict[str, int] = {}
    for r in rows:
        methods[r["method"]] = methods.get(r["method"], 0) + 1
    worst = max(rows, key=lambda r: r["abs_rel_max"])
    return {
        "bgs": len(rows), "methods": methods, "per": rows[0].get("per", "bg"),
        "abs_rel_mean": float(np.mean([r["abs_rel"] for r in rows])),
        "abs_rel_max": float(worst["abs_rel_max"]), "worst_bg": int(worst["bg"]),
        "rmse_mean": float(np.mean([r["rmse"] for r in rows])),
        "rmse_unit": rows[0].get("rmse_unit", "fit space"),
        "per_bg": rows,
    }


def _stored_alignment(root: Path) -> dict[str, Any] | None:
    meta = Path(root) / "dataset.json"
    if not meta.is_file():
        return None
    try:
        rows = json.loads(meta.read_text()).get("depth_alignment")
    except (OSError, ValueError, AttributeError):
        return None
    return alignment_summary(rows) if isinstance(rows, list) else None


def compute_stats(samples: Any, root: Path, *, limit: int | None = None, batch_size: int = 128,
                  progress: bool = False) -> DatasetStats:
    """Statistics of a sample set (any object with ``len``, ``get`` and ``recipes``) stored at ``root``."""
    n = len(samples)
    if n == 0:
        raise ValueError(f"{root}: the dataset holds no samples")
    if limit is None or limit >= n:
        indices = np.arange(n)
    else:
        indices = np.unique(np.linspace(0, n - 1, max(1, limit)).astype(int))
    fg_bg, bg = _Moments(), _Moments()
    coverage: list[np.ndarray] = []
    hist = np.zeros(_BINS, dtype=np.int64)
    depth_min, depth_max, depth_sum, depth_n = np.inf, -np.inf, 0.0, 0
    bar = progress_bar(total=len(indices), unit="img", desc="stats", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        arrays = samples.get(chunk)
        fg_bg.add(arrays["fg_bg"])
        bg.add(arrays["bg"])
        coverage.append(arrays["mask"].reshape(len(chunk), -1).mean(axis=1))
        depth = arrays["depth"].astype(np.float64)
        depth_min, depth_max = min(depth_min, float(depth.min())), max(depth_max, float(depth.max()))
        depth_sum += float(depth.sum())
        depth_n += depth.size
        mm = np.clip(np.rint(depth * 1000.0), 0, _BINS - 1).astype(np.int64)
        hist += np.bincount(mm.ravel(), minlength=_BINS)
        bar.update(len(chunk))
    bar.close()
    cov = np.concatenate(coverage)
    cdf = np.cumsum(hist) / max(int(hist.sum()), 1)

    def percentile(q: float) -> float:
        return float(np.searchsorted(cdf, q)) / 1000.0

    recipes = getattr(samples, "recipes", None)
    n_bg = len(np.unique(samples.bg_ids()))
    n_fg = len(np.unique(np.asarray(recipes)[:, 1])) if recipes is not None and len(recipes) else 0
    total = dataset_bytes(Path(root))
    (fm, fs), (bm, bs) = fg_bg.result(), bg.result()
    return DatasetStats(
        path=str(root), layout=str(getattr(samples, "layout", "?")), count=n, n_bg=n_bg, n_fg=n_fg,
        examined=len(indices), fg_bg_mean=fm, fg_bg_std=fs, bg_mean=bm, bg_std=bs,
        mask_coverage_mean=float(cov.mean()), mask_coverage_min=float(cov.min()),
        mask_coverage_max=float(cov.max()), empty_masks=int((cov == 0).sum()),
        depth_min=depth_min, depth_max=depth_max, depth_mean=depth_sum / max(depth_n, 1),
        depth_p01=percentile(0.01), depth_p50=percentile(0.5), depth_p99=percentile(0.99),
        bytes_total=total, bytes_per_sample=total / n, depth_alignment=_stored_alignment(Path(root)),
    )
