"""Detection: ``<det> (<label:L> x0 y0 z0 x1 y1 z1)* <eos>``, answered with boxes and a Slicer ROI markup.

Outputs -> tokens: each learned query whose semantic output names a requested label with
enough confidence becomes ``<label:L>`` followed by six coordinate tokens of its box, after
per-label non-maximum suppression. Uncertainty: entropy of the most uncertain queries' class
distributions. Loss: Hungarian matching of queries to boxes (cost: class probability, L1 and
generalised IoU), class cross-entropy, box L1, GIoU and the coordinate-token loss; plus the
dense proposal head's centre heat map and extents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from unimed.boxes import generalized_box_iou, nms, paired_generalized_box_iou
from unimed.labels import Label, LabelRegistry
from unimed.loss_weights import LossWeights
from unimed.networks.proposals import cell_centres, decode_boxes
from unimed.sequence import EOS_ID, TokenDecodeError, TokenSequence, check_scores, score_list
from unimed.task_names import Task
from unimed.tasks.spec import ComposeOptions, ParsedObject, TaskModel, TaskPrediction, TaskSpec, TrainingItem
from unimed.transforms import GridSpec
from unimed.vocabulary import TokenVocabulary

__all__ = ["DetectionAnnotation", "DetectionSpec", "detection_tokens", "query_entropy", "match", "detection_loss",
           "proposal_loss"]

_BOX_AXES = ("x", "y", "z")


@dataclass
class DetectionAnnotation:
    """A set of labelled boxes.

    Attributes:
        boxes: ``(N, 6)`` normalised ``[x0, y0, z0, x1, y1, z1]`` in [0, 1] with ``x0 <= x1`` etc.;
            a 2D image uses ``z0 = 0, z1 = 1``.
        labels: registry label name of each box.
        scores: optional score of each box.
    """

    boxes: np.ndarray
    labels: list[str]
    scores: list[float] | None = None


def detection_tokens(vocab: TokenVocabulary, class_logits: torch.Tensor, boxes: torch.Tensor,
                     labels: Sequence[Label], options: ComposeOptions, flat_depth: bool = False) -> TokenSequence:
    """``class_logits`` ``(Q, K + 1)`` and normalised ``boxes`` ``(Q, 6)`` of the queries; ``options``
    give the score threshold, NMS IoU and most detections.

    A query's class probabilities are a softmax over "no object" and the asked labels' columns
    only, as training computes them (:func:`detection_loss` masks every class an image's prompt
    does not name): a column never trained on such images (a brain label's on a blood smear)
    would otherwise take a share of its own, enough to hide a label taught from a few images.
    """
    cols = torch.tensor([0, *(vocab.registry.class_index(lab) for lab in labels)], dtype=torch.long)
    score, which = class_logits.float()[:, cols].softmax(-1)[:, 1:].max(-1)
    boxes = boxes.float().clone()
    boxes[:, 3:] = torch.maximum(boxes[:, 3:], boxes[:, :3])
    if flat_depth:
        boxes[:, 2], boxes[:, 5] = 0.0, 1.0
    keep = (score >= options.score_threshold).nonzero().flatten()
    kept: list[int] = []
    for c in which[keep].unique().tolist():
        idx = keep[which[keep] == c]
        kept += idx[nms(boxes[idx], score[idx], options.nms_iou)].tolist()
    kept = sorted(kept, key=lambda i: -float(score[i]))[: options.max_detections]
    ids, scores = [vocab.task_token(Task.DETECTION)], []
    for i in kept:
        ids.append(vocab.label_token(labels[int(which[i])]))
        ids += [vocab.coord_token(int(b)) for b in vocab.quantize(boxes[i].numpy())]
        scores.append(float(score[i]))
    ids.append(EOS_ID)
    return TokenSequence(ids=ids, scores=scores)


def query_entropy(class_logits: torch.Tensor, columns: Sequence[int], top_fraction: float = 0.1) -> float:
    """Normalised entropy of each query's class distribution over "no object" (column 0) and
    ``columns``, averaged over the most uncertain ``top_fraction`` of the queries."""
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    cols = torch.tensor([0, *columns], dtype=torch.long)
    logp = class_logits.float()[:, cols].log_softmax(-1)
    entropy = (-(logp.exp() * logp).sum(-1) / math.log(len(cols))).clamp(0, 1).flatten()
    k = max(1, int(math.ceil(top_fraction * entropy.numel())))
    return float(entropy.topk(k).values.mean())


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
    giou = (1 - paired_generalized_box_iou(pred, gt)).sum() / n
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
    giou = (1 - paired_generalized_box_iou(pred, gt)).mean()
    return {"det_heat": w.det_heat * heat, "det_extent_l1": w.det_extent_l1 * l1, "det_extent_giou": w.det_extent_giou * giou}




class DetectionSpec(TaskSpec):
    """Detection: six coordinate tokens per label, answered with boxes and a Slicer ROI markup."""

    task = Task.DETECTION
    annotation_type = DetectionAnnotation
    arity = 6
    argument_kind = "coord"
    unique_labels = False  # several boxes may carry one label
    output_file = "roi_markup"

    def encode(self, ann: DetectionAnnotation, vocab: TokenVocabulary) -> TokenSequence:
        boxes = np.asarray(ann.boxes, dtype=np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 6)
        if boxes.ndim != 2 or boxes.shape[1] != 6:
            raise ValueError(f"boxes must have shape (N, 6), got {boxes.shape}")
        if len(ann.labels) != len(boxes):
            raise ValueError(f"got {len(boxes)} boxes but {len(ann.labels)} labels")
        check_scores(ann.scores, len(boxes), "boxes")
        if not np.isfinite(boxes).all() or (boxes < 0).any() or (boxes > 1).any():
            raise ValueError("box coordinates must be finite and within [0, 1]")
        inverted = np.argwhere(boxes[:, :3] > boxes[:, 3:])
        if len(inverted):
            n, axis = inverted[0]
            raise ValueError(f"box {n} is inverted: {_BOX_AXES[axis]}0 > {_BOX_AXES[axis]}1")
        labels = [vocab.label_for(name, self.task) for name in ann.labels]
        bins = vocab.quantize(boxes)
        ids = [vocab.task_token(self.task)]
        for label, row in zip(labels, bins):
            ids.append(vocab.label_token(label))
            ids += [vocab.coord_token(int(b)) for b in row]
        ids.append(EOS_ID)
        return TokenSequence(ids, scores=score_list(ann.scores))

    def decode(self, seq: TokenSequence, objects: list[ParsedObject], scores: list[float] | None,
               vocab: TokenVocabulary) -> DetectionAnnotation:
        bins = np.array([[vocab.bin_of(i) for i in obj.args] for obj in objects], dtype=np.int64).reshape(-1, 6)
        for obj, row in zip(objects, bins):
            for axis, name in enumerate(_BOX_AXES):
                if row[axis] > row[axis + 3]:
                    raise TokenDecodeError(
                        f"position {obj.pos}: box has {name}0 > {name}1 (bin {row[axis]} > bin {row[axis + 3]})"
                    )
        boxes = np.asarray(vocab.dequantize(bins), dtype=np.float64).reshape(-1, 6)
        return DetectionAnnotation(boxes, [obj.label.name for obj in objects], scores=scores)

    def truncated(self, label: str, obj: ParsedObject, got: int, at: int) -> str:
        return f"position {at}: truncated box: {label} at position {obj.pos} has {got} of 6 coordinates"

    def compose(self, outputs: Mapping[str, torch.Tensor], labels: Sequence[Label], grid: GridSpec,
                vocab: TokenVocabulary, options: ComposeOptions) -> TokenSequence:
        return detection_tokens(vocab, outputs["class_logits"], outputs["boxes"], labels, options,
                                flat_depth=grid.shape[2] == 1)

    def uncertainty(self, outputs: Mapping[str, torch.Tensor], labels: Sequence[Label], registry: LabelRegistry,
                    *, top_fraction: float, region_threshold: float) -> float:
        columns = [registry.class_index(lab) for lab in labels]
        return query_entropy(outputs["class_logits"], columns, top_fraction)

    def has_targets(self, items: Sequence[TrainingItem]) -> bool:
        return all(it.boxes is not None for it in items)

    def target_labels(self, items: Sequence[TrainingItem]) -> list[str]:
        return sorted({name for it in items for name in it.det_labels})

    def loss(self, model: TaskModel, feats: Any, items: Sequence[TrainingItem],
             weights: LossWeights) -> dict[str, torch.Tensor]:
        device = next(model.parameters()).device
        ids, pad = model.prompt([(self.task, list(it.det_labels)) for it in items])
        out = model.decode(feats, ids, pad)
        k = len(model.registry)
        allowed = torch.zeros(len(items), k + 1, dtype=torch.bool)
        allowed[:, 0] = True
        targets = []
        for i, it in enumerate(items):
            for name in it.det_labels:
                allowed[i, model.registry.class_index(name)] = True
            cls = torch.tensor([model.registry.class_index(n) for n in it.box_labels], dtype=torch.long)
            boxes = it.boxes.clone()
            if it.image.shape[-1] == 1:
                boxes[:, 2], boxes[:, 5] = 0.0, 1.0
            targets.append((cls.to(device), boxes.to(device)))
        allowed = allowed.to(device)
        losses = detection_loss(out["class_logits"], out["box_logits"], out["boxes"], targets, allowed,
                                model.config.num_bins, weights)
        losses.update(proposal_loss(out["heat_logits"], out["extents"], targets, allowed[:, 1:], weights))
        return losses

    def result_fields(self, pred: TaskPrediction, registry: LabelRegistry) -> dict[str, Any]:
        """World LPS ``[cx, cy, cz, sx, sy, sz]`` boxes (``box``), their labels and scores, and voxel boxes."""
        ann = pred.annotation
        return {
            "box": np.round(pred.boxes_world(), 3).tolist(),
            "label": list(ann.labels),
            "score": [round(float(s), 6) for s in ann.scores or []],
            "box_format": "cccwhd",
            "coordinate_system": "LPS",
            "box_voxel": np.round(pred.boxes_voxel(), 2).tolist(),
        }

    def report(self, pred: TaskPrediction, source: str) -> tuple[list[str], dict[str, Any]]:
        ann = pred.annotation
        world, vox = pred.boxes_world(), pred.boxes_voxel()
        lines = [f"{len(ann.labels)} boxes in {source} (world LPS mm: centre, size; voxels: x0 y0 z0 x1 y1 z1)"]
        for name, s, w, v in zip(ann.labels, ann.scores, world, vox):
            lines.append(f"  {name:18s} {s:.3f}  centre {_fmt(w[:3])}  size {_fmt(w[3:])}  voxels {_fmt(v)}")
        return lines, {"box": world.round(3).tolist(), "box_voxel": vox.round(2).tolist(), "label": ann.labels,
                       "score": ann.scores}


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in values) + "]"
