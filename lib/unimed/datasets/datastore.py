"""MONAI Label local datastores: images at the top level, final labels in ``labels/final/``.

Scored by Dice per label (:func:`evaluate_datastore`); :data:`SPEC` registers the kind
``datastore`` (its labelled images; a datastore has no splits).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np
import torch

from unimed.datasets.errors import DatasetError
from unimed.datasets.sample import Sample
from unimed.datasets.spec import PER_CASE, DatasetSpec, Predicts
from unimed.labels import LabelRegistry, UnknownLabelError
from unimed.metrics import dice, mean_or_none
from unimed.modalities import modalities_from_name
from unimed.task_names import Task
from unimed.transforms import IMAGE_SUFFIXES, ImageLoadError, image_affine, load_image

__all__ = ["read_datastore", "read_labelled", "read_label", "check_label_map", "evaluate_datastore", "SPEC", "image_stem",
           "read_structure"]

logger = logging.getLogger(__name__)


def image_stem(name: str) -> str:
    """A file name without its image suffix (``.nii.gz`` counts as one).

    Example:
        >>> image_stem("case_01.nii.gz"), image_stem("cells.PNG")
        ('case_01', 'cells')
    """
    lower = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMAGE_SUFFIXES)


def _load(path: Path) -> torch.Tensor:
    try:
        return load_image(path)
    except ImageLoadError as exc:
        raise DatasetError(f"{path}: {exc}") from exc


def _label_file(folder: Path, image: Path) -> Path | None:
    """``labels/final/<image name>``, or a file of the same stem with another image suffix."""
    final = folder / "labels" / "final"
    if (final / image.name).is_file():
        return final / image.name
    if not final.is_dir():
        return None
    stem = image_stem(image.name)
    hits = sorted(p for p in final.iterdir() if _is_image(p) and image_stem(p.name) == stem)
    return hits[0] if hits else None


def check_label_map(values: np.ndarray, spatial_shape: tuple[int, ...], registry: LabelRegistry,
                    named: Collection[int] = ()) -> tuple[np.ndarray, tuple[str, ...]]:
    """A label map's values as registry ids (uint8) and the names of the labels present in it.

    Args:
        values: the label map, spatial axes only (no channel axis).
        spatial_shape: the image's spatial shape.
        registry: the label space whose ids the values must be.
        named: values that stand for labels named elsewhere (a viewer's segments): accepted
            in 1..255, and not among the names returned.

    Raises:
        DatasetError: another number of axes or another shape than the image's, a value that
            is not an integer, or one that is not a registry id (0 is background). The message
            names no file.

    Example:
        >>> check_label_map(np.array([[0, 2], [2, 0]]), (2, 2), LabelRegistry())[1]
        ('edema',)
    """
    values = np.asarray(values)
    if values.ndim != len(spatial_shape):
        raise DatasetError(f"a {values.ndim}D label map cannot label a {len(spatial_shape)}D image "
                           f"(label shape {values.shape}, image shape {tuple(spatial_shape)})")
    if values.shape != tuple(spatial_shape):
        raise DatasetError(f"label shape {values.shape} differs from the image's {tuple(spatial_shape)}")
    if not np.all(np.isfinite(values)) or not np.array_equal(values, np.rint(values)):
        raise DatasetError("label values must be integers (registry label ids, 0 for background)")
    present = np.unique(values).astype(np.int64)
    names = []
    for value in present[present != 0]:
        if int(value) in named and 1 <= value <= 255:
            continue
        try:
            names.append(registry.by_id(int(value)).name)
        except UnknownLabelError:
            known = ", ".join(f"{lab.id} {lab.name}" for lab in registry)
            raise DatasetError(f"label value {value} is not a registry label id; known ids: 0 background, {known}") from None
    return values.astype(np.uint8), tuple(names)


def read_label(path: Path, spatial_shape: tuple[int, ...], registry: LabelRegistry) -> tuple[np.ndarray, tuple[str, ...]]:
    """A final label map as registry ids (uint8) and the names of the labels present in it.

    Raises:
        DatasetError: unreadable, not one channel, or :func:`check_label_map`'s errors; the
            message starts with the path.
    """
    label = _load(path)
    if label.shape[0] != 1:
        raise DatasetError(f"{path}: a label map must have one channel, got {label.shape[0]}")
    try:
        return check_label_map(np.asarray(label[0].detach().cpu().numpy()), spatial_shape, registry)
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from None


def read_datastore(folder: str | Path, skipped: list[tuple[str, str]] | None = None) -> tuple[list[Sample], list[Sample]]:
    """Read a MONAI Label local datastore folder.

    Images are the top-level files with an image suffix (see
    :data:`unimed.transforms.IMAGE_SUFFIXES`; other files such as licences, JSON or XML are
    skipped), in sorted order. An image's final label is ``labels/final/<same file name>`` (or
    the same name with another image suffix, e.g. a PNG label of a JPEG). A labelled sample's
    ``label_map`` holds registry ids and its ``seg_labels`` are the labels present in it.
    Samples are named by the image's file name without suffix.

    Args:
        folder: the datastore folder.
        skipped: when a list, an image that cannot be read, or whose label is bad, is left
            out and ``(image name, reason)`` appended to it (and logged) instead of raising.

    Returns:
        ``(labelled, unlabelled)`` samples.

    Raises:
        DatasetError: the folder is missing; unless ``skipped`` is given, an image or label
            cannot be read, a label's shape differs from its image's, or a label value is not
            a registry id.

    Example:
        >>> labelled, unlabelled = read_datastore("sample_datastore")  # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such datastore folder")
    registry = LabelRegistry()
    labelled, unlabelled = [], []
    for path in sorted(p for p in folder.iterdir() if _is_image(p)):
        try:
            image = _load(path)
            sample = Sample(
                image=torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image),
                affine=image_affine(image),
                dataset="datastore",
                name=image_stem(path.name),
                modalities=modalities_from_name(path, int(image.shape[0])),
            )
            label_path = _label_file(folder, path)
            if label_path is not None:
                sample.label_map, sample.seg_labels = read_label(label_path, sample.spatial_shape, registry)
        except DatasetError as exc:
            if skipped is None:
                raise
            logger.warning("skipping %s: %s", path.name, exc)
            skipped.append((path.name, str(exc)))
            continue
        (unlabelled if label_path is None else labelled).append(sample)
    return labelled, unlabelled


