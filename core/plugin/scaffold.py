"""``lab new plugin NAME``: write a third-party plugin package that works as soon as it is installed.

A stranger's first plugin should start from something that already passes
its tests and shows up in ``lab plugins``, so the only work left is the loss
itself. The package is the smallest complete one: a pyproject with the
``losslab`` entry point, a package whose ``__init__`` holds only the hook,
``lab_register_losses``, registering the loss lazily (the ``"module:attr"``
import string the built-ins use, so building the catalog imports no torch),
a ``losses.py`` with a working loss (V-Net's squared soft Dice, a short
formula with a hand-workable value), a README and a test file.

Only the standard library and typer are imported at module level: the CLI
imports this module on every ``lab`` call, and must stay fast. The catalog
(and torch with it) is loaded only to check that the name is free.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from losslab.core.paths import UnsafePathError, check_out_dir, safe_join

if TYPE_CHECKING:
    from losslab.core.plugin.registry import Catalog

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
MAX_NAME = 30  # a name is typed in YAML and shown in tables; the templates stay within 110 columns up to it


class ScaffoldError(Exception):
    """The plugin cannot be written as asked; the message says why and what to do instead."""


def plugin_names(name: str) -> dict[str, str]:
    """The names a plugin called ``name`` goes by.

    ``"focal-edge"`` -> loss and entry point ``focal-edge``, distribution
    ``losslab-focal-edge``, module ``losslab_focal_edge``, class
    ``FocalEdgeLoss``, function ``focal_edge_loss``. A leading ``losslab-`` is
    dropped, underscores become hyphens and upper case becomes lower case.
    """
    short = name.strip().lower().replace("_", "-")
    short = short.removeprefix("losslab-")
    if not _NAME.match(short):
        raise ScaffoldError(
            f"plugin name {name!r} is not usable: use lowercase letters, digits and single hyphens, "
            "starting with a letter, e.g. 'focal-edge'"
        )
    if len(short) > MAX_NAME:
        raise ScaffoldError(
            f"plugin name {short!r} has {len(short)} characters; use at most {MAX_NAME} (it is typed in "
            "experiment files and shown in tables)"
        )
    dist = f"losslab-{short}"
    words = short.split("-")
    cls = "".join(w.capitalize() for w in words) + "Loss"
    func = "_".join(words) + "_loss"
    # isort's order (classes, then functions by name), so the generated files pass `ruff check` as they are
    exports = [cls, *sorted([func, "lab_register_losses"])]
    return {
        "short": short,
        "dist": dist,
        "module": dist.replace("-", "_"),
        "cls": cls,
        "func": func,
        "all_items": "".join(f'    "{e}",\n' for e in exports),
        "import_items": "".join(f"    {e},\n" for e in exports),
    }


def scaffold_plugin(name: str, out: Path, *, catalog: Catalog | None = None) -> Path:
    """Write the plugin package ``losslab-<name>`` under ``out`` and return its folder.

    The package registers one mask loss called ``name``. ``catalog`` is the
    catalog whose loss names must not be taken (the installed one when
    omitted): a name already registered would make losslab skip the new
    plugin as a duplicate.
    """
    names = plugin_names(name)
    if catalog is None:
        from losslab.core.plugin.manager import load_catalog

        catalog = load_catalog()
    losses = catalog["loss"]
    if names["short"] in losses:
        taken = losses.get(names["short"])
        raise ScaffoldError(
            f"a loss named {names['short']!r} is already registered by plugin {taken.plugin!r} "
            f"({taken.distribution}); choose another name (see `lab plugins --kind loss`)"
        )
    root = Path(out) / names["dist"]
    try:
        safe_join(check_out_dir(out), names["dist"])  # the name is validated above; this holds the write under --out
    except UnsafePathError as exc:
        raise ScaffoldError(str(exc)) from None
    if root.exists() and any(root.iterdir()):
        raise ScaffoldError(f"{root} already exists and is not empty; remove it or pass another --out")
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"src/{names['module']}/__init__.py": _INIT,
        f"src/{names['module']}/losses.py": _LOSSES,
        f"tests/test_{names['module']}.py": _TEST,
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(string.Template(template).substitute(names), encoding="utf-8")
    return root


def new_plugin(
    name: Annotated[str, typer.Argument(help="The loss's name in experiments, e.g. focal-edge.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create the package in.")] = Path("."),
) -> None:
    """Scaffold a plugin package: pyproject with the entry point, a working loss, a passing test."""
    try:
        root = scaffold_plugin(name, out)
    except ScaffoldError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    names = plugin_names(name)
    shown = str(root) if root.is_absolute() else f"./{root.as_posix()}"  # pip needs ./ to see a path
    typer.echo(f"created {names['dist']} in {shown}:")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        typer.echo(f"  {path.relative_to(root)}")
    typer.echo(
        "\nnext:\n"
        f"  pip install -e {shown}\n"
        f"  pytest {shown}\n"
        f"  lab plugins --kind loss      # lists {names['short']} from {names['dist']} 0.1.0\n"
        f"  then use it in an experiment: loss: {{mask: [{{name: {names['short']}, weight: 1.0}}]}}\n"
        "  the guide: docs/plugins.md"
    )


# -- templates (string.Template: $name placeholders; $$ is a literal dollar) ----------------------------

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "losslab plugin: the $short loss"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["losslab>=0.1", "torch>=2.3"]

[project.optional-dependencies]
test = ["pytest>=8"]

# losslab imports the module named here when it builds its catalog. The name on the left is the
# plugin's name in `lab plugins`, in error messages and in LAB_DISABLE_PLUGINS.
[project.entry-points.losslab]
$short = "$module"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]

[tool.ruff]
line-length = 110
target-version = "py311"

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP", "SIM", "RUF"]

[tool.ruff.lint.isort]
known-first-party = ["$module"]
"""

