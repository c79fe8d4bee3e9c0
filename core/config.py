"""Experiment configuration: YAML in, a validated, fully resolved config out.

Validation happens before any work starts, and every error names the key's
path, what was expected and what was found, and for a component name the
nearest registered names. ``--set key=value`` overrides any dotted key
(list items by index: ``loss.mask.0.weight=2``). ``variants`` are sets of
overrides of the base config; ``resolve_variants`` returns one resolved config
per variant, which is what each run logs and what re-runs it exactly.
"""

from __future__ import annotations

import copy
import difflib
import os
import reprlib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from losslab.core.paths import name_problem, suggest
from losslab.core.plugin.registry import Catalog, RegistryError


class ConfigError(Exception):
    """The experiment config is invalid; the message lists every problem with its key path."""


class StrictModel(BaseModel):
    """A schema block that refuses unknown keys, so a typo is an error instead of a silent default."""

    model_config = ConfigDict(extra="forbid")


class ComponentSpec(StrictModel):
    """A registered component by name, with its constructor params."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class LossTermSpec(ComponentSpec):
    weight: float = Field(default=1.0, ge=0.0)


#: The keys each source kind reads (the seed also seeds the train/val split); any other key given is an error.
SOURCE_KEYS: dict[str, tuple[str, ...]] = {
    "synthetic": ("n_bg", "n_fg", "seed", "size"),
    "folders": ("bg_dir", "fg_dir", "size", "seed"),
    "dataset": ("path", "seed"),
}


class SourceSpec(StrictModel):
    """Where bgs and fgs come from: the built-in synthetic scenes, two folders, or a materialized dataset."""

    kind: Literal["synthetic", "folders", "dataset"] = "synthetic"
    n_bg: int = Field(default=24, ge=2)
    n_fg: int = Field(default=24, ge=1)
    seed: int = 0
    size: int = Field(default=150, ge=32)
    bg_dir: str | None = None
    fg_dir: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _paths(self) -> SourceSpec:
        # a key given with a value other than its default (a resolved config, dumped and read back, holds
        # every default, e.g. bg_dir: null, and stays valid)
        given = {k for k in self.model_fields_set - {"kind"}
                 if getattr(self, k) != type(self).model_fields[k].default}
        ignored = sorted(given - set(SOURCE_KEYS[self.kind]))
        if ignored:
            users = {key: [k for k, keys in SOURCE_KEYS.items() if key in keys] for key in ignored}
            raise ValueError(
                f"source kind {self.kind!r} does not use {', '.join(ignored)} (it reads "
                f"{', '.join(SOURCE_KEYS[self.kind])}); remove "
                + ("it" if len(ignored) == 1 else "them") + ", or choose the kind that reads "
                + "; ".join(f"{key}: {' or '.join(repr(k) for k in kinds)}" for key, kinds in users.items())
            )
        if self.kind == "folders" and (not self.bg_dir or not self.fg_dir):
            raise ValueError("source kind 'folders' needs both bg_dir and fg_dir")
        if self.kind == "dataset" and not self.path:
            raise ValueError("source kind 'dataset' needs path (a folder written by `lab data generate`)")
        return self


class GroundTruthSpec(StrictModel):
    """The ground-truth producers: ``mask`` and ``depth`` label the data, ``val_mask`` the held-out split only.

    ``val_mask`` (default: none, the held-out split is labelled by ``mask`` as well) lets a study train
    on one mask producer and score every variant against another, e.g. train on the documented
    differencing masks (``mask: {name: diff}``) while validating on the alpha masks
    (``val_mask: {name: alpha}``); the floors are then fitted against it as well.
    """

    mask: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="alpha"))
    depth: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="ground-plane"))
    val_mask: ComponentSpec | None = Field(
        default=None, description="mask ground truth of the held-out split (none: the same as mask)")

    def validation_mask(self) -> ComponentSpec:
        """The producer the held-out split is labelled (and every variant scored) with."""
        return self.val_mask if self.val_mask is not None else self.mask


class DataSpec(StrictModel):
    source: SourceSpec = Field(default_factory=SourceSpec)
    generator: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="grid"))
    ground_truth: GroundTruthSpec = Field(default_factory=GroundTruthSpec)
    image_size: int = Field(default=64, ge=16, le=2048)
    val_split: float = Field(default=0.2, gt=0.0, lt=1.0, description="fraction of bgs held out for validation")
    max_depth: float = Field(default=50.0, gt=0.0, description="metres mapped to 1.0 in the depth target")
    train_limit: int | None = Field(default=None, ge=1, description="samples drawn per epoch (None: all)")
    val_limit: int | None = Field(default=None, ge=1, description="held-out samples evaluated (None: all)")
    device_compose: bool | Literal["auto"] = Field(
        default="auto", description="compose batches on the device (auto: on CUDA, for virtual data)")

    @model_validator(mode="after")
    def _val_mask_needs_recipes(self) -> DataSpec:
        if self.ground_truth.val_mask is not None and self.source.kind == "dataset":
            raise ValueError(
                "ground_truth.val_mask relabels the held-out split from the recipes and sources, but source kind "
                "'dataset' reads the masks stored when it was generated; remove val_mask, or train from the "
                "sources themselves (source kind 'synthetic' or 'folders')")
        return self


class DiagnosticsSpec(StrictModel):
    """Per-epoch training diagnostics (core/train/diagnostics.py): gradient norms, task cosine, loss shares."""

    every: int = Field(default=1, ge=1, description="measure every N-th epoch (the first, then every N)")
    batches: int = Field(default=2, ge=1, le=64, description="fixed training batches measured each time")


class TrainSpec(StrictModel):
    epochs: int = Field(default=5, ge=1)
    batch_size: int | Literal["auto"] = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(default=3e-3, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    scheduler: Literal["none", "cosine", "onecycle"] = "onecycle"
    grad_clip: float | None = Field(default=None, gt=0.0)
    device: str = "auto"
    amp: bool | Literal["auto"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool | Literal["default", "reduce-overhead", "max-autotune"] = Field(
        default=False, description="torch.compile the model (true: mode 'default'), or a torch.compile mode")
    num_threads: int | None = Field(default=None, ge=1)
    monitor: str = "val/mask_iou"
    monitor_mode: Literal["max", "min"] = "max"
    val_samples: int = Field(default=8, ge=0, description="held-out images kept for the prediction grid")
    fit_check: int = Field(default=256, ge=0, description="training samples the best weights are scored on at the "
                           "end (fit or generalization, core/train/fit_check.py); 0: none")
    progress: bool = True
    diagnostics: DiagnosticsSpec | Literal[False] = Field(
        default_factory=DiagnosticsSpec, description="per-epoch gradient diagnostics, or false (off) for none")

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("batch_size must be at least 1 or 'auto'")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "mps") and not value.startswith("cuda"):
            raise ValueError("device must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'")
        return value


class LossSpec(StrictModel):
    mask: list[LossTermSpec] = Field(default_factory=lambda: [LossTermSpec(name="bce")])
    depth: list[LossTermSpec] = Field(default_factory=lambda: [LossTermSpec(name="l1")])
    weighting: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="static"),
        description="how the tasks' losses combine: static (the weighted sum) or a learned/gradient method")
    allow_empty: list[Literal["mask", "depth"]] = Field(
        default_factory=list, description="tasks deliberately trained without a loss (their head learns nothing)")

    @model_validator(mode="after")
    def _not_empty(self) -> LossSpec:
        if not self.mask and not self.depth:
            raise ValueError("at least one loss term is needed (loss.mask or loss.depth)")
        return self


class MetricsSpec(StrictModel):
    mask: list[str] = Field(default_factory=lambda: ["iou", "dice"])
    depth: list[str] = Field(default_factory=lambda: ["rmse"])


class BaselinesSpec(StrictModel):
    """The floors a study is scored against (``docs/config.md``): defaults on, more by name.

    ``baselines: false`` switches every floor off; ``baselines: {add: [...]}``
    scores more baselines beside the defaults.
    """

    defaults: bool = Field(default=True, description="score every baseline registered with default=True")
    add: list[ComponentSpec] = Field(default_factory=list, description="more baselines, by registered name")
    fit_limit: int | None = Field(
        default=8192, ge=1,
        description="fit on at most this many training samples, evenly strided over the training split (null: all)")


class ExperimentConfig(StrictModel):
    """One fully resolved experiment (a single variant)."""

    name: str = Field(min_length=1)
    description: str = ""
    variant: str = "base"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    data: DataSpec = Field(default_factory=DataSpec)
    model: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="unet"))
    augment: list[ComponentSpec] = Field(default_factory=list)
    train: TrainSpec = Field(default_factory=TrainSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    baselines: BaselinesSpec = Field(default_factory=BaselinesSpec)
    search: dict[str, Any] | None = None

    @field_validator("name", "variant")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        """Both become folders under the runs root (``lab-runs/<name>/<run>/<variant>-s<seed>``)."""
        problem = name_problem(value)
        if problem:
            raise ValueError(f"{problem}, since it names a folder; use e.g. {suggest(value)!r}")
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ValueError(
                f"seed(s) {', '.join(map(str, repeated))} listed more than once; each seed trains one model, so "
                "a repeat would count one run twice and overwrite its folder: list each seed once, e.g. [0, 1, 2]")
        return seeds

    @field_validator("baselines", mode="before")
    @classmethod
    def _baselines_switch(cls, value: Any) -> Any:
        if isinstance(value, bool):  # `baselines: false` switches the floors off
            return {"defaults": value}
        return value

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# -- loading and overriding ----------------------------------------------------------------------------


#: Bounds on an experiment file, so a hostile or broken one cannot hang or exhaust the machine.
#: Overridable by environment variable (docs/config.md); real experiments are a few KB and a few
#: hundred nodes.
YAML_MAX_BYTES = int(os.environ.get("LOSSLAB_YAML_MAX_BYTES", 1_000_000))
YAML_MAX_NODES = int(os.environ.get("LOSSLAB_YAML_MAX_NODES", 100_000))


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that checks the composed node graph before building any Python object.

    Aliases share nodes, so an "alias bomb" is a tiny graph whose expansion (what
    validation, merging and copying walk) is exponential. :func:`_check_nodes`
    counts the expanded size with one memoised pass and refuses it above
    ``YAML_MAX_NODES``; it also refuses a key given twice in one mapping, which
    plain YAML loading resolves by silently dropping the first block.
    """


