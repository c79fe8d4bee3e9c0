"""The device-resident virtual dataset: sources and recipes uploaded once, batches composed on the device.

On CUDA this keeps the whole data path on the GPU: no decode, no host
compose, no host-to-device copy per batch. It computes exactly what the CPU
compositor computes (same fitted fgs, same float32 blend, same rounding), so
the two paths give the same bytes; the tests check that on the CPU.

Ground-truth producers take part through an optional method
``device_plan(recipes, sources, height, width)`` returning either
``{"kind": "threshold", "threshold": t}`` (mask = alpha >= t) or
``{"kind": "fg-over-bg", "threshold": t, "bg_maps": (n_bg, H, W) float32,
"fg_values": (n_recipes,) float32}`` (depth = fg value where alpha >= t,
else the bg's map). A producer without it keeps the CPU path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from losslab.core.data.compositor import Compositor, placement
from losslab.core.data.datasets import VirtualSamples, scale_recipe
from losslab.core.device import upload


class DevicePlanMissing(Exception):
    """A ground-truth producer has no ``device_plan``; the CPU path is used instead."""


def supports_device(samples: Any) -> bool:
    return (isinstance(samples, VirtualSamples)
            and all(hasattr(gt, "device_plan") for gt in (samples.mask_gt, samples.depth_gt)))


class DeviceSamples:
    """All of a virtual sample set's inputs as device tensors; ``batch(indices)`` composes on the device."""

    def __init__(self, samples: VirtualSamples, device: torch.device) -> None:
        if not supports_device(samples):
            raise DevicePlanMissing("a ground-truth producer of this data has no device_plan")
        self.device = device
        sources = samples.compose_sources
        recipes = [scale_recipe(r, samples.factor) if samples.factor != 1.0 else r for r in samples.recipes]
        compositor = Compositor(sources)
        used = sorted({r.bg for r in recipes})  # a bg skipped as unreadable is never read
        first = sources.bg(used[0])
        bgs = np.zeros((sources.n_bg, *first.shape), dtype=np.uint8)  # (n_bg, H, W, 3)
        for b in used:
            bgs[b] = sources.bg(b)
        self.height, self.width = bgs.shape[1:3]
        self.bg = torch.from_numpy(bgs).to(device).permute(0, 3, 1, 2).contiguous()  # uint8, 1 byte a pixel

        keys: dict[tuple[int, bool, int], int] = {}
        for r in recipes:
            keys.setdefault((r.fg, r.flip, r.size), len(keys))
        fitted = [compositor.fitted(*key) for key in keys]
        box = max(max(a.shape) for _, a in fitted)
        table = np.zeros((len(fitted), 4, box, box), dtype=np.float32)
        shapes = np.zeros((len(fitted), 2), dtype=np.int64)
        for k, (premult, alpha) in enumerate(fitted):
            h, w = alpha.shape
            table[k, :3, :h, :w] = premult.transpose(2, 0, 1)
            table[k, 3, :h, :w] = alpha
            shapes[k] = (h, w)
        self.box = box
        self.fg_table = torch.from_numpy(table).to(device).reshape(len(fitted), 4, box * box)
        self.fg_shape = torch.from_numpy(shapes).to(device)
        key_of = np.array([keys[(r.fg, r.flip, r.size)] for r in recipes], dtype=np.int64)
        corners = np.array([placement(r, fitted[k][1].shape) for r, k in zip(recipes, key_of, strict=True)],
                           dtype=np.int64).reshape(-1, 2)
        self.key = torch.from_numpy(key_of).to(device)
        self.x0 = torch.from_numpy(corners[:, 0]).to(device)
        self.y0 = torch.from_numpy(corners[:, 1]).to(device)
        self.bg_of = torch.from_numpy(np.array([r.bg for r in recipes], dtype=np.int64)).to(device)

        self.mask_plan = self._upload(samples.mask_gt.device_plan(recipes, sources, self.height, self.width))
        self.depth_plan = self._upload(samples.depth_gt.device_plan(recipes, sources, self.height, self.width))
        self.rows = torch.arange(self.height, device=device).view(1, -1, 1)
        self.cols = torch.arange(self.width, device=device).view(1, 1, -1)

    def _upload(self, plan: dict[str, Any]) -> dict[str, Any]:
        out = dict(plan)
        for key in ("bg_maps", "fg_values"):
            if key in out:
                out[key] = torch.as_tensor(np.asarray(out[key], dtype=np.float32), device=self.device)
        if out["kind"] not in ("threshold", "fg-over-bg"):
            raise DevicePlanMissing(f"unknown device plan kind {out['kind']!r}")
        return out

    def compose(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """bg and fg_bg (B,3,H,W) uint8 and alpha (B,H,W) float32 for recipe indices ``idx``."""
        key = self.key[idx]
        ly = self.rows - self.y0[idx].view(-1, 1, 1)  # (B, H, 1)
        lx = self.cols - self.x0[idx].view(-1, 1, 1)  # (B, 1, W)
        h = self.fg_shape[key, 0].view(-1, 1, 1)
        w = self.fg_shape[key, 1].view(-1, 1, 1)
        inside = (ly >= 0) & (ly < h) & (lx >= 0) & (lx < w)  # (B, H, W)
        flat = (ly.clamp(0, self.box - 1) * self.box + lx.clamp(0, self.box - 1)).view(len(idx), 1, -1)
        fg = torch.gather(self.fg_table[key], 2, flat.expand(-1, 4, -1)).view(len(idx), 4, self.height, self.width)
        fg = fg * inside.unsqueeze(1)
        alpha = fg[:, 3]
        bg = self.bg[self.bg_of[idx]]
        mixed = bg.float() * (1.0 - alpha.unsqueeze(1)) + fg[:, :3]
        fg_bg = torch.where(inside.unsqueeze(1), mixed.round().clamp(0, 255).to(torch.uint8), bg)
        return {"bg": bg, "fg_bg": fg_bg, "alpha": alpha}

    def targets(self, idx: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (alpha >= self.mask_plan["threshold"]).to(torch.uint8)
        plan = self.depth_plan
        if plan["kind"] == "threshold":
            raise DevicePlanMissing("a depth producer must give a 'fg-over-bg' plan")
        fg_value = plan["fg_values"][idx].view(-1, 1, 1)
        depth = torch.where(alpha >= plan["threshold"], fg_value, plan["bg_maps"][self.bg_of[idx]])
        return mask, depth

    def batch(self, idx: torch.Tensor, max_depth: float) -> dict[str, torch.Tensor]:
        """The loader's batch: float images in [0,1], mask (B,1,H,W), depth normalised by ``max_depth``."""
        composed = self.compose(idx)
        mask, depth = self.targets(idx, composed["alpha"])
        return {
            "bg": composed["bg"].float().div_(255.0),
            "fg_bg": composed["fg_bg"].float().div_(255.0),
            "mask": mask.unsqueeze(1).float(),
            "depth": depth.unsqueeze(1).div(max_depth).clamp_(0.0, 1.0),
        }


class DeviceBatchLoader:
    """Same order and batches as :class:`~losslab.core.data.datasets.BatchLoader`, composed on the device."""

    def __init__(self, device_samples: DeviceSamples, loader: Any) -> None:
        self.samples, self.loader = device_samples, loader

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.loader.epoch = value

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # The epoch's indices go up in one copy, so a batch costs the device no transfer from the host.
        chunks = [torch.from_numpy(chunk.astype(np.int64)) for chunk in self.loader.chunks()]
        if not chunks:
            return
        on_device = upload(torch.cat(chunks), self.samples.device).split([len(c) for c in chunks])
        for idx, device_idx in zip(chunks, on_device, strict=True):
            batch = self.samples.batch(device_idx, self.loader.max_depth)
            batch["index"] = idx
            yield batch

    def load(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The samples ``indices`` as one batch, composed on the device (as ``BatchLoader.load`` on the host)."""
        chosen = upload(torch.as_tensor(np.asarray(indices, dtype=np.int64)), self.samples.device)
        return self.samples.batch(chosen, self.loader.max_depth)


def device_arrays(samples: DeviceSamples, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """The device path's output as the CPU sample set's arrays (for comparing the two)."""
    idx = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=samples.device)
    composed = samples.compose(idx)
    mask, depth = samples.targets(idx, composed["alpha"])
    return {
        "bg": composed["bg"].permute(0, 2, 3, 1).cpu().numpy(),
        "fg_bg": composed["fg_bg"].permute(0, 2, 3, 1).cpu().numpy(),
        "mask": mask.cpu().numpy(),
        "depth": depth.cpu().numpy(),
    }
