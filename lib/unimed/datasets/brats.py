"""BraTS-format cases: FLAIR and T1c NIfTI volumes with an optional ``OTMultiClass`` label map.

A case folder holds ``Flair*.nii[.gz]``, ``T1c*.nii[.gz]`` and optionally
``OTMultiClass*.nii[.gz]`` (expert labels 0 background, 1 necrosis, 2 edema, 3 non-enhancing
tumour, 4 enhancing tumour, stored as float). File names are matched case-insensitively.
Scored by region Dice (:func:`evaluate_brats`); :data:`SPEC` registers the kind ``brats``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import torch

from unimed.datasets.errors import DatasetError
from unimed.datasets.sample import Sample
from unimed.datasets.spec import PER_CASE, DatasetSpec, Predicts, TrainingShare
from unimed.labels import LabelRegistry
from unimed.metrics import brats_regions, dice, mask_box, mean_or_none

__all__ = ["read_brats", "evaluate_brats", "SPEC", "BRATS_LABELS", "BRATS_SEG_LABELS"]

#: BraTS label value -> registry name
BRATS_LABELS: dict[int, str] = {1: "necrosis", 2: "edema", 3: "non_enhancing_tumor", 4: "enhancing_tumor"}
#: the registry names a BraTS label map annotates completely
BRATS_SEG_LABELS: tuple[str, ...] = tuple(BRATS_LABELS.values())
_TUMOR = "brain_tumor"


def _is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and (name.endswith(".nii") or name.endswith(".nii.gz"))


def _find(case: Path, prefix: str, required: bool) -> Path | None:
    """The one NIfTI file of ``case`` whose name starts with ``prefix`` (case-insensitive)."""
    hits = sorted(p for p in case.iterdir() if _is_nifti(p) and p.name.lower().startswith(prefix.lower()))
    if len(hits) > 1:
        raise DatasetError(f"{case}: several {prefix}*.nii* files ({', '.join(p.name for p in hits)}); expected one")
    if not hits:
        if required:
            raise DatasetError(f"{case}: missing file {prefix}*.nii or {prefix}*.nii.gz")
        return None
    return hits[0]


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for a broken file
        raise DatasetError(f"{path}: cannot read as NIfTI: {exc}") from exc
    if data.ndim != 3:
        raise DatasetError(f"{path}: expected a 3D volume, got array shape {data.shape}")
    return data, np.asarray(img.affine, dtype=np.float64)


def _is_case(folder: Path) -> bool:
    return any(_is_nifti(p) and p.name.lower().startswith("flair") for p in folder.iterdir())


def _case_folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder of BraTS cases")
    if _is_case(folder):
        return [folder]
    cases = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cases:
        raise DatasetError(f"{folder}: no BraTS case folders (each holding Flair*.nii* and T1c*.nii*)")
    return cases


def _read_case(case: Path, registry: LabelRegistry) -> Sample:
    flair, affine = _load(_find(case, "Flair", required=True))
    t1c_path = _find(case, "T1c", required=True)
    t1c, _ = _load(t1c_path)
    if t1c.shape != flair.shape:
        raise DatasetError(f"{t1c_path}: shape {t1c.shape} differs from the FLAIR's {flair.shape}")
    image = torch.from_numpy(np.stack([flair, t1c]))
    sample = Sample(image=image, affine=affine, dataset="brats", name=case.name, modalities=("flair", "t1c"))
    label_path = _find(case, "OTMultiClass", required=False)
    if label_path is None:
        return sample
    raw, _ = _load(label_path)
    if raw.shape != flair.shape:
        raise DatasetError(f"{label_path}: shape {raw.shape} differs from the FLAIR's {flair.shape}")
    values = np.rint(raw).astype(np.int64)
    bad = (values < 0) | (values > max(BRATS_LABELS))
    if bad.any():
        raise DatasetError(f"{label_path}: label values {np.unique(values[bad]).tolist()} outside 0..4")
    lut = np.zeros(max(BRATS_LABELS) + 1, dtype=np.uint8)
    for value, name in BRATS_LABELS.items():
        lut[value] = registry.get(name).id
    tumor = values > 0
    has_tumor = bool(tumor.any())
    sample.label_map = lut[values]
    sample.seg_labels = BRATS_SEG_LABELS
    sample.boxes = mask_box(tumor)[None] if has_tumor else np.zeros((0, 6))
    sample.box_labels = [_TUMOR] if has_tumor else []
    sample.det_labels = (_TUMOR,)
    sample.class_labels = {_TUMOR: int(has_tumor)}
    return sample


def read_brats(folder: str | Path, split: str | None = None) -> list[Sample]:
    """Read a folder of BraTS case folders, or one case folder.

    Each case gives a 2-channel ``(FLAIR, T1c)`` float32 image ``(2, X, Y, Z)`` with the FLAIR's
    affine. A case with an ``OTMultiClass`` file also gets its label map (registry ids of
    necrosis, edema, non-enhancing and enhancing tumour), one ``brain_tumor`` box around all
    tumour voxels (none when there is no tumour) and ``class_labels={"brain_tumor": 0 or 1}``;
    a case without one gets no annotations.

    BraTS has no official validation split here, so the split is fixed and deterministic:
    ``None`` is every case, ``"val"`` the last case in sorted order, ``"train"`` the others.

    Args:
        folder: a folder of case folders, or a case folder.
        split: ``None``, ``"train"`` or ``"val"``.

    Raises:
        DatasetError: a missing FLAIR or T1c file, an unreadable volume, shapes that differ, or
            label values outside 0..4.
        DatasetError: an unknown split (a ``ValueError``).

    Example:
        >>> samples = read_brats("/data/brats2013", split="val")  # doctest: +SKIP
        >>> samples[0].image.shape, samples[0].seg_labels[0]  # doctest: +SKIP
        (torch.Size([2, 240, 240, 155]), 'necrosis')
    """
    if split not in (None, "train", "val"):
        raise DatasetError(f"{folder}: BraTS split must be None, 'train' or 'val', got {split!r} "
                           "(it has no split files: leave the split out to read every case)")
    cases = _case_folders(Path(folder))
    if split == "val":
        cases = cases[-1:]
    elif split == "train":
        cases = cases[:-1]
    registry = LabelRegistry()
    return [_read_case(case, registry) for case in cases]


def evaluate_brats(samples: Sequence[Sample], predictor: Predicts) -> dict[str, Any]:
    """``dice_wt``, ``dice_tc``, ``dice_et``: the mean over cases of each BraTS region's Dice
    (:func:`~unimed.metrics.brats_regions`) of a segmentation of necrosis, edema, non-enhancing
    and enhancing tumour; each case's under :data:`~unimed.datasets.spec.PER_CASE`."""
    per_case: dict[str, dict[str, float]] = {}
    for s in samples:
        pred = brats_regions(predictor.predict(s.meta_image(), "segmentation", list(BRATS_SEG_LABELS)).label_map())
        true = brats_regions(s.label_map)
        per_case[s.name] = {f"dice_{region}": dice(pred[region], true[region]) for region in ("wt", "tc", "et")}
    cases = list(per_case.values())
    means = {name: mean_or_none(case[name] for case in cases) for name in ("dice_wt", "dice_tc", "dice_et")}
    return {**means, PER_CASE: per_case}


#: the ``brats`` kind: BraTS 2013 in ``brats2013/``, trained on every task, every other step
SPEC = DatasetSpec(
    kind="brats",
    reader=read_brats,
    evaluator=evaluate_brats,
    annotated=lambda s: s.label_map is not None,
    primary_metric="dice_wt",
    folder="brats2013",
    training=TrainingShare(("segmentation", "detection", "classification"), batch_size=1, every=2,
                           channel_dropout=0.35, modality_dropout=0.25, clicks=0.5),
)
