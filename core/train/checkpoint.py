"""Checkpoints: plain data only, loaded with ``weights_only=True``, refused with a clear message.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts: the
model's, optimizer's, scheduler's and scaler's state dicts, the loop's counters
and history, the resolved config, and every random state a resumed run needs to
repeat an uninterrupted one bit for bit (torch's CPU and CUDA generators,
numpy's and python's global generators as tensors and numbers, each
augmentation's generator, the loader's seed and epoch). Nothing in it needs
pickle's ability to rebuild arbitrary objects, so it loads with
``torch.load(weights_only=True)``, which refuses (instead of running) any
``__reduce__`` payload a shared file might carry. ``FORMAT`` is written into
every checkpoint; a file without it was written by an older losslab.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from losslab.core.train.errors import CheckpointError

FORMAT = 2  # 1: before random states and plain types (no "format" key)


def save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path, map_location: str | torch.device = "cpu", *, fix: str = "") -> dict[str, Any]:
    """The dict in ``path``, loaded without running any code in it; ``fix`` ends a corrupt-file message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a regular file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        text = str(exc)
        unsafe = re.search(r"GLOBAL (\S+) was not an allowed global|Unsupported global: GLOBAL (\S+)", text)
        if unsafe:
            name = unsafe.group(1) or unsafe.group(2)
            raise CheckpointError(
                f"{path}: refused to load: the file asks to rebuild the Python object {name}, which a "
                "losslab checkpoint never holds (it holds tensors, numbers, strings, lists and dicts only). "
                "Loading it could run code, so nothing in it was run. Use a checkpoint written by "
                "`lab run` (best.pt or last.pt); if this one came from an older losslab or another tool, "
                "re-train, or convert it yourself where you trust its source"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt: {type(exc).__name__}: "
            f"{text.splitlines()[0][:200] if text else 'no detail'}){'; ' + fix if fix else ''}"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a losslab checkpoint (no model and config inside); "
                              "pass a best.pt or last.pt written by `lab run`")
    return state


def require_format(state: dict[str, Any], path: Path) -> None:
    """Resuming needs every random state: refuse a checkpoint written before they were kept."""
    found = state.get("format", 1)
    if found != FORMAT:
        raise CheckpointError(
            f"{path} is a losslab checkpoint of format {found}, this losslab resumes format {FORMAT} "
            "only (an older file lacks the random states an exact resume needs). Delete it to train "
            "this run again from epoch 0 (then `lab run ... --resume`), or finish the run with the "
            "losslab version that wrote it. Prediction (`lab predict --checkpoint`) still reads it"
        )