def _check_nodes(root: yaml.Node, where: str, limit: int) -> None:
    sizes: dict[int, int] = {}
    checked: set[int] = set()
    duplicates: list[str] = []

    def size(node: yaml.Node, path: str) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, yaml.MappingNode):
            if id(node) not in checked:
                checked.add(id(node))
                seen: dict[str, yaml.Node] = {}
                for key, _ in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                        first = seen.setdefault(key.value, key)
                        if first is not key:
                            at = f"{path}.{key.value}" if path else key.value
                            duplicates.append(
                                f"{at}: duplicate key at line {key.start_mark.line + 1} (first at line "
                                f"{first.start_mark.line + 1}); YAML would keep only the last one: merge the two "
                                "blocks or rename one")
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                total += size(key, path) + size(value, f"{path}.{name}" if path else str(name))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                total += size(item, f"{path}.{i}" if path else str(i))
        if total > limit:
            raise ConfigError(
                f"{where}: {path or '<top level>'}: expands to more than {limit} YAML nodes (aliases repeated "
                "inside aliases?); write the values out, or raise LOSSLAB_YAML_MAX_NODES if this is intended")
        sizes[id(node)] = total
        return total

    size(root, "")
    if len(duplicates) == 1:
        raise ConfigError(f"{where}: {duplicates[0]}")
    if duplicates:
        raise ConfigError(f"{where}: duplicate keys:\n  - " + "\n  - ".join(duplicates))


