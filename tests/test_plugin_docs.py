"""docs/plugins.md stays in step with the code: every hook documented, every documented hook real.

The hook reference has one ``### lab_<hook>(<args>)`` heading per hook spec,
in the order of ``core/plugin/hookspecs.py``, with the spec's argument names, when it
runs and an example. Each example is executed and the components it registers
are checked against their kind's contract, so a copied example works. The
public API table lists exactly what ``losslab.core`` exports.
"""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import losslab.core as core
from losslab.core.data.recipes import Recipe
from losslab.core.plugin import hookspecs
from losslab.core.plugin.contracts import Augmentation, Baseline, Generator, GroundTruth, Loss, Metric, Weighting
from losslab.core.plugin.manager import HOOK_FOR_KIND
from losslab.core.plugin.markers import PROJECT_NAME
from losslab.core.plugin.registry import Component, Registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
TEXT = DOC.read_text(encoding="utf-8")
KIND_OF_HOOK = {hook: kind for kind, hook in HOOK_FOR_KIND.items()}


def section(title: str) -> str:
    """The text under ``## title`` up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", TEXT, re.M | re.S)
    assert match, f"docs/plugins.md has no '## {title}' section"
    return match.group(1)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def spec_hooks() -> dict[str, inspect.Signature]:
    """Hook specs in definition order (the order the engine calls them)."""
    return {
        name: inspect.signature(function)
        for name, function in vars(hookspecs).items()
        if callable(function) and hasattr(function, f"{PROJECT_NAME}_spec")
    }


def documented_hooks() -> dict[str, list[str]]:
    """``{hook: [argument, ...]}`` from the hook reference's headings, in order."""
    headings = re.findall(r"^### (\w+)\((.*?)\)\s*$", section("Hook reference"), re.M)
    return {name: [a.strip() for a in args.split(",") if a.strip()] for name, args in headings}


