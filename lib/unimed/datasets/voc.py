"""Pascal VOC detection folders (``JPEGImages/``, ``Annotations/``, ``ImageSets/Main/``), e.g. BCCD.

Scored by AP at IoU 0.5 (:func:`evaluate_voc`); :data:`SPEC` registers the kind ``voc``.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from unimed.datasets.errors import DatasetError
from unimed.datasets.sample import Sample
from unimed.datasets.spec import DatasetSpec, Predicts, TrainingShare
from unimed.labels import LabelRegistry, UnknownLabelError
from unimed.metrics import mean_ap
from unimed.transforms import IMAGE_SUFFIXES, ImageLoadError, load_image

__all__ = ["read_voc", "voc_splits", "evaluate_voc", "SPEC", "VOC_CLASS_NAMES", "BCCD_LABELS"]

#: VOC class names (lower case) that the registry's aliases do not cover
VOC_CLASS_NAMES: dict[str, str] = {"rbc": "red_blood_cell", "wbc": "white_blood_cell", "platelets": "platelet"}
#: the registry names BCCD annotates completely
BCCD_LABELS: tuple[str, ...] = ("red_blood_cell", "white_blood_cell", "platelet")


def _class_name(name: str, registry: LabelRegistry, xml_path: Path) -> str:
    key = name.strip().lower()
    if key in VOC_CLASS_NAMES:
        return VOC_CLASS_NAMES[key]
    try:
        return registry.get(key).name
    except UnknownLabelError:
        raise DatasetError(f"{xml_path}: unknown class {name!r} (not in the label registry)") from None


def _image_file(folder: Path, image_id: str) -> Path:
    for suffix in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG"):
        path = folder / "JPEGImages" / f"{image_id}{suffix}"
        if path.is_file():
            return path
    hits = sorted(p for p in (folder / "JPEGImages").glob(f"{image_id}.*") if p.name.lower().endswith(IMAGE_SUFFIXES))
    if not hits:
        raise DatasetError(f"{folder / 'JPEGImages'}: missing image file {image_id}.jpg")
    return hits[0]


def _number(obj: ET.Element, tag: str, xml_path: Path) -> float:
    node = obj.find(tag)
    try:
        return float(node.text)
    except (AttributeError, TypeError, ValueError):
        raise DatasetError(f"{xml_path}: missing or non-numeric <{tag}> in an object's <bndbox>") from None


def _read_boxes(xml_path: Path, width: int, height: int, registry: LabelRegistry) -> tuple[np.ndarray, list[str]]:
    if not xml_path.is_file():
        raise DatasetError(f"{xml_path}: missing annotation file")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise DatasetError(f"{xml_path}: not valid XML: {exc}") from exc
    size = root.find("size")
    if size is not None and size.findtext("width") and size.findtext("height"):
        declared = (int(float(size.findtext("width"))), int(float(size.findtext("height"))))
        if declared != (width, height):
            raise DatasetError(f"{xml_path}: <size> says {declared[0]}x{declared[1]}, the image is {width}x{height}")
    boxes, names = [], []
    for obj in root.iter("object"):
        name = obj.findtext("name")
        if not name:
            raise DatasetError(f"{xml_path}: an <object> without a <name>")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DatasetError(f"{xml_path}: object {name!r} has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(bnd, t, xml_path) for t in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            raise DatasetError(f"{xml_path}: object {name!r} has xmax < xmin or ymax < ymin")
        box = [(xmin - 1) / width, (ymin - 1) / height, 0.0, xmax / width, ymax / height, 1.0]
        boxes.append(np.clip(box, 0.0, 1.0))
        names.append(_class_name(name, registry, xml_path))
    return np.array(boxes, dtype=np.float64).reshape(-1, 6), names


def voc_splits(folder: str | Path) -> tuple[str, ...]:
    """The split lists ``ImageSets/Main/*.txt`` of a VOC folder (none: an empty tuple).

    Example:
        >>> voc_splits("/data/bccd")  # doctest: +SKIP
        ('train', 'trainval', 'val')
    """
    lists = Path(folder) / "ImageSets" / "Main"
    return tuple(sorted(p.stem for p in lists.glob("*.txt") if p.is_file())) if lists.is_dir() else ()


def _all_ids(folder: Path) -> list[str]:
    images = folder / "JPEGImages"
    if not images.is_dir():
        raise DatasetError(f"{folder}: no JPEGImages folder (a Pascal VOC folder holds JPEGImages/ and Annotations/)")
    ids = sorted({p.name.rsplit(".", 1)[0] for p in images.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_SUFFIXES)})
    if not ids:
        raise DatasetError(f"{images}: no images")
    return ids


def read_voc(folder: str | Path, split: str | None = "train") -> list[Sample]:
    """Read one split of a Pascal VOC detection folder.

    The ids come from ``ImageSets/Main/{split}.txt`` (the folder's own splits), or for
    ``split=None`` from every image in ``JPEGImages/`` (a folder without split lists); each image is
    ``JPEGImages/<id>.jpg`` (or another image suffix), read as ``(C, W, H)`` (X = columns), and
    its boxes come from ``Annotations/<id>.xml``. VOC's 1-based inclusive pixel boxes become
    normalised ``[(xmin-1)/W, (ymin-1)/H, 0, xmax/W, ymax/H, 1]``, clipped to [0, 1]. Class names
    are matched case-insensitively (``RBC``, ``WBC``, ``Platelets`` and any registry name or
    alias). ``det_labels`` are the three BCCD classes plus any other class the split holds.
    ``difficult`` and ``truncated`` flags are ignored.

    Args:
        folder: the VOC root folder.
        split: name of the id list in ``ImageSets/Main``; None: every image.

    Raises:
        DatasetError: a missing list (the splits present are named), image or XML file, an image of another size than its
            XML says, a malformed box, or a class the registry does not know.

    Example:
        >>> samples = read_voc("/data/bccd", "val")  # doctest: +SKIP
        >>> samples[0].boxes.shape[1], samples[0].box_labels[0]  # doctest: +SKIP
        (6, 'white_blood_cell')
    """
    folder = Path(folder)
    if split is None:
        ids = _all_ids(folder)
    else:
        listing = folder / "ImageSets" / "Main" / f"{split}.txt"
        if not listing.is_file():
            raise DatasetError(f"{folder}: no split {split!r}, missing split list {listing.relative_to(folder)} "
                               f"(splits: {', '.join(voc_splits(folder)) or 'none: leave the split out to read every image'})")
        ids = sorted({line.split()[0] for line in listing.read_text().splitlines() if line.strip()})
    registry = LabelRegistry()
    out = []
    for image_id in ids:
        path = _image_file(folder, image_id)
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            raise DatasetError(f"{path}: {exc}") from exc
        if image.ndim != 3:
            raise DatasetError(f"{path}: expected a 2D picture, got array shape {tuple(image.shape)}")
        width, height = int(image.shape[1]), int(image.shape[2])
        boxes, names = _read_boxes(folder / "Annotations" / f"{image_id}.xml", width, height, registry)
        out.append(
            Sample(
                image=torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image, dtype=torch.float32),
                affine=np.eye(4),
                dataset="voc",
                name=image_id,
                boxes=boxes,
                box_labels=names,
                modalities=("red", "green", "blue") if image.shape[0] == 3 else ("grey",) * int(image.shape[0]),
            )
        )
    found = {name for s in out for name in s.box_labels}
    det_labels = tuple(lab.name for lab in registry if lab.name in BCCD_LABELS or lab.name in found)
    for sample in out:
        sample.det_labels = det_labels
    return out


def evaluate_voc(samples: Sequence[Sample], predictor: Predicts) -> dict[str, Any]:
    """``map50`` (None without ground truth) and ``ap50`` (per class) of a detection of the
    samples' classes, boxes compared in pixel coordinates."""
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


#: the ``voc`` kind: BCCD in ``bccd/``, the folder's own split lists
SPEC = DatasetSpec(
    kind="voc",
    reader=read_voc,
    evaluator=evaluate_voc,
    annotated=lambda s: s.boxes is not None,
    primary_metric="map50",
    default_split="train",
    eval_split="val",
    folder="bccd",
    training=TrainingShare(("detection",), batch_size=6),
    splits=voc_splits,
)
