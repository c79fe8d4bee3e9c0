"""Peak GPU memory of one training step, estimated on any machine without allocating it.

Why this exists: "at 224 px the default ``unet`` trains with batch 64 on a 16 GB GPU" is a requirement, and a
batch size is chosen before a run starts; both need the step's peak memory on machines that have no GPU.
Here the step runs on *fake* tensors (``torch._subclasses.fake_tensor.FakeTensorMode``: shapes, dtypes and
strides, no storage), so a step that would need 30 GiB takes a second and no memory, and PyTorch's own
``MemTracker`` (``torch.distributed._tools.mem_tracker``) counts the bytes every tensor would hold, by kind
(parameters, buffers, gradients, optimizer state, activations, backward temporaries, the batch), and the peak
of their sum. The step is the trainer's (``TrainLoop.run_step``): ``cat([bg, fg_bg])`` in channels_last, the
forward under autocast, every loss term, ``zero_grad``, backward, the optimizer step; it is traced in steady
state: the optimizer state exists and the previous step's gradients are still held during the forward, as in
the trainer, which frees them only after the loss.

Where it differs from ``torch.cuda.max_memory_allocated`` on a GPU (the real figure; the benchmark prints the
ratio of the two so the estimate can be calibrated):

- It counts tensors only: not the CUDA context (outside PyTorch's allocator anyway), not the cuDNN and cuBLAS
  workspaces (allocated through the caching allocator, so in the measured figure), not the allocator's
  rounding of large blocks or fragmentation, not the data pipeline or augmentation, not ``grad_clip`` or a
  GradScaler's few scalars.
- By default the step is traced on the CPU device (``device="cpu"``) under CPU autocast. Fake tensors on a
  ``cuda`` device need a CUDA build: on a CPU-only build ``torch.autocast("cuda")`` switches itself off, and
  every tensor method that takes a device guard in its Python binding (``x[:, 3:6]``, ``.contiguous()``,
  ``.copy_()``, ``.to("cuda")``) fails with "PyTorch is not linked with support for cuda devices". Tracing on
  the CPU gives the same shapes and, for convolutional networks, the same dtypes (convolutions in bf16,
  losses in float32 under both autocasts; other ops follow their inputs); it omits the CUDA allocator's
  rounding of each tensor to 512 bytes (0.1 MiB for ``unet`` at 224 px, batch 64). The optimizer uses ``foreach=True``,
  which is what PyTorch picks for CUDA parameters. Where CUDA is available, ``device="cuda"`` traces on fake
  CUDA tensors instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from losslab.core.train.optim import OptimizerName
from losslab.core.train.optim import build_optimizer as make_optimizer

if TYPE_CHECKING:
    from losslab.core.config import ExperimentConfig
    from losslab.core.plugin.registry import Catalog

Optimizer = OptimizerName

#: MemTracker's kinds (``_MemRefType`` values) under the names used here. "Other" is what the tracker was handed
#: from outside the step, which here is the batch only.
_KINDS = {
    "Parameter": "parameters",
    "Buffer": "buffers",
    "Gradient": "gradients",
    "Optstate": "optimizer_state",
    "Activation": "activations",
    "Temp": "temporaries",
    "Other": "batch",
}

GB = 10**9
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one steady-state training step on one device.

    ``peak`` is the most held at any moment of the step (the figure to compare with
    ``torch.cuda.max_memory_allocated``) and ``at_peak`` splits it by kind at that moment. The other sizes
    are the step's building blocks: ``parameters``, ``buffers``, ``gradients`` and ``optimizer_state`` as
    held after the step, ``activations`` as held when the loss is computed (what backward will read, plus
    the model outputs and the input), ``batch`` the loaded batch (bg, fg_bg, mask, depth). ``output_dtype``
    is the dtype of the traced model's mask output: ``autocast``'s dtype shows that autocast was in effect.
    """

    peak: int
    at_peak: dict[str, int]
    parameters: int
    buffers: int
    gradients: int
    optimizer_state: int
    activations: int
    batch: int
    image_size: tuple[int, int]
    batch_size: int
    autocast: torch.dtype | None
    device: str
    output_dtype: torch.dtype | None = None

    def fits(self, capacity_bytes: float) -> bool:
        """Whether the peak is at most ``capacity_bytes`` (e.g. ``16 * GB`` for a 16 GB card)."""
        return self.peak <= capacity_bytes

    def summary(self) -> str:
        """One line: the peak in GiB and what it is made of at that moment."""
        parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in self.at_peak.items() if v)
        h, w = self.image_size
        return (f"{self.peak / GIB:.2f} GiB peak at {h}x{w} batch {self.batch_size} "
                f"({parts} GiB; autocast {_dtype_name(self.autocast)}, traced on fake {self.device})")


