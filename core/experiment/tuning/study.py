"""The Optuna side of a study: storage with heartbeats, sampler, pruner, and the shared trial budget.

Several ``lab tune`` processes, on one machine or many, share a study through
one storage URL. ``--trials N`` is the study's total, not each worker's share,
and it must come out exact: ``MaxTrialsCallback`` checks after a trial ends,
so two workers that each see N-1 finished trials both start one more. Here a
worker first creates its trial, whose number the storage hands out under a
lock, then counts the trials that hold a place *before* that number; when N of
them do, the new trial is surplus: it is closed unrun (FAIL, user attribute
``losslab.surplus``) and the worker stops. Lower numbers always win, so every
worker reaches the same verdict without talking to the others.

A trial holds a place while it is waiting, running or finished, except a
trial whose retry replaced it (a dead worker's trial, failed by the heartbeat
check and queued again as a new WAITING trial) and surplus trials.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from losslab.core.experiment.tuning.space import HeartbeatSpec, SearchSpace
from losslab.core.names import CONFIG_HASH_ATTR, SURPLUS_ATTR, WORKER_ATTR

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

DEFAULT_STORAGE_FILE = "optuna.db"
RUN_ATTR = "mlflow_run_id"
FAIL_REASON_ATTR = "fail_reason"


class StudyError(Exception):
    """The study cannot be opened or resumed as asked; the message says why and what to do."""


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Heartbeats, retries and the matplotlib plots are marked experimental; that is no news to a user."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # ask/tell with heartbeats is what this package does on purpose (see ``worker``)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


def safe_name(name: str) -> str:
    """A study name as a file or folder name."""
    import re

    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


def default_storage(tracking_uri: str | None) -> str:
    """``sqlite:///<dir>/optuna.db`` beside a local ``mlflow.db`` (else in the working directory)."""
    folder = Path.cwd()
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent
    return f"sqlite:///{folder / DEFAULT_STORAGE_FILE}"


def normalize_storage(url: str) -> str:
    """A relative SQLite path made absolute, so every worker started in this folder names the same file."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        return f"sqlite:///{Path(url.removeprefix('sqlite:///')).resolve()}"
    return url


def public_storage(url: str) -> str:
    """The storage URL without its password: what MLflow tags and messages may show."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


class StaleTrialHandler:
    """Called by Optuna for each trial whose worker stopped sending heartbeats.

    It queues the trial again (Optuna's retry callback, same parameters) and
    closes its MLflow run as failed, saying why; ``on_stale`` is set once the
    MLflow side is ready.
    """

    def __init__(self, max_retry: int) -> None:
        from optuna.storages import RetryFailedTrialCallback

        with quiet_optuna():
            self.retry = RetryFailedTrialCallback(max_retry=max_retry)
        self.max_retry = max_retry
        self.on_stale: Any = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with quiet_optuna():
            self.retry(study, trial)
        if self.on_stale is not None:
            self.on_stale(study, trial)


def open_storage(url: str, hb: HeartbeatSpec, handler: StaleTrialHandler) -> Any:
    """An ``RDBStorage`` with heartbeats (``lab tune``'s trials, ``lab run``'s cells); any SQLAlchemy URL works."""
    import inspect

    from optuna.storages import RDBStorage

    kwargs: dict[str, Any] = {"heartbeat_interval": hb.interval, "grace_period": hb.grace}
    if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage).parameters:
        kwargs["heartbeat_stale_trial_callback"] = handler
    else:  # optuna < 4.9
        kwargs["failed_trial_callback"] = handler
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Two processes on one SQLite file wait for each other's writes instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": 60}}
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(4):  # workers starting together on a fresh database race to create its tables
        try:
            with quiet_optuna():
                return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except ImportError as exc:
            raise StudyError(f"--storage {public_storage(url)}: the database driver is not installed ({exc}); "
                             "install it (e.g. psycopg2-binary for postgresql://, pymysql for mysql+pymysql://)"
                             ) from None
        except Exception as exc:
            last = exc
            if "Could not parse" in str(exc) or "Can't load plugin" in str(exc):
                break
            time.sleep(0.5 * (attempt + 1))
    raise StudyError(f"--storage {public_storage(url)}: could not open the Optuna storage: "
                     f"{type(last).__name__}: {last}. Give a SQLAlchemy URL such as sqlite:///optuna.db or "
                     "postgresql://user:password@host/db")


