"""Built-in ground-truth producers: masks (alpha, diff) and depth (ground-plane, layers, model).

Depth is in metres and never stretched per image, so a value means the same
distance in every image. A producer is a pure function of its inputs (caches
aside), which is what lets the virtual dataset and the materialized layouts
agree pixel for pixel.

A producer may also define ``cache_key(recipe, sources)``: a hashable value
such that two recipes with equal keys (in one image size) get the same
output, or None. Writers use it to encode a repeated mask or depth once (the
documented grid repeats every fg placement on every bg); a producer without
it, or returning None, is simply recomputed each time. It may define
``check()``, which ``lab data generate`` calls once before any work (the model
depth loads its network there, so a wrong file fails at once).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from losslab.core.data.geometry import SceneGeometry
from losslab.core.data.recipes import Recipe
from losslab.core.data.sources import Sources
from losslab.core.plugin.markers import hookimpl

#: What the compositor hands a producer: ``bg``, ``fg_bg`` (N,H,W,3) uint8 and ``alpha`` (N,H,W) float32.
Composed = dict[str, np.ndarray]


class AlphaMask:
    """Mask from the fg's alpha: pixel is fg where the composited alpha is at least ``threshold``."""

    target: ClassVar[str] = "mask"

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"alpha mask: threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold

    def __call__(self, composed: Composed, recipes: Sequence[Recipe], sources: Sources) -> np.ndarray:
        return (composed["alpha"] >= self.threshold).astype(np.uint8)

    def device_plan(self, recipes: Sequence[Recipe], sources: Sources, height: int, width: int) -> dict[str, Any]:
        """On the device the mask is the same threshold of the composited alpha (core/data/device_data.py)."""
        return {"kind": "threshold", "threshold": self.threshold}

    def cache_key(self, recipe: Recipe, sources: Sources) -> Hashable:
        """The alpha canvas depends on the fg, its flip and its box only, not on the bg."""
        return ("alpha", self.threshold, recipe.fg, recipe.flip, recipe.size, recipe.x, recipe.y)


class DiffMask:
    """The documented differencing mask: gray(fg_bg - bg) > threshold, in uint8 arithmetic.

    Kept to measure the label noise it adds: it misses fg pixels whose colour
    equals the bg's, and uint8 subtraction wraps around (``3 - 5 = 254``), so
    it marks some pixels for the wrong reason. Use ``alpha`` for real labels.
    """

    target: ClassVar[str] = "mask"

    def __init__(self, threshold: int = 0) -> None:
        self.threshold = threshold

    def __call__(self, composed: Composed, recipes: Sequence[Recipe], sources: Sources) -> np.ndarray:
        diff = composed["fg_bg"] - composed["bg"]  # uint8: wraps around, as the documented code did
        gray = np.stack([cv2.cvtColor(d, cv2.COLOR_RGB2GRAY) for d in diff])
        return (gray > self.threshold).astype(np.uint8)


class GroundPlaneDepth:
    """Camera-geometry depth: the bg's ground plane (then wall or sky), each fg at its base row's depth.

    ``horizon`` and ``camera_height`` override the source's geometry when given
    (for real photos, whose geometry the source cannot know).
    """

    target: ClassVar[str] = "depth"

    def __init__(self, horizon: float | None = None, camera_height: float | None = None,
                 far: float | None = None, threshold: float = 0.5) -> None:
        given = {"horizon": horizon, "camera_height": camera_height, "far": far}
        self.overrides = {k: v for k, v in given.items() if v is not None}
        self.threshold = threshold
        self._bg_depth: dict[tuple[int, int, int], np.ndarray] = {}

    def geometry(self, sources: Sources, bg: int) -> SceneGeometry:
        geo = sources.geometry(bg)
        return SceneGeometry(**{**geo.__dict__, **self.overrides}) if self.overrides else geo

    def __call__(self, composed: Composed, recipes: Sequence[Recipe], sources: Sources) -> np.ndarray:
        n, h, w = composed["alpha"].shape
        out = np.empty((n, h, w), dtype=np.float32)
        for i, recipe in enumerate(recipes):
            geo = self.geometry(sources, recipe.bg)
            key = (recipe.bg, h, w)
            if key not in self._bg_depth:
                self._bg_depth[key] = geo.depth_map(h, w)
            fg_depth = geo.ground_depth_at(min(recipe.base_y, h) - 1, h)
            out[i] = self._bg_depth[key]
            np.copyto(out[i], np.float32(fg_depth), where=composed["alpha"][i] >= self.threshold)
        return out

    def device_plan(self, recipes: Sequence[Recipe], sources: Sources, height: int, width: int) -> dict[str, Any]:
        """Each bg's depth map and each recipe's fg depth, uploaded once (core/data/device_data.py)."""
        bg_maps = np.stack([self.geometry(sources, b).depth_map(height, width) for b in range(sources.n_bg)])
        fg_values = np.array([self.geometry(sources, r.bg).ground_depth_at(min(r.base_y, height) - 1, height)
                              for r in recipes], dtype=np.float32)
        return {"kind": "fg-over-bg", "threshold": self.threshold, "bg_maps": bg_maps, "fg_values": fg_values}

    def cache_key(self, recipe: Recipe, sources: Sources) -> Hashable:
        """The bg's geometry (not its pixels) and the fg's alpha canvas determine this depth."""
        geo = self.geometry(sources, recipe.bg)
        return ("ground-plane", geo, self.threshold, recipe.fg, recipe.flip, recipe.size, recipe.x, recipe.y)


