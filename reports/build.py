"""Entry points: build a report from the tracker, and log it back onto the parent run.

``lab report`` calls :func:`build_report`; ``lab run`` and ``lab tune`` call it at their end and
then :func:`log_report`, so the report travels with the runs it describes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from losslab.reports.collect import ReportError

FORMATS = ("html", "md")
REPORT_STEM = "report"
REPORT_ARTIFACT_DIR = "report"


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """``"html,md"`` or ``("html", "md")`` -> a checked tuple; an unknown format is an error."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = tuple(dict.fromkeys(f.strip().lower() for f in items if f.strip()))
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise ReportError(
            f"unknown report format(s) {', '.join(repr(f) for f in unknown) or '(none given)'}; "
            f"choose from {', '.join(FORMATS)}, comma-separated (e.g. --format html,md)"
        )
    return chosen


def build_report(
    ref: str,
    out_dir: Path,
    formats: Iterable[str] = FORMATS,
    tracking_uri: str | None = None,
) -> dict[str, Path]:
    """Build the comparison report of ``ref`` into ``out_dir``.

    ``ref`` is an experiment name (its latest parent run is used) or a parent run id. Returns the
    written files by format: ``{"html": out_dir/report.html, "md": out_dir/report.md}``; the
    Markdown's PNGs go to ``out_dir/report_files/``.
    """
    from losslab.reports.analysis import analyze
    from losslab.reports.collect import collect
    from losslab.reports.render import render_html, render_markdown
    from losslab.reports.sections import build_document

    chosen = parse_formats(formats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="losslab-report-") as tmp:
        study = collect(ref, Path(tmp), tracking_uri=tracking_uri)
        doc = build_document(study, analyze(study))
    written: dict[str, Path] = {}
    if "html" in chosen:
        path = out_dir / f"{REPORT_STEM}.html"
        path.write_text(render_html(doc), encoding="utf-8")
        written["html"] = path
    if "md" in chosen:
        path = out_dir / f"{REPORT_STEM}.md"
        assets = out_dir / f"{REPORT_STEM}_files"
        if assets.is_dir():  # figures of an earlier build would otherwise linger beside the new ones
            shutil.rmtree(assets)
        path.write_text(render_markdown(doc, assets), encoding="utf-8")
        written["md"] = path
    return written


def log_report(parent_run_id: str, out_paths: dict[str, Path], tracking_uri: str | None = None) -> None:
    """Log the report files under ``report/`` of the parent run (the Markdown with its PNG folder)."""
    from losslab.reports.collect import make_client

    client = make_client(tracking_uri)
    for path in out_paths.values():
        path = Path(path)
        if not path.is_file():
            raise ReportError(f"report file {path} does not exist; build it with build_report first")
        client.log_artifact(parent_run_id, str(path), REPORT_ARTIFACT_DIR)
        assets = path.with_name(f"{path.stem}_files")
        if path.suffix == ".md" and assets.is_dir():
            client.log_artifacts(parent_run_id, str(assets), f"{REPORT_ARTIFACT_DIR}/{assets.name}")


def report_at_end(
    parent_run_id: str, out_dir: Path, tracking_uri: str | None, warn: Callable[[str], None]
) -> dict[str, Path]:
    """Build and log the report at the end of `lab run` or `lab tune`.

    The runs are already safe in MLflow, so any failure here is a warning that
    says how to retry, never an error that would hide the results.
    """
    try:
        paths = build_report(parent_run_id, out_dir, tracking_uri=tracking_uri)
        log_report(parent_run_id, paths, tracking_uri=tracking_uri)
        return paths
    except Exception as exc:
        warn(f"losslab: warning: the report could not be built ({type(exc).__name__}: {exc}); "
             f"retry with `lab report {parent_run_id}`")
        return {}