def read_structure(folder: str | Path, name: str, label_id: int, allow_empty: bool = False) -> list[Sample]:
    """The images of a datastore-style folder whose ``labels/final/`` mask marks one structure.

    What ``teach`` learns a new label from: any nonzero mask value is the structure, whatever
    its number (a viewer's segment value is not a registry id yet). Images without a mask are
    left out.

    Args:
        folder: images at the top, masks under ``labels/final/`` with the image's file name.
        name: the structure's label name (each sample's ``seg_labels``).
        label_id: the value the structure takes in the samples' label maps.
        allow_empty: an empty mask says the image does not show the structure (what teaching
            classification needs besides the images that do); at least one mask must be nonempty.

    Returns:
        Samples with ``label_map`` = ``label_id`` on the structure, 0 elsewhere.

    Raises:
        DatasetError: no such folder, no image with a mask, an unreadable image or mask, a
            mask of another shape than its image's or of more than one channel, or an empty
            mask (without ``allow_empty``; with it, when every mask is empty).

    Example:
        >>> samples = read_structure("my_cases", "spinal_cord", 12)  # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    samples = []
    for path in sorted(p for p in folder.iterdir() if _is_image(p)):
        label_path = _label_file(folder, path)
        if label_path is None:
            logger.info("%s has no mask under labels/final: left out", path.name)
            continue
        image, mask = _load(path), _load(label_path)
        spatial = tuple(image.shape[1:])
        if mask.shape[0] != 1:
            raise DatasetError(f"{label_path}: a mask must have one channel, got {mask.shape[0]}")
        values = np.asarray(mask[0].detach().cpu().numpy())
        if values.shape != spatial:
            raise DatasetError(f"{label_path}: mask shape {values.shape} differs from the image's {spatial}")
        structure = values != 0
        if not (allow_empty or structure.any()):
            raise DatasetError(f"{label_path}: the mask is empty (no nonzero voxel marks the structure)")
        samples.append(Sample(
            image=torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image),
            affine=image_affine(image), dataset="datastore", name=image_stem(path.name),
            label_map=structure.astype(np.uint8) * np.uint8(label_id), seg_labels=(name,),
            modalities=modalities_from_name(path, int(image.shape[0]))))
    if not samples:
        raise DatasetError(f"{folder}: no image has a mask under labels/final/ (same file name as the image)")
    if not any(np.asarray(s.label_map).any() for s in samples):
        raise DatasetError(f"{folder}: every mask under labels/final/ is empty: no image shows the structure")
    return samples


def read_labelled(folder: str | Path, split: str | None = None) -> list[Sample]:
    """The labelled samples of :func:`read_datastore`; a datastore has no splits. An image or
    label that cannot be used is skipped with a warning in the log (training goes on without it).

    Raises:
        DatasetError: a split other than None, or no such folder.
    """
    if split is not None:
        raise DatasetError(f"{folder}: a datastore has no splits (its labelled images are read), got split {split!r}")
    return read_datastore(folder, skipped=[])[0]


def _segmentable_labels(samples: Sequence[Sample], registry: LabelRegistry) -> list[str]:
    """The segmentable labels present in any of the samples, in registry order."""
    present = {name for s in samples for name in s.seg_labels}
    return [lab.name for lab in registry if lab.name in present and Task.SEGMENTATION in lab.tasks]


def evaluate_datastore(samples: Sequence[Sample], predictor: Predicts) -> dict[str, Any]:
    """``dice_<label>`` (mean over the images whose label holds it) for every segmentable label
    present, and their mean ``dice_mean``; every image is prompted with all those labels. Each
    image's figures under :data:`~unimed.datasets.spec.PER_CASE`.

    Labels are those of the predictor's network (a taught checkpoint's grown label space), or
    the default registry for a predictor without one."""
    model = getattr(predictor, "model", None)
    registry = getattr(model, "registry", None) or LabelRegistry()
    names = _segmentable_labels(samples, registry)
    scores: dict[str, list[float]] = {name: [] for name in names}
    per_case: dict[str, dict[str, float]] = {}
    for s in samples:
        wanted = [n for n in names if n in s.seg_labels]
        if not wanted:
            continue
        pred = predictor.predict(s.meta_image(), "segmentation", names).label_map()
        for name in wanted:
            label_id = registry.get(name).id
            scores[name].append(dice(pred == label_id, np.asarray(s.label_map) == label_id))
            per_case.setdefault(s.name, {})[f"dice_{name}"] = scores[name][-1]
    metrics: dict[str, Any] = {f"dice_{name}": mean_or_none(v) for name, v in scores.items()}
    metrics["dice_mean"] = mean_or_none(v for v in metrics.values() if v is not None)
    return {**metrics, PER_CASE: per_case}


#: the ``datastore`` kind: a MONAI Label datastore's labelled images, outside the shared data layout
SPEC = DatasetSpec(
    kind="datastore",
    reader=read_labelled,
    evaluator=evaluate_datastore,
    annotated=lambda s: s.label_map is not None,
    primary_metric="dice_mean",
)