def hook_sections() -> dict[str, str]:
    parts = re.split(r"^### (\w+)\(.*?\)\s*$", section("Hook reference"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_specs_are_found() -> None:
    assert set(spec_hooks()) == set(HOOK_FOR_KIND.values())


def test_every_hook_has_a_heading() -> None:
    missing = set(spec_hooks()) - set(documented_hooks())
    assert not missing, f"hooks without a '### name(args)' heading in docs/plugins.md: {sorted(missing)}"


def test_every_heading_is_a_real_hook() -> None:
    unknown = set(documented_hooks()) - set(spec_hooks())
    assert not unknown, f"docs/plugins.md documents hooks core/plugin/hookspecs.py lacks: {sorted(unknown)}"


def test_headings_follow_the_specs_order() -> None:
    assert list(documented_hooks()) == list(spec_hooks())


@pytest.mark.parametrize("hook", list(spec_hooks()))
def test_documented_arguments_match_the_spec(hook: str) -> None:
    documented = documented_hooks().get(hook)
    assert documented is not None, f"{hook} is not documented"
    spec = spec_hooks()[hook]
    assert documented == list(spec.parameters), (
        f"docs/plugins.md documents {hook}({', '.join(documented)}) but the spec is {hook}{spec}"
    )


@pytest.mark.parametrize("hook", list(spec_hooks()))
def test_each_hook_section_says_its_arguments_when_it_runs_and_shows_an_example(hook: str) -> None:
    text = hook_sections()[hook]
    assert "**Arguments:**" in text and "**When it runs:**" in text and "**Example:**" in text
    arguments_text = text.split("**When it runs:**")[0]
    for argument in spec_hooks()[hook].parameters:
        assert f"`{argument}`" in arguments_text, f"{hook}: argument {argument} not described"
    assert len(python_blocks(text)) == 1, f"{hook}: expected exactly one python example"


def test_every_python_block_compiles() -> None:
    for i, block in enumerate(python_blocks(TEXT)):
        compile(block, f"{DOC}:block{i}", "exec")


def run_example(code: str, hook: str) -> Registry:
    """Execute an example as a plugin module would be, and call its hook as the engine does."""
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(compile(code, f"{DOC}:{hook}", "exec"), namespace)
    function = namespace.get(hook)
    assert function is not None, f"the {hook} example defines no function called {hook}"
    assert hasattr(function, f"{PROJECT_NAME}_impl"), f"the {hook} example forgets @hookimpl"
    registry = Registry(KIND_OF_HOOK[hook])
    function(registry=registry)
    assert len(registry) >= 1, f"the {hook} example registers nothing"
    return registry


def check_generator(component: Component) -> None:
    generator = component.create()
    assert isinstance(generator, Generator)
    recipes = generator.recipes([0, 1], [0, 1, 2], (64, 48))
    assert len(recipes) == 6 and all(isinstance(r, Recipe) for r in recipes)
    assert {(r.bg, r.fg) for r in recipes} == {(b, f) for b in (0, 1) for f in (0, 1, 2)}
    for r in recipes:
        assert r.x >= 0 and r.x + r.size <= 48 and r.y >= 0 and r.y + r.size <= 64, r
    assert generator.recipes([0, 1], [0, 1, 2], (64, 48)) == recipes  # deterministic


def check_ground_truth(component: Component) -> None:
    producer = component.create()
    assert isinstance(producer, GroundTruth)
    target = component.meta.get("target")
    assert target in ("mask", "depth") and producer.target == target
    rng = np.random.default_rng(0)
    composed = {
        "bg": rng.integers(0, 256, (3, 16, 20, 3), dtype=np.uint8),
        "fg_bg": rng.integers(0, 256, (3, 16, 20, 3), dtype=np.uint8),
        "alpha": rng.random((3, 16, 20), dtype=np.float32),
    }
    recipes = [Recipe(bg=i, fg=0, flip=False, row=-1, col=-1, x=0, y=0, size=8) for i in range(3)]
    out = producer(composed, recipes, None)
    assert out.shape == (3, 16, 20)
    if target == "mask":
        assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
    else:
        assert out.dtype == np.float32 and np.isfinite(out).all()


def check_augmentation(component: Component) -> None:
    gen = torch.Generator().manual_seed(0)
    # depth holds each pixel's index and mask its parity: geometry applied alike to both keeps the relation
    index = torch.arange(4 * 8 * 10, dtype=torch.float32).reshape(4, 1, 8, 10)
    batch = {
        "bg": torch.rand(4, 3, 8, 10, generator=gen),
        "fg_bg": torch.rand(4, 3, 8, 10, generator=gen),
        "mask": (index % 2).float(),
        "depth": index / index.numel(),
    }
    for seed in (0, 1):
        augment = component.create(seed=seed)
        assert isinstance(augment, Augmentation)
        out = augment({k: v.clone() for k, v in batch.items()})
        assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in batch.items()}
        assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}
        assert set(out["depth"].unique().tolist()) <= set(batch["depth"].unique().tolist())
        parity = (out["depth"] * index.numel()).round() % 2
        assert torch.equal(out["mask"], parity), "mask and depth must undergo the same geometry"
        again = component.create(seed=seed)({k: v.clone() for k, v in batch.items()})
        assert all(torch.equal(out[k], again[k]) for k in batch)  # seeded: the same seed repeats


def check_architecture(component: Component) -> None:
    model = component.create()
    assert isinstance(model, nn.Module)
    x = torch.rand(2, 6, 17, 23)
    out = model(x)
    assert set(out) == {"mask", "depth"}
    assert out["mask"].shape == out["depth"].shape == (2, 1, 17, 23)
    (out["mask"].mean() + out["depth"].mean()).backward()


def inputs_for(input_kind: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (2, 1, 8, 8)
    if input_kind == "depth":
        return torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)
    target = (torch.rand(shape, generator=gen) > 0.5).float()
    pred = torch.randn(shape, generator=gen)
    return (pred if input_kind == "logits" else torch.sigmoid(pred)), target


def check_loss(component: Component) -> None:
    loss = component.create()
    assert isinstance(loss, Loss)
    assert loss.task in ("mask", "depth") and loss.input_kind in ("logits", "probabilities", "depth")
    pred, target = inputs_for(loss.input_kind, torch.Generator().manual_seed(0))
    pred.requires_grad_(True)
    value = loss(pred, target)
    assert isinstance(value, torch.Tensor) and value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    if loss.input_kind != "logits":  # at the target itself a loss is at its smallest
        assert loss(target, target) <= value.detach()


def check_metric(component: Component) -> None:
    metric = component.create()
    assert isinstance(metric, Metric)
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 3, 1, 8, 8, generator=gen)
    if metric.task == "depth":  # metres
        pred, target = pred * 50, target * 50
    else:
        target = (target > 0.5).float()
    values = metric(pred, target)
    assert values.shape == (3,) and torch.isfinite(values).all()
    best = metric(target, target)
    worst_or_equal = (best >= values) if metric.higher_is_better else (best <= values)
    assert worst_or_equal.all(), "a perfect prediction must score at least as well as a random one"


