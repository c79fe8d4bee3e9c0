"""The ``lab`` command line.

Only typer and the standard library are imported at module level: heavy
modules (torch, mlflow, optuna) load inside the commands that need them, so
``lab --help`` and ``lab plugins`` stay fast and never import mlflow or optuna.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from losslab.core.cli.data_commands import data_app
from losslab.core.experiment.tuning.options import TuneOptions
from losslab.core.plugin.scaffold import new_plugin

if TYPE_CHECKING:
    import subprocess

app = typer.Typer(
    name="lab",
    help="losslab: plugin-based experiments on loss functions for joint mask + depth prediction.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_app, name="data", help="Generate, convert and inspect datasets.")
new_app = typer.Typer(help="Scaffold new things.", no_args_is_help=True)
new_app.command("plugin", help="Scaffold a third-party plugin package.")(new_plugin)
app.add_typer(new_app, name="new")


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            version = metadata.version("losslab")
        except metadata.PackageNotFoundError:
            version = "0+unknown (not installed)"
        typer.echo(f"losslab {version}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print losslab's version and exit.", callback=_version,
                                          is_eager=True)] = False,
) -> None:
    """losslab: plugin-based experiments on loss functions for joint mask + depth prediction."""

TrackingUri = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite ./mlflow.db)."),
]


def fail(message: str, code: int = 2) -> None:
    """Print an actionable error (no traceback) and exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def experiment_path(ref: str) -> Path:
    """An experiment argument as a file: a path, or the name of a shipped experiment (`lab experiments`)."""
    from losslab.core.experiment.shipped import ExperimentNotFound, resolve_experiment

    try:
        return resolve_experiment(ref)
    except ExperimentNotFound as exc:
        fail(str(exc))
        raise  # unreachable: fail exits


@app.command()
def experiments() -> None:
    """List the shipped experiments: run one by name from any directory, e.g. `lab run bce_vs_dice`."""
    from losslab.core.experiment.shipped import shipped_dir, shipped_experiments

    found = shipped_experiments()
    if not found:
        fail("no shipped experiments found; is losslab installed with its package data?", code=1)
    width = max(len(s.name) for s in found)
    for item in found:
        typer.echo(f"{item.name:<{width}}  {item.description}")
    typer.echo(f"\n(from {shipped_dir()}; `lab run NAME` runs one, a path to your own YAML works too)")


@app.command()
def run(
    experiment: Annotated[str, typer.Argument(help="Experiment YAML, or a shipped experiment's name "
                                              "(`lab experiments`), e.g. bce_vs_dice.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a dotted key: train.epochs=1.")] = None,
    tracking_uri: TrackingUri = None,
    resume: Annotated[bool, typer.Option(help="Continue the latest unfinished run of this experiment.")] = False,
    runs_dir: Annotated[Path, typer.Option(help="Where checkpoints are kept.")] = Path("lab-runs"),
    report: Annotated[bool, typer.Option(help="Build the comparison report at the end.")] = True,
    nproc: Annotated[int, typer.Option(help="Train each run on N processes (DDP through torchrun).")] = 1,
    until_decisive: Annotated[bool, typer.Option(
        "--until-decisive", help="Add seeds to undecided variants (sequential plan, docs/config.md).")] = False,
    max_seeds: Annotated[int | None, typer.Option(help="Seed budget per variant for --until-decisive.")] = None,
    jobs: Annotated[int, typer.Option(help="Train the (variant, seed) runs in N worker processes on this machine "
                                           "(cores split between them; one GPU each on CUDA).")] = 1,
    storage: Annotated[str | None, typer.Option(help="Shared queue of the runs (SQLAlchemy URL, e.g. postgresql://"
                                                     "...): every `lab run` started with it joins the same study "
                                                     "(docs/distributed.md).")] = None,
) -> None:
    """Train one network per (variant, seed), log to MLflow and print the comparison table and verdict."""
    if jobs < 1:
        fail(f"--jobs must be 1 or more, got {jobs}")
    if nproc > 1 and (jobs > 1 or storage):
        fail("--nproc trains one run across N processes; --jobs/--storage spread the runs over workers: "
             "use one or the other")
    if until_decisive and (jobs > 1 or storage):
        fail("--until-decisive cannot be combined with --jobs or --storage: its looks decide which seeds come "
             "next, so the runs are not known up front; drop one of them")
    if nproc > 1:
        _launch_torchrun(nproc)
        return
    from losslab.core.config import ConfigError
    from losslab.core.experiment.floors import FloorError
    from losslab.core.experiment.tracking import TrackingError
    from losslab.core.paths import UnsafePathError
    from losslab.core.plugin.manager import PluginError
    from losslab.core.plugin.registry import RegistryError

    if until_decisive != (max_seeds is not None):
        fail("--until-decisive and --max-seeds N go together, e.g. --until-decisive --max-seeds 8")
    conclusion: list[Any] = []
    try:
        from losslab.core.experiment.runner import run_experiment
        from losslab.core.experiment.sequential import PlanError

        sequential, decide = _sequential_plan(experiment, set_, max_seeds) if until_decisive else (None, None)
        if jobs > 1 or storage:
            from losslab.core.experiment.jobs import run_study

            result = run_study(experiment_path(experiment), set_ or [], tracking_uri=tracking_uri, resume=resume,
                               runs_dir=runs_dir, finish=_report_finisher(report, conclusion), jobs=jobs,
                               storage=storage)
        else:
            result = run_experiment(experiment_path(experiment), set_ or [], tracking_uri=tracking_uri,
                                    resume=resume, runs_dir=runs_dir, finish=_report_finisher(report, conclusion),
                                    sequential=sequential, decide=decide)
    except (ConfigError, PluginError, RegistryError, TrackingError, UnsafePathError, PlanError, FloorError) as exc:
        fail(str(exc))
        return
    except KeyboardInterrupt:
        fail("interrupted; run the same command with --resume to continue", code=130)
        return
    if result.is_main:  # under torchrun only rank 0 reports
        _print_outcome(result, conclusion[0] if conclusion else None)


