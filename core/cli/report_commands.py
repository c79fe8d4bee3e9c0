"""``lab report``: the command-line face of :func:`losslab.reports.build.build_report`.

The lead mounts :func:`report` on the ``lab`` app (``app.command()(report)``); it is a plain
typer command function so it can also be tested on its own app.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer


def report(
    ref: Annotated[str, typer.Argument(help="Experiment name (its latest parent run) or a parent run id.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder the report is written to.")] = Path(
        "reports-out"
    ),
    format: Annotated[str, typer.Option("--format", "-f", help="Comma-separated: html, md.")] = "html,md",
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)."),
    ] = None,
    log: Annotated[
        bool, typer.Option("--log/--no-log", help="Also log the report under report/ of the parent run, and tag "
                                                  "the parent with its verdict (as `lab run` does).")
    ] = False,
) -> None:
    """Build the comparison report of a study from what MLflow holds."""
    from losslab.core.experiment.tracking import TrackingError, check_tracking_uri
    from losslab.core.paths import UnsafePathError, check_out_dir
    from losslab.reports.build import build_report_and_analysis, log_report, parse_formats, tag_parent
    from losslab.reports.collect import ReportError, make_client, resolve_parent

    uri = tracking_uri or _default_uri()
    try:
        check_out_dir(out)
        if uri:
            check_tracking_uri(uri)
        paths, analysis = build_report_and_analysis(ref, out, formats=parse_formats(format), tracking_uri=uri)
        if log:
            parent = resolve_parent(make_client(uri), ref)
            log_report(parent.info.run_id, paths, tracking_uri=uri)
            tag_parent(parent.info.run_id, analysis, tracking_uri=uri)
    except (ReportError, UnsafePathError, TrackingError) as exc:
        typer.echo(f"lab report: {exc}", err=True)
        raise typer.Exit(code=1) from None
    for fmt, path in paths.items():
        typer.echo(f"{fmt}: {path}")


def _default_uri() -> str | None:
    """MLFLOW_TRACKING_URI when set, else the ``mlflow.db`` of the working directory (docs/tracking.md)."""
    import os

    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def end_of_run_report(warn: Callable[[str], None]) -> Callable[[str, Path, str], dict[str, Path]]:
    """The ``on_finished`` hook that ``lab run`` and ``lab tune`` hand to the engine: build and log the report.

    It lives here because the engine never imports ``losslab.reports``; the CLI wires the two together.
    """

    def build(parent_run_id: str, out_dir: Path, tracking_uri: str) -> dict[str, Path]:
        from losslab.reports.build import report_at_end

        return report_at_end(parent_run_id, out_dir, tracking_uri, warn)

    return build
