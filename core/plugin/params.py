"""A component's parameters, discovered from its factory: name, type, default and one line of meaning.

The signature gives names, types (the annotations as written) and defaults;
the docstrings give the meaning, from a Google-style ``Args:`` section. The
section is looked for in the factory's own docstring, then its ``__init__``'s,
then its base classes' (a shared parameter such as a metric's ``threshold`` is
documented once, on the base), then a function the class docstring points to
with ``:func:`name``` (a loss class documents its functional form's
arguments there). ``lab plugins --verbose``, ``docs/components.md`` and the
config error for an unknown parameter all read this one description.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

#: Parameters the engine passes itself, not the experiment's ``params`` (an augmentation's seed).
ENGINE_PARAMS: dict[str, tuple[str, ...]] = {"augmentation": ("seed",)}


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Param:
    """One keyword parameter of a component's factory."""

    name: str
    type: str
    default: Any
    doc: str

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def default_text(self) -> str:
        """The default as YAML would write it (``null``, ``true``, ``[0.9, 1.1]``), or ``required``."""
        return "required" if self.required else _yaml_text(self.default)

    def brief(self) -> str:
        """``gamma (float, default 2.0)``: what an error message lists."""
        kind = f"{self.type}, " if self.type else ""
        return f"{self.name} ({kind}{'required' if self.required else 'default ' + self.default_text})"


def _yaml_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def describe_params(factory: Callable[..., Any], kind: str = "") -> list[Param]:
    """The keyword parameters an experiment can give ``factory`` (in signature order).

    ``*args``/``**kwargs`` are left out (a factory taking ``**kwargs`` accepts
    any name, so nothing useful can be listed for it), and so are the
    parameters the engine supplies for this ``kind``.
    """
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return []
    docs = _docs(factory)
    skip = ENGINE_PARAMS.get(kind, ())
    out = []
    for name, p in signature.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) or name in skip:
            continue
        out.append(Param(
            name=name,
            type=_annotation(p.annotation),
            default=REQUIRED if p.default is p.empty else p.default,
            doc=docs.get(name, ""),
        ))
    return out


def accepts_any(factory: Callable[..., Any]) -> bool:
    """True when the factory takes ``**kwargs``: any parameter name is passed on."""
    try:
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return True


def _annotation(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def _docs(factory: Callable[..., Any]) -> dict[str, str]:
    """Parameter name -> its one line, merged from every docstring that documents it (first wins)."""
    out: dict[str, str] = {}
    for doc in _docstrings(factory):
        for name, text in parse_args_section(doc).items():
            out.setdefault(name, text)
    return out


def _docstrings(factory: Callable[..., Any]) -> Iterator[str]:
    if not isinstance(factory, type):
        yield inspect.getdoc(factory) or ""
        return
    own = factory.__doc__ or ""
    yield own
    init = factory.__dict__.get("__init__")
    if init is not None:
        yield init.__doc__ or ""
    for base in factory.__mro__[1:]:
        if base is object:
            continue
        yield base.__doc__ or ""
        init = base.__dict__.get("__init__")
        if init is not None:
            yield init.__doc__ or ""
    module = sys.modules.get(factory.__module__)
    for name in re.findall(r":func:`~?([\w.]+)`", own):
        target = getattr(module, name.rsplit(".", 1)[-1], None)
        if callable(target):
            yield inspect.getdoc(target) or ""


_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters):\s*$", re.M)


def parse_args_section(doc: str) -> dict[str, str]:
    """``{name: one line}`` from a Google-style ``Args:`` section.

    An entry is ``name: text`` (or ``a, b, c: text`` for several), continued
    on deeper-indented lines; the continuation is joined into one line.
    """
    doc = inspect.cleandoc(doc or "")
    match = _SECTION.search(doc)
    if not match:
        return {}
    lines = doc[match.end():].splitlines()
    out: dict[str, str] = {}
    entry_indent: int | None = None
    names: list[str] = []
    text: list[str] = []

    def flush() -> None:
        for n in names:
            out.setdefault(n, first_sentence(" ".join(text).strip()))

    for line in lines:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if entry_indent is None:
            entry_indent = indent
        if indent < entry_indent or (indent == 0 and entry_indent == 0):
            break  # the next section
        head = re.match(r"^\s*([\w]+(?:\s*,\s*\w+)*)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
        if indent == entry_indent and head:
            flush()
            names = [n.strip() for n in head.group(1).split(",")]
            text = [head.group(2)]
        elif indent > entry_indent:
            text.append(line.strip())
        else:
            break
    flush()
    return out


def first_sentence(text: str) -> str:
    """The first sentence of a description: the one line a listing shows."""
    return re.split(r"(?<=[.;])\s+(?=[A-Z])", text, maxsplit=1)[0]


def clean_doc_line(text: str) -> str:
    """A doc line for a terminal or a Markdown table: RST roles and math markup stripped, pipes escaped."""
    text = re.sub(r":(?:math|func|class|meth|attr):`~?([^`]*)`", r"\1", text)
    text = text.replace("``", "`")
    return text
