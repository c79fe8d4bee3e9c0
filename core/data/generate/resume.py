"""Resumable generation: which chunks are complete, and the final manifest.

A chunk counts as done only once all its files are in place: the worker
writes them, then writes the chunk's manifest rows to
``.progress/chunk_NNNNNN.jsonl`` (atomically: temp name, then ``os.replace``).
Files reach their final names only whole: either each through a temp name
and ``os.replace``, or, for a chunk that holds all of a bg's samples (the
seed layout's default), written plainly into the hidden ``.staging`` folder,
whose ``fgbg_K``, ``mask_fgbg_K`` and ``depth_fgbg_K`` folders are then
renamed into place, each in one step (far fewer file-system operations than
a rename per file, with the same guarantee). A run killed at any instant
(Ctrl-C, ``kill -9``) therefore leaves no truncated file under a final name;
:meth:`GenerationProgress.clean` removes its hidden ``.*.part`` temp files and staging
folder, and ``--resume`` redoes the chunks without a record. When every
chunk is done, the records are concatenated into ``manifest.jsonl``, then
``dataset.json`` is written (its presence means the dataset is complete) and
``.progress`` is removed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from losslab.core.data import formats
from losslab.core.data.formats import DATASET_FILE, MANIFEST, PROGRESS_DIR, RECIPES_FILE
from losslab.core.data.generate.plan import GenerationError

#: Where the seed writer stages a whole bg's folders before renaming them into place.
STAGING_DIR = ".staging"
PLAN_FILE = "plan.json"


def _dump(data: Any) -> bytes:
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            key_path = f"{path}.{key}".lstrip(".")
            out += _differences(old.get(key, "<absent>"), new.get(key, "<absent>"), key_path)
        return out
    return [] if old == new else [f"{path or '<plan>'}: was {old!r}, now {new!r}"]


class GenerationProgress:
    """The ``.progress`` folder of an output directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dir = self.root / PROGRESS_DIR

    def chunk_file(self, chunk: int) -> Path:
        return self.dir / f"chunk_{chunk:06d}.jsonl"

    # -- start --------------------------------------------------------------------------------------------

    def start(self, resolved: dict[str, Any], resume: bool) -> set[int]:
        """Check the output folder and return the chunks already done (empty for a fresh run).

        A fresh run needs an empty or absent folder. ``resume`` continues an
        interrupted run of the same plan; any difference is refused with the
        keys that changed.
        """
        complete = (self.root / DATASET_FILE).exists()
        if not resume:
            if complete:
                raise GenerationError(
                    f"{self.root} already holds a complete dataset; choose another --out or delete it"
                )
            if self.dir.exists():
                raise GenerationError(
                    f"{self.root} holds an interrupted run; continue it with --resume, or delete the folder"
                )
            if self.root.exists() and any(self.root.iterdir()):
                raise GenerationError(f"{self.root} is not empty; choose an empty or new --out folder")
        if complete and not self.dir.exists():
            stored = json.loads((self.root / DATASET_FILE).read_text()).get("resolved", {})
            self._compare(stored, resolved)
            return set(range(self._n_chunks(resolved)))
        self.dir.mkdir(parents=True, exist_ok=True)
        plan_file = self.dir / PLAN_FILE
        if plan_file.exists():
            self._compare(json.loads(plan_file.read_text()), resolved)
        else:
            formats.atomic_write(plan_file, _dump(resolved))
        return self.done()

    def _compare(self, stored: dict[str, Any], resolved: dict[str, Any]) -> None:
        diffs = _differences(stored, json.loads(json.dumps(resolved)))
        if diffs:
            listing = "\n  ".join(diffs[:10])
            raise GenerationError(
                f"{self.root} was started with other options, so --resume would mix two datasets:"
                f"\n  {listing}\n"
                "rerun with the original options, or write to a new --out folder"
            )

    @staticmethod
    def _n_chunks(resolved: dict[str, Any]) -> int:
        return int(resolved["chunks"])

    def done(self) -> set[int]:
        if not self.dir.exists():
            return set()
        out = set()
        for entry in os.scandir(self.dir):
            name = entry.name
            if name.startswith("chunk_") and name.endswith(".jsonl"):
                out.add(int(name[6:-6]))
        return out

    def clean(self) -> int:
        """Remove what a killed run left half-written (temp files, staging folders); return how many."""
        removed = 0
        staging = self.root / STAGING_DIR
        if staging.exists():
            removed += sum(len(files) for _root, _dirs, files in os.walk(staging))
            shutil.rmtree(staging)
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                if formats.is_temp(name):
                    Path(folder, name).unlink(missing_ok=True)
                    removed += 1
        return removed

    # -- per chunk ----------------------------------------------------------------------------------------

    def mark_done(self, chunk: int, lines: Iterable[str]) -> None:
        """Record a chunk as complete with its manifest lines (compact JSON objects, newline-ended)."""
        formats.atomic_write(self.chunk_file(chunk), "".join(lines).encode())

    def records_file(self, chunk: int) -> Path:
        return self.dir / f"records_{chunk:06d}.json"

    def save_records(self, chunk: int, rows: list[dict[str, Any]]) -> None:
        """Keep a chunk's ground-truth records (e.g. the model depth's per-bg fits) until the run ends."""
        if rows:
            formats.atomic_write(self.records_file(chunk), json.dumps(rows).encode())

    def records(self, n_chunks: int) -> list[dict[str, Any]]:
        """Every chunk's records merged into one row per bg (sorted by bg); see :func:`merge_records`."""
        rows: list[dict[str, Any]] = []
        for chunk in range(n_chunks):
            path = self.records_file(chunk)
            if path.exists():
                rows.extend(json.loads(path.read_text()))
        return merge_records(rows)

    # -- end ----------------------------------------------------------------------------------------------

    def finalize(self, n_chunks: int, meta: dict[str, Any], recipes: np.ndarray | None = None) -> Path:
        """Merge the chunk records into ``manifest.jsonl``, write ``dataset.json``, drop ``.progress``.

        ``recipes`` (N, 8) int32, in manifest order, is also saved as ``recipes.npy``:
        the manifest's recipe columns in a form that loads in milliseconds.
        """
        missing = [c for c in range(n_chunks) if not self.chunk_file(c).exists()]
        if missing:
            raise GenerationError(f"cannot finish: {len(missing)} chunks are not done (first: {missing[0]})")
        manifest = self.root / MANIFEST
        tmp = formats.temp_name(manifest)
        index = 0
        with open(tmp, "w") as out:
            for chunk in range(n_chunks):
                with open(self.chunk_file(chunk)) as part:
                    for line in part:  # each row is a compact JSON object: prepend its index
                        out.write(f'{{"index":{index},{line[1:]}')
                        index += 1
        os.replace(tmp, manifest)
        if recipes is not None:
            if len(recipes) != index:
                raise GenerationError(f"manifest has {index} rows but there are {len(recipes)} recipes")
            tmp = formats.temp_name(self.root / RECIPES_FILE)
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(recipes, dtype=np.int32))
            os.replace(tmp, self.root / RECIPES_FILE)
        formats.atomic_write(self.root / DATASET_FILE, _dump({**meta, "count": index}))
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.root / STAGING_DIR, ignore_errors=True)
        return manifest


def merge_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per bg from the chunks' rows.

    A per-bg fit (``per: "bg"``) is the same in every chunk that holds the bg,
    so one copy is kept; per-sample rows (``per: "sample"``, each the mean of
    ``fits`` samples of one chunk) are combined: ``fits``-weighted means of
    scale, shift, rmse and abs_rel, summed points and fits, the largest
    abs_rel_max.
    """
    by_bg: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_bg.setdefault(int(row["bg"]), []).append(row)
    out = []
    for bg in sorted(by_bg):
        group = by_bg[bg]
        if group[0].get("per") != "sample" or len(group) == 1:
            out.append(group[0])
            continue
        n = sum(r["fits"] for r in group)
        merged = {**group[0], "fits": n, "points": sum(r["points"] for r in group),
                  "abs_rel_max": max(r["abs_rel_max"] for r in group)}
        for key in ("scale", "shift", "rmse", "abs_rel"):
            merged[key] = sum(r[key] * r["fits"] for r in group) / n
        out.append(merged)
    return out
