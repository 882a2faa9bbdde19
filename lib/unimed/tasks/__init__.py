"""The tasks a UniMed request can ask for, selected by the request's task token, and their specs.

:class:`Task` names a task; :data:`TASKS` maps it to the :class:`TaskSpec` that holds
everything task-specific (one module per task: :mod:`.segmentation`, :mod:`.detection`,
:mod:`.classification`). Adding a task: ``docs/adding_a_task.md``.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Task", "UnknownTaskError", "TaskSpec", "TASKS", "spec_of"]


class UnknownTaskError(ValueError):
    """A task name that UniMed does not serve."""


class Task(str, Enum):
    """A task served by the one UniMed network; the order is the order of the task tokens.

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
            if key in (task.value, task.value[:3], TASKS[task].token):
                return task
        valid = ", ".join(f"{task.value} ({TASKS[task].token})" for task in cls)
        raise UnknownTaskError(f"unknown task {value!r}; valid tasks: {valid}")


# the task modules read Task, so they are imported once it exists
from unimed.tasks.classification import ClassificationSpec  # noqa: E402
from unimed.tasks.detection import DetectionSpec  # noqa: E402
from unimed.tasks.segmentation import SegmentationSpec  # noqa: E402
from unimed.tasks.spec import TaskSpec  # noqa: E402

#: the spec of every task: the one place a task is registered
TASKS: dict[Task, TaskSpec] = {
    Task.SEGMENTATION: SegmentationSpec(),
    Task.DETECTION: DetectionSpec(),
    Task.CLASSIFICATION: ClassificationSpec(),
}


def spec_of(task: "Task | str") -> TaskSpec:
    """The spec of a task (a :class:`Task`, name or alias).

    Raises:
        UnknownTaskError: an unknown task.
    """
    return TASKS[Task.parse(task)]
