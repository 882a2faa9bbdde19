"""MedMNIST 3D ``.npz`` files (AdrenalMNIST3D): small volumes with a binary image label.

Scored by AUC and accuracy (:func:`evaluate_medmnist`); :data:`SPEC` registers the kind ``medmnist``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from unimed.datasets.errors import DatasetError
from unimed.datasets.sample import Sample
from unimed.datasets.spec import DatasetSpec, Predicts, TrainingShare
from unimed.metrics import accuracy, roc_auc

__all__ = ["read_medmnist", "medmnist_splits", "evaluate_medmnist", "SPEC", "MEDMNIST_LABELS"]

#: image label 1 and 0 of AdrenalMNIST3D, as registry names
MEDMNIST_LABELS: tuple[str, str] = ("adrenal_hyperplasia", "adrenal_normal")
_SIZED = re.compile(r"_(\d+)\.npz$", re.IGNORECASE)
_ORDER = ("train", "val", "test")


def _find_npz(folder: Path, size: int | None) -> Path:
    """The ``.npz`` of ``folder`` for ``size``: ``<name>_<size>.npz``, or the unsuffixed file
    (MedMNIST's 28^3) for ``size`` None or 28, or for ``size`` None the folder's only ``.npz``;
    ``adrenalmnist3d`` is preferred among several."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".npz")
    if size in (None, 28):
        hits = [p for p in files if not _SIZED.search(p.name)] or [p for p in files if p.name.endswith("_28.npz")]
        if size is None and not hits and len(files) == 1:
            hits = files
    else:
        hits = [p for p in files if p.name.lower().endswith(f"_{size}.npz")]
    if len(hits) > 1:
        hits = [p for p in hits if p.name.lower().startswith("adrenalmnist3d")] or hits
    if len(hits) != 1:
        found = ", ".join(p.name for p in files) or "none"
        what = "several" if hits else "no"
        raise DatasetError(f"{folder}: {what} MedMNIST .npz file for size {size or 28} (.npz files: {found})")
    return hits[0]


def _source(path: Path, size: int | None) -> Path:
    """The ``.npz`` that holds the arrays, or a folder of ``{split}_images.npy`` /
    ``{split}_labels.npy`` files (the same keys, one file each)."""
    if path.is_dir():
        if any(p.is_file() and p.suffix.lower() == ".npz" for p in path.iterdir()):
            return _find_npz(path, size)
        if any(p.is_file() and p.name.endswith("_images.npy") for p in path.iterdir()):
            return path
        raise DatasetError(f"{path}: no MedMNIST .npz file and no {{split}}_images.npy / {{split}}_labels.npy files")
    if not path.is_file():
        raise DatasetError(f"{path}: no such MedMNIST .npz file or folder")
    return path


def _keys(source: Path) -> list[str]:
    if source.is_dir():
        return sorted(p.name[: -len(".npy")] for p in source.iterdir() if p.is_file() and p.name.endswith(".npy"))
    try:
        with np.load(source, allow_pickle=False) as data:
            return sorted(data.files)
    except Exception as exc:  # numpy raises several types for a non-npz file
        raise DatasetError(f"{source}: cannot read as .npz: {exc}") from exc


def _array(source: Path, key: str) -> np.ndarray:
    if source.is_dir():
        try:
            return np.load(source / f"{key}.npy", allow_pickle=False)
        except Exception as exc:  # numpy raises several types for a non-npy file
            raise DatasetError(f"{source / key}.npy: cannot read as .npy: {exc}") from exc
    with np.load(source, allow_pickle=False) as data:
        return data[key]


def _splits_of(keys: list[str]) -> tuple[str, ...]:
    """The splits with both arrays: MedMNIST's ``train``, ``val``, ``test`` first, others sorted."""
    found = {k.removesuffix("_images") for k in keys if k.endswith("_images") and k.removesuffix("_images") + "_labels" in keys}
    return tuple(sorted(found, key=lambda name: (_ORDER.index(name) if name in _ORDER else len(_ORDER), name)))


def medmnist_splits(path: str | Path) -> tuple[str, ...]:
    """The splits a MedMNIST ``.npz`` (or folder, see :func:`read_medmnist`) holds.

    Raises:
        DatasetError: no such file or folder, or no MedMNIST file in it.

    Example:
        >>> medmnist_splits("/data/adrenalmnist3d")  # doctest: +SKIP
        ('train', 'val', 'test')
    """
    return _splits_of(_keys(_source(Path(path), None)))


def read_medmnist(path: str | Path, split: str | None = "train", size: int | None = None) -> list[Sample]:
    """Read one split of a MedMNIST 3D ``.npz`` with binary labels (AdrenalMNIST3D).

    The file holds ``{split}_images`` ``(N, D, H, W)`` (or ``(N, D, H, W, C)``) uint8 and
    ``{split}_labels`` ``(N, 1)`` of 0/1, as MedMNIST's official files do (``train``, ``val``,
    ``test``); a folder of ``{split}_images.npy`` and ``{split}_labels.npy`` files is read
    the same. Each volume becomes a ``(C, D, H, W)`` float32 image with the uint8 range kept
    (normalisation happens later) and an identity affine, labelled
    ``{"adrenal_hyperplasia": y, "adrenal_normal": 1 - y}``. The splits are the file's own;
    ``None`` reads every split it holds. Samples are named ``{split}_{index:04d}``.

    Args:
        path: the ``.npz``, or a folder holding ``adrenalmnist3d.npz`` (size 28) and/or
            ``adrenalmnist3d_64.npz`` (size 64), or one ``.npz``, or ``.npy`` files.
        split: the split's key prefix in the file; None: every split.
        size: volume side; picks the file in a folder, and is checked against a file's volumes.

    Raises:
        DatasetError: no matching file, missing split keys (the keys and splits present are
            listed), an array of the wrong shape, or labels other than 0/1.

    Example:
        >>> train = read_medmnist("/data/adrenalmnist3d", "train")  # doctest: +SKIP
        >>> train[0].image.shape, train[0].class_labels  # doctest: +SKIP
        (torch.Size([1, 28, 28, 28]), {'adrenal_hyperplasia': 0, 'adrenal_normal': 1})
    """
    source = _source(Path(path), size)
    keys = _keys(source)
    if split is None:
        splits = _splits_of(keys)
        if not splits:
            raise DatasetError(f"{source}: no {{split}}_images with {{split}}_labels; keys present: {', '.join(keys)}")
        return [s for name in splits for s in _read_split(source, name, size)]
    missing = [k for k in (f"{split}_images", f"{split}_labels") if k not in keys]
    if missing:
        raise DatasetError(f"{source}: no {' or '.join(missing)} for split {split!r}; keys present: {', '.join(keys)}"
                           f" (splits: {', '.join(_splits_of(keys)) or 'none'})")
    return _read_split(source, split, size)


def _read_split(path: Path, split: str, size: int | None) -> list[Sample]:
    images, labels = _array(path, f"{split}_images"), _array(path, f"{split}_labels")
    if images.ndim == 5:
        images = np.moveaxis(images, -1, 1)
    elif images.ndim == 4:
        images = images[:, None]
    else:
        raise DatasetError(f"{path}: {split}_images must be (N, D, H, W) or (N, D, H, W, C), got shape {images.shape}")
    if size is not None and images.shape[2:] != (size,) * 3:
        raise DatasetError(f"{path}: expected {size}^3 volumes for size={size}, got {images.shape[2:]}")
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.shape != (len(images), 1):
        raise DatasetError(f"{path}: {split}_labels must be ({len(images)}, 1), got shape {labels.shape}")
    if not np.isin(labels, [0, 1]).all():
        raise DatasetError(f"{path}: {split}_labels must be 0 or 1, got values {np.unique(labels).tolist()}")
    positive, negative = MEDMNIST_LABELS
    out = []
    for i, (volume, y) in enumerate(zip(images, labels[:, 0].astype(int))):
        out.append(
            Sample(
                image=torch.from_numpy(volume.astype(np.float32)),
                affine=np.eye(4),
                dataset="medmnist",
                name=f"{split}_{i:04d}",
                class_labels={positive: int(y), negative: 1 - int(y)},
                modalities=("ct",),
            )
        )
    return out


def _class_score(pred: Any, name: str) -> float:
    ann = pred.annotation
    if name not in ann.labels:
        return 0.0
    return 1.0 if ann.scores is None else float(ann.scores[list(ann.labels).index(name)])


def evaluate_medmnist(samples: Sequence[Sample], predictor: Predicts) -> dict[str, Any]:
    """``auc`` (None with one class) and ``acc`` (threshold 0.5) of the ``adrenal_hyperplasia``
    score of a classification of adrenal hyperplasia vs. normal."""
    positive = MEDMNIST_LABELS[0]
    scores, targets = [], []
    for s in samples:
        pred = predictor.predict(s.meta_image(), "classification", list(MEDMNIST_LABELS))
        scores.append(_class_score(pred, positive))
        targets.append(s.class_labels[positive])
    auc = roc_auc(scores, targets) if len(set(targets)) == 2 else None
    return {"auc": auc, "acc": accuracy(scores, targets, 0.5)}


#: the ``medmnist`` kind: AdrenalMNIST3D in ``adrenalmnist3d/``, the file's own splits
SPEC = DatasetSpec(
    kind="medmnist",
    reader=read_medmnist,
    evaluator=evaluate_medmnist,
    annotated=lambda s: s.class_labels is not None,
    primary_metric="auc",
    default_split="train",
    eval_split="val",
    folder="adrenalmnist3d",
    # binary shape masks: per-image normalisation turns the organ's volume into the foreground's
    # value, so intensity augmentation would blur the very signal (val auc 0.38 with it, 0.80 without
    # in 3 minutes of classification-only training)
    training=TrainingShare(("classification",), batch_size=16, augment_intensity=False),
    splits=medmnist_splits,
)
