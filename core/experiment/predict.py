"""``lab predict``: mask and depth PNGs from a trained checkpoint, for one pair or folders of pairs.

The mask is written as an 8-bit PNG (0 or 255), depth as a 16-bit PNG in
millimetres (the dataset's unit, ``geometry.DEPTH_PNG_UNITS_PER_METRE``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from losslab.core import names
from losslab.core.data.geometry import DEPTH_PNG_UNITS_PER_METRE
from losslab.core.data.sources import IMAGE_SUFFIXES, SourceError, read_rgb


class PredictError(Exception):
    """Prediction inputs are unusable; the message says which and how to fix it."""


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def choose_child(client: Any, run_id: str, variant: str | None = None, seed: int | None = None) -> tuple[str, str]:
    """The child run to predict with, and a line saying which it is and why.

    ``run_id`` may be a child (used as it is) or the parent that ``lab run``
    prints. For a parent, ``variant`` and ``seed`` pick the child; without
    them the choice is the winning variant of the run's summary (the table
    ``lab run`` printed; else the best mean of the monitored metric over
    seeds) and, within it, the seed with the best monitored value.
    """
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise PredictError(f"no run {run_id!r} in this store ({type(exc).__name__}); pass the parent run id that "
                           "`lab run` prints, or a child's") from None
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'",
                                  max_results=5000)
    if not children:
        if variant is not None or seed is not None:
            tags = run.data.tags
            found = (tags.get(names.VARIANT_TAG), tags.get(names.SEED_TAG))
            if (variant is not None and found[0] != variant) or (seed is not None and found[1] != str(seed)):
                raise PredictError(f"run {run_id} is the child of variant {found[0]!r}, seed {found[1]}; "
                                   "--variant/--seed choose among a parent run's children: pass the parent's id")
        return run_id, f"run {run_id}"
    finished = [c for c in children if c.info.status == "FINISHED"]
    params = (finished or children)[0].data.params
    monitor, mode = params.get("train.monitor", "val/mask_iou"), params.get("train.monitor_mode", "max")
    key, sign = f"{names.BEST_PREFIX}{monitor}", (1 if mode == "max" else -1)
    scored = [c for c in finished if key in c.data.metrics]
    variants = sorted({c.data.tags.get(names.VARIANT_TAG, "") for c in children})
    if variant is not None:
        scored = [c for c in scored if c.data.tags.get(names.VARIANT_TAG) == variant]
        if not scored:
            raise PredictError(f"run {run_id} has no finished child of variant {variant!r}; its variants: "
                               f"{', '.join(variants)}")
    if not scored:
        raise PredictError(f"run {run_id} has no finished child run with {key}; nothing to predict with")
    reason = "chosen"
    if variant is None:
        winner = _summary_winner(client, run_id)
        by_variant: dict[str, list[float]] = {}
        for c in scored:
            by_variant.setdefault(c.data.tags.get(names.VARIANT_TAG, ""), []).append(c.data.metrics[key])
        if winner not in by_variant:
            winner = max(by_variant, key=lambda v: sign * _mean(by_variant[v]))
            reason = f"best mean {monitor} over seeds"
        else:
            reason = "the run's winner"
        scored = [c for c in scored if c.data.tags.get(names.VARIANT_TAG, "") == winner]
    if seed is not None:
        seeds = sorted({c.data.tags.get(names.SEED_TAG, "") for c in scored}, key=lambda x: int(x or -1))
        scored = [c for c in scored if c.data.tags.get(names.SEED_TAG) == str(seed)]
        if not scored:
            raise PredictError(f"run {run_id} has no finished child with seed {seed}"
                               + (f" in variant {variant!r}" if variant else "") + f"; seeds: {', '.join(seeds)}")
    best = max(scored, key=lambda c: sign * c.data.metrics[key])
    tags = best.data.tags
    note = (f"run {best.info.run_id}: variant {tags.get(names.VARIANT_TAG)!r} ({reason}), seed "
            f"{tags.get(names.SEED_TAG)} ({'best ' + monitor + ' of its seeds' if seed is None else 'chosen'}: "
            f"{best.data.metrics[key]:.4f})")
    return best.info.run_id, note


def _summary_winner(client: Any, parent_id: str) -> str | None:
    """The winner ``lab run`` printed, from the parent's summary.json (None when it has none)."""
    import json

    try:
        with tempfile.TemporaryDirectory(prefix="lab-predict-") as tmp:
            path = client.download_artifacts(parent_id, names.SUMMARY_FILE, tmp)
            return json.loads(Path(path).read_text()).get("winner")
    except Exception:  # no summary (an interrupted run): fall back to the metric
        return None