def safe_load_bounded(text: str, where: str = "<yaml>", limit: int | None = None) -> Any:
    """YAML text -> Python data, safely (no tags that build objects) and within the node bound."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, where, YAML_MAX_NODES if limit is None else limit)
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be read; flatten the structure") from None
    finally:
        loader.dispose()


def load_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: experiment file not found; pass the path to a YAML experiment")
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file (a folder, pipe or device); pass the path to a YAML "
                          "experiment file")
    size = path.stat().st_size
    if size > YAML_MAX_BYTES:
        raise ConfigError(f"{path}: {size} bytes, more than the {YAML_MAX_BYTES} an experiment file may have; "
                          "check it is the right file, or raise LOSSLAB_YAML_MAX_BYTES")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); "
                          "save the file as UTF-8") from None
    try:
        raw = safe_load_bounded(text, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, found {type(raw).__name__}")
    return raw


def parse_set(item: str) -> tuple[str, Any]:
    """``"train.epochs=1"`` -> ``("train.epochs", 1)``; values are parsed as YAML scalars or lists."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=1")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: the key before '=' is empty")
    try:
        value = safe_load_bounded(text, f"--set {key}") if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.0.c`` in nested dicts and lists, creating dicts on the way."""
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: {where!r} indexes a list of {len(node)} items")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if not isinstance(node.get(part), dict | list):
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])!r} is a value, not a section")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``: dicts merge, everything else (lists too) replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _expand_dotted(overrides: dict[str, Any]) -> dict[str, Any]:
    """Variant overrides may use dotted keys (``train.lr: 0.01``) or nested sections."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if "." in key:
            nested: dict[str, Any] = {}
            set_dotted(nested, key, value)
            out = deep_merge(out, nested)
        else:
            out = deep_merge(out, {key: value})
    return out


