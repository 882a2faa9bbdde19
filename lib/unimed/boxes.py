"""Box overlap and non-maximum suppression, on MONAI's :mod:`monai.data.box_utils`.

Boxes are corner boxes ``[x0, y0, x1, y1]`` (2D) or ``[x0, y0, z0, x1, y1, z1]`` (3D), MONAI's
``StandardMode`` (``xyxy`` / ``xyzxyz``), with ``TO_REMOVE = 0``: a box's size is ``x1 - x0``
(no ``+ 1`` for integer boxes). Two adaptations keep MONAI's figures equal to the plain
``intersection / union`` the project computed by hand before:

* MONAI adds float32's eps (1.2e-7) to unions; normalised 3D boxes have unions down to 1e-6, so
  coordinates are first scaled by :data:`SCALE`, a power of two: exact in floating point, and
  IoU and GIoU do not depend on scale.
* MONAI rejects inverted boxes (``x1 < x0``); a network's raw box can be one, so an inverted box
  is read as the empty box at its low corner, whose IoU with anything is 0, as before.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data import box_utils

__all__ = ["SCALE", "box_iou", "generalized_box_iou", "paired_generalized_box_iou", "nms"]

#: coordinates are multiplied by this power of two before MONAI sees them (see the module notes)
SCALE = 2.0**10


def _standard(boxes: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    d = boxes.shape[-1] // 2
    if isinstance(boxes, np.ndarray):
        return np.concatenate([boxes[:, :d], np.maximum(boxes[:, d:], boxes[:, :d])], axis=1) * SCALE
    return torch.cat([boxes[:, :d], torch.maximum(boxes[:, d:], boxes[:, :d])], dim=1) * SCALE


def box_iou(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Pairwise IoU of ``(N, 4|6)`` and ``(M, 4|6)`` corner boxes -> ``(N, M)``, of ``a``'s type.

    Computed in float32 (MONAI's compute type); an empty box has IoU 0 with everything.

    Example:
        >>> box_iou(np.array([[0.0, 0, 2, 2]]), np.array([[1.0, 0, 3, 2], [0.0, 0, 2, 2]]))
        array([[0.33333334, 1.        ]])
    """
    return box_utils.box_iou(_standard(a), _standard(b))


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise generalised IoU of ``(N, 6)`` and ``(M, 6)`` corner boxes -> ``(N, M)`` (differentiable).

    Example:
        >>> generalized_box_iou(torch.tensor([[0.0, 0, 0, 1, 1, 1]]), torch.tensor([[2.0, 0, 0, 3, 1, 1]]))
        tensor([[-0.3333]])
    """
    return box_utils.box_giou(_standard(a), _standard(b))


def paired_generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of each box of ``a`` ``(N, 6)`` with the same row of ``b`` -> ``(N,)``."""
    return box_utils.box_pair_giou(_standard(a), _standard(b))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, best first (ties keep their order).

    A box is dropped when its IoU with a kept, better box exceeds ``iou_threshold``.

    Example:
        >>> nms(torch.tensor([[0.0, 0, 1, 1], [0.0, 0, 1, 0.9]]), torch.tensor([0.5, 0.9]), 0.5)
        tensor([1])
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    return box_utils.non_max_suppression(_standard(boxes), scores, iou_threshold).long()
