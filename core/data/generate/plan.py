"""What to generate: inputs, generator, ground truth and layout, resolved into recipes before any work.

A plan is plain data (picklable, JSON-able): each worker process rebuilds its
sources, compositor and ground-truth producers from it, and a resumed run
compares the stored plan with the new one, so it never mixes two recipes in
one dataset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from losslab.core.data.formats import DEPTH_FORMATS, IMAGE_FORMATS
from losslab.core.data.geometry import DEPTH_PNG_UNITS_PER_METRE
from losslab.core.data.recipes import Recipe
from losslab.core.data.sources import FolderSources, SourceCheck, SourceError, Sources, SyntheticSources
from losslab.core.plugin.registry import Catalog, RegistryError

LAYOUTS = ("seed", "shards")


class GenerationError(Exception):
    """The generation cannot start or produce anything; the message says why and what to do."""


@dataclass(frozen=True)
class InputSpec:
    """Where bgs and fgs come from: the built-in synthetic scenes, or a bg folder and a fg folder."""

    kind: str = "synthetic"
    image_size: int = 150
    n_bg: int = 0
    n_fg: int = 0
    seed: int = 0
    bg_dir: str | None = None
    fg_dir: str | None = None
    bg_fit: str = "crop"

    def __post_init__(self) -> None:
        if self.kind not in ("synthetic", "folders"):
            raise GenerationError(f"inputs must be 'synthetic' or 'folders', got {self.kind!r}")
        if self.image_size < 32:
            raise GenerationError(f"--image-size must be at least 32 px, got {self.image_size}")
        if self.kind == "synthetic" and (self.n_bg < 1 or self.n_fg < 1):
            raise GenerationError(f"--synthetic needs at least 1 bg and 1 fg, got {self.n_bg} {self.n_fg}")
        if self.kind == "folders" and (not self.bg_dir or not self.fg_dir):
            raise GenerationError("give both --bg-dir and --fg-dir, or --synthetic N_BG N_FG")

    @classmethod
    def synthetic(cls, n_bg: int, n_fg: int, *, seed: int = 0, image_size: int = 150) -> InputSpec:
        return cls(kind="synthetic", n_bg=n_bg, n_fg=n_fg, seed=seed, image_size=image_size)

    @classmethod
    def folders(cls, bg_dir: Path | str, fg_dir: Path | str, *, image_size: int = 150,
                bg_fit: str = "crop") -> InputSpec:
        return cls(kind="folders", bg_dir=str(Path(bg_dir).resolve()), fg_dir=str(Path(fg_dir).resolve()),
                   image_size=image_size, bg_fit=bg_fit)

    def build(self) -> Sources:
        if self.kind == "synthetic":
            return SyntheticSources(self.n_bg, self.n_fg, seed=self.seed, size=self.image_size)
        return FolderSources(Path(self.bg_dir or ""), Path(self.fg_dir or ""), size=self.image_size,
                             bg_fit=self.bg_fit)

    def check(self, largest_fg: int | None) -> SourceCheck:
        """Usable bg and fg indices; every file of a folder is read once here."""
        try:
            sources = self.build()
        except SourceError as exc:
            raise GenerationError(str(exc)) from None
        if isinstance(sources, FolderSources):
            return sources.check(largest_fg)
        return SourceCheck(list(range(sources.n_bg)), list(range(sources.n_fg)))


@dataclass
class GenerationPlan:
    """Everything that determines the bytes of a dataset (``workers`` and progress output do not)."""

    inputs: InputSpec
    generator: str = "grid"
    generator_params: dict[str, Any] = field(default_factory=dict)
    mask: str = "alpha"
    mask_params: dict[str, Any] = field(default_factory=dict)
    depth: str = "ground-plane"
    depth_params: dict[str, Any] = field(default_factory=dict)
    layout: str = "seed"
    image_format: str = "jpg"
    jpeg_quality: int = 95
    depth_format: str = "png16"
    depth_max: float = 50.0
    chunk_size: int | None = None
    links: bool = True

    def validate(self) -> None:
        """Check the options that need no catalog; raise GenerationError listing every problem."""
        problems = []
        if self.layout not in LAYOUTS:
            problems.append(f"--layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.image_format not in IMAGE_FORMATS:
            problems.append(f"--image-format must be one of {IMAGE_FORMATS}, got {self.image_format!r}")
        if self.depth_format not in DEPTH_FORMATS:
            problems.append(f"--depth-format must be one of {DEPTH_FORMATS}, got {self.depth_format!r}")
        if self.layout == "shards" and self.depth_format != "png16":
            problems.append("--depth-format jpg8 is for the seed layout only; shards keep uint16 mm")
        if self.layout == "shards" and self.image_format != "jpg":
            problems.append("--image-format is for the seed layout only; shards store raw (lossless) pixels")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")
        if self.depth_max <= 0:
            problems.append(f"--depth-max must be positive metres, got {self.depth_max}")
        if self.chunk_size is not None and self.chunk_size < 1:
            problems.append(f"--chunk-size must be at least 1, got {self.chunk_size}")
        if problems:
            raise GenerationError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationPlan:
        data = dict(data)
        data["inputs"] = InputSpec(**data["inputs"])
        return cls(**data)

    # -- components, built through the catalog (the same way in the main process and in each worker) ---

    def create(self, catalog: Catalog, kind: str, name: str, params: dict[str, Any], option: str) -> Any:
        try:
            return catalog.create(kind, name, **params)
        except RegistryError as exc:
            raise GenerationError(f"{option}: {exc}") from None
        except (TypeError, ValueError, OSError) as exc:
            raise GenerationError(f"{option} {name!r} with params {params}: {exc}") from None

    def ground_truth(self, catalog: Catalog) -> tuple[Any, Any]:
        mask = self.create(catalog, "ground_truth", self.mask, self.mask_params, "--mask")
        depth = self.create(catalog, "ground_truth", self.depth, self.depth_params, "--depth")
        pairs = (("--mask", self.mask, mask, "mask"), ("--depth", self.depth, depth, "depth"))
        for option, name, gt, target in pairs:
            if getattr(gt, "target", target) != target:
                raise GenerationError(f"{option} {name!r} produces {gt.target}, not {target}")
        return mask, depth


#: Recipes per shard when ``chunk_size`` is not given.
DEFAULT_SHARD_SIZE = 1000


def chunk_bounds(recipes: list[Recipe], layout: str, chunk_size: int | None) -> list[tuple[int, int, bool]]:
    """(start, stop, whole_bg) of each chunk, in recipe order.

    Shards: fixed-size slices (``DEFAULT_SHARD_SIZE`` by default). Seed layout:
    runs of recipes of one bg, cut every ``chunk_size`` recipes if given (by
    default a chunk is all of a bg). ``whole_bg`` marks a chunk that holds every
    recipe of its bg: the seed writer stages its folders and renames them into
    place, instead of renaming each file.
    """
    n = len(recipes)
    if layout == "shards":
        size = chunk_size or DEFAULT_SHARD_SIZE
        return [(start, min(n, start + size), False) for start in range(0, n, size)]
    runs: list[tuple[int, int]] = []
    start = 0
    for i in range(1, n + 1):
        if i == n or recipes[i].bg != recipes[start].bg:
            runs.append((start, i))
            start = i
    runs_per_bg: dict[int, int] = {}
    for a, _b in runs:
        runs_per_bg[recipes[a].bg] = runs_per_bg.get(recipes[a].bg, 0) + 1
    out: list[tuple[int, int, bool]] = []
    for a, b in runs:
        size = chunk_size or (b - a)
        pieces = [(s, min(b, s + size)) for s in range(a, b, size)]
        whole = len(pieces) == 1 and runs_per_bg[recipes[a].bg] == 1
        out.extend((s, e, whole) for s, e in pieces)
    return out


@dataclass
class Prepared:
    """A validated plan and its recipes, in generator order (the order of the manifest)."""

    plan: GenerationPlan
    recipes: list[Recipe]
    check: SourceCheck
    resolved: dict[str, Any]
    bounds: list[tuple[int, int, bool]] = field(default_factory=list)

    @property
    def n_chunks(self) -> int:
        return len(self.bounds)

    def chunk(self, index: int) -> list[Recipe]:
        start, stop, _whole = self.bounds[index]
        return self.recipes[start:stop]

    def whole_bg(self, index: int) -> bool:
        return self.bounds[index][2]


def check_ground_truth_sources(producers: Any, sources: Sources, bg_ids: list[int]) -> None:
    """Let each producer refuse, before any work, sources it cannot serve (``check_sources``, if it has one).

    The depth of a photo needs a stated geometry (or a model): this is where
    that is asked for, once, instead of every worker failing on every chunk.
    """
    for producer in producers:
        check = getattr(producer, "check_sources", None)
        if check is None:
            continue
        try:
            check(sources, bg_ids)
        except (ValueError, SourceError) as exc:
            raise GenerationError(str(exc)) from None


def prepare(plan: GenerationPlan, catalog: Catalog) -> Prepared:
    """Validate options, read every source once, make the recipes. Nothing is written."""
    plan.validate()
    generator = plan.create(catalog, "generator", plan.generator, plan.generator_params, "--generator")
    for producer in plan.ground_truth(catalog):  # fail now, not in every worker, on a bad name, parameter or file
        check = getattr(producer, "check", None)
        if check is not None:
            try:
                check()
            except (ValueError, OSError) as exc:
                raise GenerationError(str(exc)) from None
    size = plan.inputs.image_size
    probe = generator.recipes([0], [0], (size, size))
    largest = max((r.size for r in probe), default=None)
    check = plan.inputs.check(largest)
    if not check.bg_ids or not check.fg_ids:
        missing = "bg" if not check.bg_ids else "fg"
        listing = "\n".join(f"  {p.message}" for p in check.skipped)
        raise GenerationError(
            f"no usable {missing} image, nothing can be produced; skipped files:\n{listing}"
        )
    check_ground_truth_sources(plan.ground_truth(catalog), plan.inputs.build(), check.bg_ids)
    recipes = generator.recipes(check.bg_ids, check.fg_ids, (size, size))
    if not recipes:
        raise GenerationError(f"generator {plan.generator!r} made no recipes with {plan.generator_params}")
    bounds = chunk_bounds(recipes, plan.layout, plan.chunk_size)
    resolved = {
        "plan": plan.to_dict(),
        "chunks": len(bounds),
        "bg_ids": check.bg_ids,
        "fg_ids": check.fg_ids,
        "skipped": [p.message for p in check.skipped],
        "count": len(recipes),
        "depth_unit": f"1/{DEPTH_PNG_UNITS_PER_METRE:g} m" if plan.depth_format == "png16" else
        f"{plan.depth_max:g}/255 m",
    }
    return Prepared(plan, recipes, check, resolved, bounds)
