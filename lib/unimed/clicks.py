"""Clicks and boxes as prompts: their geometry, their tensors, and the click simulator.

An annotator's prompt is a set of foreground and background clicks (voxel indices of the image
as stored in its file) and an optional box. :class:`ClickPrompt` holds them normalised to the
image (``(i + 0.5) / n`` per axis, the frame boxes use), so they fit any model grid, and
:func:`click_tensors` batches them for :meth:`unimed.networks.unimednet.UniMed.decode`.

The simulator follows the usual protocol of interactive segmentation (as in DeepEdit's and
DeepGrow's evaluations): the first click at the innermost voxel of the object, every next one at
the innermost voxel of the largest error region, foreground where the prediction missed the
object and background where it spilled over (:func:`next_click`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

__all__ = ["FOREGROUND", "BACKGROUND", "BOX_LOW", "BOX_HIGH", "ClickPrompt", "click_tensors", "innermost_voxel",
           "next_click", "PointError"]

#: kinds of prompt points (0 is padding)
FOREGROUND, BACKGROUND, BOX_LOW, BOX_HIGH = 1, 2, 3, 4


class PointError(ValueError):
    """A click or box that does not fit its image (outside it, or of the wrong shape)."""


def _as_points(points: Sequence[Sequence[float]] | np.ndarray, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(points if len(points) else np.zeros((0, ndim)), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != ndim:
        raise PointError(f"{what} must be a list of [i, j{', k' if ndim == 3 else ''}] voxel indices "
                         f"({ndim} numbers each), got shape {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise PointError(f"{what} holds a value that is not a finite number")
    return arr


@dataclass
class ClickPrompt:
    """One image's clicks and box, normalised to the image.

    Attributes:
        foreground: ``(N, 3)`` normalised positions of foreground clicks.
        background: ``(M, 3)`` normalised positions of background clicks.
        box: ``(6,)`` normalised ``[x0, y0, z0, x1, y1, z1]`` or None.

    Example:
        >>> p = ClickPrompt.from_voxels((10, 20, 5), foreground=[[4, 9, 2]])
        >>> p.foreground.round(3).tolist()
        [[0.45, 0.475, 0.5]]
    """

    foreground: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    background: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    box: np.ndarray | None = None

    @classmethod
    def from_voxels(
        cls,
        image_shape: Sequence[int],
        foreground: Sequence[Sequence[float]] = (),
        background: Sequence[Sequence[float]] = (),
        box: Sequence[float] | None = None,
    ) -> "ClickPrompt":
        """Clicks given as voxel indices of an image of spatial ``image_shape`` (2 or 3 axes);
        a box as ``[i0, j0, (k0,) i1, j1, (k1)]`` voxel indices of its first and last voxels.

        Raises:
            PointError: a point or box of the wrong shape, or outside the image.
        """
        ndim = len(image_shape)
        if ndim not in (2, 3):
            raise PointError(f"clicks need a 2D or 3D image, got spatial shape {list(image_shape)}")
        size = np.array(list(image_shape) + [1] * (3 - ndim), dtype=np.float64)

        def norm(points: np.ndarray, what: str) -> np.ndarray:
            outside = (points < 0) | (points > size[:ndim] - 1)
            if outside.any():
                bad = points[outside.any(1)][0].tolist()
                raise PointError(f"{what} point {bad} lies outside the image of shape {list(image_shape)}")
            full = np.concatenate([points, np.zeros((len(points), 3 - ndim))], 1)
            return (full + 0.5) / size

        fg = norm(_as_points(foreground, ndim, "foreground"), "foreground")
        bg = norm(_as_points(background, ndim, "background"), "background")
        norm_box = None
        if box is not None:
            corners = _as_points(np.asarray(box, dtype=np.float64).reshape(2, -1) if np.size(box) == 2 * ndim
                                 else np.zeros((1, ndim + 1)), ndim, "box (first and last voxel)")
            lo, hi = np.minimum(corners[0], corners[1]), np.maximum(corners[0], corners[1])
            lo_n, hi_n = norm(lo[None], "box"), norm(hi[None], "box")
            norm_box = np.concatenate([lo_n[0] - 0.5 / size, hi_n[0] + 0.5 / size])
        return cls(fg, bg, norm_box)

    @property
    def num_points(self) -> int:
        return len(self.foreground) + len(self.background) + (2 if self.box is not None else 0)

    def is_empty(self) -> bool:
        return self.num_points == 0

    def voxels(self, image_shape: Sequence[int]) -> tuple[list[list[int]], list[list[int]]]:
        """The foreground and background clicks as voxel indices ``[i, j, k]`` of an image of spatial
        ``image_shape`` (a 2D image's ``k`` is 0): :meth:`from_voxels` undone, rounded.

        Example:
            >>> ClickPrompt.from_voxels((10, 20, 5), foreground=[[4, 9, 2]], background=[[0, 0, 4]]).voxels((10, 20, 5))
            ([[4, 9, 2]], [[0, 0, 4]])
        """
        size = np.array(list(image_shape) + [1] * (3 - len(image_shape)), dtype=np.float64)

        def back(points: np.ndarray) -> list[list[int]]:
            return np.clip(np.rint(points * size - 0.5), 0, size - 1).astype(int).tolist()

        return back(self.foreground), back(self.background)

    def with_click(self, position: Sequence[float], foreground: bool) -> "ClickPrompt":
        """A copy with one more click at a normalised ``position``."""
        p = np.asarray(position, dtype=np.float64).reshape(1, 3)
        if foreground:
            return ClickPrompt(np.concatenate([self.foreground, p]), self.background, self.box)
        return ClickPrompt(self.foreground, np.concatenate([self.background, p]), self.box)


def click_tensors(prompts: Sequence[ClickPrompt], device: torch.device | str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``(B, N, 3)`` float and their kinds ``(B, N)`` long (:data:`FOREGROUND`,
    :data:`BACKGROUND`, :data:`BOX_LOW`, :data:`BOX_HIGH`; 0 pads) of a batch of prompts.

    Example:
        >>> pts, kinds = click_tensors([ClickPrompt(np.full((1, 3), 0.5)), ClickPrompt(box=np.r_[0.1, 0.1, 0, 0.5, 0.5, 1])])
        >>> pts.shape, kinds.tolist()
        (torch.Size([2, 2, 3]), [[1, 0], [3, 4]])
    """
    rows = []
    for p in prompts:
        pts = [(tuple(x), FOREGROUND) for x in p.foreground] + [(tuple(x), BACKGROUND) for x in p.background]
        if p.box is not None:
            pts += [(tuple(p.box[:3]), BOX_LOW), (tuple(p.box[3:]), BOX_HIGH)]
        rows.append(pts)
    n = max(1, max(len(r) for r in rows))
    points = torch.zeros(len(rows), n, 3)
    kinds = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        for j, (xyz, kind) in enumerate(r):
            points[i, j] = torch.tensor(xyz, dtype=torch.float32)
            kinds[i, j] = kind
    return points.to(device), kinds.to(device)


def innermost_voxel(region: np.ndarray) -> tuple[int, ...]:
    """The voxel of a boolean ``region`` farthest from its border (the image's edge counts as
    border; axes of size 1 are ignored); ties go to the first in C order.

    Raises:
        ValueError: an empty region.

    Example:
        >>> r = np.zeros((7, 5), bool); r[1:6, 0:5] = True
        >>> innermost_voxel(r)
        (3, 2)
    """
    from scipy.ndimage import distance_transform_edt

    region = np.asarray(region, dtype=bool)
    if not region.any():
        raise ValueError("the region is empty: it has no innermost voxel")
    keep = tuple(i for i, n in enumerate(region.shape) if n > 1)
    flat = region.squeeze(tuple(i for i, n in enumerate(region.shape) if n == 1)) if len(keep) < region.ndim else region
    dist = distance_transform_edt(np.pad(flat, 1))[tuple(slice(1, -1) for _ in flat.shape)]
    idx = np.unravel_index(int(np.argmax(dist)), flat.shape)
    out = [0] * region.ndim
    for axis, value in zip(keep, idx):
        out[axis] = int(value)
    return tuple(out)


def next_click(prediction: np.ndarray, target: np.ndarray) -> tuple[tuple[int, ...], bool] | None:
    """The next simulated click: the innermost voxel of the largest connected error region, and
    whether it is a foreground click (the region was missed) or a background one (it spilled
    over); None when the prediction equals the target.

    Example:
        >>> target = np.zeros((11, 11), bool); target[2:7, 2:7] = True
        >>> next_click(np.zeros_like(target), target)
        ((4, 4), True)
        >>> pred = target.copy(); pred[7:10, 3:6] = True
        >>> next_click(pred, target)
        ((8, 4), False)
    """
    from scipy.ndimage import label

    prediction, target = np.asarray(prediction, bool), np.asarray(target, bool)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
    best, best_size, best_fg = None, 0, True
    for region, foreground in ((target & ~prediction, True), (prediction & ~target, False)):
        if not region.any():
            continue
        components, n = label(region)
        sizes = np.bincount(components.ravel())[1:]
        k = int(np.argmax(sizes))
        if sizes[k] > best_size:
            best, best_size, best_fg = components == k + 1, int(sizes[k]), foreground
    if best is None:
        return None
    return innermost_voxel(best), best_fg