def resolve_variants(
    raw: dict[str, Any], sets: list[str] | None = None, catalog: Catalog | None = None
) -> list[ExperimentConfig]:
    """The resolved config of every variant (the base alone when there are none), all validated.

    ``--set`` items are applied last, so the command line wins over the file
    and over the variants; ``variants.<name>.<key>=...`` edits one variant.
    """
    raw = copy.deepcopy(raw)
    parsed = [parse_set(s) for s in sets or []]
    for key, value in parsed:
        if key == "variants" or key.startswith("variants."):
            _check_variant_key(raw, key, value)
            set_dotted(raw, key, value)
    variants = raw.pop("variants", None) or {}
    if not isinstance(variants, dict):
        raise ConfigError(f"variants: expected a mapping of variant name to overrides, found {type(variants).__name__}")
    if not variants:
        variants = {str(raw.get("variant") or "base"): {}}
    per_variant: dict[str, list[str]] = {}
    resolved: list[ExperimentConfig] = []
    expanded: dict[str, dict[str, Any]] = {}
    for name, overrides in variants.items():
        found = per_variant.setdefault(str(name), [])
        if overrides is None:
            overrides = {}
        if not isinstance(overrides, dict):
            found.append(f"variants.{name}: expected a mapping of overrides, found {type(overrides).__name__}")
            continue
        expanded[str(name)] = _expand_dotted(overrides)
        merged = deep_merge(raw, expanded[str(name)])
        merged["variant"] = str(name)
        for key, value in parsed:
            if key != "variants" and not key.startswith("variants."):
                set_dotted(merged, key, value)
        try:
            cfg = ExperimentConfig.model_validate(merged)
        except ValidationError as exc:
            found.extend(format_validation_error(exc, merged))
            continue
        found.extend(check_losses(cfg))
        resolved.append(cfg)
    if catalog is not None:
        give_positive_depth(resolved, catalog)
        for cfg in resolved:
            per_variant[cfg.variant].extend(check_components(cfg, catalog))
    problems = _merge_problems(per_variant) + validation_truth_problems(resolved)
    if problems:
        raise ConfigError("invalid experiment config:\n  - " + "\n  - ".join(problems))
    same = same_configs(resolved, expanded, [key for key, _ in parsed if not key.startswith("variants")])
    if same:
        raise ConfigError("\n".join(same))
    return resolved


def _truth_text(spec: ComponentSpec) -> str:
    return spec.name + (f" {spec.params}" if spec.params else "")


