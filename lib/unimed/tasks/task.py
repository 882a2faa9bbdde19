"""The task names, where the command line and older code import them from.

:class:`Task` and :class:`UnknownTaskError` live in :mod:`unimed.task_names`, outside this
package: the label registry and the token vocabulary need them, and importing any module of
``unimed.tasks`` runs the package's ``__init__`` (the task registry), which sits above both.
"""

from __future__ import annotations

from unimed.task_names import Task, UnknownTaskError

__all__ = ["Task", "UnknownTaskError"]
