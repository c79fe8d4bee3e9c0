"""MLflow tracking behind a small facade, imported lazily (``import mlflow`` costs about 2 s).

The default store is a local SQLite file ``mlflow.db`` in the working
directory, with artifacts in ``mlruns/`` beside it; ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` choose another, a remote server included. The layout
written here is the contract in ``docs/tracking.md``.

Before any run is created the store is checked: an unknown URI scheme, or an
HTTP server that does not answer within ``LOSSLAB_TRACKING_TIMEOUT`` seconds
(default 5), is a :class:`TrackingError` with a message instead of a
``KeyError`` or a minute of MLflow's retries. A local SQLite store is
initialised (tables created, migrations run) under an exclusive lock on
``<db>.lock``, so processes that start at once on a fresh ``mlflow.db`` do
not race in alembic.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from losslab.core import names

DEFAULT_DB = "mlflow.db"
PARAM_VALUE_LIMIT = 6000
TIMEOUT_ENV = "LOSSLAB_TRACKING_TIMEOUT"
#: Schemes MLflow's tracking store registry knows without plugins (plugins add theirs by entry point).
BUILTIN_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks",
                   "databricks-uc", "uc")


class TrackingError(Exception):
    """The tracking store cannot be used; the message names the URI and says what to do."""


def _scheme(uri: str) -> str:
    from urllib.parse import urlparse

    if len(uri) > 1 and uri[1] == ":" and uri[0].isalpha():  # a Windows drive, not a scheme
        return ""
    scheme = urlparse(uri).scheme
    return scheme.split("+", 1)[0]  # postgresql+psycopg2 -> postgresql


def known_schemes() -> set[str]:
    from importlib.metadata import entry_points

    return set(BUILTIN_SCHEMES) | {ep.name for ep in entry_points(group="mlflow.tracking_store")}


def timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        return float(text) if text else 5.0
    except ValueError:
        raise TrackingError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds; set e.g. 5 or unset it") from None


def check_tracking_uri(uri: str) -> None:
    """Refuse, with a message, a URI whose scheme MLflow does not know, or a server that does not answer."""
    scheme = _scheme(uri)
    if scheme not in known_schemes():
        raise TrackingError(
            f"tracking URI {uri!r}: unknown scheme {scheme!r}; use sqlite:///path/to/mlflow.db, a folder path, "
            "or http(s)://host:port of an MLflow server (--tracking-uri or MLFLOW_TRACKING_URI)")
    if scheme in ("http", "https"):
        _check_reachable(uri)


def _check_reachable(uri: str) -> None:
    """Any HTTP answer (even an error status) means a server is there; no answer in time is an error."""
    import urllib.error
    import urllib.request

    limit = timeout_s()
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=limit):
            pass
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TrackingError(
            f"tracking URI {uri}: no MLflow server answered within {limit:g} s ({reason}); start it "
            f"(`mlflow server --port ...`), check the address, or raise {TIMEOUT_ENV}") from None


def _init_sqlite_store(uri: str) -> None:
    """Create (or migrate) a SQLite store once, holding an exclusive lock on ``<db>.lock`` meanwhile.

    MLflow creates tables and runs its alembic migrations on first use; two
    processes doing so at once on a fresh file crash one of them ("duplicate
    column name"). The second waits here, then finds the schema ready.
    """
    from mlflow.tracking import MlflowClient

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (concurrent first starts are then the user's care)
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        return
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def default_tracking_uri(explicit: str | None = None) -> str:
    """``explicit`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<cwd>/mlflow.db``."""
    if explicit:
        return explicit
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def artifact_root_for(uri: str) -> str | None:
    """Artifacts of a local SQLite store live in ``mlruns/`` beside the database file."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "mlruns").resolve().as_uri()
    return None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def version_tags() -> dict[str, str]:
    import torch

    from losslab.core.plugin.manager import _losslab_version

    return {
        names.VERSION_TAG: _losslab_version(),
        names.TORCH_TAG: torch.__version__,
        names.CUDA_TAG: torch.version.cuda or "none",
        names.GIT_COMMIT_TAG: git_commit(),
    }


class Tracker:
    """Parent and child runs through ``MlflowClient`` (explicit run ids, no global active-run stack)."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.uri = default_tracking_uri(tracking_uri)
        check_tracking_uri(self.uri)
        # a server that goes away mid-run fails in seconds, not after MLflow's default minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        import logging

        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        if self.uri.startswith("sqlite:///"):
            _init_sqlite_store(self.uri)

        self.client = MlflowClient(tracking_uri=self.uri)

    # -- runs ----------------------------------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        # the experiment kind makes MLflow 3's UI open it on "Training runs", not on its GenAI overview
        try:
            return self.client.create_experiment(name, artifact_location=artifact_root_for(self.uri),
                                                 tags={"mlflow.experimentKind": "custom_model_development"})
        except Exception:
            # two workers starting together both found no experiment and both created it: the store
            # keeps one and refuses the other's (a unique name); use the one it kept
            again = self.client.get_experiment_by_name(name)
            if again is None:
                raise
            return again.experiment_id

    def start_run(self, experiment: str, run_name: str, tags: dict[str, str],
                  parent_id: str | None = None) -> str:
        all_tags = dict(tags)
        if parent_id:
            all_tags[names.PARENT_ID_TAG] = parent_id
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=all_tags)
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def find_runs(self, experiment: str, filter_string: str, max_results: int = 1000) -> list[Any]:
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return list(self.client.search_runs([found.experiment_id], filter_string=filter_string,
                                            max_results=max_results, order_by=["attributes.start_time DESC"]))

    # -- logging -------------------------------------------------------------------------------------

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            try:
                self.client.set_tag(run_id, key, str(value))
            except Exception:
                # two workers setting one new tag at once (the parent's, at the end of a shared study): a SQL
                # store inserts for both and refuses the second on the row's key. The row exists now, so a
                # second try is an update, as a later sequential set would be; any other failure is raised
                if key not in self.client.get_run(run_id).data.tags:
                    raise
                self.client.set_tag(run_id, key, str(value))

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], str(v)[:PARAM_VALUE_LIMIT]) for k, v in params.items()]
        existing = self.client.get_run(run_id).data.params
        items = [p for p in items if p.key not in existing]  # a resumed run keeps its params
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[start : start + 500])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / Path(name).name
            file.write_text(text)
            parent = str(Path(name).parent)
            self.log_artifact(run_id, file, None if parent == "." else parent)

    def log_json(self, run_id: str, data: Any, name: str) -> None:
        self.log_text(run_id, json.dumps(data, indent=2, default=str), name)

    def download(self, run_id: str, path: str, dst: Path) -> Path:
        import mlflow

        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst),
                                                        tracking_uri=self.uri))