def validation_truth_problems(resolved: list[ExperimentConfig]) -> list[str]:
    """Variants scored against different held-out mask truths: refused, as their scores are not comparable.

    A variant that changes ``data.ground_truth.mask`` also changes what its held-out split is labelled
    with, unless ``data.ground_truth.val_mask`` fixes that truth for every variant.
    """
    truths: dict[str, list[str]] = {}
    for cfg in resolved:
        truths.setdefault(_truth_text(cfg.data.ground_truth.validation_mask()), []).append(cfg.variant)
    if len(truths) < 2:
        return []
    listed = "; ".join(f"{truth}: {', '.join(variants)}" for truth, variants in truths.items())
    first = resolved[0].data.ground_truth.validation_mask().name
    return [f"data.ground_truth: the variants would be scored against different held-out mask truths ({listed}), "
            "so their scores could not be compared; set data.ground_truth.val_mask in the base config (e.g. "
            f"val_mask: {{name: {first}}}) so every variant validates on the same truth, and let the variants "
            "change data.ground_truth.mask (the training truth) only"]


def _check_variant_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """``--set variants.NAME.key=...`` edits a declared variant; a typo must not create a new one.

    ``--set variants.NAME={...}`` (the whole variant as a mapping) is how one is declared on the
    command line; ``--set variants={...}`` replaces them all.
    """
    parts = key.split(".")
    if len(parts) < 2:
        return
    name = parts[1]
    found = raw.get("variants")
    declared: dict[str, Any] = found if isinstance(found, dict) else {}
    if name in declared:
        return
    if len(parts) == 2 and isinstance(value, dict):
        return  # an explicit declaration of a whole variant
    near = difflib.get_close_matches(name, [str(n) for n in declared], n=2, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    listed = ", ".join(str(n) for n in declared) or "none"
    raise ConfigError(
        f"--set {key}: there is no variant {name!r} (declared variants: {listed}).{hint} To add one, declare it "
        f"under variants: in the experiment file, or as a whole on the command line: "
        f"--set 'variants.{name}={{{'.'.join(parts[2:]) or 'train.lr'}: ...}}'"
    )


def check_losses(cfg: ExperimentConfig) -> list[str]:
    """Every task the model predicts has a loss, unless ``loss.allow_empty`` opts out by name.

    A task without a loss trains its head on nothing, and its metrics then rank a variant by
    chance; an empty list is far more often a typo or a bad override than an intention.
    """
    problems = []
    for task in ("mask", "depth"):
        terms = getattr(cfg.loss, task)
        if not terms and task not in cfg.loss.allow_empty:
            problems.append(
                f"loss.{task}: no loss term, but the model predicts {task}, so its {task} head would learn nothing; "
                f"list a term (e.g. loss.{task}: [{{name: {'bce' if task == 'mask' else 'l1'}}}]) or, to train "
                f"without one on purpose, add loss.allow_empty: [{task}]"
            )
        if terms and task in cfg.loss.allow_empty:
            problems.append(f"loss.allow_empty lists {task}, but loss.{task} has {len(terms)} term(s); "
                            f"remove {task} from loss.allow_empty")
    return problems




def _paths(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys a variant's overrides set, down to the first non-mapping value."""
    out: list[str] = []
    for key, value in overrides.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        out.extend(_paths(value, path) if isinstance(value, dict) and value else [path])
    return out


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def same_configs(resolved: list[ExperimentConfig], overrides: dict[str, dict[str, Any]],
                 set_keys: list[str]) -> list[str]:
    """Variants that resolve to one training config: a study of a config against itself, refused.

    Two such variants train the same network the same way; their numbers agree to the last digit and
    one of them would be crowned. Each message names the variants and what made them equal: the
    ``--set`` keys that overwrite what the variants set, or the variants themselves.
    """
    groups: dict[str, list[str]] = {}
    for cfg in resolved:
        body = {k: v for k, v in cfg.to_dict().items() if k != "variant"}
        groups.setdefault(yaml.safe_dump(body, sort_keys=True), []).append(cfg.variant)
    problems = []
    for names in groups.values():
        if len(names) < 2:
            continue
        keys = sorted({p for n in names for p in _paths(overrides.get(n, {}))})
        culprits = [k for k in dict.fromkeys(set_keys) if any(_overlaps(k, p) for p in keys)]
        listed = " and ".join(repr(n) for n in names)
        if culprits:
            why = (f"--set {', '.join(culprits)} overrides what sets them apart ({', '.join(keys)}), and --set "
                   "wins over the variants. Drop that --set, or change one variant with "
                   f"--set variants.{names[0]}.<key>=...")
        else:
            why = ("their overrides change nothing that tells them apart "
                   f"({', '.join(keys) or 'no overrides'}); make them differ, or keep one")
        problems.append(f"variants {listed} resolve to the same training config, so the study would compare "
                        f"a config with itself: {why}")
    return problems


def _loss_flag(catalog: Catalog, name: str, flag: str) -> Any:
    """A loss's declared ``positive_depth`` or ``needs_partner`` (class attribute, or registration metadata)."""
    if name not in catalog["loss"]:
        return None
    component = catalog["loss"].get(name)
    return component.meta.get(flag, getattr(component.factory, flag, None))


def _takes_param(factory: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def give_positive_depth(resolved: list[ExperimentConfig], catalog: Catalog) -> None:
    """``model.params.depth_output: log`` for every variant, when any variant's depth loss needs it.

    A loss that takes the log of the depth (``positive_depth``, e.g. ``silog``) needs a head that cannot
    reach zero. The choice is made once for the whole experiment, so variants that differ in their loss
    do not also differ in their head. Architectures without the param, and variants that set it, are
    left alone; :func:`check_components` then refuses a pairing that cannot work.
    """
    needs = any(_loss_flag(catalog, t.name, "positive_depth") for cfg in resolved for t in cfg.loss.depth
                if t.weight > 0)
    if not needs:
        return
    for cfg in resolved:
        if cfg.model.name not in catalog["architecture"]:
            continue
        factory = catalog["architecture"].get(cfg.model.name).factory
        if _takes_param(factory, "depth_output") and "depth_output" not in cfg.model.params:
            cfg.model.params["depth_output"] = "log"


def _merge_problems(per_variant: dict[str, list[str]]) -> list[str]:
    """A problem every variant shares is the base's: say it once; the others name their variant."""
    lists = list(per_variant.values())
    shared = [p for p in dict.fromkeys(lists[0]) if all(p in other for other in lists[1:])] if lists else []
    out = list(shared)
    if len(per_variant) > 1:
        for name, found in per_variant.items():
            out.extend(f"variants.{name}: {p}" for p in dict.fromkeys(found) if p not in shared
                       and not p.startswith("variants."))
            out.extend(p for p in found if p.startswith("variants."))
    return out


def load_experiment(
    path: Path, sets: list[str] | None = None, catalog: Catalog | None = None
) -> list[ExperimentConfig]:
    """Load, override, resolve and validate an experiment file: one config per variant."""
    raw = load_yaml(path)  # its errors name the file already
    try:
        return resolve_variants(raw, sets, catalog)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# -- error formatting ----------------------------------------------------------------------------------


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    node = data
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return node


def _shown(value: Any, limit: int = 200) -> str:
    """``repr`` of a found value, cut short: a huge value must not flood (or exhaust) the message."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 3, 8, 8, 80, 80
    text = short.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The pydantic model a field's annotation holds, and whether it sits in a dict (then a key comes next)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    for arg in typing.get_args(annotation):
        model, keyed = _model_in(arg)
        if model is not None:
            return model, keyed or origin is dict
    return None, False


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, list[str]]:
    """A location as the path a user reads (``params[train.lr].low``: a dict's key in brackets, as it may hold
    dots), and the keys allowed at its end (empty where the location leaves the schema)."""
    parts: list[str] = []
    current: type[BaseModel] | None = model
    keyed = False
    for part in loc:
        if keyed or isinstance(part, int):
            if keyed and parts:
                parts[-1] += f"[{part}]"
            else:
                parts.append(str(part))
            keyed = False
            continue
        parts.append(str(part))
        field = getattr(current, "model_fields", {}).get(part) if current is not None else None
        current, keyed = _model_in(field.annotation) if field is not None else (None, False)
    return ".".join(parts), list(getattr(current, "model_fields", {})) if current is not None else []


#: The tags pydantic adds to an error's location for each member of a union (``bool | Literal["auto"]``).
_UNION_TAGS = {"bool", "int", "float", "str", "none"}


def _key_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """An error location without pydantic's validator and union-member tags: the config keys alone."""
    return tuple(p for p in loc if not (isinstance(p, str) and (p.startswith(("function-", "literal"))
                                                                 or p in _UNION_TAGS)))


def _one_of(messages: list[str]) -> str:
    """A union's member errors as one sentence: 'Input should be a valid boolean or 'auto''."""
    wanted = [m.removeprefix("Input should be ").split(", unable")[0] for m in messages]
    if all(m.startswith("Input should be ") for m in messages):
        return "Input should be " + " or ".join(dict.fromkeys(wanted))
    return "; or ".join(dict.fromkeys(messages))


def format_validation_error(
    exc: ValidationError, data: Any, model: type[BaseModel] = ExperimentConfig, root: str = ""
) -> list[str]:
    """Pydantic's errors as ``<key path>: <problem>; found <value>`` lines, one per key.

    The one formatter of the project: the experiment schema and ``lab tune``'s ``search:`` block
    (``model=SearchSpec, root="search"``) both use it. An unknown key lists the keys allowed there and the
    nearest ones; a union's member errors become one sentence.
    """
    lines = []
    by_path: dict[tuple[Any, ...], list[str]] = {}

    def where(loc: tuple[Any, ...]) -> str:
        path = _walk(model, loc)[0]
        return ".".join(p for p in (root, path) if p) or "<top level>"

    for err in exc.errors():
        loc = _key_path(err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = _walk(model, loc[:-1])[1]
            near = difflib.get_close_matches(str(loc[-1]), allowed, n=2, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
            lines.append(f"{where(loc)}: unknown key{hint} (allowed here: {', '.join(allowed)})")
        elif err["type"] == "missing":
            lines.append(f"{where(loc)}: required key is missing")
        else:
            by_path.setdefault(loc, []).append(err["msg"].removeprefix("Value error, "))
    for loc, messages in by_path.items():
        lines.append(f"{where(loc)}: {_one_of(messages)}; found {_shown(_lookup(data, loc))}")
    return lines


def check_components(cfg: ExperimentConfig, catalog: Catalog) -> list[str]:
    """Every component name must be registered, with params its factory accepts."""
    problems: list[str] = []
    checks: list[tuple[str, str, str, dict[str, Any] | None]] = [
        ("data.generator.name", "generator", cfg.data.generator.name, cfg.data.generator.params),
        ("data.ground_truth.mask.name", "ground_truth", cfg.data.ground_truth.mask.name,
         cfg.data.ground_truth.mask.params),
        ("data.ground_truth.depth.name", "ground_truth", cfg.data.ground_truth.depth.name,
         cfg.data.ground_truth.depth.params),
    ]
    if cfg.data.ground_truth.val_mask is not None:
        checks.append(("data.ground_truth.val_mask.name", "ground_truth", cfg.data.ground_truth.val_mask.name,
                       cfg.data.ground_truth.val_mask.params))
    checks += [
        ("model.name", "architecture", cfg.model.name, cfg.model.params),
    ]
    checks += [(f"augment.{i}.name", "augmentation", a.name, None) for i, a in enumerate(cfg.augment)]
    checks.append(("loss.weighting.name", "weighting", cfg.loss.weighting.name, cfg.loss.weighting.params))
    checks += [(f"baselines.add.{i}.name", "baseline", b.name, b.params) for i, b in enumerate(cfg.baselines.add)]
    for task in ("mask", "depth"):
        checks += [(f"loss.{task}.{i}.name", "loss", t.name, t.params) for i, t in enumerate(getattr(cfg.loss, task))]
        checks += [(f"metrics.{task}.{i}", "metric", m, None) for i, m in enumerate(getattr(cfg.metrics, task))]
    for path, kind, name, params in checks:
        registry = catalog[kind]
        if name not in registry:
            near = registry.nearest(name)
            hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
            problems.append(
                f"{path}: unknown {kind} {name!r}{hint} (registered: {', '.join(registry.names()) or 'none'})"
            )
            continue
        component = registry.get(name)
        if params is not None:
            problems.extend(_check_params(path.rsplit(".", 1)[0] + ".params", component.factory, params, kind))
        task_of = component.meta.get("task") or getattr(component.factory, "task", None)
        expected = path.split(".")[1] if path.startswith(("loss.", "metrics.")) else None
        if expected and task_of and task_of != expected:
            problems.append(f"{path}: {kind} {name!r} is a {task_of} {kind}, listed under {expected}")
        target = component.meta.get("target")
        if kind == "ground_truth" and target:
            wanted = "mask" if path.startswith("data.ground_truth.val_mask.") else path.split(".")[2]
            if target != wanted:
                problems.append(f"{path}: ground truth {name!r} produces {target}, not {wanted}")
    return problems + check_loss_pairings(cfg, catalog)


def check_loss_pairings(cfg: ExperimentConfig, catalog: Catalog) -> list[str]:
    """Loss terms that cannot train what they are given: refused before any work, with the reason.

    A depth loss that takes the log (``positive_depth``) on a head that can reach zero collapses the
    depth to zero; a task whose weighted terms all ``needs_partner`` (e.g. ``gradient`` alone) leaves the
    prediction's level free. Both would train silently to a useless map.
    """
    problems: list[str] = []
    for task in ("mask", "depth"):
        terms = [(i, t) for i, t in enumerate(getattr(cfg.loss, task)) if t.weight > 0 and t.name in catalog["loss"]]
        reasons = [(t.name, _loss_flag(catalog, t.name, "needs_partner")) for _, t in terms]
        if terms and all(reason for _, reason in reasons):
            why = "; ".join(f"{name!r}: {reason}" for name, reason in reasons)
            problems.append(f"loss.{task}: these terms cannot train the {task} on their own ({why}); add a term "
                            "that scores each pixel against its target, e.g. {name: l1, weight: 1.0}"
                            if task == "depth" else f"loss.{task}: these terms cannot train the {task} on their "
                            f"own ({why}); add a term such as {{name: bce, weight: 1.0}}")
    positive = [(i, t.name) for i, t in enumerate(cfg.loss.depth)
                if t.weight > 0 and _loss_flag(catalog, t.name, "positive_depth")]
    if positive and cfg.model.name in catalog["architecture"]:
        arch = catalog["architecture"].get(cfg.model.name)
        head = cfg.model.params.get("depth_output")
        declared = arch.meta.get("positive_depth") is True
        for i, name in positive:
            if declared or head in ("log", "inverse"):
                continue
            if _takes_param(arch.factory, "depth_output"):
                problems.append(f"loss.depth.{i}: {name!r} needs a depth that stays positive (it takes a log or "
                                f"assumes non-negative signals), but model.params.depth_output is {head!r}, which "
                                "can reach zero "
                                "(where the term's gradient stops and the depth collapses); set "
                                "model.params.depth_output: log (or inverse), or leave it out to have it chosen")
            else:
                problems.append(f"loss.depth.{i}: {name!r} needs a depth that stays positive (it takes a log or "
                                f"assumes non-negative signals); architecture {cfg.model.name!r} (plugin "
                                f"{arch.plugin!r}) takes no depth_output param and was not registered with "
                                "positive_depth=True; use a built-in architecture, or register yours with "
                                "positive_depth=True if its depth output is always positive")
    return problems


def _check_params(path: str, factory: Any, params: dict[str, Any], kind: str = "") -> list[str]:
    """Every given param must be one the factory accepts; an unknown one lists the accepted ones with defaults."""
    from losslab.core.plugin.params import accepts_any, describe_params

    if accepts_any(factory):
        return []
    accepted = describe_params(factory, kind)
    known = [p.name for p in accepted]
    listing = "; ".join(p.brief() for p in accepted) or "none"
    problems = []
    for key in params:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=2, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
            problems.append(f"{path}.{key}: unknown parameter{hint} (accepted: {listing})")
    return problems


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1, 2]}}`` -> ``{"a.b.0": 1, "a.b.1": 2}``: MLflow params of a resolved config."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        if not data and prefix:
            out[prefix] = "{}"
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list):
        if not data and prefix:
            out[prefix] = "[]"
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}.{i}"))
    else:
        out[prefix] = data
    return out


def dump_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML that ``lab run`` accepts as it is."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "RegistryError",
    "dump_yaml",
    "flatten",
    "load_experiment",
    "resolve_variants",
]