class LayerDepth:
    """The documented depth layers: a constant depth per grid row, the bg at one far layer.

    ``depths`` gives the depth (metres) of rows 0..n-1; by default row ``r`` is
    at ``near * step**r``. Free placements (row -1), which have no
    row, use row 0's depth.
    """

    target: ClassVar[str] = "depth"

    def __init__(self, depths: Sequence[float] | None = None, near: float = 2.5, step: float = 1.25,
                 background: float = 20.0, rows: int = 4, threshold: float = 0.5) -> None:
        self.depths = list(depths) if depths is not None else [near * step**r for r in range(rows)]
        if any(d <= 0 for d in self.depths) or background <= 0:
            raise ValueError(
                f"layer depth: depths must be positive metres, got {self.depths} and {background}"
            )
        self.background, self.threshold = background, threshold

    def __call__(self, composed: Composed, recipes: Sequence[Recipe], sources: Sources) -> np.ndarray:
        n, h, w = composed["alpha"].shape
        out = np.full((n, h, w), self.background, dtype=np.float32)
        for i, recipe in enumerate(recipes):
            row = recipe.row if 0 <= recipe.row < len(self.depths) else 0
            out[i][composed["alpha"][i] >= self.threshold] = self.depths[row]
        return out

    def device_plan(self, recipes: Sequence[Recipe], sources: Sources, height: int, width: int) -> dict[str, Any]:
        """A constant background and each recipe's row depth, uploaded once (core/data/device_data.py)."""
        bg_maps = np.full((sources.n_bg, height, width), self.background, dtype=np.float32)
        fg_values = np.array([self.depths[r.row if 0 <= r.row < len(self.depths) else 0] for r in recipes],
                             dtype=np.float32)
        return {"kind": "fg-over-bg", "threshold": self.threshold, "bg_maps": bg_maps, "fg_values": fg_values}

    def cache_key(self, recipe: Recipe, sources: Sources) -> Hashable:
        """Layer depths depend on the grid row and the fg's alpha canvas only."""
        return ("layers", recipe.row, self.threshold, recipe.fg, recipe.flip, recipe.size, recipe.x, recipe.y)


