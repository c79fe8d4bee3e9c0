"""Entry points: build a report from the tracker, and log it back onto the parent run.

``lab report`` calls :func:`build_report`; ``lab run`` and ``lab tune`` call it at their end and
then :func:`log_report`, so the report travels with the runs it describes.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from losslab.core import names
from losslab.reports.collect import ReportError

FORMATS = ("html", "md")
REPORT_STEM = "report"
REPORT_ARTIFACT_DIR = "report"
#: Parent-run tags and metric prefix of the study's conclusion (docs/tracking.md).
VERDICT_TAG = names.VERDICT_TAG
WINNER_TAG = names.WINNER_TAG
MEAN_PREFIX = "mean"
_TAG_LIMIT = 5000


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
    return build_report_and_analysis(ref, out_dir, formats, tracking_uri)[0]


def build_report_and_analysis(ref: str, out_dir: Path, formats: Iterable[str] = FORMATS,
                              tracking_uri: str | None = None) -> tuple[dict[str, Path], Any]:
    """:func:`build_report`, also returning the analysis the report states (for the verdict and tags)."""
    from losslab.reports.analysis import analyze
    from losslab.reports.collect import collect
    from losslab.reports.sections import build_document

    chosen = parse_formats(formats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="losslab-report-") as tmp:
        study = collect(ref, Path(tmp), tracking_uri=tracking_uri)
        analysis = analyze(study)
        doc = build_document(study, analysis)
    return write_document(doc, out_dir, chosen), analysis


def write_document(doc: Any, out_dir: Path, chosen: Iterable[str]) -> dict[str, Path]:
    from losslab.reports.render import render_html, render_markdown

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


# -- the study's conclusion: one verdict for the terminal, the report and the parent run --------------


@dataclass
class Conclusion:
    """What `lab run` ends with: the report's verdict, the winner tag and where the report went."""

    verdict: list[str]
    winner: str
    monitor: str | None
    report: dict[str, Path] = field(default_factory=dict)

    @property
    def winner_line(self) -> str:
        """``winner: X (by M)`` only for a significant winner; otherwise what is tied or that no claim is made."""
        by = f" (by {self.monitor})" if self.monitor else ""
        if self.winner in ("tied", "exploratory", "none"):
            return {"tied": f"no winner{by}: see the verdict for the variants that are tied",
                    "exploratory": "no winner: exploratory, no claim",
                    "none": "no winner: nothing to compare"}[self.winner]
        return f"winner: {self.winner}{by}"


def metric_name_for_mlflow(text: str) -> str:
    """MLflow metric keys allow letters, digits and ``_-. :/``; anything else (``+``) becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", text)


def parent_summary(analysis: Any) -> tuple[dict[str, str], dict[str, float]]:
    """Tags (verdict, winner or "tied") and metrics (each variant's mean headline metrics) of the parent."""
    import math

    from losslab.reports import words

    tags = {VERDICT_TAG: " ".join(words.verdict_sentences(analysis))[:_TAG_LIMIT],
            WINNER_TAG: words.winner_tag(analysis)}
    metrics: dict[str, float] = {}
    for r in analysis.headline.values():
        for v, s in r.summaries.items():
            if math.isfinite(s.mean):
                metrics[metric_name_for_mlflow(f"{MEAN_PREFIX}/{v}/{r.key}")] = float(s.mean)
    return tags, metrics


def conclude(parent_run_id: str, out_dir: Path | None, tracking_uri: str | None,
             warn: Callable[[str], None]) -> Conclusion | None:
    """Analyse a finished study once: write and log the report (unless ``out_dir`` is None), tag the parent.

    The terminal, the report and the parent run's tags all come from this one analysis. A failure
    is a warning that says how to retry: the runs themselves are already safe in MLflow.
    """
    from losslab.reports import words

    try:
        if out_dir is not None:
            paths, analysis = build_report_and_analysis(parent_run_id, out_dir, tracking_uri=tracking_uri)
            log_report(parent_run_id, paths, tracking_uri=tracking_uri)
        else:
            paths = {}
            analysis = study_analysis(parent_run_id, tracking_uri)
        tag_parent(parent_run_id, analysis, tracking_uri)
    except Exception as exc:
        warn(f"losslab: warning: the study could not be concluded ({type(exc).__name__}: {exc}); "
             f"retry with `lab report {parent_run_id}`")
        return None
    monitor = analysis.verdict_metric.key if analysis.verdict_metric else analysis.monitor
    return Conclusion(words.verdict_sentences(analysis), words.winner_tag(analysis), monitor, paths)


def study_analysis(ref: str, tracking_uri: str | None, n_boot: int | None = None) -> Any:
    """The :class:`~losslab.reports.analysis.StudyAnalysis` of a parent run, read from the tracker."""
    from losslab.reports.analysis import analyze
    from losslab.reports.collect import collect
    from losslab.reports.stats import N_BOOT

    with tempfile.TemporaryDirectory(prefix="losslab-analysis-") as tmp:
        study = collect(ref, Path(tmp), tracking_uri=tracking_uri)
        return analyze(study, n_boot or N_BOOT)


def undecided_variants(parent_run_id: str, tracking_uri: str | None) -> list[str]:
    """``lab run --until-decisive``'s decision: the variants that need the next look's seeds."""
    return study_analysis(parent_run_id, tracking_uri, n_boot=200).undecided()


def tag_parent(parent_run_id: str, analysis: Any, tracking_uri: str | None) -> None:
    """Put the verdict, the winner tag and each variant's mean headline metrics on the parent run."""
    import time

    from mlflow.entities import Metric, RunTag

    from losslab.reports.collect import make_client

    tags, metrics = parent_summary(analysis)
    client = make_client(tracking_uri)
    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
