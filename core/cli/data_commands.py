"""``lab data``: generate datasets (seed layout or shards) and inspect them.

Mounted by :mod:`losslab.core.cli.main` as ``lab data``. Only typer and the
standard library load at import time; the pipeline loads inside each command
so ``lab --help`` stays fast.

Exit codes of ``generate``: 0 when the dataset is complete (files that could
not be used are skipped and listed as warnings); 1 when nothing could be
produced, an option is wrong, or some chunks failed (their error is printed;
fix it and rerun with ``--resume``); 130 when interrupted (rerun with
``--resume``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from losslab.core.data.generate import GenerationReport, InputSpec

data_app = typer.Typer(no_args_is_help=True, help="Generate and inspect datasets.", add_completion=False,
                       pretty_exceptions_enable=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _warn(message: str) -> None:
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


def parse_params(items: list[str] | None, option: str) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict; values are YAML (``0.5`` -> float, ``[1, 2]`` -> list, ``a.pt`` -> str)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            _fail(f"{option} {item!r}: expected KEY=VALUE, e.g. {option} threshold=0.5")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        _fail(f"--sizes {text!r}: expected comma-separated pixel sizes, e.g. 90,80,70,60")
    if not sizes:
        _fail("--sizes needs at least one size")
    return sizes


# Options of `generate`, as aliases so the signature stays readable.
Opt = typer.Option
OutOpt = Annotated[Path, Opt("--out", help="Output folder (new or empty; or the one to --resume).")]
BgDirOpt = Annotated[Path | None, Opt(help="Folder of bg images (JPEG; other formats are converted).")]
FgDirOpt = Annotated[Path | None, Opt(help="Folder of fg images (PNG with an alpha channel).")]
SyntheticOpt = Annotated[
    tuple[int, int] | None, Opt(help="Use the built-in synthetic scenes instead of folders: N_BG N_FG.")
]
ParamsOpt = Annotated[list[str] | None, Opt(help="Parameter KEY=VALUE for the component (repeatable).")]
SizesOpt = Annotated[
    str | None, Opt(help="Grid fg sizes per row, px at 150 px, scaled to --image-size (default 90,80,70,60).")
]
MaskOpt = Annotated[str, Opt(help="Mask ground truth: alpha (default) or diff (documented, noisy).")]
DepthOpt = Annotated[str, Opt(help="Depth ground truth: ground-plane, layers or model.")]
LayoutOpt = Annotated[str, Opt(help="seed (documented folders) or shards (few large .npz files).")]
DepthFormatOpt = Annotated[str, Opt(help="Seed layout depth: png16 (16-bit PNG, mm) or jpg8 (8-bit JPEG).")]
ChunkOpt = Annotated[
    int | None,
    Opt(help="Recipes per chunk, the unit of work and of resume (default: one bg for seed, 1000 = a shard)."),
]


@data_app.command()
def generate(
    out: OutOpt,
    bg_dir: BgDirOpt = None,
    fg_dir: FgDirOpt = None,
    synthetic: SyntheticOpt = None,
    seed: Annotated[int, Opt(help="Seed of the synthetic scenes.")] = 0,
    generator: Annotated[str, Opt(help="Generator plugin: grid (documented) or random.")] = "grid",
    gen_param: Annotated[list[str] | None, Opt("--gen-param", help="Generator parameter KEY=VALUE.")] = None,
    rows: Annotated[int | None, Opt(help="Grid rows (default 4, one size per row).")] = None,
    cols: Annotated[int | None, Opt(help="Grid columns (default 5).")] = None,
    sizes: SizesOpt = None,
    image_size: Annotated[int, Opt(help="Side of the square output images in px.")] = 150,
    bg_fit: Annotated[str, Opt(help="Non-square bg: crop (centred square) or stretch.")] = "crop",
    mask: MaskOpt = "alpha",
    mask_param: Annotated[list[str] | None, Opt("--mask-param", help="Mask parameter KEY=VALUE.")] = None,
    depth: DepthOpt = "ground-plane",
    depth_param: Annotated[list[str] | None, Opt("--depth-param", help="Depth parameter KEY=VALUE.")] = None,
    layout: LayoutOpt = "seed",
    image_format: Annotated[str, Opt(help="Seed layout fg_bg and bg: jpg, or png (lossless).")] = "jpg",
    jpeg_quality: Annotated[int, Opt(help="JPEG quality of the seed layout.")] = 95,
    depth_format: DepthFormatOpt = "png16",
    depth_max: Annotated[float, Opt(help="Metres mapped to 255 by --depth-format jpg8.")] = 50.0,
    workers: Annotated[int | None, Opt(help="Worker processes (default: all cores).")] = None,
    chunk_size: ChunkOpt = None,
    links: Annotated[bool, Opt(help="Seed layout: identical mask/depth files are hard links to one copy.")] = True,
    resume: Annotated[bool, Opt(help="Continue an interrupted run in --out.")] = False,
    progress: Annotated[bool, Opt(help="Show a progress bar with ETA.")] = True,
) -> None:
    """Generate a dataset: every bg x every fg and its flip x the generator's placements."""
    from losslab.core.data.generate import GenerationError, GenerationInterrupted, GenerationPlan, generate
    from losslab.core.paths import UnsafePathError, check_out_dir

    try:
        check_out_dir(out)
    except UnsafePathError as exc:
        _fail(str(exc))
    gen_params = _generator_params(generator, gen_param, rows, cols, sizes)
    try:
        plan = GenerationPlan(
            inputs=_inputs(synthetic, bg_dir, fg_dir, seed, image_size, bg_fit),
            generator=generator, generator_params=gen_params,
            mask=mask, mask_params=parse_params(mask_param, "--mask-param"),
            depth=depth, depth_params=parse_params(depth_param, "--depth-param"),
            layout=layout, image_format=image_format, jpeg_quality=jpeg_quality,
            depth_format=depth_format, depth_max=depth_max, chunk_size=chunk_size, links=links,
        )
        report = generate(plan, out, workers=workers, resume=resume, progress=progress,
                          log=lambda msg: typer.echo(msg, err=True))
    except GenerationInterrupted as exc:
        _fail(str(exc), code=130)
    except KeyboardInterrupt:  # before the first chunk or while finishing: nothing is lost
        _fail(f"interrupted; rerun the same command with --resume to continue in {out}", code=130)
    except GenerationError as exc:
        _fail(str(exc))
    _print_report(report, out, layout)