def _sequential_plan(experiment: str, set_: list[str] | None, max_seeds: int | None) -> tuple[Any, Any]:
    """``--until-decisive``'s plan of looks (from the experiment's seeds and ``--max-seeds``) and the report's
    test of which variants are still undecided."""
    from losslab.core.config import load_experiment
    from losslab.core.experiment.sequential import make_plan
    from losslab.reports.build import undecided_variants

    configs = load_experiment(experiment_path(experiment), set_ or [])
    return make_plan(configs[0].seeds, max_seeds or 0), undecided_variants


def _report_finisher(report: bool, conclusion: list[Any]) -> Callable[[Any, Path, str], None]:
    """The runner's ``finish`` hook: conclude the experiment (verdict tags, and the report unless
    ``--no-report``) before the parent run ends, keeping the conclusion in ``conclusion`` for printing."""

    def finish(result: Any, root: Path, uri: str) -> None:
        from losslab.reports.build import conclude

        def warn(message: str) -> None:
            typer.echo(message, err=True)

        conclusion.append(conclude(result.parent_run_id, root / "report" if report else None, uri, warn))

    return finish


def _print_outcome(result: Any, done: Any) -> None:
    """Print the table, the floor verdicts and the report's conclusion; exit 1 when any run failed."""
    typer.echo("")
    typer.echo(result.table)
    for sentence in result.verdicts.values():  # each task against its floors (core/experiment/floors.py)
        typer.echo(sentence)
    if done is not None:
        for fmt, path in done.report.items():
            typer.echo(f"report ({fmt}): {path}")
        typer.echo(f"\n{done.winner_line}; parent run {result.parent_run_id}")
        typer.echo("verdict: " + " ".join(done.verdict))
    if result.failed:
        fail(f"{len(result.failed)} of {len(result.children)} run(s) failed: "
             + "; ".join(f"{c.variant}-s{c.seed}: {c.error}" for c in result.failed), code=1)


def _launch_torchrun(nproc: int) -> None:
    """Re-run this very command under torchrun on one machine (see docs/distributed.md for several)."""
    args = list(sys.argv[1:])
    for i, arg in enumerate(args):
        if arg == "--nproc":
            del args[i : i + 2]
            break
        if arg.startswith("--nproc="):
            del args[i]
            break
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "losslab.core.cli.main", *args]
    typer.echo("launching: " + " ".join(command[2:]), err=True)
    os.execvp(command[0], command)


