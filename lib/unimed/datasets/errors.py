"""The one error type every dataset reader raises."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset folder or file that cannot be read: a missing file, an array of the wrong
    shape, a class name outside the label registry... The message names the path."""
