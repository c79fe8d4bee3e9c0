"""The figures of a report, drawn with matplotlib into PNG bytes.

Figures are made with ``matplotlib.figure.Figure`` directly (never pyplot), so drawing needs no
display, touches no global backend state and can run in a worker thread of ``lab run``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from losslab.core.names import VAL_PREFIX
from losslab.reports.analysis import MetricResult, metric_label
from losslab.reports.collect import ChildRun, Study

DPI = 90
MAX_SAMPLES = 4
_SPLIT_STYLE: dict[str, Literal["-", "--"]] = {"train": "-", "val": "--"}


@dataclass(frozen=True)
class Plot:
    """A finished figure: a file stem, the PNG bytes and a caption."""

    name: str
    png: bytes
    caption: str


def _png(fig: object) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")  # type: ignore[attr-defined]
    return buffer.getvalue()


def _colors(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _grid(n: int, cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def panel_figure(n_panels: int, n_variants: int) -> tuple[Any, Any, list[tuple[float, float, float, float]]]:
    """A figure of ``n_panels`` small panels (three a row) and one colour per variant, for per-epoch curves."""
    from matplotlib.figure import Figure

    rows, cols = _grid(n_panels)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False), _colors(n_variants)


# -- learning curves ---------------------------------------------------------------------------------


def curve_groups(study: Study) -> dict[str, list[str]]:
    """History keys grouped by what they measure; ``train/x`` and ``val/x`` share one panel ``x``.

    Returns ``{"losses": [...], "metrics": [...]}`` of panel names such as ``loss``,
    ``mask/bce``, ``mask_iou``.
    """
    bases: set[str] = set()
    for child in study.ok_children:
        for key in child.histories:
            split, _, base = key.partition("/")
            if split in _SPLIT_STYLE and base:
                bases.add(base)
    losses = sorted(b for b in bases if b == "loss" or "/" in b)
    metrics = sorted(b for b in bases if b not in losses)
    return {"losses": losses, "metrics": metrics}


def _mean_band(histories: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean and standard deviation over the runs that logged each step."""
    by_step: dict[int, list[float]] = {}
    for history in histories:
        for step, value in history:
            if math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    steps = np.array(sorted(by_step), dtype=np.int64)
    mean = np.array([np.mean(by_step[s]) for s in steps])
    std = np.array([np.std(by_step[s], ddof=1) if len(by_step[s]) > 1 else 0.0 for s in steps])
    return steps, mean, std


def learning_curves(study: Study, panels: list[str], title: str) -> Plot | None:
    """One panel per loss term or metric; a line per variant and split, band = +/- 1 std over seeds."""
    if not panels:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, axes, colors = panel_figure(len(panels), len(study.variants))
    drawn: set[str] = set()
    for ax, panel in zip(axes.flat, panels, strict=False):
        for color, variant in zip(colors, study.variants, strict=True):
            children = [c for c in study.ok_children if c.variant == variant]
            for split, style in _SPLIT_STYLE.items():
                key = f"{split}/{panel}"
                histories = [c.histories[key] for c in children if key in c.histories]
                if not histories:
                    continue
                steps, mean, std = _mean_band(histories)
                steps = steps + 1  # MLflow steps are 0-based epochs; a reader counts epochs from 1
                drawn.add(split)
                ax.plot(steps, mean, style, color=color, linewidth=1.6,
                        marker="o" if len(steps) <= 3 else None, markersize=4)  # one epoch is a point
                if len(histories) > 1:
                    ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)
        is_metric = "/" not in panel and panel != "loss"
        ax.set_title(metric_label(f"{VAL_PREFIX}{panel}") if is_metric else panel, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        left, right = ax.get_xlim()
        if right - left < 2:  # one or two epochs: whole-number ticks, not -0.045 ... 0.045
            middle = round((left + right) / 2)
            ax.set_xlim(middle - 1, middle + 1)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, label=v) for c, v in zip(colors, study.variants, strict=True)]
    handles += [Line2D([], [], color="0.3", linestyle=s, label=split) for split, s in _SPLIT_STYLE.items()
                if split in drawn]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=9)
    fig.suptitle(title)
    name = "curves_" + title.lower().replace(" ", "_")
    styles = {"train": "solid: training", "val": "dashed: validation"}
    lines = ", ".join(styles[s] for s in _SPLIT_STYLE if s in drawn)
    return Plot(name, _png(fig), f"{title}: mean over seeds per epoch, band = +/- 1 standard deviation over "
                                 f"seeds ({lines}).")