_README = """\
# $dist

A losslab plugin that adds the mask loss `$short`.

```bash
pip install -e .              # registers the entry point
pytest                        # the tests in tests/
lab plugins --kind loss       # loss  $short  $short  $dist 0.1.0  ...
```

Use it in an experiment:

```yaml
loss:
  mask:
    - {name: $short, weight: 1.0, params: {smooth: 1.0}}
```

The loss is a template (V-Net's squared soft Dice) in `src/$module/losses.py`: replace its formula with
yours, keep the contract (`forward(pred, target)` on `(B, 1, H, W)` tensors returns a scalar tensor; `task`
and `input_kind` say what it receives) and update the hand-worked value in the tests. `src/$module/__init__.py`
registers it lazily, by the import string `"$module.losses:$cls"` with its task and input kind stated, so
building losslab's catalog does not import torch; keep what it states in step with the class. The plugin author's
guide is losslab's `docs/plugins.md`.
"""

_INIT = '''\
"""A losslab plugin that adds the ``$short`` mask loss: the hook losslab calls.

losslab imports this module through the ``losslab`` entry point in
pyproject.toml and calls :func:`lab_register_losses` once, when it builds its
catalog. The loss is registered lazily, as an import string,

    ``"$module.losses:$cls"``,

with its summary, task and input kind stated here, as losslab's built-ins
are: building the catalog imports neither torch nor ``losses.py``, so
``lab plugins`` and ``lab --help`` stay fast. losslab
imports ``losses.py`` when an experiment builds the loss, and checks the
stated task and input kind against the class.
"""

from __future__ import annotations

from typing import Any

from losslab.core import Registry, hookimpl

__all__ = [
$all_items]


@hookimpl
def lab_register_losses(registry: Registry) -> None:
    """Register the ``$short`` loss; experiments name it in ``loss.mask``."""
    registry.add(
        "$short",
        "$module.losses:$cls",
        summary="squared soft Dice on probabilities (template: edit me)",
        task="mask",
        input_kind="probabilities",
    )


def __getattr__(name: str) -> Any:  # the loss and its function, imported on first use (they import torch)
    if name in ("$cls", "$func"):
        from $module import losses

        return getattr(losses, name)
    raise AttributeError(f"module '$module' has no attribute {name!r}")
'''