def load_checkpoint(checkpoint: Path | None, run_id: str | None, tracking_uri: str | None) -> dict[str, Any]:
    """The checkpoint's dict, loaded with ``weights_only=True`` (a pickle payload is refused, never run).

    With ``run_id`` the run's ``checkpoints/best.pt`` is downloaded into a temporary
    folder that is removed again on every path, failures included.
    """
    from losslab.core.train.checkpoint import CheckpointError, load

    if run_id is None:
        if checkpoint is None:
            raise PredictError("pass --checkpoint PATH or --run RUN_ID")
        try:
            return load(Path(checkpoint))
        except CheckpointError as exc:
            raise PredictError(str(exc)) from None
    from losslab.core.experiment.tracking import Tracker

    tracker = Tracker(tracking_uri)
    tmp = Path(tempfile.mkdtemp(prefix="lab-predict-"))
    try:
        try:
            downloaded = tracker.download(run_id, f"{names.CHECKPOINT_DIR}/{names.BEST_CHECKPOINT}", tmp)
        except Exception as exc:
            raise PredictError(f"run {run_id} in {tracker.uri} has no checkpoints/best.pt artifact "
                               f"({type(exc).__name__}); pass a child run id of `lab run`") from None
        try:
            return load(Path(downloaded))
        except CheckpointError as exc:
            raise PredictError(f"checkpoints/best.pt of run {run_id} in {tracker.uri}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Predictor:
    """A trained model and the data settings it was trained with."""

    def __init__(self, state: dict[str, Any], device: str = "auto", source: str = "checkpoint") -> None:
        from pydantic import ValidationError

        from losslab.core.config import ExperimentConfig
        from losslab.core.device import resolve_device
        from losslab.core.plugin.manager import load_catalog
        from losslab.core.plugin.registry import RegistryError, create_module
        from losslab.core.train.checkpoint import CheckpointError, load_weights

        try:
            self.cfg = ExperimentConfig.model_validate(state["config"])
        except ValidationError as exc:
            raise PredictError(f"{source}: its config is not a valid experiment config for this losslab "
                               f"({exc.error_count()} error(s), first: {exc.errors()[0]['msg']}); use a "
                               "checkpoint written by `lab run`") from None
        self.device = resolve_device(device)
        try:
            component = load_catalog().get("architecture", self.cfg.model.name)
            self.model = create_module(component, self.cfg.model.params, where=f"{source}: model",
                                       error=PredictError)
            load_weights(self.model, state["model"], Path(source), self.cfg.model)
        except (RegistryError, CheckpointError) as exc:
            raise PredictError(f"{source}: {exc}" if isinstance(exc, RegistryError) else str(exc)) from None
        self.model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, bg: np.ndarray, fg_bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mask (H, W) uint8 {0, 255} and depth (H, W) float32 metres, at the inputs' size."""
        if bg.shape != fg_bg.shape:
            raise PredictError(f"bg is {bg.shape[1]}x{bg.shape[0]} but fg_bg is {fg_bg.shape[1]}x{fg_bg.shape[0]}; "
                               "they must be the same size")
        h, w = bg.shape[:2]
        size = self.cfg.data.image_size
        pair = [cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) for img in (bg, fg_bg)]
        x = torch.from_numpy(np.concatenate(pair, axis=2)).permute(2, 0, 1)[None].float().div(255.0)
        out = self.model(x.to(self.device))
        prob = torch.sigmoid(out["mask"])[0, 0].cpu().numpy()
        depth = out["depth"].clamp(0, 1)[0, 0].cpu().numpy() * self.cfg.data.max_depth
        prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
        depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_LINEAR)
        return ((prob >= 0.5) * 255).astype(np.uint8), depth.astype(np.float32)


