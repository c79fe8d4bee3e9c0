"""What ``lab ui`` opens: an experiment's training runs, every child run shown, headline metrics as columns.

MLflow 3's UI opens an experiment on its GenAI overview unless the experiment
says it holds model training: the experiment tag ``mlflow.experimentKind =
custom_model_development`` makes "Training runs" its page. The runs table's
columns, sort and filter come from a *shared view*: an experiment tag
``mlflow.sharedViewState.<key>`` holding the view as JSON, opened by the URL
``#/experiments/<id>/runs?viewStateShareKey=<key>`` (the same mechanism as
the UI's own "Share" button; read from MLflow 3.x's UI bundle, where a view's
``searchFilter``, ``orderByKey``, ``orderByAsc`` and ``selectedColumns`` are
honoured and ``runsExpanded`` is not).

Since an expanded-rows state cannot be shared, the view shows the children
themselves: the filter ``tags.`mlflow.parentRunId` = '<latest parent>'``
lists the latest run's (variant, seed) runs as rows, sorted by the monitored
metric, with each task's headline metrics (``best/val/mask_*`` and
``best/val/depth_*``), the variant and the seed as columns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from losslab.core.names import BEST_PREFIX, SEED_TAG, VAL_PREFIX, VARIANT_TAG

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "losslab-runs"


class ViewError(Exception):
    """The experiment asked for does not exist; the message lists those that do."""


@dataclass(frozen=True)
class RunsView:
    experiment: str
    experiment_id: str
    parent_id: str | None
    path: str  # the part after the server's address: "/#/experiments/1/runs?viewStateShareKey=..."
    columns: list[str]


def headline_metrics(children: list[Any], monitor: str) -> list[str]:
    """The children's comparable metrics (best value of each task metric), the monitored one first."""
    keys = {k for c in children for k in c.data.metrics
            if k.startswith((f"{BEST_PREFIX}{VAL_PREFIX}mask_", f"{BEST_PREFIX}{VAL_PREFIX}depth_"))
            or k == f"{BEST_PREFIX}{monitor}"}
    return sorted(keys, key=lambda k: (k != f"{BEST_PREFIX}{monitor}", k))


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's canonical column key


def prepare_view(client: Any, experiment: str | None = None) -> RunsView | None:
    """Tag the experiment as model training and store its runs view; None when the store has no experiment.

    ``experiment`` None picks the experiment of the most recent losslab parent run.
    """
    exp = _pick_experiment(client, experiment)
    if exp is None:
        return None
    exp_id = exp.experiment_id
    if (exp.tags or {}).get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    parents = client.search_runs([exp_id], "tags.`losslab.role` = 'parent'", order_by=["attributes.start_time DESC"],
                                 max_results=1)
    parent_id = parents[0].info.run_id if parents else None
    view: dict[str, Any] = {}
    columns: list[str] = []
    if parent_id:
        children = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=1000)
        params = children[0].data.params if children else {}
        monitor = params.get("train.monitor", "val/mask_iou")
        mode = params.get("train.monitor_mode", "max")
        metrics = headline_metrics(children, monitor)
        columns = [_column("tags", VARIANT_TAG), _column("tags", SEED_TAG),
                   *(_column("metrics", m) for m in metrics)]
        view = {
            "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_id}'",
            "orderByKey": _column("metrics", f"{BEST_PREFIX}{monitor}") if f"{BEST_PREFIX}{monitor}" in metrics
            else "attributes.start_time",
            "orderByAsc": mode == "min",
            "selectedColumns": columns,
            "runListHidden": False,
            "viewMaximized": False,
        }
    client.set_experiment_tag(exp_id, SHARED_VIEW_PREFIX + VIEW_KEY, json.dumps(view))
    # workflowType: the sidebar shows model training (its runs, models), not the GenAI pages
    path = f"/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    if view:
        path += f"&viewStateShareKey={VIEW_KEY}"
    return RunsView(exp.name, exp_id, parent_id, path, columns)


def _pick_experiment(client: Any, name: str | None) -> Any:
    if name is not None:
        exp = client.get_experiment_by_name(name)
        if exp is None or exp.lifecycle_stage == "deleted":
            names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
            raise ViewError(f"--experiment {name!r}: no such experiment in this store; "
                            f"it holds: {', '.join(names) or 'none'}")
        return exp
    experiments = [e for e in client.search_experiments() if e.lifecycle_stage != "deleted"]
    if not experiments:
        return None
    latest = client.search_runs([e.experiment_id for e in experiments], "tags.`losslab.role` = 'parent'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    if latest:
        return client.get_experiment(latest[0].info.experiment_id)
    named = [e for e in experiments if e.name != "Default"]
    return named[-1] if named else None
