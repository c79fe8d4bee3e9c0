"""Reading a study back from MLflow: the parent run, its children, their histories and artifacts.

Reports are built only from what the tracker holds (``docs/tracking.md`` is the contract), so a
report made a month later on another machine says the same as the one made at the end of the run.
Everything here is plain data (dataclasses, numpy arrays); nothing downstream talks to MLflow.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from losslab.core.names import (
    BELOW_FLOOR_TAG,
    BEST_PREFIX,
    CALIBRATION_FILE,
    CONFIG_FILE,
    ERROR_TAG,
    KIND_RUN,
    KIND_TAG,
    OBJECTIVE_METRIC,
    OPTUNA_DIR,
    PARENT_ID_TAG,
    PER_IMAGE_FILE,
    ROLE_CHILD,
    ROLE_PARENT,
    ROLE_TAG,
    SAMPLES_FILE,
    SEED_TAG,
    SEEDS_TAG,
    STATUS_TAG,
    SUMMARY_FILE,
    TOTAL_TIME,
    TRAIN_PER_IMAGE_FILE,
    TRIAL_STATE_TAG,
    TRIAL_TAG,
    VARIANT_TAG,
    VARIANTS_TAG,
)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

#: A calibration record is a few hundred bytes; anything far larger is not one.
CALIBRATION_MAX_BYTES = 1_000_000
#: Columns of ``val_per_image.csv`` that describe the image rather than score it.
PER_IMAGE_ID_COLUMNS = ("index", "bg", "fg", "flip", "row", "col")


class ReportError(Exception):
    """The report cannot be built; the message says what is missing, where, and what to do."""


@dataclass
class PerImage:
    """One child's ``val_per_image.csv``: metric columns keyed by image index."""

    index: np.ndarray
    columns: dict[str, np.ndarray]
    #: What each image is (``bg``, ``fg``, ``flip``, ``row``, ``col`` where the data has recipes).
    ids: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ChildRun:
    """One (variant, seed) training run as the tracker holds it."""

    run_id: str
    name: str
    variant: str
    seed: int
    status: str
    error: str
    params: dict[str, str]
    final: dict[str, float]
    histories: dict[str, list[tuple[int, float]]]
    per_image: PerImage | None = None
    samples_path: Path | None = None
    #: The best epoch's ``val_calibration.json`` (core/train/calibration.py), where the run wrote one.
    calibration: dict[str, Any] | None = None
    #: The best weights' rows on training samples (``train_per_image.csv``, core/train/fit_check.py).
    train_per_image: PerImage | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def value(self, key: str) -> float | None:
        """The value a report uses for ``key``: ``best/<key>`` if logged, else the last logged value."""
        for candidate in (f"{BEST_PREFIX}{key}", key):
            if candidate in self.final and math.isfinite(self.final[candidate]):
                return float(self.final[candidate])
        return None


@dataclass
class Trial:
    """One trial of a tune study (a child run tagged ``losslab.trial``)."""

    run_id: str
    name: str
    number: int | None
    state: str
    objectives: dict[str, float]
    params: dict[str, str]
    #: the tasks it is below its study's floors on (``losslab.below_floor``); None: not judged
    below_floor: list[str] | None = None


@dataclass
class Study:
    """Everything a report needs about one parent run and its children."""

    tracking_uri: str
    experiment_name: str
    experiment_id: str
    parent_run_id: str
    parent_name: str
    kind: str
    tags: dict[str, str]
    params: dict[str, str]
    variants: list[str]
    seeds: list[int]
    children: list[ChildRun] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    config_text: str | None = None
    summary: dict[str, Any] | None = None
    optuna_artifacts: list[Path] = field(default_factory=list)

    @property
    def ok_children(self) -> list[ChildRun]:
        return [c for c in self.children if c.ok]

    @property
    def failed_children(self) -> list[ChildRun]:
        return [c for c in self.children if not c.ok]

    @property
    def config(self) -> dict[str, Any]:
        """The parent's resolved config parsed from YAML (empty when absent or unreadable)."""
        if not self.config_text:
            return {}
        import yaml

        try:
            loaded = yaml.safe_load(self.config_text)
        except yaml.YAMLError:
            return {}
        return loaded if isinstance(loaded, dict) else {}


