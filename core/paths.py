"""Names that become paths, and writes that must stay under their root.

An experiment, variant, study or output name from a shared YAML file or a
``--set`` ends up as a folder name under ``lab-runs/`` (or another root). A
name like ``../../escape``, ``/etc`` or ``x/../../y`` would place checkpoints
and reports anywhere on the machine, so every such name is checked by
:func:`name_problem` before any work starts, and every write location is built
by :func:`safe_join`, which refuses a result outside its root even if a check
upstream was missed. :func:`check_out_dir` turns an ``--out`` that is a file,
or lies below one, into a message instead of ``NotADirectoryError``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Letters, digits and ``_ . + -``, starting with a letter or digit: a folder name on every OS.
NAME_CHARS = "letters, digits and _ . + -"
MAX_NAME = 128
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class UnsafePathError(ValueError):
    """A name or path would place a file outside its root; the message says which and how to fix it."""


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a folder name (None when it can): separators, ``..``, absolute, odd characters."""
    if not isinstance(value, str) or not value:
        return "a name must be a non-empty string"
    if len(value) > MAX_NAME:
        return f"a name has at most {MAX_NAME} characters, this one {len(value)}"
    if os.path.isabs(value) or value.startswith(("/", "\\")):
        return "a name must not be an absolute path"
    if "/" in value or "\\" in value:
        return "a name must not hold a path separator ('/' or '\\')"
    if ".." in value:
        return "a name must not hold '..'"
    if not _NAME.match(value):
        return f"a name uses only {NAME_CHARS}, starting with a letter or digit"
    return None


def check_name(value: str, what: str) -> str:
    """``value`` when it is a safe folder name, else :class:`UnsafePathError` naming ``what``."""
    problem = name_problem(value)
    if problem:
        raise UnsafePathError(f"{what} {value!r} cannot be used as a folder name: {problem}; "
                              f"rename it, e.g. {suggest(value)!r}")
    return value


def suggest(value: str) -> str:
    """A safe name close to ``value`` (for the "how to fix" part of a message)."""
    text = re.sub(r"(?:\.\.|[^A-Za-z0-9_.+-])+", "_", str(value))
    text = re.sub(r"_+", "_", text).strip("._+-")
    return text[:MAX_NAME] or "experiment"


def safe_join(root: Path | str, *parts: str | os.PathLike[str]) -> Path:
    """``root / parts...``, refused with :class:`UnsafePathError` unless it stays under ``root``.

    Symlinks inside are not followed: the check is on the lexical path, which
    is what decides where ``mkdir`` and ``open`` land for names we made.
    """
    base = Path(os.path.abspath(root))
    target = Path(os.path.abspath(base.joinpath(*parts)))
    if target != base and base not in target.parents:
        shown = "/".join(str(p) for p in parts)
        raise UnsafePathError(f"{shown!r} would be written at {target}, outside {base}; "
                              "use plain names without '..', separators or absolute paths")
    return target


def check_out_dir(path: Path | str, option: str = "--out") -> Path:
    """``path`` as a folder that can be created: refused when it, or a folder above it, is a file."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            if not candidate.is_dir():
                where = "is a file" if candidate == path else f"lies below {candidate}, which is a file"
                raise UnsafePathError(f"{option} {path} {where}, not a folder; pass a folder path "
                                      "(a new one is created)")
            break
    return path
