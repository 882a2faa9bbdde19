"""Knowledge from single-task specialists: a teacher's scores as soft classification targets.

Where a single-task peer beats UniMed (``main.py benchmark --accuracy``: a 3D ResNet-18 on
AdrenalMNIST3D), its probabilities on the training images carry what it learnt, including how
sure it is of each image. ``benchmark --accuracy --teachers DIR`` writes one file per dataset
whose peer answers a classification, ``DIR/<dataset>.json``; ``pretrain --teachers DIR`` reads
them and every training item the file scores gets ``teacher_scores``, which the classification
loss blends into its target (``(1 - distill) * label + distill * teacher``,
:func:`unimed.tasks.classification.classification_loss`), after rescaling the teacher's scores to
the items' labels (:func:`platt_scaling`: its ranking, not its bias). Items the file does not score (a
split the teacher never saw, a dataset without a file) keep their labels alone.

A teacher file::

    {"format": "unimed-teacher/1", "dataset": "medmnist", "split": "train", "task": "classification",
     "teacher": "3D ResNet-18", "scores": {"train_0000": {"adrenal_hyperplasia": 0.12, ...}, ...}}
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from trainers.data import GridItem
from unimed.datasets import DATASETS
from unimed.model_store import write_json_atomic

__all__ = ["TEACHER_FORMAT", "TeacherScores", "platt_scaling", "read_teachers", "sigmoid_logit", "with_teacher_scores",
           "write_teacher_scores"]

logger = logging.getLogger(__name__)

#: the ``format`` of a teacher file
TEACHER_FORMAT = "unimed-teacher/1"


@dataclass(frozen=True)
class TeacherScores:
    """One teacher file: a single-task peer's class probabilities on a dataset's images.

    Attributes:
        dataset: the dataset kind (a key of :data:`unimed.datasets.DATASETS`).
        teacher: what the teacher is (e.g. ``"3D ResNet-18"``).
        split: the split it scored.
        scores: per sample name, each class label's probability in [0, 1].
        path: the file it was read from.
    """

    dataset: str
    teacher: str
    split: str
    scores: Mapping[str, Mapping[str, float]]
    path: Path | None = None


def write_teacher_scores(path: str | Path, teacher: TeacherScores, **extra: Any) -> Path:
    """Write ``teacher`` as a teacher file (``extra``: more JSON fields, e.g. the teacher's figures).

    Raises:
        ValueError: the scores fail :func:`read_teachers`' checks.

    Example:
        >>> t = TeacherScores("medmnist", "3D ResNet-18", "train", {"train_0000": {"adrenal_hyperplasia": 0.9}})
        >>> write_teacher_scores("teachers/medmnist.json", t)  # doctest: +SKIP
    """
    _check_scores(teacher.scores, str(path))
    body = {"format": TEACHER_FORMAT, "dataset": teacher.dataset, "split": teacher.split, "task": "classification",
            "teacher": teacher.teacher, **extra, "scores": {k: dict(v) for k, v in teacher.scores.items()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, body)
    return path


def read_teachers(folder: str | Path) -> dict[str, TeacherScores]:
    """Every teacher file (``*.json``) of ``folder``, by dataset.

    Raises:
        ValueError: no such folder, no teacher file in it, or a file that is not JSON, not of
            :data:`TEACHER_FORMAT`, of an unknown dataset, a second file of one dataset, or with a
            score that is not a probability (each message names the file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"teachers: {folder} is not a folder")
    teachers: dict[str, TeacherScores] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            body = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"teacher file {path}: not readable JSON ({exc})") from exc
        if not isinstance(body, dict) or body.get("format") != TEACHER_FORMAT:
            raise ValueError(f"teacher file {path}: its format must be {TEACHER_FORMAT!r}")
        dataset = body.get("dataset")
        if dataset not in DATASETS:
            raise ValueError(f"teacher file {path}: unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
        if dataset in teachers:
            raise ValueError(f"teacher file {path}: a second teacher of {dataset} (the first is {teachers[dataset].path})")
        scores = body.get("scores")
        _check_scores(scores, str(path))
        teachers[dataset] = TeacherScores(dataset, str(body.get("teacher", "?")), str(body.get("split", "?")),
                                          scores, path)
    if not teachers:
        raise ValueError(f"teachers: {folder} holds no teacher file (*.json; benchmark --accuracy --teachers writes them)")
    return teachers


def _check_scores(scores: Any, where: str) -> None:
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError(f"teacher file {where}: 'scores' must map sample names to class probabilities")
    for name, per_label in scores.items():
        if not isinstance(per_label, Mapping):
            raise ValueError(f"teacher file {where}: the scores of {name!r} must map class labels to probabilities")
        for label, p in per_label.items():
            if not isinstance(p, (int, float)) or isinstance(p, bool) or math.isnan(p) or not 0.0 <= p <= 1.0:
                raise ValueError(f"teacher file {where}: {name!r} {label!r} scores {p!r}, not a probability in [0, 1]")


def platt_scaling(scores: Sequence[float], labels: Sequence[int], l2: float = 1.0,
                  iterations: int = 50) -> tuple[float, float]:
    """``(a, b)`` such that ``sigmoid(a * logit(score) + b)`` fits ``labels`` (0/1) best in
    log-likelihood (Newton's method, a small L2 pull towards the identity ``(1, 0)``).

    A single-task peer's probabilities can rank well and still be off in level (the AdrenalMNIST3D
    peer, trained without class balancing, scored "hyperplasia" above 0.5 on 72 % of its training
    images, where 22 % show it): rescaled this way, the teacher passes on its ranking without its bias.

    Example:
        >>> a, b = platt_scaling([0.6, 0.7, 0.8, 0.9] * 25, [0, 0, 1, 1] * 25)  # ranks right, level too high
        >>> sigmoid_logit(0.6, a, b) < 0.1 < 0.9 < sigmoid_logit(0.9, a, b)
        True
    """
    x = np.log(np.clip(scores, 1e-6, 1 - 1e-6)) - np.log1p(-np.clip(scores, 1e-6, 1 - 1e-6))
    y = np.asarray(labels, dtype=np.float64)
    if len(x) != len(y) or not len(x):
        raise ValueError(f"platt_scaling needs as many labels as scores, at least one; got {len(y)} and {len(x)}")
    identity = np.array([1.0, 0.0])

    def objective(w: np.ndarray) -> float:  # penalised negative log-likelihood
        z = w[0] * x + w[1]
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * np.sum((w - identity) ** 2))

    w = identity.copy()
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(w[0] * x + w[1], -50.0, 50.0)))
        r, h = p - y, p * (1.0 - p)
        grad = np.array([np.sum(r * x), np.sum(r)]) + l2 * (w - identity)
        hess = np.array([[np.sum(h * x * x), np.sum(h * x)], [np.sum(h * x), np.sum(h)]]) + l2 * np.eye(2)
        step, before = np.linalg.solve(hess, grad), objective(w)
        while objective(w - step) > before and np.abs(step).max() > 1e-10:  # damped: never uphill
            step = step / 2
        w = w - step
        if np.abs(step).max() < 1e-8:
            break
    return float(w[0]), float(w[1])


