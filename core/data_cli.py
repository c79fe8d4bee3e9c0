"""`lab data`: generate and inspect datasets (commands are being added)."""

from __future__ import annotations

import typer

data_app = typer.Typer(no_args_is_help=True, help="Generate and inspect datasets.")