def _generator_params(generator: str, gen_param: list[str] | None, rows: int | None, cols: int | None,
                      sizes: str | None) -> dict[str, Any]:
    """``--gen-param`` with the grid shortcuts (``--rows``/``--cols``/``--sizes``) folded in; the
    shortcuts win, and are refused for another generator rather than silently ignored."""
    gen_params = parse_params(gen_param, "--gen-param")
    if rows is not None or cols is not None or sizes is not None:
        if generator != "grid":
            _fail("--rows, --cols and --sizes are for --generator grid; use --gen-param for other generators")
        if sizes is not None:
            gen_params["sizes"] = _sizes(sizes)
            gen_params.setdefault("rows", len(gen_params["sizes"]))
        if rows is not None:
            gen_params["rows"] = rows
        if cols is not None:
            gen_params["cols"] = cols
    return gen_params


def _inputs(synthetic: tuple[int, int] | None, bg_dir: Path | None, fg_dir: Path | None, seed: int,
            image_size: int, bg_fit: str) -> InputSpec:
    """The built-in synthetic scenes or the user's two folders: exactly one of them, or a clear message."""
    from losslab.core.data.generate import InputSpec

    if synthetic is not None:
        if bg_dir is not None or fg_dir is not None:
            _fail("give either --synthetic N_BG N_FG or --bg-dir and --fg-dir, not both")
        return InputSpec.synthetic(synthetic[0], synthetic[1], seed=seed, image_size=image_size)
    if bg_dir is None or fg_dir is None:
        _fail("give --bg-dir and --fg-dir (or --synthetic N_BG N_FG for the built-in scenes)")
    return InputSpec.folders(bg_dir, fg_dir, image_size=image_size, bg_fit=bg_fit)


def _print_report(report: GenerationReport, out: Path, layout: str) -> None:
    """Warn about what was skipped, fail on failed chunks (they can be redone with --resume), else sum up."""
    from losslab.core.data.readers import dataset_bytes

    if report.skipped:
        _warn(f"skipped {len(report.skipped)} file(s) that could not be used:")
        for problem in report.skipped:
            typer.echo(f"  {problem.message}", err=True)
    for problem in report.warnings:
        _warn(problem.message)
    if report.failures:
        for failure in report.failures[:5]:
            typer.secho(f"  {failure}", err=True)
        if len(report.failures) > 5:
            typer.secho(f"  ... and {len(report.failures) - 5} more", err=True)
        _fail(f"{len(report.failures)} chunk(s) failed (errors above); fix the cause and rerun with --resume")
    total = dataset_bytes(out)
    per_sample = total / max(report.count, 1) / 1e3
    typer.echo(
        f"{report.count} samples ({layout} layout) in {out}: {report.written} written in "
        f"{report.seconds:.1f} s ({report.rate:.0f} img/s); {total / 1e6:.1f} MB on disk, "
        f"{per_sample:.1f} KB per sample"
    )


PathArg = Annotated[Path, typer.Argument(help="Dataset folder: seed layout, shards or original folders.")]
LimitOpt = Annotated[int | None, Opt(help="Examine this many evenly spaced samples (default all).")]


@data_app.command()
def stats(
    path: PathArg,
    limit: LimitOpt = None,
    bg_dir: Annotated[Path | None, Opt(help="Original layout only: the folder of its bg images.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print JSON instead of a table.")] = False,
    progress: Annotated[bool, Opt(help="Show a progress bar.")] = True,
) -> None:
    """Counts, per-channel mean and std of fg_bg and bg, mask coverage, depth summary, bytes per sample."""
    from losslab.core.data.dataset_stats import compute_stats
    from losslab.core.data.readers import DatasetError, open_dataset

    try:
        options = {"bg_dir": bg_dir} if bg_dir is not None else {}
        samples = open_dataset(path, **options)
        result = compute_stats(samples, path, limit=limit, progress=progress and not as_json)
    except (DatasetError, ValueError) as exc:
        _fail(str(exc))
    for line in getattr(samples, "skipped", [])[:20]:
        _warn(f"left out: {line}")
    if as_json:
        json.dump(result.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        typer.echo(result.render())
