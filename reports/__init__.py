"""Comparison reports built from what the tracker (MLflow) holds.

``build_report`` and ``log_report`` are loaded on first use, so ``import losslab.reports`` stays
cheap (no MLflow, scipy or matplotlib until a report is actually built).
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report", "log_report"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from losslab.reports import build

        return getattr(build, name)
    raise AttributeError(f"module 'losslab.reports' has no attribute {name!r}")