# -- scores with intervals ---------------------------------------------------------------------------


def axis_range(values: list[float]) -> tuple[float, float, bool]:
    """(low, high, starts_at_zero) for values of one panel.

    Zero is the honest start when the data come near it (their low end is under half their top);
    otherwise a panel starting at zero would flatten every difference into one line, so it starts
    just below the data and the caption says where.
    """
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0, True
    lo, hi = min(finite), max(finite)
    span = hi - lo if hi > lo else max(abs(hi), 1e-6) * 0.1
    if lo >= 0 and lo <= 0.5 * hi:
        return 0.0, hi + 0.12 * span, True
    return lo - 0.15 * span, hi + 0.15 * span, False


def score_plot(results: list[MetricResult], variants: list[str], name: str = "scores",
               cols: int = 4, what: str = "Scores") -> Plot | None:
    """Each metric's mean per variant with its 95% bootstrap interval; dots are the individual seeds.

    A task's floors (``MetricResult.references``, the numbers the floor table shows) are drawn as
    marked horizontal lines named after their baseline, and a variant below its task's floors gets a
    hollow marker and a "(below floor)" tick, so the plot and the tables tell the same story.
    """
    drawn = score_figure(results, variants, cols)
    if drawn is None:
        return None
    fig, not_zero, floors = drawn
    caption = (f"{what} at each run's best epoch: diamond = mean over seeds, bar = 95% interval (bootstrap over "
               "seeds, then images), dots = individual seeds.")
    if floors:
        caption += (" Dotted lines are the task's floors (" + ", ".join(floors) + "): baselines fitted on the "
                    "training split, scored on the same held-out samples; a hollow diamond is a variant "
                    "below its task's floors.")
    if not_zero:
        caption += (f" {what}: the vertical axis does not start at zero ("
                    + "; ".join(not_zero) + "): compare positions, not heights.")
    else:
        caption += f" {what}: every vertical axis starts at zero."
    return Plot(name, _png(fig), caption)


FLOOR_LABEL = "floor: {}"


