"""Running a generation: chunks of recipes over worker processes, with a progress bar and resume.

Each worker builds its own sources, compositor (with its cache of fitted fgs)
and ground-truth producers from the plan, then takes whole chunks, so the
main process only hands out chunk numbers and recipe slices and counts what
comes back. Workers ignore Ctrl-C (the main process stops them) and, on
Linux, die with the main process even when it is killed with ``kill -9``,
so no orphan keeps writing after an interruption.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from losslab.core.data.formats import DATASET_FILE, NAME_BASE
from losslab.core.data.generate.layouts import Producer, SeedWriter
from losslab.core.data.generate.plan import GenerationError, GenerationPlan, Prepared, prepare
from losslab.core.data.generate.resume import GenerationProgress
from losslab.core.data.generate.shards import ShardWriter, recipe_table
from losslab.core.data.recipes import Recipe
from losslab.core.data.sources import SourceProblem
from losslab.core.plugin.manager import load_catalog
from losslab.core.progress import progress_bar


class GenerationInterrupted(Exception):
    """The run was stopped (Ctrl-C); completed chunks are kept for ``--resume``."""


@dataclass
class GenerationReport:
    """What a run did: counts, files skipped or converted, failed chunks, time and bytes."""

    out: Path
    count: int
    written: int
    seconds: float
    skipped: list[SourceProblem] = field(default_factory=list)
    warnings: list[SourceProblem] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    resumed_chunks: int = 0
    complete: bool = False

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


# -- the work of one process -----------------------------------------------------------------------------


class ChunkJob:
    """Everything a process needs to turn a chunk of recipes into files."""

    def __init__(self, plan: GenerationPlan, root: Path) -> None:
        _tune_malloc()
        catalog = load_catalog()
        sources = plan.inputs.build()
        mask_gt, depth_gt = plan.ground_truth(catalog)
        self.producer = Producer(sources, mask_gt, depth_gt)
        self.writer: SeedWriter | ShardWriter
        if plan.layout == "seed":
            self.writer = SeedWriter(
                root, plan.image_format, plan.jpeg_quality, plan.depth_format, plan.depth_max, plan.links
            )
        else:
            self.writer = ShardWriter(root)
        self.progress = GenerationProgress(root)

    def run(self, chunk: int, recipes: Sequence[Recipe], whole_bg: bool = False) -> tuple[int, int, str | None]:
        """(chunk, samples written, error message or None); an error costs this chunk only."""
        drain = getattr(self.producer.depth_gt, "drain_records", None)
        try:
            if drain is not None:
                drain(())  # forget what a failed chunk left behind
            lines = self.writer.write_chunk(chunk, recipes, self.producer, whole_bg)
            if drain is not None:  # before the chunk counts as done, so a done chunk always has its records
                self.progress.save_records(chunk, drain(sorted({r.bg for r in recipes})))
            self.progress.mark_done(chunk, lines)
        except Exception as exc:
            return chunk, 0, f"chunk {chunk} ({recipes[0].stem}...): {type(exc).__name__}: {exc}"
        return chunk, len(recipes), None


_JOB: ChunkJob | None = None
_INIT_ERROR: str | None = None
#: The run's recipes, set in the main process while a pool runs: forked workers inherit them, so a task
#: is a chunk number, not 1000 pickled recipes (pickling them costs the main process ~2 ms per chunk).
_PREPARED: Prepared | None = None


def _tune_malloc() -> None:
    """Keep freed memory in the heap instead of handing it back to the OS after every image.

    Each sample allocates and frees a few arrays of ~100 KB; with glibc's default
    thresholds these go back to the kernel at once and come back as fresh,
    page-faulting memory, which costs more than the arithmetic on them.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: keep the defaults
        pass