_BG_NUMBER = re.compile(r"^bg(\d+)_")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def _bg_by_number(bgs: list[Path]) -> dict[int, Path]:
    """bg files by the number their name ends with (``bg_5.jpg``, ``bg5.jpg``, ``img005.png``), when unique."""
    found: dict[int, list[Path]] = {}
    for p in bgs:
        match = _TRAILING_NUMBER.search(p.stem)
        if match:
            found.setdefault(int(match.group(1)), []).append(p)
    return {n: ps[0] for n, ps in found.items() if len(ps) == 1}


def _pairs(bg: Path, fg_bg: Path) -> list[tuple[Path, Path]]:
    """(bg, fg_bg) file pairs: two files, or two folders paired by name.

    A fg_bg pairs with the bg of the same stem; else, for the names ``lab data
    generate`` and the documented dataset use (``bg<K>_<row>_<col>_...``,
    ``bg<K>_x.._y.._s.._...``), with the bg whose name ends with the number K
    (``bg/bg_K.jpg`` of the seed layout, ``bgK.jpg``); else, when the bg folder
    holds one image, with that one.
    """
    if fg_bg.is_file():
        if not bg.is_file():
            raise PredictError(f"--fg-bg is a file, so --bg must be a file too; {bg} is not")
        return [(bg, fg_bg)]
    if not fg_bg.is_dir():
        raise PredictError(f"--fg-bg {fg_bg} does not exist")
    if not bg.is_dir():
        raise PredictError(f"--fg-bg is a folder, so --bg must be a folder too; {bg} is not")
    fg_bgs = sorted(p for p in fg_bg.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    bg_files = [p for p in bg.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    bgs = {p.stem: p for p in bg_files}
    numbered = _bg_by_number(bg_files)
    if not fg_bgs:
        raise PredictError(f"--fg-bg folder {fg_bg} holds no images")
    pairs = []
    for path in fg_bgs:
        match = bgs.get(path.stem)
        number = _BG_NUMBER.match(path.stem)
        if match is None and number is not None:
            match = numbered.get(int(number.group(1)))
        if match is None and len(bgs) == 1:
            match = next(iter(bgs.values()))
        if match is None:
            raise PredictError(f"no bg found for {path.name} in {bg}: name the bg like the fg_bg, or end its "
                               "name with K (bg_K.jpg, bgK.jpg) for names like bg<K>_<row>_<col>_fg_<J>.jpg")
        pairs.append((match, path))
    return pairs


def predict_paths(bg: Path, fg_bg: Path, out: Path, *, run_id: str | None = None, checkpoint: Path | None = None,
                  tracking_uri: str | None = None, device: str = "auto", variant: str | None = None,
                  seed: int | None = None, echo: Any = None) -> list[tuple[Path, Path]]:
    pairs = _pairs(Path(bg), Path(fg_bg))
    if run_id is not None:
        from losslab.core.experiment.tracking import Tracker

        run_id, note = choose_child(Tracker(tracking_uri).client, run_id, variant, seed)
        if echo is not None:
            echo(f"predicting with {note}")
    source = str(checkpoint) if run_id is None else f"checkpoints/best.pt of run {run_id}"
    predictor = Predictor(load_checkpoint(checkpoint, run_id, tracking_uri), device, source)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for bg_path, fg_bg_path in pairs:
        try:
            mask, depth = predictor(read_rgb(bg_path), read_rgb(fg_bg_path))
        except SourceError as exc:
            raise PredictError(str(exc)) from None
        mask_path = out / f"{fg_bg_path.stem}_mask.png"
        depth_path = out / f"{fg_bg_path.stem}_depth.png"
        depth_mm = np.clip(np.rint(depth * DEPTH_PNG_UNITS_PER_METRE), 0, 65535).astype(np.uint16)
        if not cv2.imwrite(str(mask_path), mask) or not cv2.imwrite(str(depth_path), depth_mm):
            raise PredictError(f"could not write into {out}; check that it is writable")
        written.append((mask_path, depth_path))
    return written
