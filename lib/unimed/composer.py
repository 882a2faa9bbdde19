"""The composed decoder: network outputs of one image -> token sequence -> annotation.

Whatever the task, the answer leaves the network as a sequence of discrete tokens of
:class:`unimed.tokens.TokenVocabulary` and is read back by :class:`unimed.tokens.TokenCodec`:

* segmentation: the pixel outputs of the task token (background) and of each label token
  compete per voxel; each label that wins somewhere becomes ``<label:L> <mask:q>``, ``q``
  pointing at that label's pixel output.
* detection: each learned query whose semantic output names a requested label with enough
  confidence becomes ``<label:L>`` followed by six coordinate tokens of its box, after
  non-maximum suppression.
* classification: the requested label tokens, ranked by their presence score.
"""

from __future__ import annotations

from typing import Sequence

import torch

from unimed.labels import Label
from unimed.tasks import Task
from unimed.tokens import (
    EOS_ID,
    Annotation,
    ClassificationAnnotation,
    DetectionAnnotation,
    SegmentationAnnotation,
    TokenCodec,
    TokenSequence,
    TokenVocabulary,
)

__all__ = ["ComposedDecoder", "box_iou", "nms"]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of ``(N, 6)`` and ``(M, 6)`` boxes ``[x0, y0, z0, x1, y1, z1]`` -> ``(N, M)``."""
    lo = torch.maximum(a[:, None, :3], b[None, :, :3])
    hi = torch.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    vol_a = (a[:, 3:] - a[:, :3]).clamp(min=0).prod(-1)
    vol_b = (b[:, 3:] - b[:, :3]).clamp(min=0).prod(-1)
    return inter / (vol_a[:, None] + vol_b[None, :] - inter).clamp(min=1e-12)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, best first."""
    order = scores.argsort(descending=True)
    keep: list[int] = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    iou = box_iou(boxes, boxes)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


class ComposedDecoder:
    """Turns one image's network outputs into tokens and, through the codec, annotations.

    Args:
        vocab: the network's token vocabulary.
        score_threshold: least class probability for a detection.
        nms_iou: IoU above which a lower-scoring box of the same label is dropped.
        max_detections: most boxes returned.
        flat_axes: when the image is 2D, boxes span the whole depth.

    Example:
        >>> from unimed.labels import LabelRegistry
        >>> comp = ComposedDecoder(TokenVocabulary(LabelRegistry(), num_bins=16, num_mask_refs=8))
        >>> lab = [comp.vocab.registry.get("adrenal_hyperplasia")]
        >>> comp.classification(torch.tensor([2.0]), lab).labels
        ['adrenal_hyperplasia']
    """

    def __init__(
        self, vocab: TokenVocabulary, *, score_threshold: float = 0.3, nms_iou: float = 0.5, max_detections: int = 100
    ):
        self.vocab = vocab
        self.codec = TokenCodec(vocab)
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_detections = max_detections

    # -- outputs -> tokens ------------------------------------------------------------------------
    def segmentation_tokens(self, mask_logits: torch.Tensor, labels: Sequence[Label]) -> TokenSequence:
        """``mask_logits`` ``(1 + L, ...)``: background then one channel per label, at the
        resolution the label map should have."""
        if mask_logits.shape[0] != 1 + len(labels):
            raise ValueError(f"expected {1 + len(labels)} mask channels (background + labels), got {mask_logits.shape[0]}")
        probs = mask_logits.float().softmax(0)
        winner = probs.argmax(0)
        ids, masks, scores = [self.vocab.task_token(Task.SEGMENTATION)], [], []
        for i, lab in enumerate(labels, start=1):
            mask = winner == i
            if not mask.any():
                continue
            ids += [self.vocab.label_token(lab), self.vocab.mask_token(len(masks))]
            masks.append(mask.cpu().numpy())
            scores.append(float(probs[i][mask].mean()))
        ids.append(EOS_ID)
        return TokenSequence(ids=ids, masks=masks, scores=scores, shape=tuple(winner.shape))

    def detection_tokens(
        self, class_logits: torch.Tensor, boxes: torch.Tensor, labels: Sequence[Label], flat_depth: bool = False
    ) -> TokenSequence:
        """``class_logits`` ``(Q, K + 1)`` and normalised ``boxes`` ``(Q, 6)`` of the queries."""
        probs = class_logits.float().softmax(-1)
        cols = torch.tensor([self.vocab.registry.class_index(lab) for lab in labels], dtype=torch.long)
        score, which = probs[:, cols].max(-1)
        boxes = boxes.float().clone()
        boxes[:, 3:] = torch.maximum(boxes[:, 3:], boxes[:, :3])
        if flat_depth:
            boxes[:, 2], boxes[:, 5] = 0.0, 1.0
        keep = (score >= self.score_threshold).nonzero().flatten()
        kept: list[int] = []
        for c in which[keep].unique().tolist():
            idx = keep[which[keep] == c]
            kept += idx[nms(boxes[idx], score[idx], self.nms_iou)].tolist()
        kept = sorted(kept, key=lambda i: -float(score[i]))[: self.max_detections]
        ids, scores = [self.vocab.task_token(Task.DETECTION)], []
        for i in kept:
            ids.append(self.vocab.label_token(labels[int(which[i])]))
            ids += [self.vocab.coord_token(int(b)) for b in self.vocab.quantize(boxes[i].numpy())]
            scores.append(float(score[i]))
        ids.append(EOS_ID)
        return TokenSequence(ids=ids, scores=scores)

    def classification_tokens(self, presence_logits: torch.Tensor, labels: Sequence[Label]) -> TokenSequence:
        """``presence_logits`` ``(L,)``: one per requested label; tokens ranked by score."""
        if presence_logits.shape[0] != len(labels):
            raise ValueError(f"expected {len(labels)} presence logits, got {presence_logits.shape[0]}")
        scores = presence_logits.float().sigmoid().tolist()
        order = sorted(range(len(labels)), key=lambda i: -scores[i])
        ids = [self.vocab.task_token(Task.CLASSIFICATION)] + [self.vocab.label_token(labels[i]) for i in order]
        return TokenSequence(ids=ids + [EOS_ID], scores=[scores[i] for i in order])

    # -- tokens -> annotations --------------------------------------------------------------------
    def segmentation(self, mask_logits: torch.Tensor, labels: Sequence[Label]) -> SegmentationAnnotation:
        return self.codec.decode(self.segmentation_tokens(mask_logits, labels))

    def detection(self, class_logits, boxes, labels, flat_depth: bool = False) -> DetectionAnnotation:
        return self.codec.decode(self.detection_tokens(class_logits, boxes, labels, flat_depth))

    def classification(self, presence_logits: torch.Tensor, labels: Sequence[Label]) -> ClassificationAnnotation:
        return self.codec.decode(self.classification_tokens(presence_logits, labels))

    def decode(self, seq: TokenSequence) -> Annotation:
        return self.codec.decode(seq)

