"""The names of the tasks a UniMed request can ask for: the :class:`Task` enum and its error.

A task's name and its short token (``<seg>``, ``<det>``, ``<cls>``) are its identity; everything
else about it lives in its spec (:data:`unimed.tasks.TASKS`). The names live outside the
``unimed.tasks`` package because the label registry and the token vocabulary, which the task
specs import, need them: importing a module of the package would run its ``__init__`` first.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Task", "UnknownTaskError"]


class UnknownTaskError(ValueError):
    """A task name that UniMed does not serve."""


class Task(str, Enum):
    """A task served by the one UniMed network; the order is the order of the task tokens.

    Each member is its full name (the enum's value, as requests write it) and its short
    ``token``: the task token is ``<token>``, and the token is an alias in requests.

    Example:
        >>> Task.parse("det")
        <Task.DETECTION: 'detection'>
        >>> Task.CLASSIFICATION.token
        'cls'
    """

    def __new__(cls, value: str, token: str) -> "Task":
        member = str.__new__(cls, value)
        member._value_ = value
        member.token = token
        return member

    SEGMENTATION = ("segmentation", "seg")
    DETECTION = ("detection", "det")
    CLASSIFICATION = ("classification", "cls")

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
            if key in (task.value, task.value[:3], task.token):
                return task
        valid = ", ".join(f"{task.value} ({task.token})" for task in cls)
        raise UnknownTaskError(f"unknown task {value!r}; valid tasks: {valid}")
