"""Validation metrics of a :class:`~unimed.predictor.Predictor` on a dataset folder.

Each dataset kind is scored the way its benchmark is: BraTS by region Dice, AdrenalMNIST3D by
AUC and accuracy, VOC (BCCD) by AP at IoU 0.5, the MSD lung patches by Dice, a datastore by
Dice per label. The result is a JSON-ready dict; an undefined metric (AUC with one class,
AP with no ground truth) is ``None``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
import torch

from unimed.datasets import READERS, Sample, read_dataset
from unimed.labels import LabelRegistry
from unimed.metrics import accuracy, brats_regions, dice, mean_ap, roc_auc
from unimed.tasks import Task

__all__ = ["evaluate", "evaluate_samples", "format_table", "EVAL_SPLIT_DEFAULTS"]

#: the split evaluated when none is given (BraTS, MSD patches and datastores: every case)
EVAL_SPLIT_DEFAULTS: dict[str, str | None] = {"medmnist": "val", "voc": "val"}

_BRATS_LABELS = ["necrosis", "edema", "non_enhancing_tumor", "enhancing_tumor"]
_ADRENAL_LABELS = ["adrenal_hyperplasia", "adrenal_normal"]


class _Predicts(Protocol):
    def predict(self, image: torch.Tensor, task: str, labels: Sequence[str] | None = None, **kwargs: Any) -> Any: ...


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def _brats(samples: Iterable[Sample], predictor: _Predicts, names: Sequence[str] = ()) -> dict[str, Any]:
    scores: dict[str, list[float]] = {"wt": [], "tc": [], "et": []}
    for s in samples:
        pred = brats_regions(predictor.predict(s.meta_image(), "segmentation", _BRATS_LABELS).label_map())
        true = brats_regions(s.label_map)
        for region in scores:
            scores[region].append(dice(pred[region], true[region]))
    return {f"dice_{region}": _mean(v) for region, v in scores.items()}


def _class_score(pred: Any, name: str) -> float:
    ann = pred.annotation
    if name not in ann.labels:
        return 0.0
    return 1.0 if ann.scores is None else float(ann.scores[list(ann.labels).index(name)])


def _medmnist(samples: Iterable[Sample], predictor: _Predicts, names: Sequence[str] = ()) -> dict[str, Any]:
    scores, targets = [], []
    for s in samples:
        pred = predictor.predict(s.meta_image(), "classification", _ADRENAL_LABELS)
        scores.append(_class_score(pred, _ADRENAL_LABELS[0]))
        targets.append(s.class_labels[_ADRENAL_LABELS[0]])
    auc = roc_auc(scores, targets) if len(set(targets)) == 2 else None
    return {"auc": auc, "acc": accuracy(scores, targets, 0.5)}


def _voc(samples: Iterable[Sample], predictor: _Predicts, names: Sequence[str] = ()) -> dict[str, Any]:
    detections: dict[str, list] = {}
    truth: dict[str, dict[str, np.ndarray]] = {}
    for s in samples:
        shape = np.array((tuple(s.spatial_shape) + (1, 1))[:3] * 2, dtype=np.float64)
        gt = np.asarray(s.boxes, dtype=np.float64).reshape(-1, 6) * shape - 0.5
        for name in s.det_labels:
            truth.setdefault(name, {})[s.name] = gt[[lab == name for lab in s.box_labels]]
        pred = predictor.predict(s.meta_image(), "detection", list(s.det_labels))
        boxes = np.asarray(pred.boxes_voxel(), dtype=np.float64).reshape(-1, 6)
        labels = list(pred.annotation.labels)
        scores = pred.annotation.scores or [1.0] * len(labels)
        for box, label, score in zip(boxes, labels, scores):
            if label in s.det_labels:
                detections.setdefault(label, []).append((s.name, float(score), box))
    result = mean_ap(detections, truth, iou_threshold=0.5)
    return {"map50": None if math.isnan(result["map50"]) else result["map50"], "ap50": result["ap50"]}


def _msd_patches(samples: Iterable[Sample], predictor: _Predicts, names: Sequence[str] = ()) -> dict[str, Any]:
    label_id = LabelRegistry().get("lung_tumor").id
    per_patch, inter, total = [], 0, 0
    for s in samples:
        pred = predictor.predict(s.meta_image(), "segmentation", ["lung_tumor"]).label_map() == label_id
        true = np.asarray(s.label_map) == label_id
        per_patch.append(dice(pred, true))
        inter += int(np.logical_and(pred, true).sum())
        total += int(pred.sum()) + int(true.sum())
    return {"dice": _mean(per_patch), "dice_global": 2.0 * inter / total if total else 1.0}


def _datastore_labels(samples: Sequence[Sample]) -> list[str]:
    """The segmentable labels present in any of the samples, in registry order."""
    present = {name for s in samples for name in s.seg_labels}
    return [lab.name for lab in LabelRegistry() if lab.name in present and Task.SEGMENTATION in lab.tasks]


def _datastore(samples: Iterable[Sample], predictor: _Predicts, names: Sequence[str] = ()) -> dict[str, Any]:
    registry = LabelRegistry()
    names = list(names)
    scores: dict[str, list[float]] = {name: [] for name in names}
    for s in samples:
        wanted = [n for n in names if n in s.seg_labels]
        if not wanted:
            continue
        pred = predictor.predict(s.meta_image(), "segmentation", names).label_map()
        for name in wanted:
            label_id = registry.get(name).id
            scores[name].append(dice(pred == label_id, np.asarray(s.label_map) == label_id))
    metrics: dict[str, Any] = {f"dice_{name}": _mean(v) for name, v in scores.items()}
    metrics["dice_mean"] = _mean(v for v in metrics.values() if v is not None)
    return metrics


_EVALUATORS: dict[str, tuple[Callable[[Sample], bool], Callable[..., dict[str, Any]]]] = {
    "brats": (lambda s: s.label_map is not None, _brats),
    "medmnist": (lambda s: s.class_labels is not None, _medmnist),
    "voc": (lambda s: s.boxes is not None, _voc),
    "msd_patches": (lambda s: s.label_map is not None, _msd_patches),
    "datastore": (lambda s: s.label_map is not None, _datastore),
}


def evaluate(
    kind: str, data: str | Path, predictor: _Predicts, split: str | None = None, progress: bool = False
) -> dict[str, Any]:
    """Score ``predictor`` on the annotated samples of a dataset folder or file.

    Metrics by ``kind``:

    - ``brats``: ``dice_wt``, ``dice_tc``, ``dice_et`` (mean over cases) of a segmentation of
      necrosis, edema, non-enhancing and enhancing tumour.
    - ``medmnist``: ``auc`` and ``acc`` (threshold 0.5) of the ``adrenal_hyperplasia`` score of
      a classification of adrenal hyperplasia vs. normal.
    - ``voc``: ``map50`` and ``ap50`` (per class) of a detection of the dataset's classes,
      boxes compared in pixel coordinates.
    - ``msd_patches``: ``dice`` (mean per patch, both empty = 1) and ``dice_global`` (pooled
      over all pixels) of a ``lung_tumor`` segmentation.
    - ``datastore``: ``dice_<label>`` (mean over the images whose label holds it) for every
      segmentable label present, and their mean ``dice_mean``.

    Args:
        kind: one of ``brats``, ``medmnist``, ``voc``, ``msd_patches``, ``datastore``.
        data: the dataset folder or file, as the reader takes it.
        predictor: a :class:`~unimed.predictor.Predictor` (or anything whose ``predict`` answers
            like one).
        split: the split to read; ``None`` means ``val`` for MedMNIST and VOC and every case
            otherwise (see the readers for the fixed BraTS and MSD splits).
        progress: show a progress bar.

    Returns:
        ``{"dataset": kind, "split": split, "n": samples scored, "metrics": {...}}``.

    Raises:
        ValueError: an unknown kind, or no annotated sample to score.
        DatasetError: the reader's errors.

    Example:
        >>> from unimed.networks.unimed import unimed_tiny
        >>> from unimed.predictor import Predictor
        >>> evaluate("msd_patches", "/data/msd_lung_patches", Predictor(unimed_tiny()), "val")  # doctest: +SKIP
        {'dataset': 'msd_patches', 'split': 'val', 'n': 26, 'metrics': {'dice': ..., 'dice_global': ...}}
    """
    if kind not in _EVALUATORS:
        raise ValueError(f"unknown dataset kind {kind!r}; known kinds: {', '.join(READERS)}")
    if split is None:
        split = EVAL_SPLIT_DEFAULTS.get(kind)
    annotated, _ = _EVALUATORS[kind]
    samples = [s for s in read_dataset(kind, data, split) if annotated(s)]
    if not samples:
        raise ValueError(f"{data}: no annotated {kind} samples to evaluate (split {split!r})")
    return {"dataset": kind, "split": split, "n": len(samples), "metrics": evaluate_samples(kind, samples, predictor, progress)}


def evaluate_samples(kind: str, samples: Sequence[Sample], predictor: _Predicts, progress: bool = False) -> dict[str, Any]:
    """The metrics of :func:`evaluate` on samples already read (e.g. a fixed validation split
    scored again after every round of a simulation).

    Raises:
        ValueError: an unknown kind, or no annotated sample among ``samples``.
    """
    if kind not in _EVALUATORS:
        raise ValueError(f"unknown dataset kind {kind!r}; known kinds: {', '.join(READERS)}")
    annotated, score = _EVALUATORS[kind]
    samples = [s for s in samples if annotated(s)]
    if not samples:
        raise ValueError(f"no annotated {kind} samples to evaluate")
    if progress:
        from tqdm.auto import tqdm

        iterable: Any = tqdm(samples, desc=f"evaluate {kind}", unit="case")
    else:
        iterable = samples
    names = _datastore_labels(samples) if kind == "datastore" else []
    return score(iterable, predictor, names)


def _rows(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for name, value in metrics.items():
        if isinstance(value, dict):
            rows += _rows(value, f"{prefix}{name}/")
        else:
            rows.append((prefix + name, "n/a" if value is None else f"{value:.4f}"))
    return rows


def format_table(result: dict[str, Any]) -> str:
    """A small aligned text table of an :func:`evaluate` result.

    Example:
        >>> print(format_table({"dataset": "voc", "split": "val", "n": 2,
        ...                     "metrics": {"map50": 0.5, "ap50": {"platelet": 0.5}}}))
        voc (split val, n=2)
        metric          value
        map50          0.5000
        ap50/platelet  0.5000
    """
    rows = [("metric", "value")] + _rows(result.get("metrics", {}))
    width = max(len(name) for name, _ in rows)
    vwidth = max(len(value) for _, value in rows)
    head = f"{result.get('dataset', '?')} (split {result.get('split')}, n={result.get('n', '?')})"
    return "\n".join([head] + [f"{name:<{width}}  {value:>{vwidth}}" for name, value in rows])
