"""The three tasks a UniMed request can ask for, selected by the request's task token."""

from __future__ import annotations

from enum import Enum

__all__ = ["Task", "UnknownTaskError"]


class UnknownTaskError(ValueError):
    """A task name that UniMed does not serve."""


class Task(str, Enum):
    """A task served by the one UniMed network.

    Example:
        >>> Task.parse("det")
        <Task.DETECTION: 'detection'>
    """

    SEGMENTATION = "segmentation"
    DETECTION = "detection"
    CLASSIFICATION = "classification"

    @classmethod
    def parse(cls, value: "str | Task") -> "Task":
        """Read a task from a request: a full name or a short alias (``seg``, ``det``, ``cls``).

        Raises:
            UnknownTaskError: the value names no task; the message lists the valid ones.
        """
        if isinstance(value, Task):
            return value
        key = str(value).strip().lower()
        for task in cls:
            if key in (task.value, task.value[:3], _SHORT[task]):
                return task
        raise UnknownTaskError(
            f"unknown task {value!r}; valid tasks: segmentation (seg), detection (det), classification (cls)"
        )


_SHORT = {Task.SEGMENTATION: "seg", Task.DETECTION: "det", Task.CLASSIFICATION: "cls"}
