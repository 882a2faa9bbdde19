"""2D lung-tumour CT patches from the Medical Segmentation Decathlon (Task06), in HDF5.

Scored by Dice (:func:`evaluate_msd_patches`); :data:`SPEC` registers the kind ``msd_patches``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch

from unimed.datasets.errors import DatasetError
from unimed.datasets.sample import Sample
from unimed.datasets.spec import PER_CASE, DatasetSpec, Predicts, TrainingShare
from unimed.labels import LabelRegistry
from unimed.metrics import dice, mask_box, mean_or_none

__all__ = ["read_msd_patches", "evaluate_msd_patches", "SPEC"]

_LABEL = "lung_tumor"


def _find_h5(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise DatasetError(f"{path}: no such HDF5 file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".h5", ".hdf5"))
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise DatasetError(f"{path}: expected exactly one .h5 file, found {found}")
    return files[0]


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("images", "labels") if k not in f]
            if missing:
                raise DatasetError(f"{path}: missing dataset(s) {', '.join(missing)}; keys present: {', '.join(sorted(f))}")
            return np.asarray(f["images"], dtype=np.float32), np.asarray(f["labels"])
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read as HDF5: {exc}") from exc


def read_msd_patches(path: str | Path, split: str | None = None) -> list[Sample]:
    """Read 2D patches with binary tumour masks from an HDF5 file.

    The file holds ``images`` ``(N, 1, X, Y)`` (or ``(N, X, Y)``) float and ``labels`` of the same
    shape with values 0/1; the HDF5's axis order is kept as ``(X, Y)``. Each patch becomes a
    ``(1, X, Y)`` float32 image with an identity affine, a ``lung_tumor`` label map, one box
    around the mask (none when it is empty) and ``class_labels={"lung_tumor": 0 or 1}``.
    Patches are named ``patch_{i:04d}`` by their index in the file.

    The data has no official validation split, so the split is fixed and deterministic:
    ``None`` is every patch, ``"val"`` the indices with ``i % 5 == 4``, ``"train"`` the rest.

    Args:
        path: the ``.h5`` file or a folder holding exactly one.
        split: ``None``, ``"train"`` or ``"val"``.

    Raises:
        DatasetError: no single HDF5 file, missing ``images`` / ``labels``, arrays of the wrong
            shape, or mask values other than 0/1.
        DatasetError: an unknown split (a ``ValueError``).

    Example:
        >>> patches = read_msd_patches("/data/msd_lung_patches", split="val")  # doctest: +SKIP
        >>> patches[0].name, patches[0].image.shape  # doctest: +SKIP
        ('patch_0004', torch.Size([1, 48, 48]))
    """
    if split not in (None, "train", "val"):
        raise DatasetError(f"{path}: MSD patches split must be None, 'train' or 'val', got {split!r} "
                           "(it has no split files: leave the split out to read every case)")
    path = _find_h5(Path(path))
    images, labels = _read_arrays(path)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != 1:
        raise DatasetError(f"{path}: images must be (N, 1, X, Y) or (N, X, Y), got shape {images.shape}")
    if labels.ndim == 3:
        labels = labels[:, None]
    if labels.shape != images.shape:
        raise DatasetError(f"{path}: labels shape {labels.shape} differs from images shape {images.shape}")
    if not np.isin(labels, [0, 1]).all():
        raise DatasetError(f"{path}: labels must be 0 or 1, got values {np.unique(labels)[:10].tolist()}")
    label_id = LabelRegistry().get(_LABEL).id
    indices = range(len(images))
    if split == "val":
        indices = [i for i in indices if i % 5 == 4]
    elif split == "train":
        indices = [i for i in indices if i % 5 != 4]
    out = []
    for i in indices:
        mask = labels[i, 0] > 0
        has = bool(mask.any())
        out.append(
            Sample(
                image=torch.from_numpy(np.ascontiguousarray(images[i])),
                affine=np.eye(4),
                dataset="msd_patches",
                name=f"patch_{i:04d}",
                label_map=mask.astype(np.uint8) * np.uint8(label_id),
                seg_labels=(_LABEL,),
                boxes=mask_box(mask)[None] if has else np.zeros((0, 6)),
                box_labels=[_LABEL] if has else [],
                det_labels=(_LABEL,),
                class_labels={_LABEL: int(has)},
                modalities=("ct",),
            )
        )
    return out



def evaluate_msd_patches(samples: Sequence[Sample], predictor: Predicts) -> dict[str, Any]:
    """``dice`` (mean per patch, both empty = 1) and ``dice_global`` (pooled over all pixels) of
    a ``lung_tumor`` segmentation; each patch's ``dice`` under :data:`~unimed.datasets.spec.PER_CASE`."""
    label_id = LabelRegistry().get(_LABEL).id
    per_patch, per_case, inter, total = [], {}, 0, 0
    for s in samples:
        answer = predictor.predict(s.meta_image(), "segmentation", [_LABEL])
        # the answering model's own id: a network taught the label anew has another one
        asked = [lab.id for lab in getattr(answer, "labels", []) if lab.name == _LABEL]
        pred = answer.label_map() == (asked[0] if asked else label_id)
        true = np.asarray(s.label_map) == label_id
        per_patch.append(dice(pred, true))
        per_case[s.name] = {"dice": per_patch[-1]}
        inter += int(np.logical_and(pred, true).sum())
        total += int(pred.sum()) + int(true.sum())
    return {"dice": mean_or_none(per_patch), "dice_global": 2.0 * inter / total if total else 1.0, PER_CASE: per_case}


#: the ``msd_patches`` kind: MSD lung-tumour patches in ``msd_lung_patches/``, every task
SPEC = DatasetSpec(
    kind="msd_patches",
    reader=read_msd_patches,
    evaluator=evaluate_msd_patches,
    annotated=lambda s: s.label_map is not None,
    primary_metric="dice",
    folder="msd_lung_patches",
    training=TrainingShare(("segmentation", "detection", "classification"), batch_size=16, clicks=0.25),
)
