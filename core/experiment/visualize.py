"""The prediction grid: fg_bg, GT mask, predicted mask, GT depth, predicted depth, one row per image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

COLUMNS = ("fg_bg", "GT mask", "pred mask", "GT depth", "pred depth")


def _depth_colour(depth: np.ndarray, vmax: float) -> np.ndarray:
    scaled = np.clip(depth / max(vmax, 1e-6), 0.0, 1.0)
    # inverse depth reads better: near is bright, far is dark, on one scale shared by GT and prediction
    inv = 1.0 - np.sqrt(scaled)
    coloured = cv2.applyColorMap((inv * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)
    return cv2.cvtColor(coloured, cv2.COLOR_BGR2RGB)


def prediction_grid(samples: dict[str, np.ndarray], scale: int = 2) -> np.ndarray:
    """RGB uint8 image: a row per kept held-out image, the columns of ``COLUMNS``."""
    n = len(samples["fg_bg"])
    if n == 0:
        raise ValueError("no samples to draw")
    vmax = float(max(samples["depth"].max(), 1e-6))
    rows = []
    for i in range(n):
        mask = (samples["mask"][i] * 255).astype(np.uint8)
        pred = (np.clip(samples["pred_mask"][i], 0, 1) * 255).astype(np.uint8)
        tiles = [
            samples["fg_bg"][i],
            np.repeat(mask[..., None], 3, axis=2),
            np.repeat(pred[..., None], 3, axis=2),
            _depth_colour(samples["depth"][i], vmax),
            _depth_colour(samples["pred_depth"][i], vmax),
        ]
        rows.append(np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=255) for t in tiles], 1))
    grid = np.concatenate(rows, axis=0)
    if scale != 1:
        grid = cv2.resize(grid, (grid.shape[1] * scale, grid.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    header = np.full((18, grid.shape[1], 3), 255, dtype=np.uint8)
    width = grid.shape[1] // len(COLUMNS)
    for j, title in enumerate(COLUMNS):
        cv2.putText(header, title, (j * width + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, grid], axis=0)


def save_prediction_grid(samples: dict[str, np.ndarray], path: Path) -> Path:
    image = prediction_grid(samples)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path
