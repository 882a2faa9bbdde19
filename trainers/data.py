"""Samples on the model grid, augmented and batched per data source.

Training sees images exactly as inference does (:func:`unimed.transforms.to_model_grid`), so a
checkpoint's figures hold for the server. Grid items are computed once and kept in memory.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from unimed.datasets.sample import Sample
from unimed.transforms import MAX_GRID_SIZE_3D, to_model_grid

if TYPE_CHECKING:
    from unimed.networks.unimednet import UniMed

__all__ = ["TRAIN_WINDOW_3D", "CONTRAST_POINTS", "GridItem", "View", "to_grid_item", "crop", "random_contrast",
           "augment", "Source", "collate", "batch_modalities", "modality_batch"]


@dataclass
class GridItem:
    """A :class:`Sample` on the model grid: the tensors training consumes."""

    image: torch.Tensor  # (C, gx, gy, gz) normalised
    label_map: torch.Tensor | None  # (gx, gy, gz) long registry ids
    seg_labels: tuple[str, ...]
    boxes: torch.Tensor | None  # (N, 6) normalised
    box_labels: list[str]
    det_labels: tuple[str, ...]
    class_labels: dict[str, int] | None
    dataset: str
    name: str
    modalities: tuple[str, ...] | None = None  # per channel; None: unknown
    class_prevalence: dict[str, float] | None = None  # per class label: its positive share in the item's source
    teacher_scores: dict[str, float] | None = None  # per class label: a teacher's probability (distillation)


#: the largest side of a volume a training step sees: a wider grid is cropped at random (:func:`crop`)
TRAIN_WINDOW_3D = 128


def to_grid_item(sample: Sample, *, max_size_3d: int = MAX_GRID_SIZE_3D, max_size_2d: int = 384) -> GridItem:
    """Put a sample on the model grid (labels by nearest neighbour; boxes are grid-free).

    The grid is the one inference uses (the same voxel size and memory cap as
    :class:`unimed.predictor.Predictor`), so anatomy has the same size in grid voxels in training
    and at the server; :meth:`Source.batch` crops a volume wider than :data:`TRAIN_WINDOW_3D`."""
    grid, spec = to_model_grid(sample.meta_image(), max_size_3d=max_size_3d, max_size_2d=max_size_2d)
    label_map = None
    if sample.label_map is not None:
        lm = torch.as_tensor(np.asarray(sample.label_map, dtype=np.int64)).reshape(spec.shape)
        label_map = F.interpolate(lm[None, None].float(), size=spec.grid, mode="nearest")[0, 0].long()
    boxes = None if sample.boxes is None else torch.as_tensor(np.asarray(sample.boxes, np.float32)).reshape(-1, 6)
    return GridItem(grid, label_map, tuple(sample.seg_labels), boxes, list(sample.box_labels), tuple(sample.det_labels),
                    dict(sample.class_labels) if sample.class_labels else None, sample.dataset, sample.name,
                    tuple(sample.modalities) if sample.modalities else None)


@dataclass(frozen=True)
class View:
    """What of a batch the network is shown: which channels, and whether it is told their modalities.

    Attributes:
        channels: indices of the channels kept, in order; None keeps all.
        hide_modalities: every channel's modality reads as unknown.
    """

    channels: tuple[int, ...] | None = None
    hide_modalities: bool = False


@functools.lru_cache(maxsize=2)
def _intensity_transforms(spatial_dims: int):
    """MONAI's intensity and resolution augmentations for transfer across sites and contrasts:
    gamma, bias field, noise, blur and a simulated coarser acquisition."""
    from monai.transforms import (Compose, RandAdjustContrast, RandBiasField, RandGaussianNoise, RandGaussianSmooth,
                                  RandSimulateLowResolution)

    steps = [
        RandAdjustContrast(prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
        RandBiasField(prob=0.3, degree=3, coeff_range=(0.0, 0.3)),
        RandGaussianSmooth(prob=0.1, sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0), sigma_z=(0.3, 1.0)),
        RandGaussianNoise(prob=0.2, std=0.1),
    ]
    if spatial_dims == 3:
        steps.append(RandSimulateLowResolution(prob=0.2, zoom_range=(0.5, 1.0)))
    return Compose(steps)


def augment_intensity(image: torch.Tensor, seed: int) -> torch.Tensor:
    """Gamma, bias field, blur, noise and (volumes) lower resolution, drawn from ``seed``.

    Example:
        >>> augment_intensity(torch.randn(2, 16, 16, 1), seed=0).shape
        torch.Size([2, 16, 16, 1])
    """
    flat = image.shape[-1] == 1
    x = image[..., 0] if flat else image
    transforms = _intensity_transforms(x.ndim - 1)
    transforms.set_random_state(seed=seed)
    out = torch.as_tensor(transforms(x.float()), dtype=torch.float32)
    if hasattr(out, "as_tensor"):
        out = out.as_tensor()
    return out.unsqueeze(-1) if flat else out


def crop(item: GridItem, size: int, rng: random.Random) -> GridItem:
    """A random window of at most ``size`` grid voxels per side of a volume (a 2D image, or a
    volume that fits, is returned as it is). Boxes are clipped to the window; a box left with no
    extent inside it is dropped with its label. Image-level labels are kept.

    The window of an item whose label map marks something holds one of its labelled voxels,
    drawn at random, and lies at random around it (the positive crop of MONAI's
    ``RandCropByPosNegLabeld``, always positive): a structure taught from one wide volume is in
    every step's window, not cut off in most of them. Elsewhere the window is uniform.

    Example:
        >>> item = GridItem(torch.zeros(1, 160, 96, 64), None, (), None, [], (), None, "d", "n")
        >>> tuple(crop(item, 128, random.Random(0)).image.shape)
        (1, 128, 96, 64)
    """
    if size % 16 or size <= 0:
        raise ValueError(f"the crop size must be a positive multiple of 16, got {size}")
    shape = item.image.shape[1:]
    if shape[2] == 1 or max(shape) <= size:
        return item
    anchor = None
    if item.label_map is not None:
        marked = item.label_map.nonzero()
        if len(marked):
            anchor = marked[rng.randrange(len(marked))].tolist()
    if anchor is None:
        lo = [rng.randrange(0, n - size + 1) if n > size else 0 for n in shape]
    else:
        lo = [rng.randrange(max(0, a - size + 1), min(a, n - size) + 1) if n > size else 0
              for n, a in zip(shape, anchor)]
    hi = [min(n, a + size) for n, a in zip(shape, lo)]
    window = tuple(slice(a, b) for a, b in zip(lo, hi))
    label_map = None if item.label_map is None else item.label_map[window].contiguous()
    boxes, box_labels = item.boxes, item.box_labels
    if boxes is not None and len(boxes):
        n = torch.tensor(list(shape) * 2, dtype=torch.float32)
        start = torch.tensor(lo * 2, dtype=torch.float32)
        extent = torch.tensor([b - a for a, b in zip(lo, hi)] * 2, dtype=torch.float32)
        moved = ((boxes * n - start) / extent).clamp(0, 1)
        keep = ((moved[:, 3:] - moved[:, :3]) > 0).all(dim=1)
        boxes = moved[keep]
        box_labels = [lab for lab, k in zip(item.box_labels, keep.tolist()) if k]
    return replace(item, image=item.image[(slice(None), *window)].contiguous(), label_map=label_map, boxes=boxes,
                   box_labels=box_labels)


#: control points of :func:`random_contrast`'s intensity curves
CONTRAST_POINTS = 5


def random_contrast(image: torch.Tensor, rng: random.Random, points: int = CONTRAST_POINTS) -> torch.Tensor:
    """Each channel's intensities through a random curve, then standardised again: another
    contrast of the same anatomy.

    The curve is piecewise linear through ``points`` control points spread evenly over the
    channel's 0.5-99.5 percentile range; the darkest keeps the lowest value (air is dark in
    every MR contrast) and the others take values drawn uniformly in [0, 1], in no order, so
    that tissues may swap brightness as they do between MR sequences (fluid is dark on T1 and
    bright on T2). What a structure looks like then varies while its shape does not: the idea
    of training on randomised contrasts (Billot et al., SynthSeg, Medical Image Analysis 2023).

    Raises:
        ValueError: fewer than 2 points.

    Example:
        >>> x = torch.linspace(0, 1, 1000).reshape(1, 10, 10, 10)
        >>> y = random_contrast(x, random.Random(0))
        >>> y.shape, round(float(y.mean()), 4) == 0.0, round(float(y.std()), 2)
        (torch.Size([1, 10, 10, 10]), True, 1.0)
    """
    if points < 2:
        raise ValueError(f"a contrast curve needs at least 2 control points, got {points}")
    out = torch.empty_like(image, dtype=torch.float32)
    for c in range(image.shape[0]):
        x = image[c].float().numpy()
        lo, hi = np.quantile(x.reshape(-1)[:: max(1, x.size // 200_000)], [0.005, 0.995])
        if hi - lo < 1e-6:
            out[c] = image[c].float()
            continue
        ys = np.array([0.0] + [rng.random() for _ in range(points - 1)])
        y = torch.from_numpy(np.interp(x, np.linspace(lo, hi, points), ys).astype(np.float32))
        std = float(y.std())
        out[c] = (y - y.mean()) / (std if std > 1e-6 else 1.0)
    return out


def augment(item: GridItem, rng: random.Random, intensity: bool = True, contrast: float = 0.0) -> GridItem:
    """Random flips along each spatial axis (boxes follow) and, with ``intensity``,
    :func:`augment_intensity` and per-channel intensity jitter; with probability ``contrast``,
    first :func:`random_contrast`."""
    image, label_map = item.image, item.label_map
    boxes = None if item.boxes is None else item.boxes.clone()
    for axis in range(3):
        if image.shape[1 + axis] == 1 or rng.random() < 0.5:
            continue
        image = image.flip(1 + axis)
        if label_map is not None:
            label_map = label_map.flip(axis)
        if boxes is not None and len(boxes):
            lo, hi = boxes[:, axis].clone(), boxes[:, axis + 3].clone()
            boxes[:, axis], boxes[:, axis + 3] = 1 - hi, 1 - lo
    if contrast and rng.random() < contrast:
        image = random_contrast(image, rng)
    if not intensity:
        return replace(item, image=image, label_map=label_map, boxes=boxes)
    image = augment_intensity(image, rng.randrange(2**31))
    scale = torch.tensor([rng.uniform(0.9, 1.1) for _ in range(image.shape[0])]).view(-1, 1, 1, 1)
    shift = torch.tensor([rng.uniform(-0.1, 0.1) for _ in range(image.shape[0])]).view(-1, 1, 1, 1)
    return replace(item, image=image * scale + shift, label_map=label_map, boxes=boxes)


def collate(items: Sequence[GridItem], view: View | None = None) -> torch.Tensor:
    """Stack the images of items that share a grid, keeping the ``view``'s channels."""
    keep = None if view is None else view.channels
    return torch.stack([it.image if keep is None else it.image[list(keep)] for it in items])


