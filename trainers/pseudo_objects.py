"""Objects nobody labelled, for click training: connected regions of one intensity level.

A click model trained only on the structures some dataset labels (two tumours) learns to find
those, and answers a click on anything else with them. :func:`pseudo_object` cuts an object out
of any image instead: the image is smoothed, its intensity range (1st to 99th percentile) is
split into a few equal levels, and one connected region of one level, neither a speck nor most
of the image, is the object. Brain compartments, cells, vessels and organs' cross-sections come out this way, thin and
round, bright and dark, so clicks learn to follow what the image shows where no label says
what it is. :func:`with_pseudo_objects` puts such an object into a batch's label maps; the
click loss then asks for it class-agnostically (the object under the click), as the viewer does
for a structure with no label.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from trainers.data import GridItem
from unimed.labels import Label

__all__ = ["PseudoObjectConfig", "pseudo_object", "with_pseudo_objects"]


@dataclass(frozen=True)
class PseudoObjectConfig:
    """What counts as an object.

    Attributes:
        levels: the number of intensity levels is drawn from this inclusive range.
        smooth: Gaussian smoothing, in grid voxels, before the levels are cut.
        min_share: the smallest object, as a share of the image's voxels.
        min_voxels: the smallest object in voxels, whatever the image's size.
        max_share: the largest object, as a share of the image's voxels.
        tries: numbers of levels tried before the image is given up (no object).

    Raises:
        ValueError: a range that is empty or outside its bounds.
    """

    levels: tuple[int, int] = (3, 6)
    smooth: float = 1.0
    min_share: float = 0.0005
    min_voxels: int = 16
    max_share: float = 0.03
    tries: int = 4

    def __post_init__(self) -> None:
        if not 2 <= self.levels[0] <= self.levels[1]:
            raise ValueError(f"levels must be a range (lo, hi) with 2 <= lo <= hi, got {self.levels}")
        if not 0.0 < self.min_share < self.max_share <= 1.0:
            raise ValueError("object shares must satisfy 0 < min_share < max_share <= 1, "
                             f"got {self.min_share} and {self.max_share}")
        if self.smooth < 0 or self.tries < 1 or self.min_voxels < 1:
            raise ValueError(f"smooth must be >= 0, tries and min_voxels >= 1, got {self.smooth}, {self.tries} "
                             f"and {self.min_voxels}")


def pseudo_object(image: torch.Tensor | np.ndarray, rng: random.Random,
                  config: PseudoObjectConfig | None = None) -> np.ndarray | None:
    """One object of an image, found from its intensities alone.

    Args:
        image: ``(C, X, Y, Z)`` a grid item's image (``Z == 1`` for a 2D image); one channel,
            drawn at random, is cut.
        rng: draws the channel, the number of levels and the region: any region of an allowed
            size, of any level, with odds by the square root of its size (more organs, fewer
            specks).
        config: what counts as an object.

    Returns:
        A boolean mask ``(X, Y, Z)`` of one connected region (faces connect), or None when
        ``config.tries`` draws of levels held no region of an allowed size (a flat image).

    Example:
        >>> img = torch.zeros(1, 32, 32, 1); img[0, 4:12, 4:12] = 5.0; img[0, 20:30, 18:28] = -5.0
        >>> mask = pseudo_object(img, random.Random(0), PseudoObjectConfig(levels=(3, 3), smooth=0.0, max_share=0.2))
        >>> int(mask.sum()) in (64, 100)
        True
    """
    config = config or PseudoObjectConfig()
    x = np.asarray(image[rng.randrange(image.shape[0])], dtype=np.float32)
    flat = x.shape[-1] == 1
    if config.smooth > 0:
        sigma = (config.smooth, config.smooth, 0.0) if flat else config.smooth
        x = ndimage.gaussian_filter(x, sigma=sigma)
    n = x.size
    lo, hi = np.percentile(x, [1, 99])
    if hi <= lo:
        return None
    structure = ndimage.generate_binary_structure(3, 1)
    smallest = max(config.min_share * n, config.min_voxels)
    for _ in range(config.tries):
        k = rng.randint(*config.levels)
        levels = np.digitize(x, np.linspace(lo, hi, k + 1)[1:-1])
        candidates, odds = [], []  # (labelled regions, region number) of each region of an allowed size
        for level in range(k):
            regions, count = ndimage.label(levels == level, structure=structure)
            sizes = np.bincount(regions.ravel(), minlength=count + 1)[1:]
            for r in np.flatnonzero((sizes >= smallest) & (sizes <= config.max_share * n)):
                candidates.append((regions, int(r) + 1))
                odds.append(float(np.sqrt(sizes[r])))
        if candidates:
            regions, r = rng.choices(candidates, weights=odds)[0]
            return regions == r
    return None


def with_pseudo_objects(items: Sequence[GridItem], rng: random.Random, stand_in: Label,
                        config: PseudoObjectConfig | None = None) -> list[GridItem]:
    """The items with one pseudo-object each as their segmentation, under the label ``stand_in``.

    The label only carries the mask through the click loss, which asks for the object
    class-agnostically; an item with no object gets an empty map (it sits the step out).

    Args:
        items: grid items (their images; any label map is replaced).
        rng: draws the objects.
        stand_in: a segmentation label of the network's registry; its id marks the object.
        config: what counts as an object.
    """
    out = []
    for it in items:
        mask = pseudo_object(it.image, rng, config)
        shape = tuple(it.image.shape[1:])
        label_map = torch.zeros(shape, dtype=torch.long)
        if mask is not None:
            label_map[torch.from_numpy(mask)] = stand_in.id
        out.append(replace(it, label_map=label_map, seg_labels=(stand_in.name,)))
    return out
