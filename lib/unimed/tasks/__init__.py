"""The tasks a UniMed request can ask for, selected by the request's task token, and their specs.

:class:`Task` names a task; :data:`TASKS` maps it to the :class:`TaskSpec` that holds
everything task-specific (one module per task: :mod:`.segmentation`, :mod:`.detection`,
:mod:`.classification`). Adding a task: ``docs/adding_a_task.md``.
"""

from __future__ import annotations

from unimed.tasks.classification import ClassificationSpec
from unimed.tasks.detection import DetectionSpec
from unimed.tasks.segmentation import SegmentationSpec
from unimed.tasks.spec import TaskSpec
from unimed.task_names import Task, UnknownTaskError

__all__ = ["Task", "UnknownTaskError", "TaskSpec", "TASKS", "spec_of"]

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