class ModelDepth:
    """Depth from a monocular depth network loaded from a local file.

    The file is a TorchScript archive (``torch.jit.script(net).save(path)``),
    an exported program (``torch.export.save``, a ``.pt2`` file; export it with
    dynamic height and width, or set ``input_size`` to the size it was
    exported at), or, with ``architecture`` set to a registered architecture
    name (and its ``arch_params``), a state dict saved with ``torch.save`` (a
    losslab checkpoint, whose weights sit under ``"model"``, works as is).

    By default the network runs once per bg (cached, at most ``cache`` bgs),
    and each fg is composited at its ground depth: the fg's pixels (alpha at
    least ``threshold``) take the median bg depth along the fg's lowest row,
    where it stands on the ground. ``per_sample=True`` runs the network on
    every fg_bg instead, as the original recipe did (slow; one image per call,
    so that a sample's depth never depends on the batch it was made in).

    Unit: the network's raw output ``y`` becomes metres by one fixed mapping,
    the same for every image (never stretched per image):
    ``scale * y + shift`` for ``output="depth"``, ``1 / (scale * y + shift)``
    for ``output="inverse"`` (disparity-like networks), clipped to
    ``[min_depth, max_depth]``. A losslab network predicts depth / max_depth,
    so use ``scale`` = the experiment's ``data.max_depth`` for it.

    Input: RGB in [0, 1], normalised by ``mean``/``std`` when given, as
    ``(1, 3, H, W)``; with ``channels=6`` (the default with ``architecture``,
    since losslab networks take bg and fg_bg stacked) the bg comes first.
    ``input_size`` resizes the input to a square and the output back
    (bilinear). The output may be a tensor ``(1, 1, h, w)`` or ``(1, h, w)``,
    or a dict with a ``"depth"`` entry.
    """

    target: ClassVar[str] = "depth"

    def __init__(
        self, path: str, architecture: str | None = None, arch_params: dict[str, Any] | None = None,
        output: str = "depth", scale: float = 1.0, shift: float = 0.0, min_depth: float = 0.0,
        max_depth: float = 65.535, channels: int | None = None, mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None, input_size: int | None = None, per_sample: bool = False,
        threshold: float = 0.5, device: str = "cpu", cache: int = 256,
    ) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ValueError(
                f"model depth: no model file at {self.path}; pass path=<TorchScript or state dict>"
            )
        if output not in ("depth", "inverse"):
            raise ValueError(f"model depth: output must be 'depth' or 'inverse', got {output!r}")
        if scale == 0:
            raise ValueError("model depth: scale must not be 0 (it maps the network's output to metres)")
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"model depth: need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        channels = channels if channels is not None else (6 if architecture else 3)
        if channels not in (3, 6):
            raise ValueError(f"model depth: channels must be 3 (image) or 6 (bg and image), got {channels}")
        if (mean is None) != (std is None) or (mean is not None and (len(mean) != 3 or len(std or ()) != 3)):
            raise ValueError("model depth: give both mean and std, three values each (RGB), or neither")
        self.architecture, self.arch_params = architecture, dict(arch_params or {})
        self.output, self.scale, self.shift = output, float(scale), float(shift)
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.channels, self.input_size, self.per_sample = channels, input_size, per_sample
        self.mean = list(mean) if mean is not None else None
        self.std = list(std) if std is not None else None
        self.threshold, self.device, self.cache_size = threshold, device, cache
        self._model: Any = None
        self._bg_depth: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:  # a pickled copy reloads its own network
        state = dict(self.__dict__)
        state["_model"], state["_bg_depth"] = None, OrderedDict()
        return state

    # -- the network -----------------------------------------------------------------------------------

    def model(self) -> Any:
        if self._model is None:
            self._model = self._load()
        return self._model

    def check(self) -> None:
        """Load the network once, to fail before any work on a file that is not what it should be."""
        self._load()

    def _load(self) -> Any:
        import torch

        if self.architecture is None and self.path.suffix == ".pt2":
            try:
                net = torch.export.load(str(self.path)).module()
            except Exception as exc:  # any failure means "not an exported program"
                raise ValueError(
                    f"model depth: {self.path} cannot be loaded with torch.export.load ({type(exc).__name__}: "
                    f"{exc}); save it with torch.export.save(torch.export.export(net, args), path)"
                ) from None
            return net.to(self.device)
        if self.architecture is None:
            try:
                with warnings.catch_warnings():  # TorchScript is deprecated upstream; the user chose it
                    warnings.simplefilter("ignore", DeprecationWarning)
                    net = torch.jit.load(str(self.path), map_location="cpu")
            except Exception as exc:  # torch raises several types for a file that is not an archive
                raise ValueError(
                    f"model depth: {self.path} is not a TorchScript archive ({type(exc).__name__}); save the "
                    "network with torch.jit.script(net).save(path) (or torch.export.save to a .pt2 file), "
                    "or, for a state dict, also pass architecture=<registered name>"
                ) from None
        else:
            from losslab.core.plugin.manager import load_catalog
            from losslab.core.plugin.registry import RegistryError

            try:
                net = load_catalog().create("architecture", self.architecture, **self.arch_params)
            except RegistryError as exc:
                raise ValueError(f"model depth: {exc}") from None
            try:
                state = torch.load(str(self.path), map_location="cpu", weights_only=True)
            except Exception as exc:
                raise ValueError(
                    f"model depth: {self.path} cannot be read as a state dict ({type(exc).__name__}: {exc}); "
                    "save it with torch.save(net.state_dict(), path)"
                ) from None
            if isinstance(state, dict) and isinstance(state.get("model"), dict):
                state = state["model"]  # a losslab checkpoint
            try:
                net.load_state_dict(state)
            except (RuntimeError, TypeError, AttributeError) as exc:
                first = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])[:400]
                raise ValueError(
                    f"model depth: the weights in {self.path} do not fit architecture {self.architecture!r} "
                    f"with params {self.arch_params}: {first}"
                ) from None
        return net.eval().to(self.device)

    def predict(self, image: np.ndarray, bg: np.ndarray) -> np.ndarray:
        """Metres (H, W) float32 for one RGB uint8 image (and its bg, used when ``channels=6``)."""
        import torch
        import torch.nn.functional as F

        h, w = image.shape[:2]

        def tensor(img: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float().div_(255.0)
            if self.mean is not None and self.std is not None:
                t = (t - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)
            return t

        x = tensor(image) if self.channels == 3 else torch.cat([tensor(bg), tensor(image)], dim=1)
        if self.input_size:
            size = (self.input_size, self.input_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        with torch.inference_mode():
            y = self.model()(x.to(self.device))
        if isinstance(y, dict):
            if "depth" not in y:
                raise ValueError(f"model depth: the network returned a dict without 'depth' ({list(y)})")
            y = y["depth"]
        elif isinstance(y, list | tuple):
            y = y[0]
        y = y.float().cpu()
        if y.ndim == 3:
            y = y[:, None]
        if y.ndim != 4 or y.shape[0] != 1 or y.shape[1] != 1:
            raise ValueError(
                f"model depth: expected an output of shape (1, 1, h, w) or (1, h, w), got {tuple(y.shape)}"
            )
        if tuple(y.shape[-2:]) != (h, w):
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        y = y[0, 0].double()
        if self.output == "depth":
            depth = self.scale * y + self.shift
        else:
            denom = self.scale * y + self.shift
            far = torch.full_like(denom, self.max_depth)
            depth = torch.where(denom > 0, 1.0 / denom.clamp_min(1e-12), far)
        return depth.clamp(self.min_depth, self.max_depth).float().numpy()

    # -- ground truth -----------------------------------------------------------------------------------

    def bg_depth(self, bg_index: int, bg: np.ndarray) -> np.ndarray:
        key = (bg_index, *bg.shape[:2])
        hit = self._bg_depth.get(key)
        if hit is None:
            hit = self._bg_depth[key] = self.predict(bg, bg)
            if len(self._bg_depth) > self.cache_size:
                self._bg_depth.popitem(last=False)
        else:
            self._bg_depth.move_to_end(key)
        return hit

    def __call__(self, composed: Composed, recipes: Sequence[Recipe], sources: Sources) -> np.ndarray:
        alpha = composed["alpha"]
        out = np.empty(alpha.shape, dtype=np.float32)
        for i, recipe in enumerate(recipes):
            if self.per_sample:
                out[i] = self.predict(composed["fg_bg"][i], composed["bg"][i])
                continue
            bg_depth = self.bg_depth(recipe.bg, composed["bg"][i])
            out[i] = bg_depth
            fg = alpha[i] >= self.threshold
            rows = np.flatnonzero(fg.any(axis=1))
            if rows.size:
                foot = rows[-1]
                ground = np.median(bg_depth[foot, np.flatnonzero(fg[foot])])
                np.copyto(out[i], np.float32(ground), where=fg)
        return out


@hookimpl
def lab_register_ground_truth(registry) -> None:
    registry.add("alpha", AlphaMask, summary="mask from the fg's alpha channel (default)", target="mask")
    registry.add("diff", DiffMask, summary="documented differencing mask (noisy; for label-noise studies)",
                 target="mask")
    registry.add("ground-plane", GroundPlaneDepth,
                 summary="camera-geometry depth: ground plane, fg at its base", target="depth")
    registry.add("layers", LayerDepth, summary="documented per-row depth layers", target="depth")
    registry.add("model", ModelDepth, summary="monocular depth network from a local file, once per bg",
                 target="depth")
