"""Samples on the model grid, augmented and batched per data source.

Training sees images exactly as inference does (:func:`unimed.transforms.to_model_grid`), so a
checkpoint's figures hold for the server. Grid items are computed once and kept in memory.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from unimed.datasets.sample import Sample
from unimed.transforms import to_model_grid

__all__ = ["GridItem", "to_grid_item", "augment", "Source", "collate"]


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


def to_grid_item(sample: Sample, *, max_size_3d: int = 128, max_size_2d: int = 384) -> GridItem:
    """Put a sample on the model grid (labels by nearest neighbour; boxes are grid-free)."""
    grid, spec = to_model_grid(sample.meta_image(), max_size_3d=max_size_3d, max_size_2d=max_size_2d)
    label_map = None
    if sample.label_map is not None:
        lm = torch.as_tensor(np.asarray(sample.label_map, dtype=np.int64)).reshape(spec.shape)
        label_map = F.interpolate(lm[None, None].float(), size=spec.grid, mode="nearest")[0, 0].long()
    boxes = None if sample.boxes is None else torch.as_tensor(np.asarray(sample.boxes, np.float32)).reshape(-1, 6)
    return GridItem(grid, label_map, tuple(sample.seg_labels), boxes, list(sample.box_labels), tuple(sample.det_labels),
                    dict(sample.class_labels) if sample.class_labels else None, sample.dataset, sample.name)


def augment(item: GridItem, rng: random.Random) -> GridItem:
    """Random flips along each spatial axis (boxes follow) and per-channel intensity jitter."""
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
    scale = torch.tensor([rng.uniform(0.9, 1.1) for _ in range(image.shape[0])]).view(-1, 1, 1, 1)
    shift = torch.tensor([rng.uniform(-0.1, 0.1) for _ in range(image.shape[0])]).view(-1, 1, 1, 1)
    return replace(item, image=image * scale + shift, label_map=label_map, boxes=boxes)


def collate(items: Sequence[GridItem], channels: int | None = None) -> torch.Tensor:
    """Stack the images of items that share a grid; ``channels`` keeps only the first ones."""
    images = [it.image[:channels] if channels else it.image for it in items]
    return torch.stack(images)


@dataclass
class Source:
    """One data source of joint training: its grid items, tasks and share of each step.

    Args:
        name: the source's name (a key of ``TrainConfig.mix``).
        items: its grid items.
        tasks: tasks trained on it.
        batch_size: items per step, drawn from one grid shape.
        every: joins every ``every``-th step.
        channel_dropout: the probability that a batch keeps only its first channel, so that a
            multi-channel study also teaches the single-channel case (a FLAIR-only BraTS study).
            Kept low: what only a later channel shows (enhancing tumour on T1c) cannot be
            learnt from the first channel alone.
    """

    name: str
    items: list[GridItem]
    tasks: tuple[str, ...]
    batch_size: int = 1
    every: int = 1
    channel_dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError(f"source {self.name!r} has no samples")
        if not 0.0 <= self.channel_dropout <= 1.0:
            raise ValueError(f"channel_dropout must be a probability in [0, 1], got {self.channel_dropout}")
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(self.items):
            groups.setdefault(tuple(it.image.shape), []).append(i)
        self._groups = list(groups.values())

    def batch(self, rng: random.Random, augment_items: bool = True) -> tuple[list[GridItem], int | None]:
        """A batch of items of one grid shape, and how many channels to keep."""
        group = rng.choice(self._groups)
        picked = [self.items[i] for i in (rng.sample(group, self.batch_size) if len(group) >= self.batch_size
                                           else rng.choices(group, k=self.batch_size))]
        if augment_items:
            picked = [augment(it, rng) for it in picked]
        channels = 1 if picked[0].image.shape[0] > 1 and rng.random() < self.channel_dropout else None
        return picked, channels
