"""Evaluation metrics on numpy arrays: Dice, BraTS regions, ROC AUC, accuracy, box IoU and
Pascal VOC average precision. No I/O.

Boxes are ``[x0, y0, x1, y1]`` (2D) or ``[x0, y0, z0, x1, y1, z1]`` (3D) in continuous
coordinates: a box's size is ``x1 - x0`` (no VOC-devkit ``+ 1``); IoU is MONAI's
(:mod:`unimed.boxes`), computed in float32.
"""

from __future__ import annotations

import statistics
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

from unimed.labels import LabelRegistry

__all__ = ["mean_or_none", "mean_sd", "dice", "brats_regions", "roc_auc", "accuracy", "box_iou", "voc_ap", "mean_ap", "mask_box"]

#: BraTS evaluation regions: whole tumour, tumour core, enhancing tumour (registry names)
BRATS_REGIONS: dict[str, tuple[str, ...]] = {
    "wt": ("necrosis", "edema", "non_enhancing_tumor", "enhancing_tumor"),
    "tc": ("necrosis", "non_enhancing_tumor", "enhancing_tumor"),
    "et": ("enhancing_tumor",),
}

Detection = tuple[Hashable, float, Sequence[float]]


def mean_or_none(values: Iterable[float]) -> float | None:
    """The mean of per-case scores, or None when there are none.

    Example:
        >>> mean_or_none([0.5, 1.0]), mean_or_none([])
        (0.75, None)
    """
    values = list(values)
    return float(np.mean(values)) if values else None


def mean_sd(values: Sequence[float]) -> dict[str, float | None]:
    """``{"mean", "sd"}`` of per-case or per-run figures: the sample standard deviation
    (``ddof=1``), 0.0 for one value, both None for none.

    Example:
        >>> mean_sd([0.6, 0.4])["mean"], round(mean_sd([0.6, 0.4])["sd"], 3), mean_sd([0.5])["sd"], mean_sd([])
        (0.5, 0.141, 0.0, {'mean': None, 'sd': None})
    """
    if not values:
        return {"mean": None, "sd": None}
    return {"mean": float(statistics.fmean(values)), "sd": float(statistics.stdev(values)) if len(values) > 1 else 0.0}


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient of two boolean masks of the same shape; 1.0 when both are empty.

    Example:
        >>> dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool))
        0.6666666666666666
    """
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
    total = int(pred.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, target).sum()) / total


def brats_regions(label_map: np.ndarray, registry: LabelRegistry | None = None) -> dict[str, np.ndarray]:
    """The BraTS regions of a label map of registry ids: ``wt`` (necrosis, edema, non-enhancing
    and enhancing tumour), ``tc`` (all but edema) and ``et`` (enhancing tumour), as bool masks.

    Example:
        >>> r = brats_regions(np.array([0, 1, 2, 3, 4]))
        >>> r["wt"].tolist(), r["tc"].tolist(), r["et"].tolist()
        ([False, True, True, True, True], [False, True, False, True, True], [False, False, False, False, True])
    """
    registry = registry or LabelRegistry()
    label_map = np.asarray(label_map)
    return {
        region: np.isin(label_map, [registry.get(name).id for name in names]) for region, names in BRATS_REGIONS.items()
    }


def _binary_targets(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    scores, targets = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(targets).ravel()
    if scores.shape != targets.shape:
        raise ValueError(f"scores and targets must have the same length, got {scores.size} and {targets.size}")
    if not np.isin(targets, [0, 1]).all():
        raise ValueError(f"targets must be 0 or 1, got values {np.unique(targets).tolist()}")
    return scores, targets.astype(np.int64)


def roc_auc(scores: Sequence[float] | np.ndarray, targets: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve of binary ``targets`` (0/1) ranked by ``scores``.

    Raises:
        ValueError: only one class is present in ``targets`` (the AUC is undefined).

    Example:
        >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        0.75
    """
    from sklearn.metrics import roc_auc_score

    scores, targets = _binary_targets(scores, targets)
    if np.unique(targets).size < 2:
        raise ValueError("roc_auc needs both classes (0 and 1) in targets; only one is present")
    return float(roc_auc_score(targets, scores))