def make_client(tracking_uri: str | None = None) -> MlflowClient:
    """An MLflow client on ``tracking_uri`` (default: MLflow's own resolution, e.g. the env var).

    A SQLite store that does not exist is an error here: MLflow would silently create an empty
    one, and the user would be told their experiment does not exist instead of where to look.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = str(tracking_uri or mlflow.get_tracking_uri())
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if str(path) != ":memory:" and not path.exists():
            raise ReportError(
                f"no MLflow store at {path} (tracking URI {uri}); run `lab report` in the folder where "
                "`lab run` wrote mlflow.db, or pass --tracking-uri"
            )
    return MlflowClient(tracking_uri=uri)


def resolve_parent(client: MlflowClient, ref: str) -> Run:
    """The parent run that ``ref`` names: an experiment name (its latest parent run) or a run id."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(ref)
    if experiment is not None:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = '{ROLE_PARENT}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            raise ReportError(
                f"experiment {ref!r} (id {experiment.experiment_id}) at {client.tracking_uri} has no "
                f"parent run (tag {ROLE_TAG}=parent); run `lab run` on it first, or pass a parent run id"
            )
        return runs[0]
    try:
        run = client.get_run(ref)
    except MlflowException:
        names = [e.name for e in client.search_experiments()]
        near = difflib.get_close_matches(ref, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise ReportError(
            f"{ref!r} is neither an experiment name nor a run id in the store {client.tracking_uri}."
            f"{hint} Experiments there: {', '.join(repr(n) for n in names) or 'none'}. "
            "Pass --tracking-uri if the runs are in another store."
        ) from None
    role = run.data.tags.get(ROLE_TAG)
    if role == ROLE_CHILD:
        parent_id = run.data.tags.get(PARENT_ID_TAG)
        raise ReportError(
            f"run {ref} is a child run (variant {run.data.tags.get(VARIANT_TAG)!r}); reports are built "
            f"from a parent run: use `lab report {parent_id}`"
        )
    if role != ROLE_PARENT:
        raise ReportError(
            f"run {ref} is not a losslab parent run (tag {ROLE_TAG} is {role!r}, expected 'parent'); "
            "pass the id of the run `lab run` or `lab tune` created, or the experiment name"
        )
    return run


def _json_list(raw: str | None, what: str, run_id: str) -> list[Any]:
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ReportError(
            f"tag {what} of run {run_id} is not JSON ({raw!r}); docs/tracking.md says it holds a JSON list"
        ) from None
    return list(value) if isinstance(value, list) else [value]


def _artifact_names(client: MlflowClient, run_id: str, path: str | None = None) -> dict[str, bool]:
    """Names (relative to the run's artifact root) of the artifacts under ``path``, mapped to is_dir."""
    try:
        return {f.path: f.is_dir for f in client.list_artifacts(run_id, path)}
    except Exception:
        return {}


def _download(client: MlflowClient, run_id: str, path: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(run_id, path, str(dst)))
    except Exception as exc:
        raise ReportError(
            f"could not download artifact {path!r} of run {run_id}: {type(exc).__name__}: {exc}. "
            "Check that the artifact store (mlruns/ beside mlflow.db) is reachable from here"
        ) from None


def read_per_image(path: Path) -> PerImage:
    """Parse ``val_per_image.csv``; metric columns become float arrays ordered as the file is."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return PerImage(index=np.zeros(0, dtype=np.int64), columns={})
    header = list(rows[0])
    if "index" not in header:
        raise ReportError(
            f"{path} has no 'index' column (columns: {', '.join(header)}); see docs/tracking.md"
        )
    index = np.array([int(float(r["index"])) for r in rows], dtype=np.int64)
    columns: dict[str, np.ndarray] = {}
    ids: dict[str, np.ndarray] = {}
    for name in header:
        if name in PER_IMAGE_ID_COLUMNS:
            if name != "index":
                with contextlib.suppress(TypeError, ValueError):
                    ids[name] = np.array([float(r[name]) for r in rows], dtype=np.float64)
            continue
        try:
            columns[name] = np.array([float(r[name]) for r in rows], dtype=np.float64)
        except (TypeError, ValueError):
            continue  # a non-numeric column is description, not a score
    return PerImage(index=index, columns=columns, ids=ids)


def read_calibration(path: Path) -> dict[str, Any] | None:
    """A run's calibration record, or None when the file is missing, oversized or not one (never an error:
    calibration is evidence beside the verdict, and an old run without it still reports)."""
    try:
        if not path.is_file() or path.stat().st_size > CALIBRATION_MAX_BYTES:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    keys = ("count", "confidence_sum", "positive_sum")
    if not isinstance(record, dict) or not all(isinstance(record.get(k), list) for k in keys):
        return None
    if len({len(record[k]) for k in keys}) != 1:
        return None
    try:
        return {k: [float(v) for v in record[k]] for k in keys}
    except (TypeError, ValueError):
        return None


def _histories(client: MlflowClient, run: Run) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for key in run.data.metrics:
        if key.startswith(BEST_PREFIX) or key == TOTAL_TIME:
            continue
        points = client.get_metric_history(run.info.run_id, key)
        by_step: dict[int, float] = {}
        for m in sorted(points, key=lambda m: (m.step, m.timestamp)):
            by_step[int(m.step)] = float(m.value)  # a re-logged step keeps its latest value
        out[key] = sorted(by_step.items())
    return out


def _child(client: MlflowClient, run: Run, workdir: Path) -> ChildRun:
    tags = run.data.tags
    run_id = run.info.run_id
    seed_raw = tags.get(SEED_TAG, "0")
    try:
        seed = int(seed_raw)
    except ValueError:
        raise ReportError(f"child run {run_id} has a non-integer seed tag {SEED_TAG}={seed_raw!r}") from None
    status = tags.get(STATUS_TAG) or ("failed" if run.info.status == "FAILED" else "finished")
    child = ChildRun(
        run_id=run_id,
        name=run.info.run_name or f"{tags.get(VARIANT_TAG)}-s{seed}",
        variant=tags.get(VARIANT_TAG, "?"),
        seed=seed,
        status=status,
        error=tags.get(ERROR_TAG, ""),
        params=dict(run.data.params),
        final={k: float(v) for k, v in run.data.metrics.items()},
        histories=_histories(client, run),
    )
    names = _artifact_names(client, run_id)
    here = workdir / run_id
    if PER_IMAGE_FILE in names:
        child.per_image = read_per_image(_download(client, run_id, PER_IMAGE_FILE, here))
    if TRAIN_PER_IMAGE_FILE in names:
        child.train_per_image = read_per_image(_download(client, run_id, TRAIN_PER_IMAGE_FILE, here))
    if SAMPLES_FILE in names:
        child.samples_path = _download(client, run_id, SAMPLES_FILE, here)
    if CALIBRATION_FILE in names:
        child.calibration = read_calibration(_download(client, run_id, CALIBRATION_FILE, here))
    return child


def _trial(run: Run) -> Trial:
    tags = run.data.tags
    number_raw = tags.get(TRIAL_TAG)
    try:
        number = int(number_raw) if number_raw is not None else None
    except ValueError:
        number = None
    objectives = {k: float(v) for k, v in run.data.metrics.items() if k.startswith(OBJECTIVE_METRIC)}
    return Trial(
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        number=number,
        state=tags.get(TRIAL_STATE_TAG, run.info.status.lower()),
        objectives=objectives,
        params=dict(run.data.params),
        below_floor=None if (below := tags.get(BELOW_FLOOR_TAG)) is None else [t for t in below.split(",") if t],
    )


def _children(client: MlflowClient, experiment_id: str, parent_id: str) -> list[Run]:
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PARENT_ID_TAG}` = '{parent_id}'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No per-file progress bars: a report downloads a few small files per run."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def collect(ref: str, workdir: Path, tracking_uri: str | None = None) -> Study:
    """Read the parent run ``ref`` names and everything under it; artifacts land in ``workdir``."""
    with _quiet_downloads():
        return _collect(ref, workdir, tracking_uri)


def _collect(ref: str, workdir: Path, tracking_uri: str | None) -> Study:
    client = make_client(tracking_uri)
    parent = resolve_parent(client, ref)
    parent_id = parent.info.run_id
    tags = dict(parent.data.tags)
    experiment = client.get_experiment(parent.info.experiment_id)
    variants = [str(v) for v in _json_list(tags.get(VARIANTS_TAG), VARIANTS_TAG, parent_id)]
    seeds = [int(s) for s in _json_list(tags.get(SEEDS_TAG), SEEDS_TAG, parent_id)]
    study = Study(
        tracking_uri=str(client.tracking_uri),
        experiment_name=experiment.name,
        experiment_id=experiment.experiment_id,
        parent_run_id=parent_id,
        parent_name=parent.info.run_name or parent_id,
        kind=tags.get(KIND_TAG, KIND_RUN),
        tags=tags,
        params=dict(parent.data.params),
        variants=variants,
        seeds=seeds,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    for run in _children(client, experiment.experiment_id, parent_id):
        run_tags = run.data.tags
        if TRIAL_TAG in run_tags:
            study.trials.append(_trial(run))
        elif run_tags.get(ROLE_TAG) == ROLE_CHILD or VARIANT_TAG in run_tags:
            study.children.append(_child(client, run, workdir))
    for child in study.children:  # variants that ran but are missing from the tag still count
        if child.variant not in study.variants:
            study.variants.append(child.variant)
        if child.seed not in study.seeds:
            study.seeds.append(child.seed)
    order = {v: i for i, v in enumerate(study.variants)}
    study.children.sort(key=lambda c: (order[c.variant], c.seed))
    study.trials.sort(key=lambda t: (t.number is None, t.number if t.number is not None else 0, t.name))

    names = _artifact_names(client, parent_id)
    pdir = workdir / f"parent-{parent_id}"
    if CONFIG_FILE in names:
        study.config_text = _download(client, parent_id, CONFIG_FILE, pdir).read_text()
    if SUMMARY_FILE in names:
        try:
            study.summary = json.loads(_download(client, parent_id, SUMMARY_FILE, pdir).read_text())
        except json.JSONDecodeError:
            study.summary = None
    if OPTUNA_DIR in names:
        for path, is_dir in sorted(_artifact_names(client, parent_id, OPTUNA_DIR).items()):
            if not is_dir and path.lower().endswith((".png", ".html", ".htm")):
                study.optuna_artifacts.append(_download(client, parent_id, path, pdir))
    _fill_from_summary(study)
    return study


def _fill_from_summary(study: Study) -> None:
    """Children that lack ``best/`` metrics take them from the parent's ``summary.json`` rows."""
    if not study.summary:
        return
    rows = study.summary.get("rows", [])
    by_run = {str(r.get("run_id")): r for r in rows if isinstance(r, dict)}
    for child in study.children:
        row = by_run.get(child.run_id)
        if not row:
            continue
        for key, value in (row.get("metrics") or {}).items():
            best_key = f"{BEST_PREFIX}{key}"
            if best_key not in child.final and isinstance(value, int | float):
                child.final[best_key] = float(value)
