"""The ``search:`` block of an experiment: what ``lab tune`` may change, what it optimizes, and how.

It is checked before any trial starts, the same way the rest of the config is:
every problem names its key path (``search.params[loss.mask.0.weight].low``),
what was expected and what was found. Each parameter is also *probed*: its
bounds and every choice are applied to the base config and validated with the
catalog, so a range that would make a trial's config invalid (a negative
weight, a list index past the end, an unknown loss name) fails now, not in
trial 9 an hour later.

A parameter is a dotted key of the resolved config, exactly as ``--set`` takes
it. Categorical choices may be any YAML value, lists of loss terms included;
Optuna only stores scalars, so each choice gets a label (its loss names joined
by ``+``, or the label given in mapping form) and the label is what the study,
the plots and the MLflow params show.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError

from losslab.core.config import (
    ConfigError,
    ExperimentConfig,
    StrictModel,
    format_validation_error,
    resolve_variants,
    set_dotted,
)
from losslab.core.names import VAL_LOSS, VAL_PREFIX

if TYPE_CHECKING:
    from optuna.trial import Trial

    from losslab.core.plugin.registry import Catalog

Direction = Literal["maximize", "minimize"]
#: Keys that identify the experiment or the search itself; searching them makes no sense.
FORBIDDEN_ROOTS = ("name", "seeds", "variant", "variants", "search", "description")


class ObjectiveSpec(StrictModel):
    """One metric to optimize; its direction is inferred from the metric registry when omitted."""

    metric: str = Field(min_length=1)
    direction: Direction | None = None


class SamplerSpec(StrictModel):
    name: Literal["tpe", "random", "nsga2"] | None = Field(
        default=None, description="default: tpe for one objective, nsga2 for several")
    seed: int | None = Field(default=None, description="default: the experiment's first seed")
    n_startup_trials: int | None = Field(default=None, ge=0, description="tpe: random trials before modelling")
    multivariate: bool = Field(default=False, description="tpe: model parameters jointly")
    population_size: int | None = Field(default=None, ge=2, description="nsga2: trials per generation")


class PrunerSpec(StrictModel):
    name: Literal["median", "hyperband", "none"] | None = Field(
        default=None, description="default: median for one objective, none for several")
    n_startup_trials: int = Field(default=2, ge=0, description="median: trials finished before any pruning")
    n_warmup_steps: int = Field(default=1, ge=0, description="median: epochs a trial always gets")
    min_resource: int = Field(default=1, ge=1, description="hyperband: epochs of the smallest bracket")
    reduction_factor: int = Field(default=3, ge=2, description="hyperband: 1/reduction_factor survive a rung")


class HeartbeatSpec(StrictModel):
    interval: int = Field(default=10, ge=1, description="seconds between a running trial's heartbeats")
    grace: int = Field(default=60, ge=2, description="seconds without a heartbeat before a trial counts as dead")
    max_retry: int = Field(default=2, ge=0, description="times a dead worker's trial is run again")


ParamKind = Literal["float", "int", "categorical"]


class ParamSpec(StrictModel):
    type: ParamKind | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | dict[str, Any] | None = None
    when: dict[str, Any] | None = None


class SearchSpec(StrictModel):
    params: dict[str, ParamSpec] = Field(min_length=1)
    objective: str | None = None
    direction: Direction | None = None
    objectives: list[ObjectiveSpec] | None = Field(default=None, min_length=1)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    heartbeat: HeartbeatSpec = Field(default_factory=HeartbeatSpec)
    variant: str | None = Field(default=None, description="the variant to tune when the experiment has several")
    max_failures_in_a_row: int = Field(default=5, ge=1)


@dataclass
class SearchParam:
    """One searched key, resolved: bounds for numbers, label -> value for choices."""

    key: str
    kind: ParamKind
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    labels: list[Any] = field(default_factory=list)
    values: dict[Any, Any] = field(default_factory=dict)
    when: dict[str, list[Any]] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"one of {', '.join(str(label) for label in self.labels)}"
        scale = ", log" if self.log else ""
        step = f", step {self.step:g}" if self.step else ""
        return f"{self.kind} in [{self.low:g}, {self.high:g}]{scale}{step}"


@dataclass
class SearchObjective:
    """One resolved target of the search: a metric and whether the study maximizes or minimizes it.

    Not the training objective (``losslab.core.train.objective.Objective``, the weighted loss terms).
    """

    metric: str
    direction: Direction


@dataclass
class SearchSpace:
    """The validated ``search:`` block."""

    params: list[SearchParam]
    objectives: list[SearchObjective]
    sampler: SamplerSpec
    pruner: PrunerSpec
    heartbeat: HeartbeatSpec
    variant: str | None
    max_failures_in_a_row: int

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def sampler_name(self) -> str:
        return self.sampler.name or ("nsga2" if self.multi else "tpe")

    @property
    def pruner_name(self) -> str:
        return self.pruner.name or ("none" if self.multi else "median")


# -- parsing -------------------------------------------------------------------------------------------


def _param_path(key: str) -> str:
    return f"search.params[{key}]"


def _normalize_raw(raw: Any) -> tuple[dict[str, Any], list[str]]:
    """Shorthands: a list as a parameter means categorical choices."""
    if not isinstance(raw, dict):
        return {}, [f"search: expected a mapping with at least 'params', found {type(raw).__name__}"]
    raw = copy.deepcopy(raw)
    params = raw.get("params")
    if isinstance(params, dict):
        for key, spec in list(params.items()):
            if isinstance(spec, list):
                params[key] = {"type": "categorical", "choices": spec}
            elif not isinstance(spec, dict):
                return raw, [f"{_param_path(str(key))}: expected a mapping (type, low, high, log, step, choices, "
                             f"when) or a list of choices, found {spec!r}"]
    return raw, []


def _lookup(data: Any, key: str) -> Any:
    node = data
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def _label(value: Any) -> Any:
    """What Optuna stores for a choice: scalars as they are, loss-term lists by their names."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        return "+".join(str(v["name"]) for v in value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _choices(key: str, spec: ParamSpec) -> tuple[list[Any], dict[Any, Any], list[str]]:
    path = _param_path(key)
    choices = spec.choices
    if not choices:
        return [], {}, [f"{path}.choices: a categorical parameter needs at least one choice"]
    if isinstance(choices, dict):
        labels = [str(k) for k in choices]
        return labels, dict(zip(labels, choices.values(), strict=True)), []
    labels = [_label(v) for v in choices]
    if len(set(map(repr, labels))) != len(labels):
        labels = [json.dumps(v, sort_keys=True, separators=(",", ":")) for v in choices]
    if len(set(labels)) != len(labels):
        dupes = sorted({str(label) for label in labels if labels.count(label) > 1})
        return [], {}, [f"{path}.choices: duplicate choices {', '.join(dupes)}; list each choice once"]
    return labels, dict(zip(labels, choices, strict=True)), []


