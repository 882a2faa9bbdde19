"""Supervised losses of joint training, one function per task, all on the network's outputs.

* segmentation: cross-entropy plus soft Dice over the prompt's pixel outputs (channel 0 the
  task token = background, channel ``i`` the ``i``-th label token);
* detection: Hungarian matching of learned queries to ground-truth boxes (cost: class
  probability, L1 and generalised IoU), then class cross-entropy over the label tokens for every
  query (unmatched ones to "no object"), and for matched queries box L1, GIoU and the token
  loss of the composed decoder: cross-entropy of the six coordinate-bin tokens;
* proposals (two-stage decoding): a penalty-reduced focal loss on the centre heat map
  (Gaussian peaks at box centres, as in CenterNet) and L1 plus GIoU of the box extents at
  each box's centre cell;
* classification: binary cross-entropy of each prompt label token's presence logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from unimed.networks.layers import upsample_to

__all__ = [
    "LossWeights", "segmentation_loss", "detection_loss", "proposal_loss", "classification_loss", "generalized_box_iou",
    "match",
]


@dataclass
class LossWeights:
    """Weights of every loss term; lives in the training config."""

    seg_ce: float = 1.0
    seg_dice: float = 1.0
    det_class: float = 1.0
    det_l1: float = 5.0
    det_giou: float = 2.0
    det_token: float = 0.5
    det_heat: float = 1.0
    det_extent_l1: float = 5.0
    det_extent_giou: float = 2.0
    no_object: float = 0.1
    cls: float = 1.0
    ssl: float = 1.0
    match_class: float = 1.0
    match_l1: float = 5.0
    match_giou: float = 2.0


def segmentation_loss(mask_logits: torch.Tensor, target: torch.Tensor, w: LossWeights) -> dict[str, torch.Tensor]:
    """``mask_logits`` ``(B, P, x, y, z)`` at any resolution; ``target`` ``(B, X, Y, Z)`` long of
    channel indices (0 background, ``i`` the ``i``-th label token). Logits are upsampled to the
    target's size. Padding channels of a batch must carry a large negative logit."""
    if mask_logits.shape[2:] != target.shape[1:]:
        mask_logits = upsample_to(mask_logits, tuple(target.shape[1:]))
    ce = F.cross_entropy(mask_logits, target)
    probs = mask_logits.softmax(1)
    onehot = F.one_hot(target, mask_logits.shape[1]).movedim(-1, 1).float()
    dims = (2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = 1 - (2 * inter + 1) / (denom + 1)
    present = onehot.sum(dims) > 0
    # labels absent from an image still teach "not here" through CE; Dice averages over present ones
    dice = dice[:, 1:][present[:, 1:]].mean() if present[:, 1:].any() else dice.new_zeros(())
    return {"seg_ce": w.seg_ce * ce, "seg_dice": w.seg_dice * dice}


def _volume(b: torch.Tensor) -> torch.Tensor:
    return (b[..., 3:] - b[..., :3]).clamp(min=0).prod(-1)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU of ``(N, 6)`` and ``(M, 6)`` boxes ``[x0, y0, z0, x1, y1, z1]`` -> ``(N, M)``."""
    lo = torch.maximum(a[:, None, :3], b[None, :, :3])
    hi = torch.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    union = _volume(a)[:, None] + _volume(b)[None, :] - inter
    iou = inter / union.clamp(min=1e-9)
    hull = (torch.maximum(a[:, None, 3:], b[None, :, 3:]) - torch.minimum(a[:, None, :3], b[None, :, :3])).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-9)


@torch.no_grad()
def match(class_logits: torch.Tensor, boxes: torch.Tensor, gt_classes: torch.Tensor, gt_boxes: torch.Tensor,
          w: LossWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """Hungarian assignment of one image's queries to its ground truth.

    Returns ``(query_indices, gt_indices)``.
    """
    if len(gt_classes) == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    prob = class_logits.float().softmax(-1)[:, gt_classes]
    cost = (
        -w.match_class * prob
        + w.match_l1 * torch.cdist(boxes.float(), gt_boxes.float(), p=1)
        - w.match_giou * generalized_box_iou(boxes.float(), gt_boxes.float())
    )
    q, g = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(q, dtype=torch.long), torch.as_tensor(g, dtype=torch.long)


def detection_loss(
    class_logits: torch.Tensor,
    box_logits: torch.Tensor,
    boxes: torch.Tensor,
    targets: list[tuple[torch.Tensor, torch.Tensor]],
    allowed: torch.Tensor,
    num_bins: int,
    w: LossWeights,
) -> dict[str, torch.Tensor]:
    """Set loss for a batch.

    Args:
        class_logits: ``(B, Q, K + 1)``.
        box_logits: ``(B, Q, 6, num_bins)``.
        boxes: ``(B, Q, 6)`` expected boxes.
        targets: per image ``(classes (M,) long class indices, boxes (M, 6))``.
        allowed: ``(B, K + 1)`` bool: the classes a query may take for this image (its prompt's
            labels and "no object"); the others are masked out of the softmax.
    """
    logits = class_logits.masked_fill(~allowed[:, None, :], -1e4)
    b, q = logits.shape[:2]
    target_classes = torch.zeros(b, q, dtype=torch.long, device=logits.device)
    matched_pred, matched_gt, matched_logits = [], [], []
    for i, (gt_cls, gt_box) in enumerate(targets):
        qi, gi = match(logits[i], boxes[i], gt_cls, gt_box, w)
        target_classes[i, qi] = gt_cls[gi]
        matched_pred.append(boxes[i, qi])
        matched_gt.append(gt_box[gi])
        matched_logits.append(box_logits[i, qi])
    weight = torch.ones(logits.shape[-1], device=logits.device)
    weight[0] = w.no_object
    loss_class = F.cross_entropy(logits.flatten(0, 1), target_classes.flatten(), weight=weight)
    pred, gt = torch.cat(matched_pred), torch.cat(matched_gt)
    if len(gt) == 0:
        zero = boxes.sum() * 0
        return {"det_class": w.det_class * loss_class, "det_l1": zero, "det_giou": zero, "det_token": zero}
    n = max(len(gt), 1)
    l1 = F.l1_loss(pred, gt, reduction="sum") / n
    giou = (1 - torch.diag(generalized_box_iou(pred, gt))).sum() / n
    bins = (gt * num_bins).long().clamp(0, num_bins - 1)
    token = F.cross_entropy(torch.cat(matched_logits).flatten(0, 1), bins.flatten())
    return {"det_class": w.det_class * loss_class, "det_l1": w.det_l1 * l1, "det_giou": w.det_giou * giou,
            "det_token": w.det_token * token}


def proposal_loss(heat_logits: torch.Tensor, extents: torch.Tensor, targets: list[tuple[torch.Tensor, torch.Tensor]],
                  allowed: torch.Tensor, w: LossWeights) -> dict[str, torch.Tensor]:
    """Loss of the dense proposal head.

    Args:
        heat_logits: ``(B, K, X, Y, Z)``.
        extents: ``(B, 6, X, Y, Z)`` distances from cell centres to box faces.
        targets: per image ``(classes (M,) 1-based class indices, boxes (M, 6) normalised)``.
        allowed: ``(B, K)`` bool: the classes annotated for each image (others are ignored).
    """
    from unimed.networks.proposals import cell_centres, decode_boxes

    shape = tuple(heat_logits.shape[2:])
    size = torch.tensor(shape, dtype=torch.float32, device=heat_logits.device)
    centres = cell_centres(shape, device=heat_logits.device).flatten(1)  # (3, N)
    target = torch.zeros_like(heat_logits)
    pos_cells, pos_img, pos_boxes = [], [], []
    for i, (cls, boxes) in enumerate(targets):
        for c, box in zip(cls.tolist(), boxes):
            centre = (box[:3] + box[3:]) / 2
            cell = (centre * size).long().clamp(max=size.long() - 1)
            sigma = ((box[3:] - box[:3]) * size / 6).clamp(min=0.5)
            d = ((centres - ((cell.float() + 0.5) / size)[:, None]) * size[:, None]) ** 2 / (2 * sigma[:, None] ** 2)
            flat = int(shape[1] * shape[2] * cell[0] + shape[2] * cell[1] + cell[2])
            g = torch.exp(-d.sum(0))
            g[flat] = 1.0
            target[i, c - 1] = torch.maximum(target[i, c - 1], g.reshape(shape))
            pos_cells.append(flat)
            pos_img.append(i)
            pos_boxes.append(box)
    p = heat_logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1.0)
    valid = allowed[:, :, None, None, None].expand_as(p)
    pos_term = (torch.log(p) * (1 - p) ** 2)[pos & valid].sum()
    neg_term = (torch.log(1 - p) * p**2 * (1 - target) ** 4)[~pos & valid].sum()
    heat = -(pos_term + neg_term) / max(1, int((pos & valid).sum()))
    if not pos_cells:
        return {"det_heat": w.det_heat * heat, "det_extent_l1": extents.sum() * 0, "det_extent_giou": extents.sum() * 0}
    img, cells = torch.tensor(pos_img), torch.tensor(pos_cells)
    pred = decode_boxes(extents).flatten(2)[img, :, cells]  # (M, 6)
    gt = torch.stack(pos_boxes)
    flat = heat_logits.shape[-1] == 1
    axes = [0, 1, 3, 4] if flat else list(range(6))
    l1 = F.l1_loss(pred[:, axes], gt[:, axes])
    giou = (1 - torch.diag(generalized_box_iou(pred, gt))).mean()
    return {"det_heat": w.det_heat * heat, "det_extent_l1": w.det_extent_l1 * l1, "det_extent_giou": w.det_extent_giou * giou}


def classification_loss(presence_logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                        w: LossWeights) -> dict[str, torch.Tensor]:
    """BCE of ``(B, P)`` presence logits against 0/1 ``targets`` where ``valid`` (label tokens)."""
    loss = F.binary_cross_entropy_with_logits(presence_logits[valid], targets[valid].float())
    return {"cls": w.cls * loss}