_LOSSES = '''\
"""The ``$short`` mask loss: a working template to replace with yours.

V-Net's soft Dice with squared terms in the denominator: replace its
formula with yours, keep the contract (``(B, 1, H, W)`` tensors in, a scalar
tensor out) and update the tests. Keep ``task`` and ``input_kind`` in step
with what ``__init__.py`` states when it registers the loss: losslab checks
that they agree when it builds it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from losslab.core import InputKind, Loss, Task

__all__ = ["$cls", "$func"]


def $func(
    probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    r"""Soft Dice with squared denominator terms (Milletari et al., 2016).

    .. math::

        \\ell = 1 - \\frac{2 \\sum_i p_i t_i + s}{\\sum_i p_i^2 + \\sum_i t_i^2 + s}

    Sums run over the whole batch. Computed in float32 (float64 when given
    float64), so it is safe under autocast.

    Args:
        probs: foreground probabilities in [0, 1] (``input_kind = "probabilities"``).
        target: mask in {0, 1}.
        smooth: :math:`s` >= 0; with s > 0 an empty mask predicted empty scores 0.

    Shape:
        - probs, target: :math:`(B, 1, H, W)`.
        - output: scalar.
    """
    if probs.shape != target.shape or probs.ndim != 4 or probs.shape[1] != 1:
        raise ValueError(
            f"loss '$short': probs and target must both have shape "
            f"(B, 1, H, W); got {tuple(probs.shape)} and {tuple(target.shape)}"
        )
    if smooth < 0:
        raise ValueError(f"loss '$short': smooth must be >= 0, got {smooth}")
    dtype = torch.float64 if torch.float64 in (probs.dtype, target.dtype) else torch.float32
    p, t = probs.to(dtype), target.to(dtype)
    numerator = 2 * (p * t).sum() + smooth
    denominator = (p * p).sum() + (t * t).sum() + smooth
    return 1 - numerator / denominator


class $cls(Loss):
    """Squared soft Dice on mask probabilities (see :func:`$func`)."""

    task: ClassVar[Task] = "mask"
    input_kind: ClassVar[InputKind] = "probabilities"

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(
                f"loss '$short': smooth must be >= 0, got {smooth}"
            )
        self.smooth = float(smooth)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return $func(pred, target, self.smooth)
'''

_TEST = '''\
"""Tests of the loss: a hand-worked value, its minimum, gradients, errors, device use, registration."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest
import torch
from losslab.core import Registry, loss_host_round_trips

from $module import (
$import_items)


def test_hand_worked_value() -> None:
    probs = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    # sum(p t) = 1.5, sum(p^2) = 1.5, sum(t^2) = 2  ->  1 - 3 / 3.5
    value = $func(probs, target, smooth=0.0).item()
    assert value == pytest.approx(1 - 3 / 3.5)


def test_zero_for_a_perfect_prediction() -> None:
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    value = $func(target, target, smooth=0.0).item()
    assert value == pytest.approx(0.0, abs=1e-6)
    empty = torch.zeros(1, 1, 4, 4)
    assert $func(empty, empty).item() == 0.0


def test_finite_gradients() -> None:
    probs = torch.rand(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(2, 1, 4, 4) > 0.5).double()

    def loss(p: torch.Tensor) -> torch.Tensor:
        return $func(p, target)

    assert torch.autograd.gradcheck(loss, (probs,))


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\\(B, 1, H, W\\)"):
        $func(torch.rand(2, 1, 4, 4), torch.rand(2, 4, 4))


def test_stays_on_the_device() -> None:
    # nothing in forward or backward makes the host wait for a GPU (.item(), bool(t), ...)
    found = loss_host_round_trips($cls())
    assert found == [], "\\n".join(map(str, found))


def test_hook_registers_the_loss() -> None:
    registry = Registry("loss")
    lab_register_losses(registry=registry)
    loss = registry.get("$short").create(smooth=0.5)
    assert isinstance(loss, $cls)
    assert (loss.task, loss.input_kind, loss.smooth) == ("mask", "probabilities", 0.5)
    assert loss(torch.rand(2, 1, 4, 4), torch.ones(2, 1, 4, 4)).dim() == 0


def test_registered_lazily_without_importing_torch() -> None:
    registry = Registry("loss")
    lab_register_losses(registry=registry)
    component = registry.get("$short")
    assert component.lazy  # an import string: the catalog is built without importing losses.py
    assert component.meta["task"] == $cls.task
    assert component.meta["input_kind"] == $cls.input_kind
    assert component.factory is $cls
    # a fresh interpreter: importing the plugin and registering its loss leave torch unimported
    code = (
        "import sys; from losslab.core import Registry; "
        "import $module as m; "
        "m.lab_register_losses(registry=Registry('loss')); print('torch' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False", found.stderr


def test_installed_plugin_is_in_the_catalog() -> None:
    try:
        version = metadata.version("$dist")
    except metadata.PackageNotFoundError:
        pytest.skip("not installed: run `pip install -e .` to check its entry point")
    from losslab.core import load_catalog

    component = load_catalog(fresh=True)["loss"].get("$short")
    assert component.plugin == "$short"
    assert component.distribution == "$dist"
    assert component.version == version
'''