def _dtype_name(dtype: torch.dtype | None) -> str:
    return "off" if dtype is None else str(dtype).removeprefix("torch.")


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    hw: tuple[Any, ...] = ()
    if isinstance(image_size, int):
        hw = (image_size, image_size)
    elif isinstance(image_size, tuple | list):
        hw = tuple(image_size)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in hw):
        raise ValueError(f"estimate_step_memory: image_size must be a positive int or (H, W), got {image_size!r}")
    return hw[0], hw[1]


def _device(device: str) -> torch.device:
    if device not in ("cpu", "cuda"):
        raise ValueError(f"estimate_step_memory: device must be 'cpu' or 'cuda' (where to trace), got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "estimate_step_memory: device='cuda' needs a CUDA build and a GPU (a CPU-only build cannot run "
            "indexing or .contiguous() on fake CUDA tensors, and switches CUDA autocast off); use device='cpu', "
            "which estimates the same CUDA step"
        )
    return torch.device(device)


def build_optimizer(name: Optimizer, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """The trainer's optimizer (:func:`losslab.core.train.optim.build_optimizer`), with the state it keeps.

    lr and decay do not change its size. ``foreach=True`` is what PyTorch picks for CUDA parameters; fake
    tensors would otherwise get the per-parameter loop, whose temporaries are smaller.
    """
    try:
        return make_optimizer(name, list(params), lr=1e-3, weight_decay=1e-4, foreach=True)
    except ValueError as exc:
        raise ValueError(f"estimate_step_memory: {exc}") from None


def _batch(n: int, h: int, w: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The loader's batch: bg and fg_bg images, a 0/1 mask and depth / max_depth in [0, 1], all float32."""
    return {
        "bg": torch.rand(n, 3, h, w, device=device),
        "fg_bg": torch.rand(n, 3, h, w, device=device),
        "mask": (torch.rand(n, 1, h, w, device=device) > 0.5).float(),
        "depth": torch.rand(n, 1, h, w, device=device),
    }


def _total(result: Any) -> torch.Tensor:
    """The objective's scalar: ``Objective`` returns ``(total, values)``, a plain loss returns the tensor."""
    total = result[0] if isinstance(result, tuple) else result
    if not isinstance(total, torch.Tensor) or total.dim() != 0:
        raise TypeError("estimate_step_memory: objective(outputs, batch) must return a scalar tensor or "
                        f"(scalar, values), got {type(total).__name__}")
    return total


def _warm_up(objective: Callable[..., Any], h: int, w: int, dtype: torch.dtype, device: torch.device) -> None:
    """Run the objective once for real on a one-image batch before tracing it on fake tensors.

    A loss may build constants from data on first use and cache them (the ``ssim`` loss builds its blur
    operators with ``nonzero()`` and ``int(...)``, which fake tensors cannot answer, and keeps them per image
    size and device). Built here from real data, the constants are exact, the fake step reads them, and no
    fake tensor is left in a plugin's cache to break a later real run. It costs one loss on one image.
    """
    real = _batch(1, h, w, device)
    outputs = {"mask": torch.randn(1, 1, h, w, device=device, dtype=dtype),
               "depth": torch.rand(1, 1, h, w, device=device, dtype=dtype)}
    with torch.no_grad():
        _total(objective(outputs, real))


def _by_kind(snapshot: Mapping[torch.device, Mapping[Any, int]], device: torch.device) -> dict[str, int]:
    """MemTracker's per-device snapshot for ``device``, under this module's names (zeros where absent)."""
    out = dict.fromkeys(_KINDS.values(), 0)
    out["total"] = 0
    for dev, kinds in snapshot.items():
        if dev.type != device.type:
            continue  # e.g. Adam's step counters, which live on the host
        for key, value in kinds.items():
            name = str(getattr(key, "value", key))
            out[_KINDS.get(name, "total" if name == "Total" else name)] += int(value)
    return out


def estimate_step_memory(
    model: Callable[[], nn.Module],
    objective: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], Any],
    image_size: int | tuple[int, int],
    batch: int,
    *,
    optimizer: Optimizer = "adamw",
    amp_dtype: torch.dtype | None = torch.bfloat16,
    channels_last: bool = True,
    device: Literal["cpu", "cuda"] = "cpu",
) -> MemoryEstimate:
    """Peak memory of one training step of ``model`` at ``image_size`` and ``batch``, without allocating it.

    Args:
        model: a factory returning the network (e.g. ``lambda: catalog.create("architecture", "unet")``); it
            is called under ``torch.device("meta")`` so no weights are made, then given fake storage.
        objective: ``objective(outputs, batch)`` returning the total loss, or ``(total, values)`` as
            :class:`~losslab.core.train.objective.Objective` does; a real module (a few constants at most), run
            once for real on one image first (see :func:`_warm_up`), then on the fake step.
        image_size: side, or ``(H, W)``, of the batch's images.
        batch: images per step (the per-GPU batch).
        optimizer: the trainer's ``train.optimizer``.
        amp_dtype: the autocast dtype (``torch.bfloat16``, as the trainer on a recent GPU; ``float16`` has the
            same sizes), or ``None`` for float32.
        channels_last: the model and its input in channels_last, as the trainer on CUDA.
        device: where the fake step runs: ``"cpu"`` (any machine; see the module notes) or ``"cuda"``.

    Returns:
        a :class:`MemoryEstimate`; ``peak`` is the number to compare with a GPU's capacity.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"estimate_step_memory: batch must be an int >= 1, got {batch!r}")
    h, w = _size(image_size)
    dev = _device(device)
    with torch.device("meta"):
        net = model()
    if not isinstance(net, nn.Module):
        raise TypeError(f"estimate_step_memory: model() must return a torch.nn.Module, got {type(net).__name__}")
    if channels_last:
        # on meta; to_empty keeps each tensor's strides (Module.to accepts memory_format; torch's stubs omit it)
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if isinstance(objective, nn.Module):
        objective = objective.to(dev)
    # the caller's random stream is left as it was: the warm-up draws real random numbers
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if dev.type == "cuda" else []):
        _warm_up(objective, h, w, amp_dtype or torch.float32, dev)
        at_loss, end, peak, out_dtype = _trace(net, objective, optimizer, batch, h, w, amp_dtype, channels_last, dev)
    return MemoryEstimate(
        peak=peak.pop("total"),
        at_peak=peak,
        parameters=end["parameters"],
        buffers=end["buffers"],
        gradients=end["gradients"],
        optimizer_state=end["optimizer_state"],
        activations=at_loss["activations"],
        batch=end["batch"],
        image_size=(h, w),
        batch_size=batch,
        autocast=amp_dtype,
        device=dev.type,
        output_dtype=out_dtype,
    )


def _trace(net: nn.Module, objective: Callable[..., Any], optimizer: Optimizer, batch: int, h: int, w: int,
           amp_dtype: torch.dtype | None, channels_last: bool, dev: torch.device,
           ) -> tuple[dict[str, int], dict[str, int], dict[str, int], torch.dtype]:
    """One steady-state step on fake tensors under MemTracker: (at the loss, after the step, at the peak, dtype)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    # allow_non_fake_inputs: the model's meta tensors and the objective's real constants enter the fake step
    with FakeTensorMode(allow_non_fake_inputs=True):
        net = net.to_empty(device=dev).train()
        opt = build_optimizer(optimizer, net.parameters())
        data = _batch(batch, h, w, dev)
        for p in net.parameters():  # what the previous step leaves: gradients still held, optimizer state made
            p.grad = torch.zeros_like(p)
        opt.step()
        tracker = MemTracker()
        tracker.track_external(net, opt, *data.values())
        try:
            with tracker:
                # TrainLoop.run_step on a loaded batch (augmentation aside): model_inputs, run_model, objective, ...
                x = torch.cat([data["bg"], data["fg_bg"]], dim=1)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    out = net(x)
                total = _total(objective(out, data))
                at_loss = _by_kind(tracker.get_tracker_snapshot(), dev)
                opt.zero_grad(set_to_none=True)  # ... zero_grad after the loss, as the trainer does
                total.backward()
                opt.step()
        except (TypeError, ValueError):
            raise
        except Exception as exc:
            raise RuntimeError(
                f"estimate_step_memory: the training step cannot run on fake tensors (shapes, no data): "
                f"{type(exc).__name__}: {exc}. A model or loss that reads tensor values (.item(), int(t), "
                "bool(t), nonzero(), masked indexing) cannot be traced; compute such values from shapes, or "
                "once on real data and cache them"
            ) from exc
        end = _by_kind(tracker.get_tracker_snapshot(), dev)
        peak = _by_kind(tracker.get_tracker_snapshot("peak"), dev)
    return at_loss, end, peak, out["mask"].dtype


def amp_dtype_for(cfg: ExperimentConfig) -> torch.dtype | None:
    """The autocast dtype the trainer would use on CUDA for ``cfg`` (``None``: float32).

    On a machine without CUDA the GPU's bf16 support is unknown: bf16 is assumed (fp16, used where bf16 is
    not supported, has the same sizes; its GradScaler adds a few scalars).
    """
    if cfg.train.amp is False:
        return None
    if torch.cuda.is_available():
        from losslab.core.device import precision_for

        return precision_for(torch.device("cuda"), cfg.train.amp, cfg.train.channels_last).autocast_dtype
    return torch.bfloat16


def estimate_for_config(cfg: ExperimentConfig, catalog: Catalog, batch: int | None = None,
                        device: Literal["cpu", "cuda"] = "cpu") -> MemoryEstimate:
    """:func:`estimate_step_memory` for the step ``lab run`` would train on one GPU with ``cfg``.

    ``batch`` defaults to ``train.batch_size`` (required when that is ``auto``).
    """
    from losslab.core.train.objective import Objective

    if batch is None:
        if not isinstance(cfg.train.batch_size, int):
            raise ValueError("estimate_for_config: train.batch_size is 'auto'; pass the batch to estimate")
        batch = cfg.train.batch_size
    spec = cfg.model
    component = catalog.get("architecture", spec.name)
    return estimate_step_memory(
        lambda: component.create(**spec.params),
        Objective(cfg.loss, catalog),
        cfg.data.image_size,
        batch,
        optimizer=cfg.train.optimizer,
        amp_dtype=amp_dtype_for(cfg),
        channels_last=cfg.train.channels_last is not False,
        device=device,
    )


__all__ = [
    "GB",
    "GIB",
    "MemoryEstimate",
    "amp_dtype_for",
    "build_optimizer",
    "estimate_for_config",
    "estimate_step_memory",
]
