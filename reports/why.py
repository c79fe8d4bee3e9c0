"""Why a loss wins, from training: the diagnostics' curves, and the mask's calibration.

Reads only what the tracker holds: the per-epoch ``diag/...`` metrics that
``core/train/diagnostics.py`` logs and each child's ``val_calibration.json`` (the best epoch's
per-bin counts, ``core/train/calibration.py``). Per variant, the ECE is computed per seed from
that seed's bins, then summarised over seeds (mean and 95% t-interval); the reliability diagram
pools the seeds' bins (counts added) into one curve per variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from losslab.core.names import DIAG_PREFIX
from losslab.reports.collect import Study
from losslab.reports.plots import Plot, _colors, _mean_band, _png, panel_figure
from losslab.reports.stats import Summary, format_value, summarize


def diagnostic_panels(study: Study) -> dict[str, list[str]]:
    """The logged diagnostics grouped into figures: gradient norms, task cosine, loss shares."""
    keys: set[str] = set()
    for child in study.ok_children:
        keys |= {k for k in child.histories if k.startswith(DIAG_PREFIX)}
    return {
        "grad_norm": sorted(k for k in keys if k.startswith("diag/grad_norm/") and k.count("/") == 3),
        "task_cosine": sorted(k for k in keys if k == "diag/task_cosine"),
        "loss_share": sorted(k for k in keys if k.startswith("diag/loss_share/")),
    }


def diagnostics_plot(study: Study) -> Plot | None:
    """One panel per logged diagnostic; a line per variant (mean over seeds), band = +/- 1 std."""
    panels = [k for group in diagnostic_panels(study).values() for k in group]
    if not panels:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, axes, colors = panel_figure(len(panels), len(study.variants))
    for ax, key in zip(axes.flat, panels, strict=False):
        for color, variant in zip(colors, study.variants, strict=True):
            histories = [c.histories[key] for c in study.ok_children if c.variant == variant and key in c.histories]
            if not histories:
                continue
            steps, mean, std = _mean_band(histories)
            ax.plot(steps, mean, "-o", color=color, linewidth=1.6, markersize=3)
            if len(histories) > 1:
                ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)
        if key == "diag/task_cosine":
            ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_title(key.removeprefix(DIAG_PREFIX).replace("_", " "), fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, label=v) for c, v in zip(colors, study.variants, strict=True)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=9)
    fig.suptitle("Training diagnostics on the shared parameters")
    return Plot("diagnostics", _png(fig),
                "Per epoch, on fixed training batches: each loss term's weighted gradient norm on the shared "
                "parameters, the cosine between the mask and depth gradients there (below 0: the tasks pull "
                "against each other), and each term's share of the total loss. Mean over seeds, band = +/- 1 "
                "standard deviation.")


def cosine_sentence(study: Study) -> str | None:
    """The task cosine per variant over the last measured epoch's seeds, as one sentence."""
    parts = []
    for variant in study.variants:
        last = [c.histories["diag/task_cosine"][-1][1] for c in study.ok_children
                if c.variant == variant and c.histories.get("diag/task_cosine")]
        if last:
            parts.append(f"{variant} {format_value(float(np.mean(last)))}")
    if not parts:
        return None
    return ("Mask-depth gradient cosine on the shared parameters at the last measured epoch (mean over seeds; "
            "negative means interference): " + ", ".join(parts) + ".")


@dataclass
class Calibration:
    """One variant's calibration: ECE over seeds and the pooled reliability curve."""

    variant: str
    ece: Summary
    per_seed: dict[int, float]
    confidence: np.ndarray  # mean probability per bin (NaN for an empty bin)
    accuracy: np.ndarray  # share of foreground per bin
    count: np.ndarray


def _ece(count: np.ndarray, conf: np.ndarray, pos: np.ndarray) -> float:
    total = count.sum()
    if total <= 0:
        return math.nan
    used = count > 0
    return float(np.sum(count[used] / total * np.abs(conf[used] / count[used] - pos[used] / count[used])))


def calibrations(study: Study) -> list[Calibration]:
    out = []
    for variant in study.variants:
        records = [(c.seed, c.calibration) for c in study.ok_children
                   if c.variant == variant and c.calibration is not None]
        if not records:
            continue
        sizes = {len(r["count"]) for _, r in records}
        if len(sizes) != 1:
            continue  # bins of different runs do not pool
        per_seed = {s: _ece(*(np.asarray(r[k]) for k in ("count", "confidence_sum", "positive_sum")))
                    for s, r in records}
        count = np.sum([np.asarray(r["count"]) for _, r in records], axis=0)
        conf = np.sum([np.asarray(r["confidence_sum"]) for _, r in records], axis=0)
        pos = np.sum([np.asarray(r["positive_sum"]) for _, r in records], axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(Calibration(variant, summarize(list(per_seed.values())), per_seed,
                                   np.where(count > 0, conf / count, np.nan),
                                   np.where(count > 0, pos / count, np.nan), count))
    return out


def calibration_table(cals: list[Calibration]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for c in sorted(cals, key=lambda c: c.ece.mean):
        interval = (f"[{format_value(c.ece.low)}, {format_value(c.ece.high)}]"
                    if c.ece.n > 1 and math.isfinite(c.ece.low) else "n/a (one seed)")
        seeds = ", ".join(f"s{k}: {format_value(v)}" for k, v in sorted(c.per_seed.items()))
        rows.append([c.variant, format_value(c.ece.mean), interval, str(c.ece.n), seeds])
    return ["variant", "ECE", "95% interval", "seeds", "per seed"], rows


def reliability_plot(cals: list[Calibration], variants: list[str]) -> Plot | None:
    if not cals:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.5", linewidth=0.8, linestyle=":")
    colors = dict(zip(variants, _colors(len(variants)), strict=True))
    for c in cals:
        used = c.count > 0
        ax.plot(c.confidence[used], c.accuracy[used], "-o", markersize=3, color=colors.get(c.variant),
                label=f"{c.variant} (ECE {format_value(c.ece.mean)})")
    ax.set_xlabel("mean predicted foreground probability (bin)")
    ax.set_ylabel("share of true foreground (bin)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    bins = len(cals[0].count)
    return Plot("reliability", _png(fig),
                f"Reliability of the mask's probabilities on the held-out pixels ({bins} equal-width bins, "
                "seeds pooled; the diagonal is perfect calibration). ECE = sum over bins of "
                "(pixels in bin / all pixels) x |mean probability - share of foreground|.")