def _build_param(key: str, spec: ParamSpec, base: dict[str, Any], earlier: dict[str, SearchParam]) -> tuple[
        SearchParam | None, list[str]]:
    """One ``search.params`` entry as a :class:`SearchParam`, or None with every problem found in it
    (all of them at once, so one edit fixes the file)."""
    path = _param_path(key)
    root = key.split(".")[0]
    if not key or any(not part for part in key.split(".")):
        return None, [f"{path}: not a dotted key path (e.g. loss.mask.0.weight)"]
    if root in FORBIDDEN_ROOTS:
        return None, [f"{path}: {root!r} identifies the experiment and cannot be searched; search keys of "
                      "data, model, augment, train, loss or metrics"]
    kind = spec.type or _infer_kind(key, spec, base)
    if kind is None:
        return None, [f"{path}: give low and high (a number range) or choices (a list); found neither"]
    problems: list[str] = []
    param = SearchParam(key=key, kind=kind)
    if kind == "categorical":
        if spec.low is not None or spec.high is not None or spec.step is not None or spec.log:
            problems.append(f"{path}: a categorical parameter takes choices only, not low/high/step/log")
        param.labels, param.values, found = _choices(key, spec)
        problems += found
    else:
        if spec.choices is not None:
            problems.append(f"{path}: a {kind} parameter takes low and high, not choices")
        if spec.low is None or spec.high is None:
            problems.append(f"{path}: a {kind} parameter needs both low and high")
            return None, problems
        problems += _set_range(path, kind, spec, float(spec.low), float(spec.high), param)
    problems += _set_conditions(path, spec, earlier, param)
    return (param if not problems else None), problems


