"""Experiment config: validation before work, with key paths, expectations and nearest names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from losslab.core.config import ConfigError, dump_yaml, flatten, load_experiment, resolve_variants
from losslab.core.plugin.manager import load_catalog
from tests.conftest import TINY, write_experiment


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _errors(raw: dict, catalog, sets=None) -> str:
    with pytest.raises(ConfigError) as info:
        resolve_variants(raw, sets, catalog)
    return str(info.value)


def test_defaults_fill_a_minimal_config(catalog):
    (cfg,) = resolve_variants({"name": "x"}, None, catalog)
    assert cfg.model.name == "unet" and cfg.data.generator.name == "grid"
    assert cfg.data.ground_truth.mask.name == "alpha" and cfg.train.device == "auto"


def test_unknown_component_lists_nearest_registered(catalog):
    raw = {**TINY, "loss": {"mask": [{"name": "dise"}], "depth": [{"name": "l1"}]}}
    message = _errors(raw, catalog)
    assert "loss.mask.0.name: unknown loss 'dise'; did you mean 'dice'" in message


def test_wrong_type_names_path_expected_and_found(catalog):
    raw = {**TINY, "train": {**TINY["train"], "epochs": "many"}}
    message = _errors(raw, catalog)
    assert "train.epochs:" in message and "integer" in message and "'many'" in message


def test_a_union_is_one_line_naming_every_choice(catalog):
    text = _errors(TINY, catalog, ["train.amp=maybe", "train.compile=fastest"])
    assert "train.amp: Input should be a valid boolean or 'auto'; found 'maybe'" in text
    assert ("train.compile: Input should be a valid boolean or 'default', 'reduce-overhead' or 'max-autotune'; "
            "found 'fastest'") in text
    assert ".bool" not in text and "<missing>" not in text


def test_misspelled_key_suggests_the_right_one(catalog):
    raw = {**TINY, "train": {**TINY["train"], "epocs": 3}}
    assert "train.epocs: unknown key; did you mean 'epochs'?" in _errors(raw, catalog)


def test_unknown_loss_param_is_caught_before_training(catalog):
    raw = {**TINY, "loss": {"mask": [{"name": "bce", "params": {"pos_wieght": 2}}], "depth": [],
                            "allow_empty": ["depth"]}}
    message = _errors(raw, catalog)
    assert "loss.mask.0.params.pos_wieght: unknown parameter; did you mean 'pos_weight'" in message


def test_loss_under_the_wrong_task(catalog):
    raw = {**TINY, "loss": {"mask": [{"name": "l1"}], "depth": [], "allow_empty": ["depth"]}}
    assert "loss.mask.0.name: loss 'l1' is a depth loss, listed under mask" in _errors(raw, catalog)


def test_set_overrides_dotted_keys_and_list_items(catalog):
    sets = ["train.epochs=1", "data.image_size=48", "loss.mask.0.weight=2.5", "seeds=[3, 4]"]
    (cfg,) = resolve_variants(TINY, sets, catalog)
    assert cfg.train.epochs == 1 and cfg.data.image_size == 48
    assert cfg.loss.mask[0].weight == 2.5 and cfg.seeds == [3, 4]


def test_set_errors_are_clear(catalog):
    assert "expected KEY=VALUE" in _errors(TINY, catalog, ["train.epochs"])
    assert "indexes a list of 1 items" in _errors(TINY, catalog, ["loss.mask.5.weight=1"])


def test_variants_override_the_base_and_set_wins(catalog):
    raw = {**TINY, "variants": {"a": {}, "b": {"train.lr": 0.5, "loss": {"mask": [{"name": "dice"}]}}}}
    a, b = resolve_variants(raw, ["train.epochs=7"], catalog)
    assert (a.variant, b.variant) == ("a", "b")
    assert a.train.lr == TINY["train"]["lr"] and b.train.lr == 0.5
    assert [t.name for t in b.loss.mask] == ["dice"]
    assert a.train.epochs == b.train.epochs == 7


def test_every_variant_is_validated_and_named(catalog):
    raw = {**TINY, "variants": {"ok": {}, "broken": {"model.name": "unett"}}}
    message = _errors(raw, catalog)
    assert "variants.broken: model.name: unknown architecture 'unett'; did you mean 'unet'" in message


def test_duplicate_seeds_are_refused(catalog):
    message = _errors({**TINY, "seeds": [0, 1, 0]}, catalog)
    assert "seeds: seed(s) 0 listed more than once" in message and "overwrite its folder" in message
    assert "seed(s) 2 listed more than once" in _errors(TINY, catalog, ["seeds=[2, 2]"])


def test_set_on_an_undeclared_variant_is_refused_with_how_to_add_one(catalog):
    raw = {**TINY, "variants": {"bce": {}, "dice": {"loss.mask": [{"name": "dice"}]}}}
    message = _errors(raw, catalog, ["variants.dcie.train.lr=1"])
    assert "--set variants.dcie.train.lr: there is no variant 'dcie' (declared variants: bce, dice)" in message
    assert "Did you mean 'dice'" in message and "declare it under variants:" in message
    assert "--set 'variants.dcie={train.lr: ...}'" in message
    assert "there is no variant 'x' (declared variants: none)" in _errors(TINY, catalog, ["variants.x.train.lr=1"])
    # a declared variant is edited, and a whole mapping declares a new one on purpose
    configs = resolve_variants(raw, ["variants.dice.train.lr=0.5", "variants.new={train.lr: 0.2}"], catalog)
    by_name = {c.variant: c for c in configs}
    assert by_name["dice"].train.lr == 0.5 and by_name["new"].train.lr == 0.2 and len(configs) == 3


def test_an_empty_loss_list_needs_an_explicit_opt_out(catalog):
    message = _errors({**TINY, "loss": {"mask": [], "depth": [{"name": "l1"}]}}, catalog)
    assert "loss.mask: no loss term, but the model predicts mask" in message
    assert "add loss.allow_empty: [mask]" in message
    (cfg,) = resolve_variants({**TINY, "loss": {"mask": [], "depth": [{"name": "l1"}], "allow_empty": ["mask"]}},
                              None, catalog)
    assert cfg.loss.mask == [] and cfg.loss.allow_empty == ["mask"]
    # a variant that empties a list by override is caught and named
    raw = {**TINY, "variants": {"a": {}, "b": {"loss.mask": []}}}
    assert "variants.b: loss.mask: no loss term" in _errors(raw, catalog)
    # an opt-out for a task that has terms is a contradiction, not a no-op
    bad = {**TINY, "loss": {**TINY["loss"], "allow_empty": ["depth"]}}
    assert "loss.allow_empty lists depth, but loss.depth has 1 term(s)" in _errors(bad, catalog)


def test_resolved_config_round_trips(tmp_path: Path, catalog):
    raw = {**TINY, "variants": {"b": {"train.lr": 0.5}}}
    (cfg,) = resolve_variants(raw, None, catalog)
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(cfg))
    (again,) = load_experiment(path, None, catalog)
    assert again == cfg and again.variant == "b"


def test_flatten_makes_dotted_params():
    assert flatten({"a": {"b": [1, {"c": 2}]}, "d": []}) == {"a.b.0": 1, "a.b.1.c": 2, "d": "[]"}


def test_yaml_errors_name_the_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntrain: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line \d+"):
        load_experiment(path)


def test_shipped_experiments_validate(catalog):
    for path in sorted(Path("experiments").glob("*.yaml")):
        assert load_experiment(path, None, catalog), path


def test_missing_file_is_clear(tmp_path: Path):
    with pytest.raises(ConfigError, match="experiment file not found"):
        load_experiment(tmp_path / "nope.yaml")


def test_write_experiment_helper(tmp_path: Path):
    path = write_experiment(tmp_path / "e.yaml", name="other")
    assert yaml.safe_load(path.read_text())["name"] == "other"