def accuracy(scores: Sequence[float] | np.ndarray, targets: Sequence[int] | np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of binary ``targets`` predicted right by ``scores >= threshold``.

    Example:
        >>> accuracy([0.2, 0.6, 0.5, 0.9], [0, 0, 1, 1])
        0.75
    """
    scores, targets = _binary_targets(scores, targets)
    if scores.size == 0:
        raise ValueError("accuracy needs at least one score")
    return float(((scores >= threshold).astype(np.int64) == targets).mean())


def _boxes(boxes, name: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(-1, arr.size if arr.size else 4)
    if arr.ndim != 2 or arr.shape[1] not in (4, 6):
        raise ValueError(f"{name} must be (N, 4) or (N, 6) boxes, got shape {arr.shape}")
    return arr


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of ``(N, 4|6)`` and ``(M, 4|6)`` boxes, ``(N, M)``.

    Both sets must have the same dimensionality; an empty box has IoU 0 with everything.

    Example:
        >>> box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 0, 3, 2], [0, 0, 2, 2]]))
        array([[0.33333334, 1.        ]])
    """
    a, b = _boxes(a, "a"), _boxes(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"boxes must have the same dimensionality, got {a.shape[1]} and {b.shape[1]} coordinates")
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    from unimed.boxes import box_iou as overlap  # MONAI's box utilities, imported when boxes are scored

    return overlap(a, b)


def voc_ap(
    detections: Sequence[Detection], ground_truth: Mapping[Hashable, np.ndarray], iou_threshold: float = 0.5
) -> float:
    """Average precision of one class, Pascal VOC 2010+ style.

    Detections are matched greedily in descending score (ties keep their order): a detection
    is a true positive when its best-overlapping ground-truth box of the same image has
    IoU > ``iou_threshold`` (as the VOC devkit) and is not matched yet; otherwise a false
    positive. AP is the
    area under the precision envelope (all-point interpolation).

    Args:
        detections: ``(image_id, score, box)`` with a 4- or 6-coordinate box.
        ground_truth: ``{image_id: (M, 4|6) boxes}``; images without boxes may be left out.
        iou_threshold: a match needs a larger IoU.

    Returns:
        The AP, or NaN when there is no ground-truth box (AP is undefined).

    Example:
        >>> gt = {"a": np.array([[0, 0, 10, 10]])}
        >>> voc_ap([("a", 0.9, [0, 0, 10, 10]), ("a", 0.8, [0, 0, 10, 10])], gt)
        1.0
    """
    gts = {k: _boxes(v, f"ground truth of {k!r}") for k, v in ground_truth.items()}
    n_gt = sum(len(v) for v in gts.values())
    if n_gt == 0:
        return float("nan")
    order = sorted(range(len(detections)), key=lambda i: -float(detections[i][1]))
    used = {k: np.zeros(len(v), dtype=bool) for k, v in gts.items()}
    tp = np.zeros(len(order))
    for rank, i in enumerate(order):
        image_id, _, box = detections[i]
        gt = gts.get(image_id)
        if gt is None or len(gt) == 0:
            continue
        ious = box_iou(np.asarray(box, dtype=np.float64)[None], gt)[0]
        j = int(ious.argmax())
        if ious[j] > iou_threshold and not used[image_id][j]:
            used[image_id][j] = True
            tp[rank] = 1
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(order) + 1)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def mean_ap(
    detections: Mapping[str, Sequence[Detection]],
    ground_truth: Mapping[str, Mapping[Hashable, np.ndarray]],
    iou_threshold: float = 0.5,
) -> dict:
    """:func:`voc_ap` per class and their mean.

    Args:
        detections: ``{class: [(image_id, score, box), ...]}``.
        ground_truth: ``{class: {image_id: (M, 4|6) boxes}}``.
        iou_threshold: a match needs a larger IoU.

    Returns:
        ``{"map50": mean AP over the classes with ground truth (NaN if none), "ap50": {class: AP}}``
        with only the classes that have ground truth in ``ap50``.

    Example:
        >>> gt = {"cat": {"a": np.array([[0, 0, 4, 4]])}, "dog": {"a": np.array([[5, 5, 9, 9]])}}
        >>> mean_ap({"cat": [("a", 0.9, [0, 0, 4, 4])], "dog": []}, gt)
        {'map50': 0.5, 'ap50': {'cat': 1.0, 'dog': 0.0}}
    """
    ap: dict[str, float] = {}
    for cls in sorted(set(ground_truth) | set(detections)):
        value = voc_ap(detections.get(cls, []), ground_truth.get(cls, {}), iou_threshold)
        if not np.isnan(value):
            ap[cls] = value
    return {"map50": float(np.mean(list(ap.values()))) if ap else float("nan"), "ap50": ap}


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Normalised ``[x0, y0, z0, x1, y1, z1]`` box around the true voxels of a 2D or 3D mask
    (edges: 0 is the outer edge of the first voxel, 1 of the last; a 2D mask gets z 0..1).

    Raises:
        ValueError: the mask is empty or not 2D/3D.

    Example:
        >>> mask_box(np.pad(np.ones((1, 2), bool), ((1, 2), (0, 2)))).tolist()
        [0.25, 0.0, 0.0, 0.5, 0.5, 1.0]
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim not in (2, 3):
        raise ValueError(f"mask must be 2D or 3D, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("mask_box needs a non-empty mask")
    from monai.transforms.utils import generate_spatial_bounding_box  # imported here: MONAI takes seconds to import

    start, end = generate_spatial_bounding_box(mask[None])  # voxel indices, end exclusive
    box = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    for axis, n in enumerate(mask.shape):
        box[axis], box[axis + 3] = start[axis] / n, end[axis] / n
    return box