def _infer_kind(key: str, spec: ParamSpec, base: dict[str, Any]) -> ParamKind | None:
    """The kind of a parameter without ``type:``: categorical with choices, else int or float from its
    bounds; None when it has neither."""
    if spec.choices is not None:
        return "categorical"
    if spec.low is not None and spec.high is not None:
        # YAML's 1 and 1.0 both arrive as floats here: whole bounds make an int unless the config holds a float
        current = _lookup(base, key)
        integral = float(spec.low).is_integer() and float(spec.high).is_integer()
        return "int" if integral and not isinstance(current, float) else "float"
    return None


def _set_range(path: str, kind: str, spec: ParamSpec, low: float, high: float, param: SearchParam) -> list[str]:
    """Check a numeric parameter's bounds (``low``/``high``: ``spec``'s, as floats), step and log, and store
    them on ``param``; returns the problems, each saying how to fix it."""
    problems: list[str] = []
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        problems.append(f"{path}: an int parameter needs whole-number bounds; found low={spec.low}, "
                        f"high={spec.high}")
    if low > high or (kind == "float" and low == high):
        problems.append(f"{path}: low must be below high; found low={spec.low}, high={spec.high}")
    if spec.log and low <= 0:
        problems.append(f"{path}.low: a log-scale range must start above 0; found {spec.low}")
    if spec.log and spec.step is not None:
        problems.append(f"{path}: step and log cannot be combined (Optuna samples either on a grid or "
                        "on a log scale); drop one")
    if spec.step is not None and (spec.step <= 0 or (kind == "int" and not float(spec.step).is_integer())):
        problems.append(f"{path}.step: expected a positive {'whole ' if kind == 'int' else ''}number; "
                        f"found {spec.step}")
    param.low, param.high, param.log, param.step = low, high, spec.log, spec.step
    return problems