def batch_modalities(items: Sequence[GridItem], view: View | None = None) -> list[tuple[str | None, ...] | None]:
    """Each item's modalities for the ``view``'s channels (None: unknown)."""
    out = []
    for it in items:
        if it.modalities is None or (view is not None and view.hide_modalities):
            out.append(None)
        else:
            keep = range(len(it.modalities)) if view is None or view.channels is None else view.channels
            out.append(tuple(it.modalities[i] for i in keep))
    return out


def modality_batch(model: UniMed, items: Sequence[GridItem], view: View | None = None) -> torch.Tensor:
    """``(B, C)`` modality indices of a batch as ``model`` sees it through ``view``, on the
    model's device."""
    channels = len(view.channels) if view is not None and view.channels is not None else items[0].image.shape[0]
    ids = [model.modality_ids(m, channels) for m in batch_modalities(items, view)]
    return torch.stack(ids).to(next(model.parameters()).device)


@dataclass
class Source:
    """One data source of joint training: its grid items, tasks and share of each step.

    Args:
        name: the source's name (a key of ``TrainConfig.mix``).
        items: its grid items.
        tasks: tasks trained on it.
        batch_size: items per step, drawn from one grid shape (a volume wider than
            :data:`TRAIN_WINDOW_3D` is cropped at random, :func:`crop`).
        every: joins every ``every``-th step.
        channel_dropout: the probability that a multi-channel batch keeps a random non-empty
            subset of its channels, so that a full study also teaches the cases with missing
            modalities (a FLAIR-only BraTS study). Kept low: what only one channel shows
            (enhancing tumour on T1c) cannot be learnt without it.
        modality_dropout: the probability that a batch's modalities read as unknown, so that an
            image whose modalities nobody names is still answered.
        augment_intensity: intensity and resolution augmentation besides the flips. Off for
            images whose intensities are the signal (AdrenalMNIST3D's binary shape masks: after
            per-image normalisation the foreground's value encodes the organ's volume, which
            intensity jitter blurs).
        clicks: the probability that a segmentation batch also trains with simulated clicks.
        contrast: the probability that an item is shown in a random contrast
            (:func:`random_contrast`); what teaching a structure from one MR sequence sets, so
            that it is found on the others.
    """

    name: str
    items: list[GridItem]
    tasks: tuple[str, ...]
    batch_size: int = 1
    every: int = 1
    channel_dropout: float = 0.0
    modality_dropout: float = 0.0
    augment_intensity: bool = True
    clicks: float = 0.0
    contrast: float = 0.0

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError(f"source {self.name!r} has no samples")
        for name in ("channel_dropout", "modality_dropout", "clicks", "contrast"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        self.items = _with_class_prevalence(self.items)
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(self.items):
            groups.setdefault(tuple(it.image.shape), []).append(i)
        self._groups = list(groups.values())

    def batch(self, rng: random.Random, augment_items: bool = True) -> tuple[list[GridItem], View]:
        """A batch of items of one grid shape, and the :class:`View` the network gets of it."""
        group = rng.choice(self._groups)
        picked = [self.items[i] for i in (rng.sample(group, self.batch_size) if len(group) >= self.batch_size
                                           else rng.choices(group, k=self.batch_size))]
        picked = [crop(it, TRAIN_WINDOW_3D, rng) for it in picked]
        if augment_items:
            picked = [augment(it, rng, self.augment_intensity, self.contrast) for it in picked]
        n = picked[0].image.shape[0]
        channels = None
        if n > 1 and rng.random() < self.channel_dropout:
            keep = rng.randrange(1, n)
            channels = tuple(sorted(rng.sample(range(n), keep)))
        return picked, View(channels, hide_modalities=rng.random() < self.modality_dropout)


def _with_class_prevalence(items: list[GridItem]) -> list[GridItem]:
    """The items with each class label's positive share among them (what balanced losses weigh by)."""
    counts: dict[str, list[int]] = {}
    for it in items:
        for name, value in (it.class_labels or {}).items():
            counts.setdefault(name, []).append(int(value))
    if not counts:
        return items
    prevalence = {name: float(np.mean(v)) for name, v in counts.items()}
    return [replace(it, class_prevalence={k: prevalence[k] for k in it.class_labels}) if it.class_labels else it
            for it in items]
