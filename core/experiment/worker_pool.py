"""The local worker pool of ``lab run --jobs N``: spawned processes that claim and train a study's cells.

:mod:`losslab.core.experiment.jobs` decides what a study is and how it ends; this module only runs its cells
in N processes on this machine: it splits the cores (and, on CUDA, the GPUs) between them, spawns them, shows
one progress display fed by them through a queue, and names a worker that died. What a worker does is
``jobs.worker_main``, handed in by the caller, so this module never imports ``jobs``.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Protocol

from losslab.core.experiment.cells import Cell, label

Echo = Callable[[str], None]


class PoolJob(Protocol):
    """What the pool reads of a study (``jobs.CellJob``; a protocol, so this module does not import ``jobs``)."""

    @property
    def name(self) -> str: ...

    @property
    def configs(self) -> list[Any]: ...

    @property
    def heartbeat(self) -> Any: ...

    def cells(self) -> list[Cell]: ...

    def epochs(self, cell: Cell) -> int: ...


#: A spawned worker's entry point, a module-level function (spawn pickles it by name):
#: ``worker(job, rank, env, threads, messages)``.
Worker = Callable[[Any, int, dict[str, str], int, Any], None]
MSG_ECHO, MSG_START, MSG_EPOCH, MSG_DONE = "echo", "start", "epoch", "done"


def worker_settings(jobs: int, device_type: str, echo: Echo) -> tuple[list[dict[str, str]], int]:
    """Each worker's environment and torch thread count: the host's cores split evenly (``OMP_NUM_THREADS``, if
    set, caps a worker's share) and, on CUDA, one visible GPU per worker, round robin."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // jobs)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and int(cap) > 0:
        threads = min(threads, int(cap))
    base = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    envs = [dict(base) for _ in range(jobs)]
    if device_type == "cuda":
        import torch

        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = ([g.strip() for g in shown.split(",") if g.strip()] if shown
                else [str(i) for i in range(torch.cuda.device_count())])
        if gpus:
            if jobs > len(gpus):
                echo(f"losslab: {jobs} workers on {len(gpus)} GPU(s): some GPUs train two cells at once")
            for rank, env in enumerate(envs):
                env["CUDA_VISIBLE_DEVICES"] = gpus[rank % len(gpus)]
    return envs, threads


def host_workers(job: PoolJob, jobs: int, echo: Echo, worker: Worker,
                 measure: Callable[[], None] | None = None) -> None:
    """Spawn ``jobs`` processes running ``worker`` on the queue, run ``measure`` meanwhile, show their progress as
    one display, and return once every worker has exited (each exits when no cell is left, or dies). Dead
    workers are named."""
    import multiprocessing

    from losslab.core.device import resolve_device

    envs, threads = worker_settings(jobs, resolve_device(job.configs[0].train.device).type, echo)
    ctx = multiprocessing.get_context("spawn")  # no fork: torch, MLflow and SQLite handles do not survive one
    messages = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(job, rank, envs[rank], threads, messages),
                         name=f"lab-worker-{rank}") for rank in range(jobs)]
    echo(f"losslab: {len(job.cells())} run(s) on {jobs} worker processes, {threads} torch thread(s) each"
         + "".join(f"; worker {r} on GPU {e['CUDA_VISIBLE_DEVICES']}" for r, e in enumerate(envs)
                   if "CUDA_VISIBLE_DEVICES" in e))
    for proc in procs:
        proc.start()
    display: Display | None = None
    try:
        if measure is not None:
            measure()
        display = Display(job, echo)
        while True:
            try:
                display.handle(messages.get(timeout=0.5))
            except queue.Empty:
                if all(p.exitcode is not None for p in procs):
                    break
        while True:  # whatever the last workers sent before exiting
            try:
                display.handle(messages.get_nowait())
            except queue.Empty:
                break
    except BaseException:
        for proc in procs:  # on Ctrl-C they got the signal too and give their cells back; give them a moment
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
        raise
    finally:
        if display is not None:
            display.close()
    for rank, proc in enumerate(procs):
        proc.join()
        if proc.exitcode:
            where = f" while training {display.running[rank]}" if display and display.running.get(rank) else ""
            echo(f"losslab: worker {rank} exited with code {proc.exitcode}" + (
                f"{where}; that cell goes to another worker once its heartbeat is {job.heartbeat.grace} s old, "
                "or is reported untrained if none is left" if where else ""))


class Display:
    """The host's one progress display: epochs trained over all cells, the runs in flight, the workers' lines."""

    def __init__(self, job: PoolJob, echo: Echo) -> None:
        from losslab.core.progress import progress_bar

        self.echo = echo
        self.epochs = {label(c): job.epochs(c) for c in job.cells()}
        self.seen: dict[str, int] = {}
        self.running: dict[int, str] = {}
        self.bar = progress_bar(total=sum(self.epochs.values()), unit="epoch", desc=f"{job.name}", dynamic_ncols=True)

    def say(self, text: str) -> None:
        writing = getattr(type(self.bar), "external_write_mode", None)
        with writing() if writing is not None else nullcontext():
            self.echo(text)

    def _advance(self, run: str, epochs: int) -> None:
        epochs = min(epochs, self.epochs.get(run, epochs))
        if epochs > self.seen.get(run, 0):
            self.bar.update(epochs - self.seen.get(run, 0))
            self.seen[run] = epochs

    def handle(self, message: tuple[Any, ...]) -> None:
        kind, rank = message[0], message[1]
        if kind == MSG_ECHO:
            self.say(message[2])
        elif kind == MSG_START:
            self.running[rank] = message[2]
        elif kind == MSG_EPOCH:
            self._advance(message[2], int(message[3]) + 1)
        elif kind == MSG_DONE:
            self._advance(message[2], self.epochs.get(message[2], 0))
            self.running.pop(rank, None)
        self.bar.set_postfix_str(", ".join(self.running[r] for r in sorted(self.running)))

    def close(self) -> None:
        self.bar.close()
