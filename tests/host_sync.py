"""Find the places where the host would wait for the GPU, on a machine without one.

On CUDA three things stall the host until every queued kernel has run: reading
a value back (``.item()``, ``bool(t)``, ``float(t)``, ``.cpu()``, ``.tolist()``),
a copy up from ordinary host memory without ``non_blocking`` (PyTorch then
synchronises the stream), and a tensor built from host data directly on the
device (``torch.tensor(x, device=...)``, the same blocking copy in disguise).
``torch.cuda.set_sync_debug_mode("error")`` finds them on a GPU; this audit
finds them anywhere, by running the code on PyTorch's ``meta`` device (shapes
and dtypes, no data) and recording each such operation with the line of
project code that asked for it.

A copy made through :func:`losslab.core.device.upload` is not reported: that
helper pins the host tensor and queues the copy, which does not stall the
host on CUDA (its CUDA side is checked by the CUDA-only tests).
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

DEVICE = torch.device("meta")
_FACTORIES = {"tensor", "as_tensor"}


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

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        packet = func.overloadpacket.__name__
        if packet == "_local_scalar_dense" and _on_device(args[0]):
            self.audit.add("read-back", "item/bool/float")
            # meta holds no value; answer as a healthy run's checks would (``isfinite(...).all()`` is True),
            # so the audit goes on to find the rest
            return True if args[0].dtype == torch.bool else 0
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


def allow_autocast_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let code that enters ``torch.autocast(device_type=x.device.type)`` run on meta tensors."""
    monkeypatch.setattr(torch, "autocast", _autocast_unless_meta(torch.autocast))
