"""``lab run``: every (variant, seed) of an experiment, tracked in MLflow, ending in a comparison table.

One parent run per ``lab run``, one child run per (variant, seed); the
layout is the contract of ``docs/tracking.md``. ``--resume`` finds the
latest unfinished parent of the same resolved experiment, skips its finished
children and continues the others from their last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from losslab.core import names
from losslab.core.config import ConfigError, ExperimentConfig, dump_yaml, flatten, load_experiment
from losslab.core.experiment.floors import apply_floors, study_floors
from losslab.core.experiment.label_noise import study_label_noise
from losslab.core.experiment.sequential import SEQUENTIAL_TAG, SequentialPlan
from losslab.core.experiment.table import render_table
from losslab.core.paths import check_out_dir, safe_join
from losslab.core.plugin.manager import load_catalog
from losslab.core.plugin.registry import Catalog

Echo = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _silent(message: str) -> None:
    pass


@dataclass(frozen=True)
class Previous:
    """A child run found when resuming: its id, MLflow status and best metrics."""

    run_id: str
    status: str
    metrics: dict[str, float]


@dataclass
class ChildResult:
    variant: str
    seed: int
    run_id: str
    metrics: dict[str, float]
    status: str = "finished"
    error: str = ""
    resumable: bool = False  # failed on its checkpoint: fixing the file and --resume continues the study


@dataclass
class ExperimentResult:
    name: str
    parent_run_id: str
    monitor: str
    mode: str
    children: list[ChildResult] = field(default_factory=list)
    table: str = ""
    winner: str | None = None
    report: dict[str, Path] = field(default_factory=dict)
    is_main: bool = True
    below_floor: dict[str, list[str]] = field(default_factory=dict)  # variant -> tasks it is below floor on
    verdicts: dict[str, str] = field(default_factory=dict)  # task -> its floor verdict, one sentence
    label_noise: list[dict[str, Any]] = field(default_factory=list)  # core/experiment/label_noise.py records

    @property
    def failed(self) -> list[ChildResult]:
        return [c for c in self.children if c.status != "finished"]


class NullTracker:
    """What ranks other than 0 use under torchrun: the same calls, nothing recorded."""

    uri = "(not tracked on this rank)"

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def nothing(*args: Any, **kwargs: Any) -> Any:
            return [] if name == "find_runs" else ""

        return nothing


class MlflowRunLogger:
    """Trainer's logger bound to one child run; ``watch(step)``, when given, hears of every epoch logged (the
    progress display of ``lab run --jobs``)."""

    def __init__(self, tracker: Any, run_id: str, watch: Callable[[int], None] | None = None) -> None:
        self.tracker, self.run_id, self.watch = tracker, run_id, watch

    def metrics(self, values: dict[str, float], step: int) -> None:
        finite = {k: v for k, v in values.items() if v is not None and not math.isnan(v)}
        self.tracker.log_metrics(self.run_id, finite, step)
        if self.watch is not None:
            self.watch(step)

    def artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.tracker.log_artifact(self.run_id, path, artifact_path)


def config_hash(configs: list[ExperimentConfig]) -> str:
    blob = json.dumps([c.to_dict() for c in configs], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _is_metric(key: str) -> bool:
    """A task metric (``val/mask_iou``), the kind the table compares; losses are not comparable across variants
    (each variant sums its own terms), so the total and the per-term losses stay in MLflow and the report."""
    return key.startswith((f"{names.VAL_PREFIX}mask_", f"{names.VAL_PREFIX}depth_"))


def summary_table(children: list[ChildResult], monitor: str, mode: str, below_floor: dict[str, list[str]] | None = None,
                  floors: Any = None) -> tuple[str, str | None]:
    """Variant by metric (mean ± std over seeds; the value alone for one seed), the variant first by the mean of
    ``monitor`` (a ranking, not a claim), and each (variant, seed)'s run id, for ``lab predict --run``.

    A variant below a floor (``below_floor``: variant -> tasks) is marked and never first; the floors
    (:class:`~losslab.core.experiment.floors.Floors`) follow as ``[floor]`` rows.
    """
    below = below_floor or {}
    done = [c for c in children if c.status == "finished"]
    if not done:
        return "no run finished\n\n" + "\n".join(_runs_table(children)), None
    variants = list(dict.fromkeys(c.variant for c in done))
    keys = sorted({k for c in done for k in c.metrics if _is_metric(k)}, key=lambda k: (k != monitor, k))
    stats: dict[str, dict[str, list[float]]] = {
        v: {k: [c.metrics[k] for c in done if c.variant == v and k in c.metrics] for k in [*keys, monitor]}
        for v in variants
    }
    sign = 1 if mode == "max" else -1
    ranked = sorted((v for v in variants if stats[v][monitor]),
                    key=lambda v: -sign * statistics.fmean(stats[v][monitor]))
    winner = next((v for v in ranked if not below.get(v)), None)
    seeds = {v: sum(c.variant == v for c in done) for v in variants}
    rows = []
    for v in ranked + [v for v in variants if v not in ranked]:
        cells = [v + (" *" if v == winner else "") + (f" [below floor: {','.join(below[v])}]" if below.get(v) else "")]
        for k in keys:
            values = stats[v][k]
            if not values:
                cells.append("—")  # a metric this variant does not compute
            elif len(values) == 1:
                cells.append(f"{values[0]:.4f}")
            else:
                cells.append(f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}")
        cells.append(str(seeds[v]))
        rows.append(cells)
    for floor in floors.floors if floors is not None else []:
        rows.append([f"[floor] {floor.name}", *(f"{floor.scores[k]:.4f}" if k in floor.scores else "" for k in keys),
                     "-"])
    out = render_table(["variant", *(k.removeprefix(names.VAL_PREFIX) for k in keys), "seeds"], rows)
    spread = "mean ± std over seeds" if any(n > 1 for n in seeds.values()) else "one seed per variant: no spread"
    shown = "" if monitor in keys else ", a loss: not shown, as losses are not comparable across variants"
    out.append(f"* first by the mean of {monitor} ({mode}){shown}; not a claim: the verdict below says what "
               f"is significant; {spread}")
    if floors is not None:
        out.append("[floor]: a baseline fitted on the training split, no gradient training; [below floor]: not "
                   "above that task's best floor (mean and 95% interval over seeds), so it is never first")
    return "\n".join([*out, "", *_runs_table(children)]), winner


def _runs_table(children: list[ChildResult]) -> list[str]:
    """One line per (variant, seed): its MLflow run id, for ``lab predict --run`` and ``lab ui``."""
    rows = [[c.variant, str(c.seed), c.status, c.run_id] for c in children]
    return render_table(["variant", "seed", "status", "run id"], rows)


def _find_resumable_parent(tracker: Any, name: str, digest: str) -> Any | None:
    runs = tracker.find_runs(name, f"tags.`{names.ROLE_TAG}` = '{names.ROLE_PARENT}' and "
                                   f"tags.`{names.CONFIG_HASH_TAG}` = '{digest}'")
    for run in runs:
        if run.info.status != "FINISHED":
            return run
    return None


def check_data(configs: list[ExperimentConfig]) -> None:
    """Open every distinct data source once, before any MLflow run exists.

    A missing or unfinished dataset, or a bg/fg folder that is missing or holds
    no images, then fails as a config error with nothing left RUNNING in
    MLflow. Reading every image is left to the trainer (which skips bad ones).
    """
    from losslab.core.data.formats import DatasetError
    from losslab.core.data.sources import SourceError, list_images

    seen: set[str] = set()
    for cfg in configs:
        source = cfg.data.source
        key = source.model_dump_json()
        if key in seen or source.kind == "synthetic":
            continue
        seen.add(key)
        where = f"variants.{cfg.variant}: " if len(configs) > 1 else ""
        try:
            if source.kind == "dataset":
                from losslab.core.data.readers import open_dataset

                open_dataset(source.path)  # type: ignore[arg-type]
            else:
                list_images(Path(source.bg_dir), "bg")  # type: ignore[arg-type]
                list_images(Path(source.fg_dir), "fg")  # type: ignore[arg-type]
        except (DatasetError, SourceError) as exc:
            key_path = "data.source.path" if source.kind == "dataset" else "data.source"
            raise ConfigError(f"{where}{key_path}: {exc}") from None


def _fail_run(tracker: Any, run_id: str, exc: BaseException) -> None:
    """End a run as FAILED with the reason as tags; never let a tracking error hide the original one."""
    try:
        tracker.set_tags(run_id, {names.STATUS_TAG: "failed",
                                  names.ERROR_TAG: f"{type(exc).__name__}: {exc}"[:5000]})
        tracker.end_run(run_id, "FAILED")
    except Exception:
        pass


def run_experiment(
    path: Path | None = None,
    sets: list[str] | None = None,
    *,
    configs: list[ExperimentConfig] | None = None,
    tracking_uri: str | None = None,
    resume: bool = False,
    runs_dir: Path = Path("lab-runs"),
    catalog: Catalog | None = None,
    echo: Echo = _stderr,
    finish: Callable[[ExperimentResult, Path, str], None] | None = None,
    sequential: SequentialPlan | None = None,
    decide: Callable[[str, str], list[str]] | None = None,
) -> ExperimentResult:
    """Train every (variant, seed) of an experiment file (or of already resolved ``configs``).

    ``finish(result, run_root, tracking_uri)`` runs on rank 0 before the parent run ends (the CLI
    passes one that builds the report and tags the parent with the verdict). With ``sequential``
    (``lab run --until-decisive``), ``decide(parent_run_id, tracking_uri)`` is asked after each
    look which variants are still undecided, and those get the next look's seeds; see
    :mod:`losslab.core.experiment.sequential`.
    ``lab run --jobs``/``--storage`` go through :func:`losslab.core.experiment.jobs.run_study` instead.
    """
    from losslab.core.device import resolve_device
    from losslab.core.experiment.tracking import Tracker
    from losslab.core.train import distributed

    catalog = catalog or load_catalog()
    if configs is None:
        if path is None:
            raise ValueError("run_experiment needs an experiment path or resolved configs")
        configs = load_experiment(Path(path), sets, catalog)
    name = configs[0].name
    digest = config_hash(configs)
    check_data(configs)
    check_out_dir(runs_dir, "--runs-dir")
    rank = distributed.init(resolve_device(configs[0].train.device).type)
    if not rank.is_main:
        echo = _silent
    tracker: Any = Tracker(tracking_uri) if rank.is_main else NullTracker()
    echo(f"losslab: experiment {name!r}: {len(configs)} variant(s) x {len(configs[0].seeds)} seed(s); "
         f"tracking at {tracker.uri}" + (f"; {rank.world_size} processes" if rank.enabled else ""))
    parent_id, existing = _open_parent(tracker, configs, digest, resume, rank.is_main, sequential, echo)
    parent_id, existing = distributed.broadcast_object((parent_id, existing))
    result = ExperimentResult(name, parent_id, configs[0].train.monitor, configs[0].train.monitor_mode,
                              is_main=rank.is_main)
    root, floors = _train_all(configs, tracker, parent_id, existing, runs_dir, catalog, resume, echo,
                              rank.is_main, result, sequential, decide)
    _log_summary(result, floors, configs, tracker)
    if finish is not None and rank.is_main:
        finish(result, root, tracker.uri)
    _end_parent(result, tracker)
    return result


def _open_parent(tracker: Any, configs: list[ExperimentConfig], digest: str, resume: bool, is_main: bool,
                 sequential: SequentialPlan | None, echo: Echo) -> tuple[str, dict[tuple[str, int], Previous]]:
    """The parent run to log under: the unfinished one ``--resume`` finds (with its children), else a new one.

    Only rank 0 talks to MLflow; the others get ``("", {})`` and receive the real answer by broadcast.
    """
    name = configs[0].name
    parent = _find_resumable_parent(tracker, name, digest) if resume and is_main else None
    if parent is not None:
        parent_id = parent.info.run_id
        tracker.reopen(parent_id)
        existing = _previous_children(tracker, name, parent_id)
        echo(f"losslab: resuming parent run {parent_id} ({len(existing)} child run(s) found)")
        return parent_id, existing
    if not is_main:
        return "", {}
    if resume:
        echo("losslab: --resume found no unfinished run of this experiment; starting a new one")
    return _start_parent(tracker, configs, digest, sequential), {}


def _previous_children(tracker: Any, name: str, parent_id: str) -> dict[tuple[str, int], Previous]:
    """What each (variant, seed) of a resumed parent already did, so finished children are not trained twice.

    The first run found for a key wins, as MLflow lists the newest first.
    """
    existing: dict[tuple[str, int], Previous] = {}
    for child in tracker.find_runs(name, f"tags.`{names.PARENT_ID_TAG}` = '{parent_id}'"):
        key = (child.data.tags.get(names.VARIANT_TAG, ""), int(child.data.tags.get(names.SEED_TAG, -1)))
        best = {k.removeprefix(names.BEST_PREFIX): v for k, v in child.data.metrics.items()
                if k.startswith(names.BEST_PREFIX)}
        existing.setdefault(key, Previous(child.info.run_id, child.info.status, best))
    return existing


def _start_parent(tracker: Any, configs: list[ExperimentConfig], digest: str,
                  sequential: SequentialPlan | None) -> str:
    """Start a new parent run, tagged so ``--resume`` and the report can find and read it, with the resolved configs."""
    from losslab.core.experiment.tracking import version_tags

    name = configs[0].name
    tags = {
        names.ROLE_TAG: names.ROLE_PARENT, names.KIND_TAG: names.KIND_RUN, names.CONFIG_HASH_TAG: digest,
        names.VARIANTS_TAG: json.dumps([c.variant for c in configs]),
        names.SEEDS_TAG: json.dumps(configs[0].seeds), **version_tags(),
    }
    if sequential is not None:
        tags[SEQUENTIAL_TAG] = sequential.to_json()
    parent_id: str = tracker.start_run(name, name, tags)
    tracker.log_text(parent_id, "".join(f"# variant: {c.variant}\n{dump_yaml(c)}---\n" for c in configs),
                     names.CONFIG_FILE)
    return parent_id


def _train_all(configs: list[ExperimentConfig], tracker: Any, parent_id: str,
               existing: dict[tuple[str, int], Previous], runs_dir: Path, catalog: Catalog, resume: bool,
               echo: Echo, is_main: bool, result: ExperimentResult, sequential: SequentialPlan | None,
               decide: Callable[[str, str], list[str]] | None) -> tuple[Path, Any]:
    """Train every child into ``result.children``; returns the run folder and the study's floors.

    Whatever goes wrong, the parent run is closed (KILLED on Ctrl-C, FAILED otherwise) before the
    error propagates, so nothing stays RUNNING in MLflow.
    """
    try:
        # names are validated; this holds even if a check was missed
        root = safe_join(runs_dir, configs[0].name, parent_id)
        floors = study_floors(configs, catalog, tracker, parent_id, echo) if is_main else None
        if is_main:  # training labels against the validation truth, where the variants train off it
            result.label_noise = study_label_noise(configs, catalog, tracker, parent_id, echo)
        for cfg in configs:
            for seed in cfg.seeds:
                result.children.append(
                    _run_child(cfg, seed, tracker, parent_id, existing.get((cfg.variant, seed)), root,
                               catalog, resume, echo)
                )
        if sequential is not None and decide is not None:
            _extend_until_decisive(configs, sequential, decide, result, tracker, existing, root, catalog,
                                   resume, echo, is_main)
    except KeyboardInterrupt:
        tracker.end_run(parent_id, "KILLED")
        echo(f"losslab: interrupted; continue with `lab run ... --resume` (parent run {parent_id})")
        raise
    except Exception as exc:  # nothing may stay RUNNING in MLflow after a failure
        _fail_run(tracker, parent_id, exc)
        raise
    return root, floors


def _log_summary(result: ExperimentResult, floors: Any, configs: list[ExperimentConfig], tracker: Any) -> None:
    """Rank the children (after the floors), fill ``result.table``/``winner`` and log the summary JSON.

    The table, the winner and the JSON come from this one computation, so they cannot disagree.
    """
    floor_summary = apply_floors(result, floors, configs, tracker)
    result.table, result.winner = summary_table(result.children, result.monitor, result.mode,
                                                result.below_floor, floors)
    summary = {
        "monitor": result.monitor, "mode": result.mode, "first_by_mean": result.winner,
        "rows": [{"variant": c.variant, "seed": c.seed, "run_id": c.run_id, "status": c.status,
                  "metrics": {k.removeprefix(names.BEST_PREFIX): v for k, v in c.metrics.items()}}
                 for c in result.children],
        **floor_summary,
        **({names.LABEL_NOISE_KEY: result.label_noise} if result.label_noise else {}),
    }
    tracker.log_json(result.parent_run_id, summary, names.SUMMARY_FILE)


def _end_parent(result: ExperimentResult, tracker: Any) -> None:
    """Close the parent: FAILED (so ``--resume`` finds it again) when every child failed, or one failed on
    its checkpoint; FINISHED otherwise."""
    stuck = len(result.failed) == len(result.children) or any(c.resumable for c in result.failed)
    tracker.end_run(result.parent_run_id, "FAILED" if result.failed and stuck else "FINISHED")


def _extend_until_decisive(configs: list[ExperimentConfig], plan: SequentialPlan,
                           decide: Callable[[str, str], list[str]], result: ExperimentResult, tracker: Any,
                           existing: dict[tuple[str, int], Previous], root: Path, catalog: Catalog, resume: bool,
                           echo: Echo, is_main: bool) -> None:
    """After each look, the next look's seeds for the variants ``decide`` calls undecided.

    Rank 0 decides (it alone reads the tracker) and every rank of a DDP run follows its answer.
    """
    from losslab.core.train import distributed

    by_name = {c.variant: c for c in configs}
    done = {(c.variant, c.seed) for c in result.children}
    for look in range(1, len(plan.looks)):
        answer = decide(result.parent_run_id, tracker.uri) if is_main else None
        undecided = [v for v in distributed.broadcast_object(answer) if v in by_name]
        if not undecided:
            echo(f"losslab: every comparison with the best is decided after {plan.looks[look - 1]} seeds; stopping")
            return
        seeds = plan.seeds_at(look)
        echo(f"losslab: look {look + 1} of {len(plan.looks)}: {', '.join(undecided)} undecided; "
             f"training up to {len(seeds)} seeds each")
        for variant in undecided:
            cfg = by_name[variant].model_copy(update={"seeds": list(seeds)})
            for seed in seeds:
                if (variant, seed) in done:
                    continue
                done.add((variant, seed))
                result.children.append(_run_child(cfg, seed, tracker, result.parent_run_id,
                                                  existing.get((variant, seed)), root, catalog, resume, echo))
    echo(f"losslab: the seed budget ({plan.looks[-1]} per variant) is spent")


def _run_child(cfg: ExperimentConfig, seed: int, tracker: Any, parent_id: str, existing: Previous | None,
               root: Path, catalog: Catalog, resume: bool, echo: Echo, *, quiet: bool = False,
               watch: Callable[[int], None] | None = None) -> ChildResult:
    """Train one (variant, seed) as a child run (reusing the run ``existing`` names, skipping it when
    finished); a training failure is recorded in the result, so the other children still run.

    ``quiet`` trains without the run's own progress bar (a worker of ``lab run --jobs``, whose host shows one
    display for all); the config logged and the numbers trained are the same. ``watch`` hears each epoch.
    """
    from losslab.core.data.datasets import describe_split
    from losslab.core.data.formats import DatasetError
    from losslab.core.data.sources import SourceError

    # torch-heavy: loaded when a run starts
    from losslab.core.train.trainer import CheckpointError, Trainer, TrainingError

    label = f"{cfg.variant}-s{seed}"
    if existing is not None and existing.status == "FINISHED":
        echo(f"losslab: {label}: already finished in run {existing.run_id}; skipped")
        return ChildResult(cfg.variant, seed, existing.run_id, dict(existing.metrics))
    if existing is not None:
        run_id = existing.run_id
        tracker.reopen(run_id)
    else:
        run_id = tracker.start_run(cfg.name, label, {
            names.ROLE_TAG: names.ROLE_CHILD, names.VARIANT_TAG: cfg.variant, names.SEED_TAG: str(seed),
        }, parent_id=parent_id)
        tracker.log_params(run_id, {**flatten(cfg.to_dict()), "seed": seed})
        tracker.log_text(run_id, dump_yaml(cfg), names.CONFIG_FILE)
    try:
        run_dir = safe_join(root, label)
        train_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"progress": False})}) if quiet else cfg
        trainer = Trainer(train_cfg, seed, catalog, run_dir, MlflowRunLogger(tracker, run_id, watch))
        echo(f"losslab: {label}: {describe_split(trainer.parts.samples, trainer.parts.val_idx, cfg.data.val_split)}")
        outcome = trainer.fit(resume=resume)
    except KeyboardInterrupt:
        tracker.set_tags(run_id, {names.STATUS_TAG: "killed"})
        tracker.end_run(run_id, "KILLED")
        raise
    except (TrainingError, ValueError, RuntimeError, DatasetError, SourceError) as exc:
        message = str(exc)
        echo(f"losslab: {label} failed: {message}")
        tracker.set_tags(run_id, {names.STATUS_TAG: "failed", names.ERROR_TAG: message[:5000]})
        tracker.end_run(run_id, "FAILED")
        return ChildResult(cfg.variant, seed, run_id, {}, status="failed", error=message,
                           resumable=isinstance(exc, CheckpointError))
    except Exception as exc:  # unexpected: the run is still ended as FAILED before the error goes up
        _fail_run(tracker, run_id, exc)
        raise
    _log_child_outcome(tracker, run_id, run_dir, outcome)
    tracker.set_tags(run_id, {names.STATUS_TAG: "finished"})
    tracker.end_run(run_id, "FINISHED")
    shown = ", ".join(f"{k.removeprefix(names.VAL_PREFIX)}={v:.4f}" for k, v in outcome.best.items()
                      if not k.startswith((f"{names.VAL_PREFIX}mask/", f"{names.VAL_PREFIX}depth/")))
    # epochs are counted from 1 for people (MLflow's steps and best/epoch stay 0-based, see docs/tracking.md)
    echo(f"losslab: {label} done in {outcome.total_s:.1f}s (best epoch {outcome.best_epoch + 1} of "
         f"{cfg.train.epochs}): {shown}")
    return ChildResult(cfg.variant, seed, run_id, dict(outcome.best))


def _log_child_outcome(tracker: Any, run_id: str, run_dir: Path, outcome: Any) -> None:
    """Log a finished child's best metrics, best checkpoint, per-image and sample files, and (when samples
    were kept and the run is tracked) the prediction grid drawn from them."""
    from losslab.core.experiment.visualize import save_prediction_grid

    best = {f"{names.BEST_PREFIX}{k}": v for k, v in outcome.best.items()}
    tracker.log_metrics(run_id, {**best, **outcome.fit, names.TOTAL_TIME: outcome.total_s,
                                 names.BEST_EPOCH: outcome.best_epoch},
                        step=max(outcome.best_epoch, 0))
    tracker.log_artifact(run_id, outcome.best_checkpoint, names.CHECKPOINT_DIR)
    for name in (names.PER_IMAGE_FILE, names.TRAIN_PER_IMAGE_FILE, names.SAMPLES_FILE, names.CALIBRATION_FILE):
        if (run_dir / name).exists():
            tracker.log_artifact(run_id, run_dir / name)
    if (run_dir / names.SAMPLES_FILE).exists() and not isinstance(tracker, NullTracker):
        import numpy as np

        with np.load(run_dir / names.SAMPLES_FILE) as data:
            samples = {k: data[k] for k in data.files}
        if len(samples.get("fg_bg", [])):
            tracker.log_artifact(run_id, save_prediction_grid(samples, run_dir / names.PREDICTIONS_FILE))
