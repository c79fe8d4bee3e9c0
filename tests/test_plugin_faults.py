"""Broken third-party plugins: each fault gets a clear message naming the plugin and its distribution.

Plugins arrive through fake entry points (objects with ``.name``, ``.load()``
and ``.dist.name`` / ``.dist.version``, as ``importlib.metadata`` gives them),
so every fault is exercised without installing anything. A broken plugin next
to a good one must never cost the good one, nor the built-ins.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from losslab.core import Loss, hookimpl, load_catalog
from losslab.core.config import LossSpec, LossTermSpec, deep_merge, resolve_variants
from losslab.core.plugin.manager import PluginError
from losslab.core.plugin.registry import KINDS, Catalog
from losslab.core.train.objective import LossFault, Objective
from tests.conftest import TINY


class FakeDist:
    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version


class FakeEntryPoint:
    """An entry point of the group ``losslab``: ``load()`` returns the plugin (or raises)."""

    def __init__(self, name: str, load: Callable[[], Any], dist: str, version: str = "1.0") -> None:
        self.name, self._load, self.dist = name, load, FakeDist(dist, version)
        self.loads = 0

    def load(self) -> Any:
        self.loads += 1
        return self._load()


def plugin(**hooks: Callable[..., None]) -> types.ModuleType:
    """A plugin module holding ``hooks`` as attributes, as an imported plugin module would."""
    module = types.ModuleType("fake_plugin")
    for name, function in hooks.items():
        setattr(module, name, function)
    return module


def entry(name: str, dist: str, version: str = "1.0", **hooks: Callable[..., None]) -> FakeEntryPoint:
    module = plugin(**hooks)
    return FakeEntryPoint(name, lambda: module, dist, version)


class GoodDepthLoss(Loss):
    """Mean absolute error: a correct loss for the good plugin next to the broken ones."""

    task = "depth"
    input_kind = "depth"

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).abs().mean()


def losses_hook(*names: str, cls: type = GoodDepthLoss) -> Callable[..., None]:
    @hookimpl
    def lab_register_losses(registry: Any) -> None:
        for name in names:
            registry.add(name, cls, summary=f"test loss {name}")

    return lab_register_losses


def good_entry() -> FakeEntryPoint:
    return entry("good", "good-dist", "2.0", lab_register_losses=losses_hook("good-l1"))


def builtin_names() -> dict[str, list[str]]:
    catalog = load_catalog(entry_points=[])
    return {kind: catalog[kind].names() for kind in KINDS}


# -- loading: import failures, duplicates, misspellings ------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [ModuleNotFoundError("No module named 'scipyy'"), SyntaxError("invalid syntax"), RuntimeError("no GPU")],
    ids=["missing-dependency", "syntax-error", "raises-at-import"],
)
def test_plugin_failing_on_import_is_skipped_and_named(
    error: Exception, capsys: pytest.CaptureFixture
) -> None:
    def broken() -> Any:
        raise error

    broken_ep = FakeEntryPoint("broken", broken, "broken-dist", "0.9")
    catalog = load_catalog(entry_points=[broken_ep, good_entry()])
    good = catalog.get("loss", "good-l1")
    assert (good.plugin, good.distribution, good.version) == ("good", "good-dist", "2.0")
    assert {kind: catalog[kind].names() for kind in KINDS if kind != "loss"} == {
        kind: names for kind, names in builtin_names().items() if kind != "loss"
    }
    assert [(f.plugin, f.distribution) for f in catalog.failures] == [("broken", "broken-dist")]
    reported = catalog.failures[0].error
    assert type(error).__name__ in reported and str(error.args[0]) in reported
    err = capsys.readouterr().err
    assert "plugin 'broken' (broken-dist) was skipped" in err and type(error).__name__ in err


def test_a_name_already_taken_names_both_plugins_and_keeps_the_first() -> None:
    first = entry("first", "first-dist", lab_register_losses=losses_hook("twin"))
    second = entry("second", "second-dist", lab_register_losses=losses_hook("only-second", "twin"))
    catalog = load_catalog(entry_points=[first, second])
    assert catalog.get("loss", "twin").plugin == "first"
    assert "only-second" not in catalog["loss"]  # all or nothing: the skipped plugin registered nothing
    (failure,) = catalog.failures
    assert (failure.plugin, failure.distribution) == ("second", "second-dist")
    assert "loss 'twin' is registered twice" in failure.error
    assert "plugin 'first' (first-dist)" in failure.error and "plugin 'second' (second-dist)" in failure.error


def test_a_third_party_plugin_reusing_a_builtin_name_cannot_displace_the_builtins() -> None:
    before = builtin_names()
    thief = entry("thief", "thief-dist", lab_register_losses=losses_hook("mine", "dice"))
    catalog = load_catalog(entry_points=[thief])
    assert catalog["loss"].names() == before["loss"]  # every built-in loss is still there, "mine" is not
    assert catalog.get("loss", "dice").plugin == "losslab.losses"
    (failure,) = catalog.failures
    assert failure.plugin == "thief"
    assert "first by plugin 'losslab.losses' (losslab)" in failure.error
    assert "again by plugin 'thief' (thief-dist)" in failure.error


def test_misspelled_hook_stops_with_the_plugin_its_distribution_and_the_right_name() -> None:
    @hookimpl
    def lab_register_lossses(registry: Any) -> None:  # one 's' too many
        registry.add("never", GoodDepthLoss)

    ep = entry("typo", "typo-dist", "0.4", lab_register_lossses=lab_register_lossses)
    with pytest.raises(PluginError) as info:
        load_catalog(entry_points=[good_entry(), ep])
    message = str(info.value)
    assert message.startswith("plugin 'typo' (typo-dist 0.4): unknown hook 'lab_register_lossses'")
    assert "did you mean 'lab_register_losses'?" in message
    assert "LAB_DISABLE_PLUGINS=typo" in message


def test_hook_without_the_marker_is_an_error_not_a_silent_no_op() -> None:
    def lab_register_losses(registry: Any) -> None:  # no @hookimpl: pluggy would ignore it
        registry.add("unmarked", GoodDepthLoss)

    ep = entry("bare", "bare-dist", "3.1", lab_register_losses=lab_register_losses)
    with pytest.raises(PluginError, match=re.escape("plugin 'bare' (bare-dist 3.1): function "
                                                    "'lab_register_losses' has no @hookimpl marker")):
        load_catalog(entry_points=[ep])


def test_hook_with_a_wrong_argument_name_is_skipped_and_named() -> None:
    @hookimpl
    def lab_register_losses(reg: Any) -> None:
        reg.add("wrong-arg", GoodDepthLoss)

    ep = entry("badarg", "badarg-dist", lab_register_losses=lab_register_losses)
    catalog = load_catalog(entry_points=[ep, good_entry()])
    assert "wrong-arg" not in catalog["loss"] and "good-l1" in catalog["loss"]
    (failure,) = catalog.failures
    assert (failure.plugin, failure.distribution) == ("badarg", "badarg-dist")
    assert "'reg'" in failure.error


def test_two_entry_points_with_one_name_keep_the_first_and_name_its_distribution() -> None:
    one = entry("same", "one-dist", "1.0", lab_register_losses=losses_hook("from-one"))
    two = entry("same", "two-dist", "2.0", lab_register_losses=losses_hook("from-two"))
    catalog = load_catalog(entry_points=[one, two])
    assert "from-one" in catalog["loss"] and "from-two" not in catalog["loss"]
    (failure,) = catalog.failures
    assert failure.distribution == "two-dist" and "one-dist 1.0" in failure.error


def test_blocked_plugin_is_never_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_DISABLE_PLUGINS", "blocked")
    blocked = entry("blocked", "blocked-dist", lab_register_losses=losses_hook("blocked-loss"))
    catalog = load_catalog(entry_points=[blocked, good_entry()])
    assert blocked.loads == 0
    assert "blocked-loss" not in catalog["loss"] and "good-l1" in catalog["loss"]
    assert not catalog.failures


def test_trace_prints_every_hook_call_with_its_plugin_in_order(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("LAB_TRACE_PLUGINS", "1")

    @hookimpl
    def lab_register_metrics(registry: Any) -> None:
        pass

    ep = entry("traced", "traced-dist", "0.2", lab_register_losses=losses_hook("traced-loss"),
               lab_register_metrics=lab_register_metrics)
    load_catalog(entry_points=[ep])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[losslab] ")]
    pattern = re.compile(r"\[losslab\] (lab_register_\w+) -> plugin '([^']+)' \(([^)]*)\)$")
    calls = [pattern.match(line) for line in lines]
    assert all(calls), lines
    pairs = [(m.group(1), m.group(2)) for m in calls if m]
    assert ("lab_register_losses", "losslab.losses") in pairs
    # the third-party plugin is called after the built-ins, once per hook it implements, with its version
    builtin_call = pairs.index(("lab_register_losses", "losslab.losses"))
    assert pairs.index(("lab_register_losses", "traced")) > builtin_call
    assert [m.group(3) for m in calls if m and m.group(2) == "traced"] == ["traced-dist 0.2"] * 2
    assert len(pairs) == len(set(pairs))


# -- running: the objective's checks on what a loss returns -------------------------------------------


class PerPixelLoss(GoodDepthLoss):
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).abs()  # forgot .mean()


class FloatLoss(GoodDepthLoss):
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> Any:
        return float((pred - target).abs().mean())  # detached from the graph


class NaNLoss(GoodDepthLoss):
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.log(pred - pred - 1).mean()  # log of a negative number


class RaisingLoss(GoodDepthLoss):
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred @ target).mean()  # matmul of (B,1,H,W) tensors fails for H != W


class MaskLoss(GoodDepthLoss):
    task = "mask"
    input_kind = "logits"


def faulty_catalog() -> Catalog:
    @hookimpl
    def lab_register_losses(registry: Any) -> None:
        registry.add("per-pixel", PerPixelLoss)
        registry.add("as-float", FloatLoss)
        registry.add("nan", NaNLoss)
        registry.add("raises", RaisingLoss)
        registry.add("mask-only", MaskLoss)
        registry.add("needs-param", lambda *, alpha: GoodDepthLoss(), task="depth")

    faulty = entry("faulty", "faulty-dist", "0.7", lab_register_losses=lab_register_losses)
    return load_catalog(entry_points=[faulty])


def run_depth_term(name: str, catalog: Catalog) -> tuple[Objective, dict[str, torch.Tensor]]:
    objective = Objective(LossSpec(mask=[], depth=[LossTermSpec(name=name)]), catalog)
    gen = torch.Generator().manual_seed(0)
    outputs = {"mask": torch.randn(2, 1, 4, 6, generator=gen), "depth": torch.rand(2, 1, 4, 6, generator=gen)}
    batch = {"mask": torch.ones(2, 1, 4, 6), "depth": torch.rand(2, 1, 4, 6, generator=gen)}
    _, values = objective(outputs, batch, step=5)
    return objective, values


ORIGIN = "plugin 'faulty' (faulty-dist 0.7)"


def test_good_loss_from_a_plugin_runs_through_the_objective() -> None:
    catalog = load_catalog(entry_points=[good_entry()])
    objective, values = run_depth_term("good-l1", catalog)
    assert set(values) == {"depth/good-l1"} and values["depth/good-l1"].dim() == 0
    objective.assert_finite(values, step=5)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("per-pixel", f"loss term depth/per-pixel from {ORIGIN} returned a tensor of shape (2, 1, 4, 6), "
                      "expected a scalar"),
        ("as-float", f"loss term depth/as-float from {ORIGIN} returned float, "
                     "expected a scalar torch.Tensor"),
        ("raises", f"loss term depth/raises from {ORIGIN} failed on pred (2, 1, 4, 6) torch.float32 and "
                   "target (2, 1, 4, 6) torch.float32: RuntimeError"),
    ],
)
def test_a_loss_breaking_its_contract_stops_naming_the_plugin(name: str, expected: str) -> None:
    with pytest.raises(LossFault) as info:
        run_depth_term(name, faulty_catalog())
    assert str(info.value).startswith(expected), str(info.value)


def test_nan_loss_stops_at_its_step_naming_term_plugin_and_distribution() -> None:
    objective, values = run_depth_term("nan", faulty_catalog())
    assert torch.isnan(values["depth/nan"])
    with pytest.raises(LossFault, match=re.escape(f"loss term depth/nan from {ORIGIN} is nan at step 5")):
        objective.assert_finite(values, step=5)


def test_infinite_total_from_finite_terms_is_not_let_through() -> None:
    catalog = load_catalog(entry_points=[good_entry()])
    objective, values = run_depth_term("good-l1", catalog)
    with pytest.raises(LossFault, match=r"loss = inf at step 9 although every loss term is finite"):
        objective.assert_finite({"loss": torch.tensor(float("inf")), **values}, step=9)


def test_loss_listed_under_the_wrong_task_and_unbuildable_params_name_the_plugin() -> None:
    catalog = faulty_catalog()
    with pytest.raises(LossFault, match=re.escape("loss 'mask-only' from plugin 'faulty' (faulty-dist 0.7) is a "
                                                  "mask loss but is listed under loss.depth")):
        Objective(LossSpec(mask=[], depth=[LossTermSpec(name="mask-only")]), catalog)
    unbuildable = r"loss.depth: could not build 'needs-param'.*plugin 'faulty' \(faulty-dist 0.7\).*alpha"
    with pytest.raises(LossFault, match=unbuildable):
        Objective(LossSpec(mask=[], depth=[LossTermSpec(name="needs-param")]), catalog)


# -- running: an architecture returning the wrong shape --------------------------------------------------


class HalfSizeNet(nn.Module):
    """Returns outputs at half the input's resolution: a wrong shape the trainer must catch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 2, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.conv(x)
        return {"mask": out[:, :1], "depth": out[:, 1:]}


def test_architecture_with_wrong_output_shape_stops_naming_the_plugin(tmp_path: Path) -> None:
    from losslab.core.train.trainer import Trainer, TrainingError

    @hookimpl
    def lab_register_architectures(registry: Any) -> None:
        registry.add("half-size", HalfSizeNet)

    halfnet = entry("halfnet", "halfnet-dist", "1.1", lab_register_architectures=lab_register_architectures)
    catalog = load_catalog(entry_points=[halfnet])
    raw = {**deep_merge(TINY, {"train": {"epochs": 1}}), "model": {"name": "half-size"}}
    (cfg,) = resolve_variants(raw, catalog=catalog)
    with pytest.raises(TrainingError) as info:
        Trainer(cfg, 0, catalog, tmp_path / "run").fit()
    message = str(info.value)
    assert "architecture 'half-size' (plugin 'halfnet', halfnet-dist)" in message
    assert "mask of shape (16, 1, 16, 16)" in message and "expected (16, 1, 32, 32)" in message