def check_weighting(component: Component) -> None:
    import io

    weighting = component.create()
    assert isinstance(weighting, Weighting)
    shared = nn.Parameter(torch.tensor([1.0, -2.0]))
    mask_head = nn.Parameter(torch.tensor(0.5))
    terms = {"mask/bce": (shared.sum() * mask_head) ** 2, "depth/l1": (shared * shared).sum()}
    total = weighting.combine(terms, [shared], None)
    if weighting.needs_task_gradients:
        assert total is None
    else:
        assert isinstance(total, torch.Tensor) and total.dim() == 0 and torch.isfinite(total)
        total.backward()
    assert shared.grad is not None and torch.isfinite(shared.grad).all()
    assert mask_head.grad is not None and torch.isfinite(mask_head.grad).all()
    assert set(weighting.weights()) <= {"mask", "depth"}
    weighting.end_epoch({"mask": 1.0, "depth": 2.0})
    buffer = io.BytesIO()
    torch.save(weighting.state_dict(), buffer)
    buffer.seek(0)
    component.create().load_state_dict(torch.load(buffer, weights_only=True))


def check_baseline(component: Component) -> None:
    baseline = component.create()
    assert isinstance(baseline, Baseline)
    assert baseline.task in ("mask", "depth") and component.meta.get("task") == baseline.task
    gen = torch.Generator().manual_seed(0)
    bg = torch.rand(3, 3, 12, 10, generator=gen)
    fg_bg = bg.clone()
    fg_bg[:, :, 4:8, 3:7] = 1.0
    mask = torch.zeros(3, 1, 12, 10)
    mask[:, :, 4:8, 3:7] = 1.0
    batches = [{"bg": bg, "fg_bg": fg_bg, "mask": mask, "depth": torch.rand(3, 1, 12, 10, generator=gen) * 50}]
    baseline.fit(batches)
    pred = baseline.predict({"bg": bg, "fg_bg": fg_bg})
    assert isinstance(pred, torch.Tensor) and pred.shape == (3, 1, 12, 10) and torch.isfinite(pred).all()
    again = component.create()
    again.fit(batches)
    assert torch.equal(again.predict({"bg": bg, "fg_bg": fg_bg}), pred)  # deterministic


CHECKS = {
    "generator": check_generator,
    "ground_truth": check_ground_truth,
    "augmentation": check_augmentation,
    "architecture": check_architecture,
    "loss": check_loss,
    "metric": check_metric,
    "weighting": check_weighting,
    "baseline": check_baseline,
}


@pytest.mark.parametrize("hook", list(spec_hooks()))
def test_hook_example_registers_a_component_that_keeps_its_contract(hook: str) -> None:
    (code,) = python_blocks(hook_sections()[hook])
    registry = run_example(code, hook)
    for component in registry:
        assert component.summary, f"{hook} example: give {component.name!r} a summary"
        CHECKS[registry.kind](component)


def test_writing_a_loss_example_computes_log_cosh() -> None:
    code = python_blocks(section("Writing a loss"))[0]
    registry = run_example(code, "lab_register_losses")
    loss = registry.get("log-cosh").create(scale=0.5)
    assert (loss.task, loss.input_kind) == ("depth", "depth")
    pred = torch.tensor([0.0, 1e-4, 0.3, 2.0, 40.0], dtype=torch.float64).reshape(1, 1, 1, 5)
    target = torch.zeros_like(pred)
    direct = sum(0.25 * math.log(math.cosh(v / 0.5)) for v in pred.flatten().tolist()) / 5
    assert loss(pred, target).item() == pytest.approx(direct, rel=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        loss(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8))


def test_public_api_table_lists_exactly_the_exports() -> None:
    rows = re.findall(r"^\| `(\w+)` \|", section("Public API"), re.M)
    assert sorted(rows) == sorted(core.__all__), "the public API table and losslab.core.__all__ differ"
    for name in core.__all__:
        assert getattr(core, name) is not None


def test_documented_environment_variables_and_commands_exist() -> None:
    from losslab.core.plugin import manager as plugin_manager
    from losslab.core.plugin import scaffold

    source = inspect.getsource(plugin_manager)
    for variable in ("LAB_DISABLE_PLUGINS", "LAB_TRACE_PLUGINS"):
        assert f"`{variable}" in TEXT and variable in source
    assert "lab new plugin NAME [--out DIR]" in TEXT
    assert list(inspect.signature(scaffold.new_plugin).parameters) == ["name", "out"]