def score_figure(results: list[MetricResult], variants: list[str],
                 cols: int = 4) -> tuple[Any, list[str], list[str]] | None:
    """The figure of :func:`score_plot`, with the panels whose axes did not start at zero and the floors drawn."""
    results = [r for r in results if r.summaries]
    if not results:
        return None
    from matplotlib.figure import Figure

    rows, cols = _grid(len(results), cols)
    fig = Figure(figsize=(3.3 * cols, 2.5 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    colors = dict(zip(variants, _colors(len(variants)), strict=True))
    not_zero: list[str] = []
    floors: list[str] = []
    for ax, r in zip(axes.flat, results, strict=False):
        names = [v for v in variants if v in r.summaries]
        for x, v in enumerate(names):
            s = r.summaries[v]
            if math.isfinite(s.low) and math.isfinite(s.high):
                ax.errorbar([x], [s.mean], yerr=[[s.mean - s.low], [s.high - s.mean]], fmt="none",
                            ecolor=colors[v], elinewidth=2.2, capsize=5)
            below = v in r.below_floor
            ax.plot([x], [s.mean], "D", color=colors[v], markersize=7, markeredgecolor="black",
                    markerfacecolor="white" if below else colors[v])
            seeds = list(r.per_seed[v].values())
            ax.plot([x + 0.18] * len(seeds), seeds, "o", color="black", markersize=2.5, alpha=0.7)
        ticks = [f"{v} (below floor)" if v in r.below_floor else v for v in names]
        ax.set_xticks(range(len(names)), ticks, rotation=25, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(names) - 0.4)
        arrow = "higher is better" if r.higher_is_better else "lower is better"
        ax.set_title(f"{r.label} ({arrow})", fontsize=9)
        refs = {n: s.mean for n, s in r.references.items() if math.isfinite(s.mean)}
        for i, (floor, level) in enumerate(sorted(refs.items(), key=lambda kv: kv[1])):
            ax.axhline(level, color="dimgray", linestyle=":", linewidth=1.3, label=FLOOR_LABEL.format(floor))
            ax.annotate(floor, (1.0, level), xycoords=("axes fraction", "data"), xytext=(-2, 2 if i % 2 == 0 else -8),
                        textcoords="offset points", ha="right", fontsize=7, color="dimgray")
            if floor not in floors:
                floors.append(floor)
        values = [x for v in names for x in (r.summaries[v].low, r.summaries[v].high, *r.per_seed[v].values())]
        lo, hi, at_zero = axis_range(values + list(refs.values()))
        ax.set_ylim(lo, hi)
        if not at_zero:
            not_zero.append(f"{r.label} from {lo:.3g}")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(results):]:
        ax.set_visible(False)
    return fig, not_zero, floors


def score_bars(results: list[MetricResult], variants: list[str]) -> Plot | None:
    """The earlier name of :func:`score_plot`."""
    return score_plot(results, variants)


# -- the same validation images across variants ------------------------------------------------------


def _samples_of(children: list[ChildRun], seed: int | None) -> tuple[ChildRun | None, dict[str, np.ndarray]]:
    pool = [c for c in children if c.samples_path is not None and (seed is None or c.seed == seed)]
    if not pool:
        return None, {}
    chosen = min(pool, key=lambda c: c.seed)
    with np.load(chosen.samples_path, allow_pickle=False) as data:  # type: ignore[arg-type]
        return chosen, {k: np.asarray(data[k]) for k in data.files}


def _image_ids(children: list[ChildRun]) -> dict[int, dict[str, float]]:
    """bg, fg, row (and the like) of each validation image, from any per-image table that has them."""
    for c in children:
        if c.per_image is not None and c.per_image.ids:
            ids = c.per_image.ids
            return {int(i): {k: float(v[j]) for k, v in ids.items()} for j, i in enumerate(c.per_image.index)}
    return {}


def choose_samples(candidates: list[int], scores: dict[int, float], ids: dict[int, dict[str, float]],
                   higher_is_better: bool, k: int, own: list[int] | None = None,
                   where: str = "among the kept images") -> list[tuple[int, str]]:
    """Up to ``k`` images: the best variant's worst and best case, then the most different scenes.

    The worst and best are looked for in ``own`` (the best variant's kept images; default ``candidates``):
    each run keeps its own worst and best held-out image, which other variants may not have kept.
    "Different" counts how many of background, foreground and grid row differ from every image
    already chosen, so the grid does not show one scene shifted by a column.
    """
    chosen: list[tuple[int, str]] = []
    pool = candidates if own is None else own
    scored = [i for i in pool if i in scores and math.isfinite(scores[i])]
    if scored:
        order = sorted(scored, key=lambda i: scores[i] if higher_is_better else -scores[i])
        chosen.append((order[0], f"the best variant's worst case {where}"))
        if order[-1] != order[0]:
            chosen.append((order[-1], f"the best variant's best case {where}"))
    keys = ("bg", "fg", "row")

    def novelty(i: int) -> tuple[int, int]:
        mine = ids.get(i, {})
        seen = [ids.get(j, {}) for j, _ in chosen]
        new = sum(all(mine.get(key) != other.get(key) for other in seen) for key in keys if key in mine)
        return new, -candidates.index(i)

    while len(chosen) < k:
        rest = [i for i in candidates if i not in {j for j, _ in chosen}]
        if not rest:
            break
        pick = max(rest, key=novelty)
        chosen.append((pick, "a different scene"))
    return chosen[:k]


def sample_grids(study: Study, max_samples: int = MAX_SAMPLES, best: str | None = None,
                 score_column: str | None = None, higher_is_better: bool = True) -> list[Plot]:
    """Per chosen validation image: input and ground truth, then each variant's mask, depth and errors."""
    by_variant = {v: [c for c in study.ok_children if c.variant == v] for v in study.variants}
    with_samples = {v: cs for v, cs in by_variant.items() if any(c.samples_path for c in cs)}
    if not with_samples:
        return []
    seed_sets = [{c.seed for c in cs if c.samples_path} for cs in with_samples.values()]
    common = set.intersection(*seed_sets)
    seed = min(common) if common else None
    loaded = {v: _samples_of(cs, seed) for v, cs in with_samples.items()}
    loaded = {v: x for v, x in loaded.items() if x[1] and "index" in x[1]}
    if not loaded:
        return []
    kept_by = {v: {int(i) for i in d["index"].tolist()} for v, (_, d) in loaded.items()}
    indices = set.intersection(*kept_by.values())
    first = next(iter(loaded.values()))[1]
    candidates = [int(i) for i in first["index"].tolist() if int(i) in indices]
    own: list[int] | None = None
    where = "among the kept images"
    if best in loaded:
        best_data = loaded[best][1]
        own = [int(i) for i in best_data["index"].tolist()]
        if "role" in best_data and {"worst", "best"} & set(best_data["role"].tolist()):
            where = "of all its held-out images (each run keeps its worst and best by train.monitor)"
    scores: dict[int, float] = {}
    if best in loaded and score_column:
        child = loaded[best][0]
        if child is not None and child.per_image is not None and score_column in child.per_image.columns:
            scores = {int(i): float(v) for i, v in zip(child.per_image.index, child.per_image.columns[score_column],
                                                       strict=True)}
    ids = _image_ids([c for cs in by_variant.values() for c in cs])
    seed_note = f"seed {seed}" if seed is not None else "each variant's first seed"
    picks = choose_samples(candidates, scores, ids, higher_is_better, max_samples, own, where)
    figures = []
    for image_index, role in picks:
        having = {v: x for v, x in loaded.items() if image_index in kept_by[v]}  # the best variant's own cases
        figures.append(_sample_figure(having, image_index, seed_note, role, ids.get(image_index, {}),
                                      len(candidates)))
    return figures


def _sample_figure(loaded: dict[str, tuple[ChildRun | None, dict[str, np.ndarray]]], image_index: int,
                   seed_note: str, role: str, ids: dict[str, float], n_kept: int) -> Plot:
    from matplotlib.figure import Figure

    variants = list(loaded)
    ref = loaded[variants[0]][1]
    k = int(np.flatnonzero(ref["index"] == image_index)[0])
    gt_mask = ref["mask"][k].astype(np.float32)
    gt_depth = ref["depth"][k].astype(np.float32)
    rows = []
    for v in variants:
        data = loaded[v][1]
        j = int(np.flatnonzero(data["index"] == image_index)[0])
        rows.append((v, data["pred_mask"][j].astype(np.float32), data["pred_depth"][j].astype(np.float32)))
    depth_max = float(max([gt_depth.max()] + [d.max() for _, _, d in rows]))
    depth_err_max = max([float(np.abs(d - gt_depth).max()) for _, _, d in rows] + [1e-6])

    fig = Figure(figsize=(4 * 2.0, (1 + len(rows)) * 2.0), layout="constrained")
    axes = fig.subplots(1 + len(rows), 4, squeeze=False)
    top = [("input fg_bg", ref["fg_bg"][k], {}), ("background", ref["bg"][k], {}),
           ("GT mask", gt_mask, {"cmap": "gray", "vmin": 0, "vmax": 1}),
           ("GT depth (m)", gt_depth, {"cmap": "viridis", "vmin": 0, "vmax": depth_max})]
    for col, (ax, (title, image, kw)) in enumerate(zip(axes[0], top, strict=True)):
        shown = ax.imshow(image, **kw)
        ax.set_title(title, fontsize=8)
        if col == 3:
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    for row, (v, pm, pd) in zip(axes[1:], rows, strict=True):
        panels = [
            (f"{v}: mask", pm, {"cmap": "gray", "vmin": 0, "vmax": 1}),
            ("|mask error|", np.abs(pm - gt_mask), {"cmap": "magma", "vmin": 0, "vmax": 1}),
            (f"{v}: depth", pd, {"cmap": "viridis", "vmin": 0, "vmax": depth_max}),
            ("|depth error| (m)", np.abs(pd - gt_depth), {"cmap": "magma", "vmin": 0, "vmax": depth_err_max}),
        ]
        for col, (ax, (title, image, kw)) in enumerate(zip(row, panels, strict=True)):
            shown = ax.imshow(image, **kw)
            ax.set_title(title, fontsize=8)
            if col in (2, 3):  # depth and its error: colour scales in metres
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    where = ", ".join(f"{k} {int(v)}" for k, v in ids.items() if k in ("bg", "fg", "row", "col") and math.isfinite(v))
    fig.suptitle(f"validation image {image_index}" + (f" ({where})" if where else ""), fontsize=10)
    return Plot(f"samples_{image_index}", _png(fig),
                f"Validation image {image_index}" + (f" ({where})" if where else "") + f", {role} "
                f"({n_kept} images kept per run, {seed_note}): input and ground truth, then each variant's "
                "predicted mask and depth with absolute error maps (same colour scale across variants).")
