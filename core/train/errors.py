"""The training stage's errors: each message says what broke, where, and what to change."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


class CheckpointError(TrainingError):
    """A checkpoint cannot be used (unsafe, corrupt, older format, or not matching its config).

    Raised before anything in the file is trusted; the message names the file and the fix.
    """
