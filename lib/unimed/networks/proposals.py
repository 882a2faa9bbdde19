"""Dense object proposals that place the decoder's learned queries (two-stage decoding).

A small head on the stride-4 pyramid level predicts, per cell, a centre heat map over the
label space and the distances from the cell centre to the six box faces. The strongest local
peaks among the prompt's labels become the decoder's queries: each starts at its peak's box
and feature, and the decoder refines its class and box. Starting queries where objects are
makes the set prediction converge in far fewer steps than queries that must find their place.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unimed.networks.layers import Conv, ConvNormAct

__all__ = ["ProposalHead", "Proposals", "select_proposals", "cell_centres"]


class ProposalHead(nn.Module):
    """Per-cell centre heat map (``K`` channels) and box extents (6 channels).

    Args:
        dim: channels of the stride-4 level.
        num_classes: labels in the shared label space.

    Example:
        >>> head = ProposalHead(dim=16, num_classes=3)
        >>> heat, ext = head(torch.zeros(1, 16, 8, 8, 1))
        >>> heat.shape, ext.shape
        (torch.Size([1, 3, 8, 8, 1]), torch.Size([1, 6, 8, 8, 1]))
    """

    def __init__(self, *, dim: int, num_classes: int):
        super().__init__()
        self.trunk = ConvNormAct(dim, dim)
        self.heat = Conv(dim, num_classes, kernel_size=1)
        self.extent = Conv(dim, 6, kernel_size=1)
        nn.init.constant_(self.heat.bias, -math.log((1 - 0.01) / 0.01))  # a prior of 1% per cell
        nn.init.constant_(self.extent.bias, math.log(0.05))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns heat-map logits ``(B, K, ...)`` and extents ``(B, 6, ...)``: distances from
        the cell centre to the faces ``[x0, y0, z0, x1, y1, z1]``, in units of the image side."""
        h = self.trunk(x)
        # in fixed-size groups: a grown label space leaves the old channels bit-identical
        return self.heat.grouped_forward(h), self.extent(h).clamp(max=3.0).exp()


def cell_centres(shape: tuple[int, int, int], device=None) -> torch.Tensor:
    """Normalised centres of a grid's cells, ``(3, X, Y, Z)``."""
    axes = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


class Proposals:
    """The selected peaks of a batch.

    Attributes:
        boxes: ``(B, Q, 6)`` normalised boxes.
        classes: ``(B, Q)`` class indices (1-based, as in the class logits).
        scores: ``(B, Q)`` peak probabilities.
        features: ``(B, Q, dim)`` the stride-4 features at the peaks.
    """

    def __init__(self, boxes, classes, scores, features):
        self.boxes, self.classes, self.scores, self.features = boxes, classes, scores, features


def decode_boxes(extents: torch.Tensor) -> torch.Tensor:
    """Per-cell boxes ``(B, 6, X, Y, Z)`` from extents; a depth of 1 spans the whole depth."""
    centre = cell_centres(tuple(extents.shape[2:]), extents.device).unsqueeze(0)
    boxes = torch.cat([centre - extents[:, :3], centre + extents[:, 3:]], dim=1).clamp(0, 1)
    if extents.shape[-1] == 1:
        boxes = torch.cat([boxes[:, :2], torch.zeros_like(boxes[:, 2:3]), boxes[:, 3:5], torch.ones_like(boxes[:, 5:])], 1)
    return boxes


@torch.no_grad()
def _peaks(heat: torch.Tensor) -> torch.Tensor:
    if heat.shape[-1] == 1:
        pooled = F.max_pool3d(heat, kernel_size=(3, 3, 1), stride=1, padding=(1, 1, 0))
    else:
        pooled = F.max_pool3d(heat, kernel_size=3, stride=1, padding=1)
    return heat == pooled


def select_proposals(heat: torch.Tensor, extents: torch.Tensor, dense: torch.Tensor, allowed: torch.Tensor,
                     num: int) -> Proposals:
    """The ``num`` strongest local peaks of each image among its ``allowed`` classes.

    Args:
        heat: ``(B, K, ...)`` heat-map logits.
        extents: ``(B, 6, ...)`` extents.
        dense: ``(B, dim, ...)`` features the peaks' query contents are read from.
        allowed: ``(B, K)`` bool, the classes of each image's prompt.
        num: peaks per image (the number of queries).
    """
    b, k = heat.shape[:2]
    n = heat[0, 0].numel()
    with torch.no_grad():
        score = heat.sigmoid() * _peaks(heat)
        score = score.masked_fill(~allowed[:, :, None, None, None], -1.0).reshape(b, -1)
        top = score.topk(min(num, score.shape[1]), dim=1)
        if top.indices.shape[1] < num:  # tiny grids: repeat the best peaks
            reps = math.ceil(num / top.indices.shape[1])
            idx, val = top.indices.repeat(1, reps)[:, :num], top.values.repeat(1, reps)[:, :num]
        else:
            idx, val = top.indices, top.values
        cls, cell = idx // n, idx % n
    boxes = decode_boxes(extents).flatten(2).gather(2, cell[:, None, :].expand(-1, 6, -1)).transpose(1, 2)
    feats = dense.flatten(2).gather(2, cell[:, None, :].expand(-1, dense.shape[1], -1)).transpose(1, 2)
    return Proposals(boxes.detach(), cls + 1, val.clamp(min=0), feats)