def sigmoid_logit(score: float, a: float, b: float) -> float:
    """``sigmoid(a * logit(score) + b)``: a score rescaled by :func:`platt_scaling`'s ``(a, b)``."""
    s = min(max(float(score), 1e-6), 1 - 1e-6)
    z = min(max(a * math.log(s / (1 - s)) + b, -50.0), 50.0)
    return 1.0 / (1.0 + math.exp(-z))


def with_teacher_scores(items: Sequence[GridItem], teacher: TeacherScores, calibrate: bool = True) -> list[GridItem]:
    """The items, each the teacher scored given its scores of the item's own class labels.

    With ``calibrate``, each label's scores are first rescaled to the items' own labels
    (:func:`platt_scaling`, fitted on the items the teacher scored; a label whose scored items
    are all of one class is left as it is).

    Raises:
        ValueError: the teacher scores none of the items (another dataset's or split's names).

    Example:
        >>> import torch
        >>> item = GridItem(torch.zeros(1, 4, 4, 4), None, (), None, [], (), {"adrenal_normal": 1}, "medmnist", "a")
        >>> t = TeacherScores("medmnist", "peer", "train", {"a": {"adrenal_normal": 0.8, "edema": 0.1}})
        >>> with_teacher_scores([item], t)[0].teacher_scores
        {'adrenal_normal': 0.8}
    """
    own: list[dict[str, float]] = []
    for it in items:
        scores = teacher.scores.get(it.name) or {}
        own.append({k: float(v) for k, v in scores.items() if it.class_labels and k in it.class_labels})
    if not any(own):
        example = next(iter(teacher.scores))
        raise ValueError(f"teacher file {teacher.path}: scores none of the {len(items)} {teacher.dataset} training "
                         f"items (its names are like {example!r}, the items' like {items[0].name!r})")
    if calibrate:
        for label in sorted({k for scores in own for k in scores}):
            pairs = [(scores[label], int(it.class_labels[label])) for it, scores in zip(items, own) if label in scores]
            if len({y for _, y in pairs}) < 2:
                continue
            a, b = platt_scaling([p for p, _ in pairs], [y for _, y in pairs])
            for scores in own:
                if label in scores:
                    scores[label] = sigmoid_logit(scores[label], a, b)
            logger.info("teacher %s, %s: scores rescaled (a %.3f, b %.3f): mean %.3f -> %.3f, positive share %.3f",
                        teacher.teacher, label, a, b, float(np.mean([p for p, _ in pairs])),
                        float(np.mean([scores[label] for scores in own if label in scores])),
                        float(np.mean([y for _, y in pairs])))
    out = [replace(it, teacher_scores=scores) if scores else it for it, scores in zip(items, own)]
    logger.info("teacher %s (%s): scores %d of %d %s items", teacher.teacher, teacher.path, sum(map(bool, own)),
                len(items), teacher.dataset)
    return out