def _set_conditions(path: str, spec: ParamSpec, earlier: dict[str, SearchParam], param: SearchParam) -> list[str]:
    """Check ``when:`` (each names a categorical parameter declared earlier and some of its choices) and
    store the conditions on ``param``; returns the problems."""
    problems: list[str] = []
    for other, labels in (spec.when or {}).items():
        wanted = labels if isinstance(labels, list) else [labels]
        parent = earlier.get(other)
        if parent is None:
            near = difflib.get_close_matches(other, list(earlier), n=2, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
            problems.append(f"{path}.when.{other}: not a categorical parameter declared above this one{hint}")
            continue
        if parent.kind != "categorical":
            problems.append(f"{path}.when.{other}: conditions name a categorical parameter; {other} is "
                            f"{parent.kind}")
            continue
        unknown = [w for w in wanted if w not in parent.labels]
        if unknown:
            problems.append(f"{path}.when.{other}: unknown choice(s) {', '.join(map(repr, unknown))} "
                            f"(choices: {', '.join(map(str, parent.labels))})")
        param.when[other] = wanted
    return problems


def computed_metrics(cfg: ExperimentConfig) -> list[str]:
    """The ``val/...`` keys a trial of ``cfg`` computes each epoch (what an objective may name)."""
    keys = [VAL_LOSS]
    for task in ("mask", "depth"):
        seen: dict[str, int] = {}
        for term in getattr(cfg.loss, task):
            seen[term.name] = seen.get(term.name, 0) + 1
            keys.append(f"{VAL_PREFIX}{task}/{term.name}" + (f"#{seen[term.name]}" if seen[term.name] > 1 else ""))
        keys += [f"{VAL_PREFIX}{task}_{m}" for m in getattr(cfg.metrics, task)]
    return keys


def _direction_of(metric: str, catalog: Catalog | None) -> Direction | None:
    if metric == VAL_LOSS or metric.startswith((f"{VAL_PREFIX}mask/", f"{VAL_PREFIX}depth/")):
        return "minimize"
    for task in ("mask", "depth"):
        prefix = f"{VAL_PREFIX}{task}_"
        if metric.startswith(prefix) and catalog is not None:
            name = metric[len(prefix):]
            if name in catalog["metric"]:
                component = catalog.get("metric", name)
                better = component.meta.get("higher_is_better", getattr(component.factory, "higher_is_better",
                                                                        None))
                if better is not None:
                    return "maximize" if better else "minimize"
    return None


def _objectives(spec: SearchSpec, base: ExperimentConfig, catalog: Catalog | None) -> tuple[
        list[SearchObjective], list[str]]:
    problems: list[str] = []
    if spec.objectives is not None and (spec.objective is not None or spec.direction is not None):
        problems.append("search: give either objective (+ direction) or objectives (a list), not both")
    if spec.objectives is not None:
        items = [(f"search.objectives.{i}", o.metric, o.direction) for i, o in enumerate(spec.objectives)]
    else:
        metric = spec.objective or base.train.monitor
        direction = spec.direction
        if direction is None and metric == base.train.monitor:
            direction = "maximize" if base.train.monitor_mode == "max" else "minimize"
        items = [("search.objective", metric, direction)]
    computed = computed_metrics(base)
    out: list[SearchObjective] = []
    for path, metric, direction in items:
        where = f"{path}.metric" if path.startswith("search.objectives") else path
        if metric not in computed:
            near = difflib.get_close_matches(metric, computed, n=2, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
            problems.append(f"{where}: {metric!r} is not computed by this experiment{hint} (computed each epoch: "
                            f"{', '.join(computed)}; add a metric under metrics.mask or metrics.depth to get more)")
            continue
        direction = direction or _direction_of(metric, catalog)
        if direction is None:
            problems.append(f"{path}: the direction of {metric!r} is unknown; add direction: maximize or minimize")
            continue
        out.append(SearchObjective(metric, direction))
    metrics = [o.metric for o in out]
    if len(set(metrics)) != len(metrics):
        problems.append(f"search.objectives: each metric once; found {metrics}")
    return out, problems


def parse_search(raw: Any, base: ExperimentConfig, catalog: Catalog | None = None) -> SearchSpace:
    """Validate the ``search:`` block against the base config; raise ``ConfigError`` listing every problem."""
    if raw is None:
        raise ConfigError("search: missing; `lab tune` needs a search: block with at least params (see "
                          "docs/tuning.md and experiments/tune_loss_weights.yaml)")
    data, problems = _normalize_raw(raw)
    if problems:
        raise ConfigError("invalid search block:\n  - " + "\n  - ".join(problems))
    try:
        spec = SearchSpec.model_validate(data)
    except ValidationError as exc:
        lines = format_validation_error(exc, data, SearchSpec, root="search")
        raise ConfigError("invalid search block:\n  - " + "\n  - ".join(lines)) from None
    base_dict = base.to_dict()
    params: dict[str, SearchParam] = {}
    for key, param_spec in spec.params.items():
        param, found = _build_param(key, param_spec, base_dict, params)
        problems += found
        if param is not None:
            params[key] = param
    objectives, found = _objectives(spec, base, catalog)
    problems += found
    space = SearchSpace(list(params.values()), objectives, spec.sampler, spec.pruner, spec.heartbeat,
                        spec.variant, spec.max_failures_in_a_row)
    if space.multi and spec.pruner.name not in (None, "none"):
        problems.append(
            f"search.pruner.name: {spec.pruner.name!r} cannot be used with {len(objectives)} objectives: Optuna "
            "prunes on one reported value per epoch (trial.report is single-objective). Set pruner.name: none, "
            "or keep a single objective")
    if spec.heartbeat.grace <= spec.heartbeat.interval:
        problems.append(f"search.heartbeat.grace: must exceed heartbeat.interval ({spec.heartbeat.interval} s) so "
                        f"a live trial is never taken for dead; found {spec.heartbeat.grace}")
    if spec.pruner.name == "hyperband" and spec.pruner.min_resource >= base.train.epochs:
        problems.append(f"search.pruner.min_resource: must be below train.epochs ({base.train.epochs}) for "
                        f"hyperband to prune anything; found {spec.pruner.min_resource}")
    if not problems and catalog is not None:
        problems += _probe(space, base, catalog)
    if problems:
        raise ConfigError("invalid search block:\n  - " + "\n  - ".join(problems))
    return space


# -- applying sampled values ---------------------------------------------------------------------------


def base_dict(base: ExperimentConfig, space: SearchSpace) -> dict[str, Any]:
    """The base of every trial: the resolved config without its search block.

    With one objective, the trial's best epoch is chosen by that objective
    (``train.monitor``), so the value a trial reports is the one it is judged by.
    """
    data = base.to_dict()
    data["search"] = None
    if not space.multi:
        data["train"]["monitor"] = space.objectives[0].metric
        data["train"]["monitor_mode"] = "max" if space.objectives[0].direction == "maximize" else "min"
    return data


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with each dotted key set, in order (a list choice first, then its items' weights)."""
    data = copy.deepcopy(base)
    for key, value in overrides.items():
        try:
            set_dotted(data, key, copy.deepcopy(value))
        except ConfigError as exc:
            raise ConfigError(f"{_param_path(key)}: {str(exc).removeprefix(f'--set {key}: ')}") from None
    return data


def build_config(base: dict[str, Any], overrides: dict[str, Any], catalog: Catalog | None,
                 variant: str) -> ExperimentConfig:
    """The validated config of one trial (``ConfigError`` when the sampled values make it invalid)."""
    data = apply_overrides(base, overrides)
    data["variant"] = variant
    data.pop("variants", None)
    return resolve_variants(data, [], catalog)[0]


def sample(trial: Trial, space: SearchSpace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Suggest every active parameter: ``(overrides for the config, labels for the study and MLflow)``."""
    overrides: dict[str, Any] = {}
    shown: dict[str, Any] = {}
    for p in space.params:
        if any(shown.get(other) not in labels for other, labels in p.when.items()):
            continue
        if p.kind == "categorical":
            label = trial.suggest_categorical(p.key, p.labels)
            overrides[p.key], shown[p.key] = p.values[label], label
        elif p.kind == "int":
            step = int(p.step) if p.step else 1
            value = trial.suggest_int(p.key, int(p.low), int(p.high), step=step, log=p.log)
            overrides[p.key] = shown[p.key] = value
        else:
            overrides[p.key] = shown[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
    return overrides, shown


def _probe_values(p: SearchParam) -> list[Any]:
    if p.kind == "categorical":
        return [p.values[label] for label in p.labels]
    if p.kind == "int":
        return [int(p.low), int(p.high)]
    return [p.low, p.high]


def _probe(space: SearchSpace, base: ExperimentConfig, catalog: Catalog) -> list[str]:
    """Apply each bound and each choice to the base config and validate it with the catalog."""
    data = base_dict(base, space)
    by_key = {p.key: p for p in space.params}
    problems: list[str] = []
    for p in space.params:
        context: dict[str, Any] = {}
        for other, labels in p.when.items():
            context[other] = by_key[other].values[labels[0]]
        for value in _probe_values(p):
            try:
                build_config(data, {**context, p.key: value}, catalog, "probe")
            except ConfigError as exc:
                shown = _label(value) if p.kind == "categorical" else value
                text = str(exc).removeprefix("invalid experiment config:\n  - ").replace("\n  - ", "; ")
                if text.startswith(_param_path(p.key)):
                    problems.append(text)
                else:
                    problems.append(f"{_param_path(p.key)}: the value {shown!r} makes the config invalid: {text}")
                break
    return problems


def is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(float(value))
