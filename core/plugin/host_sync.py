"""Find the places where the host would wait for the GPU, on a machine without one.

On CUDA three things stall the host until every queued kernel has run: reading
a value back (``.item()``, ``bool(t)``, ``float(t)``, ``.cpu()``, ``.tolist()``),
a copy up from ordinary host memory without ``non_blocking`` (PyTorch then
synchronises the stream), and a tensor built from host data directly on the
device (``torch.tensor(x, device=...)``, the same blocking copy in disguise).
Inside a training step each one stops the host from preparing the next step
while the GPU computes this one. ``torch.cuda.set_sync_debug_mode("error")``
finds them on a GPU; this audit finds them anywhere, by running the code on
PyTorch's ``meta`` device (shapes and dtypes, no data) and recording each such
operation with the line of code that asked for it.

losslab's tests run the training step, the loaders, evaluation, every
registered loss and every architecture under it; a plugin author checks a loss
with :func:`loss_host_round_trips` (the scaffolded tests of ``lab new plugin``
do). A copy made through :func:`losslab.core.device.upload` is not reported:
that helper pins the host tensor and queues the copy, which does not stall
the host on CUDA.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

DEVICE = torch.device("meta")
_FACTORIES = {"tensor", "as_tensor"}
_REDUCED_BY = "_host_sync_reduced_by"


@dataclass(frozen=True)
class RoundTrip:
    kind: str  # "read-back", "blocking upload" or "tensor from host data"
    op: str
    where: str  # the innermost project frame: file:line in function

    def __str__(self) -> str:
        return f"{self.kind} ({self.op}) at {self.where}"


@dataclass
class Audit:
    found: list[RoundTrip] = field(default_factory=list)

    def add(self, kind: str, op: str) -> None:
        self.found.append(RoundTrip(kind, op, _caller()))


def _caller() -> str:
    """The innermost frame outside torch and this module: the code that asked for the operation."""
    for frame in reversed(traceback.extract_stack()):
        name = frame.filename.replace("\\", "/")
        if "/torch/" in name or name.endswith("/host_sync.py") or "/contextlib.py" in name:
            continue
        return f"{name}:{frame.lineno} in {frame.name}"
    return "?"


def _through_upload() -> bool:
    return any(f.name == "upload" and f.filename.replace("\\", "/").endswith("core/device.py")
               for f in traceback.extract_stack())


def _on_device(x: object) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == DEVICE.type


class _Ops(TorchDispatchMode):
    def __init__(self, audit: Audit) -> None:
        super().__init__()
        self.audit = audit

    @staticmethod
    def _answer(t: torch.Tensor) -> bool | int:
        """Meta holds no value: answer as a healthy run's checks would, so the audit goes on to find the rest.

        ``bad.any()`` is False and ``ok.all()`` is True in a healthy run; other values read 1 (a safe divisor).
        """
        if t.dtype != torch.bool:
            return 1
        return getattr(t, _REDUCED_BY, "all") != "any"

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        packet = func.overloadpacket.__name__
        if packet == "_local_scalar_dense" and _on_device(args[0]):
            self.audit.add("read-back", "item/bool/float")
            return self._answer(args[0])
        if packet in ("any", "all"):
            out = func(*args, **kwargs)
            setattr(out, _REDUCED_BY, packet)  # which reduction made it: see _answer
            return out
        if packet == "_to_copy":
            target = kwargs.get("device")
            target = torch.device(target) if target is not None else args[0].device
            if _on_device(args[0]) and target.type == "cpu":
                self.audit.add("read-back", "copy to the host")
                return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
            if args[0].device.type == "cpu" and target.type == DEVICE.type and not kwargs.get("non_blocking") \
                    and not _through_upload():
                self.audit.add("blocking upload", "to(device) from host memory")
        if packet == "copy_" and _on_device(args[0]) and args[1].device.type == "cpu":
            blocking = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
            if blocking and not _through_upload():
                self.audit.add("blocking upload", "copy_ from host memory")
        return func(*args, **kwargs)


class _Factories(TorchFunctionMode):
    def __init__(self, audit: Audit) -> None:
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if getattr(func, "__name__", "") in _FACTORIES and device is not None \
                and torch.device(device).type == DEVICE.type:
            self.audit.add("tensor from host data", f"torch.{func.__name__}(..., device=...)")
        return func(*args, **kwargs)


@contextlib.contextmanager
def host_round_trips() -> Iterator[Audit]:
    """Record every operation inside the block that would make the host wait for the device."""
    audit = Audit()
    with _Factories(audit), _Ops(audit):
        yield audit


def _autocast_unless_meta(original: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.autocast`` that is a no-op on meta, which has no autocast dtype (losses disable autocast by name)."""

    def autocast(device_type: str, *args: Any, **kwargs: Any) -> Any:
        if device_type == DEVICE.type:
            return contextlib.nullcontext()
        return original(device_type, *args, **kwargs)

    return autocast


@contextlib.contextmanager
def autocast_allowed_on_meta() -> Iterator[None]:
    """Let code that enters ``torch.autocast(device_type=x.device.type)`` run on meta tensors (not thread-safe)."""
    original = torch.autocast
    torch.autocast = _autocast_unless_meta(original)  # type: ignore[assignment,misc]  # patched back below
    try:
        yield
    finally:
        torch.autocast = original  # type: ignore[misc]


def loss_host_round_trips(loss: nn.Module, shape: tuple[int, int, int, int] = (2, 1, 64, 64)) -> list[RoundTrip]:
    """What in ``loss``'s forward and backward would make the host wait for a GPU; ``[]`` when nothing.

    The loss runs twice on meta tensors of ``shape``: once to let it build and cache constants (a one-time
    upload is fine), then under the audit. Its output must be a tensor (a scalar, per the loss contract).

    Example:
        >>> import torch.nn.functional as F
        >>> class L1(nn.Module):
        ...     def forward(self, pred, target):
        ...         return F.l1_loss(pred, target)
        >>> loss_host_round_trips(L1())
        []
        >>> class Checked(nn.Module):
        ...     def forward(self, pred, target):
        ...         if bool((target < 0).any()):  # reads a value back: the host waits
        ...             raise ValueError("negative depth")
        ...         return F.l1_loss(pred, target)
        >>> [r.kind for r in loss_host_round_trips(Checked())]
        ['read-back']
    """
    module = loss.to(DEVICE)

    def step() -> list[RoundTrip]:
        pred = torch.empty(shape, device=DEVICE, requires_grad=True)
        with host_round_trips() as audit:
            module(pred, torch.empty(shape, device=DEVICE)).backward()
        return audit.found

    with autocast_allowed_on_meta():
        step()  # the first call may build and upload cached constants, once
        return step()
