"""Recipes: the complete, hashable description of one sample.

A sample is a pure function of its recipe and the sources, which is what
makes virtual datasets, resumable generation and exact reproductions
possible. The seed layout's file names encode a recipe's identity
(``bg5_0_2_flip_fg_73.jpg``); the manifest holds the rest.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

_NAME = re.compile(r"^bg(?P<bg>\d+)_(?P<row>\d+)_(?P<col>\d+)_(?P<flip>flip_)?fg_(?P<fg>\d+)$")


@dataclass(frozen=True, slots=True)
class Recipe:
    """Where fg ``fg`` (flipped or not) goes on bg ``bg``.

    ``x``, ``y`` are the top-left corner of the fg's ``size`` x ``size`` box in
    bg pixels; ``base_y`` is the row its base stands on (``y + size``).
    ``row`` and ``col`` are the grid cell (-1 for free placement).
    """

    bg: int
    fg: int
    flip: bool
    row: int
    col: int
    x: int
    y: int
    size: int

    @property
    def base_y(self) -> int:
        return self.y + self.size

    @property
    def stem(self) -> str:
        """The documented file stem, numbered from 1: bg index 4, fg index 72 -> ``bg5_0_2_flip_fg_73``."""
        flip = "flip_" if self.flip else ""
        return f"bg{self.bg + 1}_{self.row}_{self.col}_{flip}fg_{self.fg + 1}"

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        return cls(
            bg=int(data["bg"]), fg=int(data["fg"]), flip=bool(data["flip"]), row=int(data["row"]),
            col=int(data["col"]), x=int(data["x"]), y=int(data["y"]), size=int(data["size"]),
        )


def parse_stem(stem: str) -> dict[str, int | bool]:
    """Parse ``bg5_0_2_flip_fg_73`` into its bg, row, col, flip and fg; raise ValueError otherwise.

    The numbers are those written in the name (the documented layout counts bg and fg from 1, datasets
    of earlier losslab versions from 0); the caller knows which base applies.
    """
    match = _NAME.match(stem)
    if not match:
        raise ValueError(
            f"file name {stem!r} does not follow the documented pattern bg<K>_<row>_<col>_[flip_]fg_<J>"
        )
    return {
        "bg": int(match["bg"]), "row": int(match["row"]), "col": int(match["col"]),
        "flip": match["flip"] is not None, "fg": int(match["fg"]),
    }
