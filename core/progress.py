"""Progress for people: a tqdm bar on a terminal, plain lines in a log.

tqdm redraws its bar with carriage returns, which a redirected log keeps as
one ever-growing line (78 KB for a short job). When stderr is not a terminal,
:func:`progress_bar` returns a :class:`LineProgress` instead: the same calls
(``update``, ``set_postfix``, ``close``), one ordinary line every
``interval`` seconds and one at the end, e.g.
``generate seed: 1200/4000 img (30%), 45.1 img/s, eta 62 s``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def stderr_is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """A progress report written as whole lines, throttled to one per ``interval`` seconds."""

    def __init__(self, total: int | None = None, initial: int = 0, unit: str = "it", desc: str = "",
                 disable: bool = False, interval: float = 30.0, file: TextIO | None = None, **_: Any) -> None:
        self.total, self.n, self.unit, self.desc, self.disable = total, initial, unit, desc, disable
        self.interval, self.file = interval, file
        self._start_n, self._start = initial, time.monotonic()
        self._last = self._start
        self._postfix = ""
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._write()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._postfix = s

    def write(self, s: str) -> None:
        if not self.disable:
            print(s, file=self.file or sys.stderr, flush=True)

    def line(self) -> str:
        """The current state as one line."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            text = f"{head}{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
            left = self.total - self.n
            eta = f", eta {left / rate:.0f} s" if rate > 0 and left > 0 else ""
        else:
            text, eta = f"{head}{self.n} {self.unit}", ""
        text += f", {rate:.1f} {self.unit}/s{eta}, {elapsed:.0f} s"
        return text + (f" [{self._postfix}]" if self._postfix else "")

    def _write(self) -> None:
        if not self.disable:
            print(self.line(), file=self.file or sys.stderr, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._write()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(**kwargs: Any) -> Any:
    """tqdm on a terminal, :class:`LineProgress` otherwise (same keyword arguments as tqdm)."""
    if stderr_is_terminal(kwargs.get("file")):
        from tqdm import tqdm

        return tqdm(**kwargs)
    return LineProgress(**kwargs)