@app.command()
def plugins(
    kind: Annotated[str | None, typer.Option(help="Only this kind: generator, ground_truth, augmentation, "
                                                  "architecture, loss, metric, weighting, baseline.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also each component's task, input kind and "
                                          "parameters (name, type, default, meaning); architectures: size "
                                          "and FLOPs.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the component reference as Markdown "
                                           "(what docs/components.md holds for the built-ins).")] = False,
    size: Annotated[int, typer.Option(help="Input size for --verbose FLOPs.")] = 64,
) -> None:
    """List every registered component: kind, name, plugin, distribution and version, summary."""
    from losslab.core.plugin.manager import PluginError, load_catalog
    from losslab.core.plugin.registry import KINDS, RegistryError

    if kind is not None:
        kind = kind.replace("-", "_")
        if kind not in KINDS:
            fail(f"--kind {kind!r} is not a component kind; choose one of {', '.join(KINDS)}")
    try:
        catalog = load_catalog()
    except PluginError as exc:
        fail(str(exc))
        return
    if markdown:
        from losslab.core.plugin.catalog_docs import markdown as render

        if kind is not None:
            catalog = _only_kind(catalog, kind)
        try:
            typer.echo(render(catalog), nl=False)
        except RegistryError as exc:
            fail(str(exc))
        return
    components = catalog.components(kind)
    rows = []
    for component in components:
        source = f"{component.distribution} {component.version}".strip()
        rows.append((component.kind, component.name, component.plugin, source, component.summary))
    headers = ("kind", "name", "plugin", "distribution", "summary")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers[:-1])]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    typer.echo(fmt.format(*headers))
    for component, row in zip(components, rows, strict=True):
        typer.echo(fmt.format(*row))
        if verbose:
            for line in _verbose_lines(component, size):
                typer.echo(line)
    for failure in catalog.failures:
        typer.secho(f"skipped plugin {failure.plugin!r} ({failure.distribution}): {failure.error}",
                    fg=typer.colors.YELLOW, err=True)


def _only_kind(catalog, kind: str):
    from losslab.core.plugin.registry import Catalog

    only = Catalog()
    only.registries[kind] = catalog[kind]
    return only


def _verbose_lines(component, size: int) -> list[str]:
    """Parameters (and an architecture's size) under a component's row; a component that cannot be
    imported says why there instead of stopping the listing."""
    from losslab.core.plugin.catalog_docs import terminal_lines
    from losslab.core.plugin.registry import RegistryError

    try:
        lines = terminal_lines(component)
    except RegistryError as exc:
        return [f"    could not describe it: {exc}"]
    if component.kind == "architecture":
        lines.append("   " + _describe_architecture(component, size))
    return lines


def _describe_architecture(component, size: int) -> str:
    try:
        from losslab.core.train.profiling import profile_model

        stats = profile_model(component.create(), size)
        return f" {stats['params'] / 1e6:.2f} M params, {stats['flops'] / 1e9:.3f} GFLOPs at {size}x{size}"
    except Exception as exc:
        return f" could not profile: {type(exc).__name__}: {exc}"


@app.command()
def predict(
    bg: Annotated[Path, typer.Option(help="A bg image, or a folder of them.")],
    fg_bg: Annotated[Path, typer.Option("--fg-bg", help="The fg_bg image, or a folder of them.")],
    out: Annotated[Path, typer.Option(help="Output folder for <name>_mask.png and <name>_depth.png.")],
    run_id: Annotated[str | None, typer.Option("--run", help="The parent run id `lab run` prints, or a child's.")] \
    = None,
    variant: Annotated[str | None, typer.Option(help="With a parent --run: this variant (default: the winner).")] \
    = None,
    seed: Annotated[int | None, typer.Option(help="With a parent --run: this seed (default: the variant's best).")]
    = None,
    checkpoint: Annotated[Path | None, typer.Option(help="A best.pt / last.pt checkpoint file.")] = None,
    tracking_uri: TrackingUri = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = "auto",
) -> None:
    """Predict mask and depth PNGs for one (bg, fg_bg) pair or two folders of pairs."""
    from losslab.core.experiment.predict import PredictError, predict_paths
    from losslab.core.experiment.tracking import TrackingError
    from losslab.core.paths import UnsafePathError, check_out_dir

    if (run_id is None) == (checkpoint is None):
        fail("give exactly one of --run RUN_ID or --checkpoint PATH")
    if run_id is None and (variant is not None or seed is not None):
        fail("--variant and --seed choose a child of a --run parent; a --checkpoint is one model already")
    try:
        check_out_dir(out)
        written = predict_paths(bg, fg_bg, out, run_id=run_id, checkpoint=checkpoint, tracking_uri=tracking_uri,
                                device=device, variant=variant, seed=seed, echo=lambda m: typer.echo(m, err=True))
    except (PredictError, TrackingError, UnsafePathError) as exc:
        fail(str(exc))
        return
    typer.echo(f"wrote {len(written)} prediction pair(s) to {out}")