def _die_with_parent(parent: int) -> None:
    """Linux: ask the kernel to SIGTERM this worker when its parent dies (even by ``kill -9``)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _init_worker(plan_data: dict[str, Any], root: str, parent: int) -> None:
    global _JOB, _INIT_ERROR
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    if "torch" in sys.modules:  # one thread per worker: the workers already use every core
        sys.modules["torch"].set_num_threads(1)
    try:
        _JOB = ChunkJob(GenerationPlan.from_dict(plan_data), Path(root))
    except Exception as exc:  # a pool respawns a worker whose initializer raises, forever: report per chunk
        _INIT_ERROR = f"worker start-up failed: {type(exc).__name__}: {exc}"
    gc.freeze()  # see _frozen_heap; this process ends with the pool, so nothing is unfrozen


def _run_chunk(task: tuple[int, list[Recipe] | None, bool]) -> tuple[int, int, str | None]:
    chunk, recipes, whole_bg = task
    if _JOB is None:
        return chunk, 0, _INIT_ERROR or "worker not initialised"
    if recipes is None:  # a forked worker: the recipes came with the fork
        if _PREPARED is None:
            return chunk, 0, f"worker has no recipes for chunk {chunk} (not forked from the main process)"
        recipes = _PREPARED.chunk(chunk)
    return _JOB.run(chunk, recipes, whole_bg)


# -- the main process ------------------------------------------------------------------------------------


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _context() -> mp.context.BaseContext:
    """fork where available: workers inherit the loaded plugins instead of importing them again."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def generate(
    plan: GenerationPlan,
    out: Path,
    *,
    workers: int | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> GenerationReport:
    """Generate the dataset ``plan`` describes into ``out``; see the module and ``docs/data.md``."""
    say = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise GenerationError(f"--workers must be at least 1, got {workers}")
    prepared = prepare(plan, load_catalog())
    store = GenerationProgress(out)
    done = store.start(prepared.resolved, resume)
    removed = store.clean() if resume else 0
    if removed:
        say(f"resume: removed {removed} temp file(s) left by the interrupted run")
    todo = [c for c in range(prepared.n_chunks) if c not in done]
    done_samples = sum(len(prepared.chunk(c)) for c in done)
    report = GenerationReport(out=out, count=len(prepared.recipes), written=0, seconds=0.0,
                              skipped=prepared.check.skipped, warnings=prepared.check.warnings,
                              resumed_chunks=len(done))
    if resume and done:
        say(f"resume: {len(done)} of {prepared.n_chunks} chunks already done, {len(todo)} to go")
    start = time.perf_counter()
    bar = progress_bar(total=len(prepared.recipes), initial=done_samples, unit="img", desc=f"generate {plan.layout}",
               disable=not progress, smoothing=0.05, dynamic_ncols=True)
    try:
        for _chunk, n, error in _execute(prepared, out, todo, workers):
            if error:
                report.failures.append(error)
            report.written += n
            bar.update(n)
    except KeyboardInterrupt:
        bar.close()
        report.seconds = time.perf_counter() - start
        raise GenerationInterrupted(
            f"interrupted: {len(store.done())} of {prepared.n_chunks} chunks are complete in {out}; "
            "continue with the same command and --resume"
        ) from None
    bar.close()
    report.seconds = time.perf_counter() - start
    if not report.failures:
        if not (out / DATASET_FILE).exists() or todo:
            meta = _metadata(prepared)
            fits = store.records(prepared.n_chunks)
            if fits:
                meta["depth_alignment"] = fits
            store.finalize(prepared.n_chunks, meta, recipe_table(prepared.recipes))
        report.complete = True
    return report


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """Keep the garbage collector off every object that exists before the work starts.

    The plugins (torch) leave ~200,000 long-lived objects. A full collection
    walks all of them (~80 ms); in a forked worker it also writes to each
    one's header, so the kernel copies the parent's pages (system time).
    Generation makes many short-lived tuples, which trigger such collections
    every few chunks: with the old objects frozen (``gc.freeze``) they are
    skipped. They are unfrozen when the run ends.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _execute(prepared: Prepared, out: Path, todo: list[int], workers: int) -> Iterator[tuple[int, int, str | None]]:
    """Yield (chunk, samples, error) as chunks finish, in this process or in a pool."""
    if not todo:
        return
    with _frozen_heap():
        yield from _run_chunks(prepared, out, todo, workers)


def _run_chunks(prepared: Prepared, out: Path, todo: list[int], workers: int) -> Iterator[tuple[int, int, str | None]]:
    plan_data = prepared.plan.to_dict()
    if workers == 1 or len(todo) == 1:
        job = ChunkJob(prepared.plan, out)
        for chunk in todo:
            yield job.run(chunk, prepared.chunk(chunk), prepared.whole_bg(chunk))
        return
    global _PREPARED
    context = _context()
    forked = context.get_start_method() == "fork"
    tasks = ((chunk, None if forked else prepared.chunk(chunk), prepared.whole_bg(chunk)) for chunk in todo)
    _PREPARED = prepared if forked else None
    try:
        pool = context.Pool(min(workers, len(todo)), initializer=_init_worker,
                            initargs=(plan_data, str(out), os.getpid()))
        try:
            yield from pool.imap_unordered(_run_chunk, tasks)
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    finally:
        _PREPARED = None


def _metadata(prepared: Prepared) -> dict[str, Any]:
    """``dataset.json``: how to read the files back, and how they were made."""
    try:
        version = metadata.version("losslab")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    plan = prepared.plan
    meta: dict[str, Any] = {
        "format": "losslab-dataset",
        "version": 1,
        "layout": plan.layout,
        "name_base": NAME_BASE,
        "image_size": plan.inputs.image_size,
        "image_format": plan.image_format if plan.layout == "seed" else "raw",
        "depth_format": plan.depth_format if plan.layout == "seed" else "uint16-mm",
        "depth_unit": prepared.resolved["depth_unit"],
        "depth_max": plan.depth_max,
        "chunks": prepared.n_chunks,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "losslab_version": version,
        "resolved": prepared.resolved,
    }
    return meta