def make_sampler(space: SearchSpace, seed: int) -> Any:
    """The search's sampler, seeded with ``seed`` (one trial's sampler; see :func:`trial_seeded_sampler`)."""
    import optuna

    s = space.sampler
    name = space.sampler_name
    with quiet_optuna():
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=s.population_size or 8)
        kwargs: dict[str, Any] = {"seed": seed, "multivariate": s.multivariate}
        if s.n_startup_trials is not None:
            kwargs["n_startup_trials"] = s.n_startup_trials
        return optuna.samplers.TPESampler(**kwargs)


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number``'s sampler: the search's seed plus the number the storage gave the trial."""
    return (seed + number) % 2**32


def trial_seeded_sampler(space: SearchSpace, seed: int) -> Any:
    """A sampler that draws each trial from a fresh sampler seeded by :func:`trial_seed` of that trial's number.

    The storage hands out trial numbers under a lock, so no two trials of a study share one, even
    when two workers create their trials at the same moment and see the same history: their draws come
    from different seeds. (Seeding from the number of trials seen before ``ask``, as losslab once did,
    gave two such workers the same seed and the same parameters.) One worker alone numbers its trials
    0, 1, 2, ..., so its study is reproducible from the seed. Only Optuna's public sampler interface
    is used: ``before_trial`` runs when the trial exists and before anything is sampled for it.
    """
    return _trial_seeded_class()(lambda number: make_sampler(space, trial_seed(seed, number)))


@functools.cache
def _trial_seeded_class() -> type:
    import optuna

    class TrialSeededSampler(optuna.samplers.BaseSampler):
        def __init__(self, factory: Any) -> None:
            self._factory = factory
            self._inner = factory(0)

        def before_trial(self, study: Any, trial: Any) -> None:
            self._inner = self._factory(trial.number)
            self._inner.before_trial(study, trial)

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
            return self._inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self._inner.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self._inner.reseed_rng()

    return TrialSeededSampler


def make_pruner(space: SearchSpace, epochs: int) -> Any:
    import optuna

    p = space.pruner
    name = space.pruner_name
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=epochs,
                                              reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(storage: Any, name: str, space: SearchSpace, epochs: int, seed: int, config_hash: str) -> Any:
    """Create the study, or load it when it exists (a resumed or shared study); check it matches."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=name, directions=list(space.directions),  # type: ignore[arg-type]  # validated as 'maximize'/'minimize' in space
                                sampler=trial_seeded_sampler(space, seed), pruner=make_pruner(space, epochs),
                                load_if_exists=True)
    found = [d.name.lower() for d in study.directions]
    if found != list(space.directions):
        raise StudyError(f"study {name!r} already exists in this storage with direction(s) {found}, but the "
                         f"experiment asks for {list(space.directions)} ({', '.join(space.metrics)}); name a new "
                         "study with --study NAME")
    recorded = study.user_attrs.get(CONFIG_HASH_ATTR)
    if recorded is None:
        study.set_user_attr(CONFIG_HASH_ATTR, config_hash)
    elif recorded != config_hash:
        raise StudyError(f"study {name!r} was started from a different experiment config (hash {recorded}, now "
                         f"{config_hash}); its trials would not be comparable. Resume it with the same file and "
                         "--set values, or start a new study with --study NAME")
    return study


# -- the budget ----------------------------------------------------------------------------------------


def superseded(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of trials replaced by a retry (a retry lists what it replaces in ``retry_history``)."""
    out: set[int] = set()
    for t in trials:
        out.update(int(n) for n in t.system_attrs.get("retry_history", []))
    return out


def holds_place(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count toward ``--trials``: waiting, running or finished, not replaced, not surplus."""
    gone = superseded(trials)
    return [t for t in trials if t.number not in gone and not t.user_attrs.get(SURPLUS_ATTR)]


def places_taken(trials: Sequence[FrozenTrial]) -> int:
    """Places taken by trials that started (waiting ones are popped by the next ``ask`` and re-counted)."""
    from optuna.trial import TrialState

    return sum(t.state != TrialState.WAITING for t in holds_place(trials))


def places_before(trials: Sequence[FrozenTrial], number: int) -> int:
    """Places held by trials numbered below ``number``: the claim test for a just-created trial."""
    return sum(t.number < number for t in holds_place(trials))


def waiting(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    from optuna.trial import TrialState

    return [t for t in holds_place(trials) if t.state == TrialState.WAITING]


def running_elsewhere(trials: Sequence[FrozenTrial], mine: str) -> list[FrozenTrial]:
    """Running trials of other ``lab tune`` workers: each has a heartbeat, so each ends or is found dead."""
    from optuna.trial import TrialState

    return [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get(WORKER_ATTR)
            and t.user_attrs.get(WORKER_ATTR) != mine]


def finished(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that count and have ended: complete, pruned or failed."""
    return [t for t in holds_place(trials) if t.state.is_finished()]


class Heartbeat:
    """Records the running trial's heartbeat every ``interval`` seconds, from a daemon thread."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a missed beat is retried; the grace period absorbs it
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=max(1.0, self.interval))