def load_weights(model: nn.Module, weights: dict[str, Any], path: Path, model_spec: Any) -> None:
    """``model.load_state_dict(weights)`` with a message instead of PyTorch's ``size mismatch``."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc)[:300])
        raise CheckpointError(
            f"{path}: its weights do not fit the model its config describes (model.name "
            f"{model_spec.name!r}, params {model_spec.params}): {first}. The file's config and weights "
            "were not written together (edited or mixed files); use the checkpoint as `lab run` wrote it"
        ) from None


# -- random states as plain data -------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every global random state: torch (CPU and each CUDA device), numpy, python ``random``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` took."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))


# -- an augmentation's own generators, found where it keeps them -----------------------------------------

#: The key of an augmentation's checkpoint entry when losslab captured its generators itself (no ``state()``).
GENERIC_AUGMENT_KEY = "losslab.generators"
_SEARCH_DEPTH = 4


def _generator_kind(obj: Any) -> str | None:
    if isinstance(obj, torch.Generator):
        return "torch"
    if isinstance(obj, np.random.Generator):
        return "numpy"
    if isinstance(obj, np.random.RandomState):
        return "numpy-legacy"
    if isinstance(obj, random.Random):
        return "python"
    return None


def find_generators(obj: Any) -> dict[str, Any]:
    """The random generators ``obj`` keeps, by path (``._stream``, ``.steps[1]._rng``, ``<closure rng>``).

    A third-party augmentation need not implement ``state()``/``load_state()``: what it draws from its
    own generator is found here, in its attributes, containers and (for a function) closure cells, a
    few levels down, so a resumed run continues the stream instead of restarting it. Torch, NumPy
    (``Generator``, ``RandomState``) and python ``random.Random`` generators are found.
    """
    found: dict[str, Any] = {}
    seen: set[int] = set()

    def walk(value: Any, path: str, depth: int) -> None:
        if id(value) in seen or depth > _SEARCH_DEPTH:
            return
        seen.add(id(value))
        if _generator_kind(value) is not None:
            found[path] = value
            return
        if isinstance(value, torch.Tensor | np.ndarray | str | bytes | int | float | type) or value is None:
            return
        if isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(value[key], f"{path}[{key!r}]", depth + 1)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]", depth + 1)
        elif callable(value) and getattr(value, "__closure__", None):
            for name, cell in zip(value.__code__.co_freevars, value.__closure__, strict=True):
                walk(cell.cell_contents, f"{path}<closure {name}>", depth + 1)
        if hasattr(value, "__dict__") and not isinstance(value, type):
            for key in sorted(vars(value)):
                walk(vars(value)[key], f"{path}.{key}", depth + 1)

    walk(obj, "", 0)
    return found


def generator_state(gen: Any) -> dict[str, Any]:
    """One generator's position as plain data (``weights_only`` loads it)."""
    kind = _generator_kind(gen)
    if kind == "torch":
        return {"kind": kind, "state": gen.get_state()}
    if kind == "numpy":  # 128-bit integers in PCG64's state: kept as JSON text
        return {"kind": kind, "state": json.dumps(gen.bit_generator.state)}
    if kind == "numpy-legacy":
        name, keys, pos, has_gauss, cached = gen.get_state()
        return {"kind": kind, "name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
    version, internal, gauss_next = gen.getstate()
    return {"kind": kind, "version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next}


def set_generator_state(gen: Any, state: dict[str, Any]) -> None:
    """Put back what :func:`generator_state` took."""
    kind = state["kind"]
    if kind == "torch":
        gen.set_state(state["state"].cpu())
    elif kind == "numpy":
        gen.bit_generator.state = json.loads(state["state"])
    elif kind == "numpy-legacy":
        gen.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                       state["cached"]))
    else:
        gen.setstate((state["version"], tuple(int(v) for v in state["internal"].tolist()), state["gauss_next"]))


def augment_state(aug: Any) -> Any:
    """What the checkpoint keeps of one augmentation: its own ``state()``, else the generators it holds."""
    if hasattr(aug, "state") and hasattr(aug, "load_state"):
        return aug.state()
    return {GENERIC_AUGMENT_KEY: {path: generator_state(g) for path, g in find_generators(aug).items()}}


def load_augment_state(aug: Any, saved: Any, where: str, path: Path) -> None:
    """Put one augmentation's checkpointed state back; a mismatch stops with the augmentation's name."""
    if isinstance(saved, dict) and GENERIC_AUGMENT_KEY in saved:
        found = find_generators(aug)
        states = saved[GENERIC_AUGMENT_KEY]
        if sorted(found) != sorted(states) or any(_generator_kind(found[k]) != states[k]["kind"] for k in states):
            raise CheckpointError(
                f"{path}: {where} kept its random generators at {sorted(states) or 'no attribute'} when the "
                f"checkpoint was written, and now at {sorted(found) or 'no attribute'}: its stream cannot be "
                "continued. Give the augmentation state() and load_state() methods (docs/plugins.md, "
                "'Augmentations'), or delete the checkpoint to train the run again")
        for key, state in states.items():
            set_generator_state(found[key], state)
    elif saved is not None and hasattr(aug, "load_state"):
        aug.load_state(saved)
