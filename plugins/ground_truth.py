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
depth loads its network there, so a wrong file fails at once), and
``check_sources(sources, bg_ids)``, called once the sources are known, to
refuse what it cannot do with them (geometry depth on photos whose geometry
nobody stated). A producer that fits something per bg may define
``drain_records(bgs)`` (JSON rows kept in ``dataset.json``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from losslab.core.data.geometry import GeometryUnknown, SceneGeometry
from losslab.core.data.recipes import Recipe
from losslab.core.data.sources import Sources

#: What the compositor hands a producer: ``bg``, ``fg_bg`` (N,H,W,3) uint8 and ``alpha`` (N,H,W) float32.
Composed = dict[str, np.ndarray]


class AlphaMask:
    """Mask from the fg's alpha: pixel is fg where the composited alpha is at least ``threshold``.

    Args:
        threshold: composited alpha at or above which a pixel is foreground, in (0, 1].
    """

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

    Args:
        threshold: gray level (0-255) of the uint8 difference above which a pixel is foreground.
    """

    target: ClassVar[str] = "mask"

    def __init__(self, threshold: int = 0) -> None:
        self.threshold = threshold

    def __call__(self, composed: Composed, recipes: Sequence[Recipe], sources: Sources) -> np.ndarray:
        diff = composed["fg_bg"] - composed["bg"]  # uint8: wraps around, as the documented code did
        gray = np.stack([cv2.cvtColor(d, cv2.COLOR_RGB2GRAY) for d in diff])
        return (gray > self.threshold).astype(np.uint8)


#: What to tell a user whose bgs are photos of unknown geometry (``{what}`` names the producer).
GEOMETRY_CHOICES = (
    "a photo's camera cannot be guessed, so choose one of:\n"
    "  - state it for every bg: --depth-param horizon=0.45 --depth-param camera_height=1.6 (horizon: the "
    "horizon's row as a fraction of the height from the top; camera height in metres; in a config: "
    "data.ground_truth.depth.params)\n"
    "  - state it per bg in a sidecar next to each photo, e.g. {example}: "
    '{{"horizon": 0.45, "camera_height": 1.6}}\n'
    "  - use a depth model: --depth model --depth-param path=DIR (a local Depth Anything, DPT, GLPN, ZoeDepth or "
    "MiDaS; see docs/data.md, 'Depth models')"
)


def _unknown_bgs(sources: Sources, bg_ids: Sequence[int], known: Any) -> list[GeometryUnknown]:
    out = []
    for b in bg_ids:
        try:
            known(sources, b)
        except GeometryUnknown as exc:
            out.append(exc)
    return out


def _geometry_message(what: str, unknown: list[GeometryUnknown], total: int) -> str:
    first = str(unknown[0]).split(":")[0]
    example = str(Path(first).with_suffix(".geometry.json")) if first else "photo.geometry.json"
    return (f"{what}: {len(unknown)} of {total} bg(s) are photos with no stated geometry (first: {unknown[0]}); "
            + GEOMETRY_CHOICES.format(example=example))


def stated_geometry(sources: Sources, bg: int, overrides: dict[str, float]) -> SceneGeometry:
    """The bg's geometry with ``overrides`` on top; a photo needs horizon and camera_height from one of the two.

    Raises :class:`GeometryUnknown` when neither the source nor the overrides state them.
    """
    try:
        geo = sources.geometry(bg)
    except GeometryUnknown as exc:
        if "horizon" not in overrides or "camera_height" not in overrides:
            raise
        geo = exc.defaults
    return replace(geo, **overrides) if overrides else geo


class GroundPlaneDepth:
    """Camera-geometry depth: the bg's ground plane (then wall or sky), each fg at its base row's depth.

    ``horizon`` and ``camera_height`` (and ``focal``, ``far``) override the
    source's geometry when given. A photo (a folder source) has no geometry of
    its own: it needs both stated here, or in its sidecar file
    (``<bg>.geometry.json``, see :mod:`losslab.core.data.scene_files`);
    otherwise :meth:`check_sources` refuses it and names the choices.

    Args:
        horizon: horizon row as a fraction of the height from the top (null: the source's geometry).
        camera_height: camera height above the ground in metres (null: the source's geometry).
        far: depth in metres of the sky / far plane (null: the source's geometry).
        focal: focal length as a multiple of the image height (null: the source's geometry).
        threshold: fg alpha at or above which a pixel takes the fg's depth.
    """

    target: ClassVar[str] = "depth"

    def __init__(self, horizon: float | None = None, camera_height: float | None = None,
                 far: float | None = None, focal: float | None = None, threshold: float = 0.5) -> None:
        given = {"horizon": horizon, "camera_height": camera_height, "far": far, "focal": focal}
        self.overrides = {k: float(v) for k, v in given.items() if v is not None}
        if horizon is not None and not 0.0 < horizon < 1.0:
            raise ValueError(f"ground-plane depth: horizon must be a fraction of the height in (0, 1), got {horizon}")
        for key in ("camera_height", "far", "focal"):
            if key in self.overrides and self.overrides[key] <= 0:
                raise ValueError(f"ground-plane depth: {key} must be positive, got {self.overrides[key]}")
        self.threshold = threshold
        self._bg_depth: dict[tuple[int, int, int], np.ndarray] = {}

    def geometry(self, sources: Sources, bg: int) -> SceneGeometry:
        try:
            return stated_geometry(sources, bg, self.overrides)
        except GeometryUnknown as exc:
            raise ValueError(_geometry_message("ground-plane depth", [exc], 1)) from None

    def check_sources(self, sources: Sources, bg_ids: Sequence[int]) -> None:
        """Refuse, before any work, bgs whose geometry nobody stated (photos), naming what to choose."""
        unknown = _unknown_bgs(sources, bg_ids, lambda s, b: stated_geometry(s, b, self.overrides))
        if unknown:
            raise ValueError(_geometry_message("ground-plane depth", unknown, len(bg_ids)))

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
        """Each bg's depth map and each recipe's fg depth, uploaded once (core/data/device_data.py).

        Bgs no recipe uses (skipped files) get zeros: their geometry may be unknown.
        """
        used = {r.bg for r in recipes}
        bg_maps = np.stack([self.geometry(sources, b).depth_map(height, width) if b in used
                            else np.zeros((height, width), np.float32) for b in range(sources.n_bg)])
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
    row, use row 0's depth. The bg is at ``background`` metres (20 by default
    for the synthetic scenes); for photos, whose depth nobody knows, it must
    be stated (:meth:`check_sources`).

    Args:
        depths: depth in metres of each grid row (null: ``near * step**r`` for ``rows`` rows).
        near: depth in metres of row 0 when ``depths`` is not given.
        step: factor from one row's depth to the next when ``depths`` is not given.
        background: depth in metres of the bg layer (null: 20 for synthetic scenes; photos must state it).
        rows: number of rows when ``depths`` is not given.
        threshold: fg alpha at or above which a pixel takes its row's depth.
    """

    target: ClassVar[str] = "depth"

    def __init__(self, depths: Sequence[float] | None = None, near: float = 2.5, step: float = 1.25,
                 background: float | None = None, rows: int = 4, threshold: float = 0.5) -> None:
        self.depths = list(depths) if depths is not None else [near * step**r for r in range(rows)]
        self.background_stated = background is not None
        background = 20.0 if background is None else background
        if any(d <= 0 for d in self.depths) or background <= 0:
            raise ValueError(
                f"layer depth: depths must be positive metres, got {self.depths} and {background}"
            )
        self.background, self.threshold = background, threshold

    def check_sources(self, sources: Sources, bg_ids: Sequence[int]) -> None:
        """Photos need the bg's layer stated: its 20 m default was made for the synthetic scenes."""
        if self.background_stated:
            return
        unknown = _unknown_bgs(sources, bg_ids, lambda s, b: s.geometry(b))
        if unknown:
            raise ValueError(
                f"layers depth: {len(unknown)} of {len(bg_ids)} bg(s) are photos (first: {unknown[0]}), whose depth "
                "is unknown; state the bg layer's depth with --depth-param background=METRES, or choose a "
                "depth that knows the scene: --depth ground-plane with a stated horizon and camera_height (or "
                "a <bg>.geometry.json sidecar per photo), or --depth model --depth-param path=DIR (a local "
                "monocular depth model; see docs/data.md, 'Depth models')"
            )

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


ALIGN_METHODS = ("auto", "ground", "anchors", "none")


class ModelDepth:
    """Depth from a monocular depth network loaded from local files, made metric per bg.

    ``path`` is a folder holding a Hugging Face transformers depth model (Depth
    Anything V1/V2, DPT, GLPN, ZoeDepth; ``config.json``, weights and
    ``preprocessor_config.json``), a torch.hub folder (``hubconf.py``, with the
    entry point ``name`` and its ``hub_params``; e.g. MiDaS, its weights in
    ``weights`` or ``<path>/checkpoints``), or a file: TorchScript
    (``torch.jit.script(net).save(path)``), an exported program (``.pt2``;
    export it with dynamic height and width, or set ``input_size``), or, with
    ``architecture`` set to a registered architecture name (and its
    ``arch_params``), a state dict (a losslab checkpoint works as is). Nothing
    is downloaded (:mod:`losslab.plugins.depth_models`).

    Unit. A network predicts ``output``: ``"inverse"`` (relative inverse depth:
    Depth Anything, DPT, MiDaS) or ``"depth"`` (metres: GLPN, ZoeDepth); by
    default what the model says it predicts (``"depth"`` for a file). It
    becomes metres per bg by ``align``:

    - ``"ground"``: a least-squares scale and shift (MiDaS's recipe, in the
      output's space: disparity for ``inverse``) that fits the prediction to
      the stated ground plane (``horizon``, ``camera_height``, ``focal``,
      ``far`` here, or the bg's sidecar, or the synthetic scene's own);
    - ``"anchors"``: the same fit to the anchor depths of the bg's sidecar
      (at least 2);
    - ``"none"``: one fixed mapping for every image, ``scale * y + shift`` (or
      ``1 / (scale * y + shift)`` for ``inverse``) — for a metric network, or
      a losslab network (which predicts depth / max_depth: ``scale`` = the
      experiment's ``data.max_depth``);
    - ``"auto"`` (default): ``"none"`` when ``scale`` or ``shift`` is given or
      the network is metric; otherwise ``"anchors"`` where the bg has them,
      else ``"ground"``. A relative network on a photo with neither is refused
      before any work (:meth:`check_sources`).

    Metres are clipped to ``[min_depth, max_depth]``. Each fit's residual is
    kept (:meth:`drain_records`) and written to ``dataset.json``, where ``lab
    data stats`` reports it.

    By default the network runs once per bg (``batch`` bgs per forward pass;
    cached, at most ``cache`` bgs), and each fg is composited at its ground
    depth: the fg's pixels (alpha at least ``threshold``) take the median bg
    depth along the fg's lowest row, where it stands on the ground.
    ``per_sample=True`` runs the network on every fg_bg instead, as the
    original work did (slow), each aligned on its own: the ground or anchors
    not hidden by the fg.

    Input of file and hub networks: RGB in [0, 1], normalised by
    ``mean``/``std`` when given, as ``(N, 3, H, W)``; with ``channels=6`` (the
    default with ``architecture``, since losslab networks take bg and fg_bg
    stacked) the bg comes first. ``input_size`` resizes the input to a square
    and the output back (bilinear). A transformers model uses its own image
    processor instead.

    Args:
        path: the model: a transformers or torch.hub folder, or a TorchScript, ``.pt2`` or state-dict file.
        architecture: registered architecture a state dict belongs to (null: not a state dict).
        arch_params: that architecture's params.
        output: ``"inverse"`` (relative inverse depth) or ``"depth"`` (metres); null: what the model says.
        scale: fixed multiplier of the raw output (with ``align: none``); null: fitted per bg.
        shift: fixed offset added to the scaled output (with ``align: none``); null: fitted per bg.
        min_depth: lower clip of the depth in metres.
        max_depth: upper clip of the depth in metres (65.535 fits 16-bit PNGs in mm).
        channels: 3 (image only) or 6 (bg then image); null: 6 with ``architecture``, else 3.
        mean: RGB mean to normalise a file or hub network's input by (give with ``std``).
        std: RGB standard deviation to normalise the input by (give with ``mean``).
        input_size: square side the input is resized to (null: the image's size).
        per_sample: run the network on every fg_bg instead of once per bg (slow).
        threshold: fg alpha at or above which a pixel takes the fg's ground depth.
        device: where the network runs (``"cpu"``, ``"cuda"``).
        cache: how many bgs' depth maps are kept in memory.
        name: the torch.hub entry point of a hub folder.
        hub_params: keyword arguments of that entry point.
        weights: a local weights file for a hub model (null: ``<path>/checkpoints``).
        align: ``"auto"``, ``"ground"``, ``"anchors"`` or ``"none"``: how the output becomes metres per bg.
        horizon: horizon row as a fraction of the height, for ``align: ground`` (null: sidecar or scene).
        camera_height: camera height in metres, for ``align: ground`` (null: sidecar or scene).
        focal: focal length as a multiple of the image height, for ``align: ground`` (null: sidecar or scene).
        far: depth in metres of the far plane, for ``align: ground`` (null: sidecar or scene).
        batch: bgs per forward pass of the network.
    """

    target: ClassVar[str] = "depth"

    def __init__(
        self, path: str, architecture: str | None = None, arch_params: dict[str, Any] | None = None,
        output: str | None = None, scale: float | None = None, shift: float | None = None,
        min_depth: float = 0.0, max_depth: float = 65.535, channels: int | None = None,
        mean: Sequence[float] | None = None, std: Sequence[float] | None = None, input_size: int | None = None,
        per_sample: bool = False, threshold: float = 0.5, device: str = "cpu", cache: int = 256,
        name: str | None = None, hub_params: dict[str, Any] | None = None, weights: str | None = None,
        align: str = "auto", horizon: float | None = None, camera_height: float | None = None,
        focal: float | None = None, far: float | None = None, batch: int = 8,
    ) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise ValueError(
                f"model depth: no model file at {self.path}; pass path=<a transformers model folder, a torch.hub "
                "folder, or a TorchScript / state dict file>; nothing is downloaded at run time (docs/data.md, "
                "'Depth models': e.g. huggingface-cli download depth-anything/Depth-Anything-V2-Small-hf "
                "--local-dir DIR, once, on a connected machine)"
            )
        if output not in (None, "depth", "inverse"):
            raise ValueError(f"model depth: output must be 'depth' or 'inverse', got {output!r}")
        if align not in ALIGN_METHODS:
            raise ValueError(f"model depth: align must be one of {', '.join(ALIGN_METHODS)}, got {align!r}")
        if scale == 0:
            raise ValueError("model depth: scale must not be 0 (it maps the network's output to metres)")
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"model depth: need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        channels = channels if channels is not None else (6 if architecture else 3)
        if channels not in (3, 6):
            raise ValueError(f"model depth: channels must be 3 (image) or 6 (bg and image), got {channels}")
        if (mean is None) != (std is None) or (mean is not None and (len(mean) != 3 or len(std or ()) != 3)):
            raise ValueError("model depth: give both mean and std, three values each (RGB), or neither")
        if batch < 1:
            raise ValueError(f"model depth: batch must be at least 1, got {batch}")
        self.architecture, self.arch_params = architecture, dict(arch_params or {})
        self.name, self.hub_params, self.weights = name, dict(hub_params or {}), weights
        self.output, self.align, self.fixed = output, align, scale is not None or shift is not None
        self.scale = float(scale) if scale is not None else 1.0
        self.shift = float(shift) if shift is not None else 0.0
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.channels, self.input_size, self.per_sample = channels, input_size, per_sample
        self.mean = list(mean) if mean is not None else None
        self.std = list(std) if std is not None else None
        self.threshold, self.device, self.cache_size, self.batch = threshold, device, cache, batch
        self.ground = GroundPlaneDepth(horizon=horizon, camera_height=camera_height, focal=focal, far=far)
        self._model: Any = None
        self._bg_depth: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._fits: dict[int, dict[str, Any]] = {}
        self._sample_fits: dict[int, list[dict[str, Any]]] = {}

    def __getstate__(self) -> dict[str, Any]:  # a pickled copy reloads its own network
        state = dict(self.__dict__)
        state["_model"], state["_bg_depth"] = None, OrderedDict()
        state["_fits"], state["_sample_fits"] = {}, {}
        return state

    # -- the network -----------------------------------------------------------------------------------

    def model(self) -> Any:
        if self._model is None:
            from losslab.plugins.depth_models import load_depth_net

            self._model = load_depth_net(
                self.path, name=self.name, hub_params=self.hub_params, weights=self.weights,
                architecture=self.architecture, arch_params=self.arch_params, device=self.device,
                channels=self.channels, mean=self.mean, std=self.std, input_size=self.input_size,
            )
        return self._model

    def check(self) -> None:
        """Load the network once, to fail before any work on a file that is not what it should be."""
        self.space()

    def space(self) -> str:
        """What the network's output is: "inverse" (relative inverse depth) or "depth" (metres)."""
        space = self.output or self.model().native_output
        if space not in ("depth", "inverse"):
            raise ValueError(
                f"model depth: cannot tell whether {self.model().description} predicts depth or inverse depth; "
                "pass output=depth (metres) or output=inverse (relative inverse depth, disparity)"
            )
        return space

    def run(self, images: np.ndarray, bgs: np.ndarray | None = None) -> np.ndarray:
        """The network's raw output (N, H, W) float64 for RGB uint8 images, ``batch`` at a time."""
        net = self.model()
        parts = [net(images[i : i + self.batch], None if bgs is None else bgs[i : i + self.batch])
                 for i in range(0, len(images), self.batch)]
        return np.concatenate(parts) if parts else np.zeros((0, *images.shape[1:3]))

    # -- alignment --------------------------------------------------------------------------------------

    def method(self, sources: Sources, bg: int) -> str:
        """How bg ``bg``'s prediction becomes metres (see the class docstring); raises when it cannot."""
        if self.align == "none" or (self.align == "auto" and (self.fixed or self.space() == "depth")):
            return "none"
        anchors = self.anchors(sources, bg)
        if self.align == "anchors" or (self.align == "auto" and len(anchors) >= 2):
            if len(anchors) < 2:
                raise ValueError(f"model depth: align=anchors needs at least 2 anchor depths for bg {bg}, "
                                 f"found {len(anchors)}; add \"anchors\": [[x, y, metres], ...] to its sidecar")
            return "anchors"
        stated_geometry(sources, bg, self.ground.overrides)  # raises GeometryUnknown when nobody stated it
        return "ground"

    @staticmethod
    def anchors(sources: Sources, bg: int) -> np.ndarray:
        of = getattr(sources, "anchors", None)
        return of(bg) if of is not None else np.zeros((0, 3))

    def check_sources(self, sources: Sources, bg_ids: Sequence[int]) -> None:
        """Refuse, before any work, a relative network on photos with neither a stated geometry nor anchors."""
        unknown = _unknown_bgs(sources, bg_ids, self.method)
        if unknown:
            raise ValueError(
                f"model depth: the network predicts relative depth, which needs a known scene to become metres, "
                f"and {len(unknown)} of {len(bg_ids)} bg(s) have none (first: {unknown[0]}); choose one of:\n"
                "  - state the ground for every bg: --depth-param horizon=0.45 --depth-param camera_height=1.6\n"
                "  - a sidecar per photo (<bg>.geometry.json) with horizon and camera_height, or with "
                "\"anchors\": [[x, y, metres], ...] (at least 2 known depths, pixels of the photo)\n"
                "  - align=none with a fixed scale (and shift), e.g. for a metric model or output=depth"
            )

    def to_metres(self, raw: np.ndarray, sources: Sources, bg: int, hidden: np.ndarray | None = None
                  ) -> tuple[np.ndarray, dict[str, Any]]:
        """Metres (H, W) float32 for one raw prediction of bg ``bg``'s scene, and the fit's record.

        ``hidden`` marks pixels whose true depth is not the scene's (a pasted
        fg, in ``per_sample`` mode): they take no part in the fit.
        """
        from losslab.plugins.depth_alignment import align, anchor_target, ground_target, to_metres

        method = self.method(sources, bg)
        space = self.space()
        if method == "none":
            return to_metres(raw, self.scale, self.shift, space, self.min_depth, self.max_depth), {"method": "none"}
        h, w = raw.shape
        if method == "anchors":
            depth, mask = anchor_target(self.anchors(sources, bg), h, w)
        else:
            depth, mask = ground_target(stated_geometry(sources, bg, self.ground.overrides), h, w)
        if hidden is not None:
            mask = mask & ~hidden
        try:
            fit = align(raw, depth, mask, space, method)
        except ValueError as exc:
            raise ValueError(f"model depth: bg {bg} ({method} fit): {exc}") from None
        return to_metres(raw, fit.scale, fit.shift, space, self.min_depth, self.max_depth), fit.to_dict()

    def drain_records(self, bgs: Sequence[int]) -> list[dict[str, Any]]:
        """The fits made for ``bgs`` since the last call, as JSON rows (one per bg), and forget the per-sample ones.

        Per bg, the row is the bg's fit (``per: "bg"``, identical in every chunk
        of that bg); per sample, the mean of its samples' fits in this chunk
        (``per: "sample"``, ``fits`` samples). ``lab data generate`` merges them
        into ``dataset.json`` (:mod:`losslab.core.data.generate.resume`).
        """
        rows = []
        for bg in sorted(set(bgs)):
            if self.per_sample:
                fits = self._sample_fits.pop(bg, [])
                if fits and fits[0]["method"] != "none":
                    rows.append(_mean_row(bg, fits))
            elif bg in self._fits and self._fits[bg]["method"] != "none":
                rows.append({"bg": bg, "per": "bg", "fits": 1, **self._fits[bg],
                             "abs_rel_max": self._fits[bg]["abs_rel"]})
        if self.per_sample:
            self._sample_fits.clear()
        return rows

    # -- ground truth -----------------------------------------------------------------------------------

    def bg_depths(self, bg_indices: Sequence[int], bgs: np.ndarray, sources: Sources) -> list[np.ndarray]:
        """Metric depth of each bg (cached), predicting the uncached ones in batches."""
        h, w = bgs.shape[1:3]
        todo: dict[int, int] = {}
        for i, b in enumerate(bg_indices):
            if (b, h, w) not in self._bg_depth and b not in todo:
                todo[b] = i
        if todo:
            images = bgs[list(todo.values())]
            for b, raw in zip(todo, self.run(images, images), strict=True):
                metres, record = self.to_metres(raw, sources, b)
                self._bg_depth[(b, h, w)] = metres
                self._fits[b] = record
                while len(self._bg_depth) > max(self.cache_size, len(todo)):
                    self._bg_depth.popitem(last=False)
        out = []
        for b in bg_indices:
            self._bg_depth.move_to_end((b, h, w))
            out.append(self._bg_depth[(b, h, w)])
        return out

    def __call__(self, composed: Composed, recipes: Sequence[Recipe], sources: Sources) -> np.ndarray:
        alpha = composed["alpha"]
        out = np.empty(alpha.shape, dtype=np.float32)
        if not len(recipes):
            return out
        if self.per_sample:
            raws = self.run(composed["fg_bg"], composed["bg"])
            for i, recipe in enumerate(recipes):
                out[i], record = self.to_metres(raws[i], sources, recipe.bg, hidden=alpha[i] >= self.threshold)
                self._sample_fits.setdefault(recipe.bg, []).append(record)
            return out
        depths = self.bg_depths([r.bg for r in recipes], composed["bg"], sources)
        for i in range(len(recipes)):
            bg_depth = depths[i]
            out[i] = bg_depth
            fg = alpha[i] >= self.threshold
            rows = np.flatnonzero(fg.any(axis=1))
            if rows.size:
                foot = rows[-1]
                ground = np.median(bg_depth[foot, np.flatnonzero(fg[foot])])
                np.copyto(out[i], np.float32(ground), where=fg)
        return out


def _mean_row(bg: int, fits: list[dict[str, Any]]) -> dict[str, Any]:
    """One record for a bg's per-sample fits: means of scale, shift, rmse and abs_rel; total points; worst abs_rel."""
    n = len(fits)
    row: dict[str, Any] = {"bg": bg, "per": "sample", "fits": n, "method": fits[0]["method"],
                           "rmse_unit": fits[0]["rmse_unit"]}
    for key in ("scale", "shift", "rmse", "abs_rel"):
        row[key] = float(sum(f[key] for f in fits) / n)
    row["points"] = int(sum(f["points"] for f in fits))
    row["abs_rel_max"] = float(max(f["abs_rel"] for f in fits))
    return row
