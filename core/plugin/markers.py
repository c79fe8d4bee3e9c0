"""The pluggy markers of the ``losslab`` project.

Kept in a module of their own, with no other imports, so a plugin can do
``from losslab.core import hookimpl`` without pulling in torch or the engine.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "losslab"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