@app.command()
def ui(
    tracking_uri: TrackingUri = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    experiment: Annotated[str | None, typer.Option(help="Experiment to open (default: the one of the latest "
                                                   "`lab run`).")] = None,
    browser: Annotated[bool, typer.Option(help="Open the URL in a web browser.")] = True,
    startup_timeout: Annotated[float, typer.Option(help="Seconds to wait for the server to answer.")] = 120.0,
) -> None:
    """Serve the MLflow UI on the same store (127.0.0.1) and open the experiment's runs table.

    The page shows the latest run's child runs (one per variant and seed), sorted by the monitored metric,
    with the headline metrics as columns. Exits non-zero when it cannot serve (e.g. the port is busy).
    """
    import signal
    import webbrowser

    busy = _port_busy(port)
    if busy:
        fail(f"cannot serve the MLflow UI on 127.0.0.1:{port}: {busy}; stop what uses it (another `lab ui`?) "
             "or pass --port N", code=1)
    from losslab.core.experiment.tracking import Tracker
    from losslab.core.experiment.ui_view import ViewError, prepare_view

    tracker = Tracker(tracking_uri)
    try:
        view = prepare_view(tracker.client, experiment)
    except ViewError as exc:
        fail(str(exc))
        return
    base = f"http://127.0.0.1:{port}"
    server = _start_server(tracker.uri, port)
    signal.signal(signal.SIGTERM, _interrupt)  # stopped by a scheduler or a test: still stop the server
    try:
        _wait_until_serving(server, base, startup_timeout)
        url = base + (view.path if view else "/")
        where = f"experiment {view.experiment!r}" + (f", run {view.parent_id}" if view and view.parent_id else "") \
            if view else "no experiment yet"
        typer.echo(f"MLflow UI for {tracker.uri} ({where}):\n{url}\n(Ctrl-C to stop)", err=False)
        if browser:
            webbrowser.open(url)
        code = server.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        _stop_group(server)
    if code:
        fail(f"the MLflow server stopped with code {code}", code=1)


def _start_server(uri: str, port: int) -> subprocess.Popen[bytes]:
    """Start ``mlflow ui`` on ``uri`` in its own process group, so it is stopped as a whole."""
    import subprocess

    # one worker and no GenAI job runner (a dozen background processes): browsing runs needs neither, and
    # the server answers in seconds instead of a minute on a small machine
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.Popen(command, env=env, start_new_session=True)


def _wait_until_serving(server: subprocess.Popen[bytes], base: str, startup_timeout: float) -> None:
    """Poll ``/health`` until the server answers; fail if it exits first or stays silent past the timeout."""
    import time
    import urllib.request

    deadline = time.monotonic() + startup_timeout
    while True:
        if server.poll() is not None:
            fail(f"the MLflow server exited with code {server.returncode} before serving {base}", code=1)
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            fail(f"the MLflow server did not answer at {base} within {startup_timeout:.0f} s", code=1)
        time.sleep(0.3)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop_group(server) -> None:
    """Stop the server and every process it started (uvicorn workers), by its process group."""
    import signal
    import subprocess

    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _port_busy(port: int) -> str | None:
    """Why 127.0.0.1:``port`` cannot be bound (None when it can): MLflow itself exits 0 on a busy port."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


@app.command()
def report(
    ref: Annotated[str, typer.Argument(help="Experiment name (its latest run) or a parent run id.")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("reports-out"),
    format: Annotated[str, typer.Option("--format", help="Comma-separated: html, md.")] = "html,md",
    tracking_uri: TrackingUri = None,
) -> None:
    """Build the comparison report of a run or experiment from what MLflow holds."""
    from losslab.core.cli.report_commands import report as build

    build(ref, out=out, format=format, tracking_uri=tracking_uri)


_TUNE = TuneOptions()  # the defaults, defined once in core/experiment/tuning/options.py


@app.command()
def tune(
    experiment: Annotated[str, typer.Argument(help="Experiment YAML with a search: block, or a shipped "
                                              "experiment's name (e.g. tune_loss_weights).")],
    trials: Annotated[int, typer.Option(help="Trials to run (in total across workers of the study).")] = _TUNE.trials,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default: sqlite optuna.db).")] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: the experiment's name).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop starting trials after this many seconds.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a dotted key.")] = None,
    tracking_uri: TrackingUri = None,
    runs_dir: Annotated[Path, typer.Option(help="Where trial checkpoints are kept.")] = _TUNE.runs_dir,
    report: Annotated[bool, typer.Option(help="Build the study's report at the end.")] = True,
) -> None:
    """Search loss weights (and any dotted key) with Optuna, tracked in MLflow."""
    from losslab.core.cli.tune_commands import tune as run_tune

    options = TuneOptions(trials=trials, storage=storage, study=study, timeout=timeout, sets=tuple(set_ or ()),
                          tracking_uri=tracking_uri, runs_dir=runs_dir)
    run_tune(experiment_path(experiment), options, report=report)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
