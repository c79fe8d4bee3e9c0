"""The fixed-width tables the terminal shows: ``lab run``'s comparison and ``lab tune``'s best trials.

One renderer, so both commands line their columns up the same way (left-aligned, two spaces apart, a dashed
rule under the headers) and a change of style is made once.
"""

from __future__ import annotations

from collections.abc import Sequence


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The header line, the rule and one line per row; every column as wide as its widest cell.

    A row shorter than the headers is padded with empty cells; a longer one is an error (a cell with no
    column would be silently dropped otherwise).
    """
    if any(len(row) > len(headers) for row in rows):
        raise ValueError(f"a row has more cells than the {len(headers)} headers {list(headers)}")
    cells = [[*row, *([""] * (len(headers) - len(row)))] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in cells)]
    return [line.rstrip() for line in lines]
