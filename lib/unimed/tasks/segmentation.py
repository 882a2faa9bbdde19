"""Segmentation: ``<seg> (<label:L> <mask:q>)* <eos>``, answered with a label image.

Outputs -> tokens: the pixel outputs of the task token (background) and of each label token
compete per voxel; each label that wins somewhere becomes ``<label:L> <mask:q>``, ``q`` pointing
at that label's mask. Uncertainty: voxel entropy over the region in doubt. Loss: cross-entropy
plus soft Dice over the prompt's pixel outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from unimed.labels import Label, LabelRegistry
from unimed.large_images import segmentation_tokens_at_image
from unimed.loss_weights import LossWeights
from unimed.networks.layers import upsample_to
from unimed.sequence import EOS_ID, TokenDecodeError, TokenSequence
from unimed.task_names import Task
from unimed.tasks.spec import ComposeOptions, ParsedObject, TaskModel, TaskPrediction, TaskSpec, TrainingItem
from unimed.transforms import GridSpec
from unimed.vocabulary import TokenVocabulary

__all__ = ["SegmentationAnnotation", "SegmentationSpec", "segmentation_tokens", "segmentation_entropy",
           "segmentation_loss"]


@dataclass
class SegmentationAnnotation:
    """A semantic segmentation.

    Attributes:
        label_map: integer map of registry label ids (0 is background), of any spatial shape.
        scores: optional score per label name present in the map; encoding ignores the scores
            of labels absent from the map and rejects a map label without a score.
    """

    label_map: np.ndarray
    scores: dict[str, float] | None = None


def segmentation_tokens(vocab: TokenVocabulary, mask_logits: torch.Tensor, labels: Sequence[Label]) -> TokenSequence:
    """``mask_logits`` ``(1 + L, ...)``: background then one channel per label, at the resolution
    the label map should have."""
    if mask_logits.shape[0] != 1 + len(labels):
        raise ValueError(f"expected {1 + len(labels)} mask channels (background + labels), got {mask_logits.shape[0]}")
    probs = mask_logits.float().softmax(0)
    winner = probs.max(0).indices  # as argmax(0), ties to the first channel, but ~20x faster over channels on a CPU
    ids, masks, scores = [vocab.task_token(Task.SEGMENTATION)], [], []
    for i, lab in enumerate(labels, start=1):
        mask = winner == i
        if not mask.any():
            continue
        ids += [vocab.label_token(lab), vocab.mask_token(len(masks))]
        masks.append(mask.cpu().numpy())
        scores.append(float(probs[i][mask].mean()))
    ids.append(EOS_ID)
    return TokenSequence(ids=ids, masks=masks, scores=scores, shape=tuple(winner.shape))


def segmentation_entropy(mask_logits: torch.Tensor, region_threshold: float = 0.1) -> float:
    """Normalised voxel entropy of ``(1 + L, ...)`` mask logits (channel 0 the background),
    averaged over the voxels whose probability of holding some label is at least
    ``region_threshold``; 0 when there are none.

    Example:
        >>> segmentation_entropy(torch.zeros(2, 4, 4, 1))  # 50/50 everywhere
        1.0
        >>> segmentation_entropy(torch.tensor([10.0, -10.0]).reshape(2, 1, 1, 1))  # surely empty
        0.0
    """
    if mask_logits.shape[0] < 2:
        raise ValueError(f"mask logits need a background and at least one label channel, got {mask_logits.shape[0]}")
    if not 0 < region_threshold < 1:
        raise ValueError(f"region_threshold must be in (0, 1), got {region_threshold}")
    logp = mask_logits.float().log_softmax(0)
    entropy = (-(logp.exp() * logp).sum(0) / math.log(mask_logits.shape[0])).clamp(0, 1)
    region = (1 - logp[0].exp()) >= region_threshold
    return float(entropy[region].mean()) if bool(region.any()) else 0.0


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


class SegmentationSpec(TaskSpec):
    """Segmentation: one ``<mask:q>`` argument per label, answered with a label image."""

    task = Task.SEGMENTATION
    annotation_type = SegmentationAnnotation
    arity = 1
    argument_kind = "mask"
    output_file = "label_map"

    def encode(self, ann: SegmentationAnnotation, vocab: TokenVocabulary) -> TokenSequence:
        label_map = np.asarray(ann.label_map)
        if label_map.ndim == 0:
            raise ValueError("label_map must have at least one spatial dimension")
        if not np.issubdtype(label_map.dtype, np.integer):
            raise ValueError(f"label_map must be an integer array, got dtype {label_map.dtype}")
        present = [int(v) for v in np.unique(label_map) if v != 0]
        labels = []
        for value in present:
            try:
                label = vocab.registry.by_id(value)
            except ValueError:
                raise ValueError(f"label_map value {value} is not a label id of the registry") from None
            labels.append(vocab.label_for(label.name, self.task))
        if len(labels) > vocab.num_mask_refs:
            raise ValueError(f"label_map has {len(labels)} labels but only {vocab.num_mask_refs} mask references")
        scores = None
        if ann.scores is not None:
            given = {vocab.registry.get(name).name: float(s) for name, s in ann.scores.items()}
            missing = [lab.name for lab in labels if lab.name not in given]
            if missing:
                raise ValueError(f"scores lack labels present in label_map: {', '.join(missing)}")
            scores = [given[lab.name] for lab in labels]
        ids = [vocab.task_token(self.task)]
        for q, label in enumerate(labels):
            ids += [vocab.label_token(label), vocab.mask_token(q)]
        ids.append(EOS_ID)
        masks = [label_map == lab.id for lab in labels]
        return TokenSequence(ids, masks=masks, scores=scores, shape=tuple(label_map.shape))

    def decode(self, seq: TokenSequence, objects: list[ParsedObject], scores: list[float] | None,
               vocab: TokenVocabulary) -> SegmentationAnnotation:
        masks, shape = _checked_masks(seq.masks or [], seq.shape)
        for obj in objects:
            q = vocab.mask_index_of(obj.args[0])
            if q >= len(masks):
                raise TokenDecodeError(f"position {obj.pos + 1}: <mask:{q}> has no payload ({len(masks)} masks given)")
        if shape is None:
            raise TokenDecodeError("cannot decode a segmentation without a shape: no mask payloads and no shape given")
        label_map = np.zeros(shape, dtype=np.uint8)
        for obj in objects:
            label_map[masks[vocab.mask_index_of(obj.args[0])]] = obj.label.id
        named = None if scores is None else {obj.label.name: s for obj, s in zip(objects, scores)}
        return SegmentationAnnotation(label_map, scores=named)

    def truncated(self, label: str, obj: ParsedObject, got: int, at: int) -> str:
        return f"position {at}: truncated segment: {label} at position {obj.pos} has no mask reference"

    def compose(self, outputs: Mapping[str, torch.Tensor], labels: Sequence[Label], grid: GridSpec,
                vocab: TokenVocabulary, options: ComposeOptions) -> TokenSequence:
        # slab by slab when the image is large: memory stays bounded (identical to a whole resize when small)
        return segmentation_tokens_at_image(lambda logits: segmentation_tokens(vocab, logits, labels), vocab,
                                            outputs["mask_logits"], grid, labels)

    def uncertainty(self, outputs: Mapping[str, torch.Tensor], labels: Sequence[Label], registry: LabelRegistry,
                    *, top_fraction: float, region_threshold: float) -> float:
        return segmentation_entropy(outputs["mask_logits"], region_threshold)

    def has_targets(self, items: Sequence[TrainingItem]) -> bool:
        return all(it.label_map is not None for it in items)

    def target_labels(self, items: Sequence[TrainingItem]) -> list[str]:
        return sorted({name for it in items for name in it.seg_labels})

    def loss(self, model: TaskModel, feats: Any, items: Sequence[TrainingItem],
             weights: LossWeights) -> dict[str, torch.Tensor]:
        ids, pad = model.prompt([(self.task, list(it.seg_labels)) for it in items])
        out = model.decode(feats, ids, pad)
        targets = []
        for it in items:
            lut = torch.zeros(256, dtype=torch.long)
            for ch, name in enumerate(it.seg_labels, start=1):
                lut[model.registry.get(name).id] = ch
            targets.append(lut[it.label_map.clamp(0, 255)])
        logits = out["mask_logits"].masked_fill(pad[:, :, None, None, None], -1e4)
        return segmentation_loss(logits, torch.stack(targets).to(logits.device), weights)

    def result_fields(self, pred: TaskPrediction, registry: LabelRegistry) -> dict[str, Any]:
        return {"label_names": {lab.name: lab.id for lab in pred.labels}, "scores": pred.annotation.scores or {},
                "label_info": [{"name": lab.name, "idx": lab.id, "display": lab.display, "color": list(lab.color)}
                               for lab in pred.labels]}

    def report(self, pred: TaskPrediction, source: str) -> tuple[list[str], dict[str, Any]]:
        lm = pred.label_map()
        lines = [f"segmentation of {source}: shape {lm.shape}"]
        for lab in pred.labels:
            lines.append(f"  {lab.name:22s} id {lab.id:3d}  voxels {int((lm == lab.id).sum()):>10d}")
        return lines, {"labels": {lab.name: lab.id for lab in pred.labels}, "scores": pred.annotation.scores}


def _checked_masks(
    payloads: Sequence[np.ndarray], shape: tuple[int, ...] | None
) -> tuple[list[np.ndarray], tuple[int, ...] | None]:
    """Check that mask payloads are binary and share one shape (and ``shape``, if given).

    Returns the masks as boolean arrays and the spatial shape (``None`` if nothing gives one).
    """
    masks = [np.asarray(m) for m in payloads]
    for q, mask in enumerate(masks):
        if mask.ndim == 0:
            raise TokenDecodeError(f"mask payload {q} is a scalar, not a mask")
        if mask.shape != masks[0].shape:
            raise TokenDecodeError(f"mask payload shapes differ: mask 0 is {masks[0].shape}, mask {q} is {mask.shape}")
        if mask.dtype != np.bool_ and not np.isin(mask, (0, 1)).all():
            raise TokenDecodeError(f"mask payload {q} is not binary (it holds values other than 0 and 1)")
    if shape is not None:
        shape = tuple(int(n) for n in shape)
        if masks and shape != masks[0].shape:
            raise TokenDecodeError(f"sequence shape {shape} differs from the mask payload shape {masks[0].shape}")
    elif masks:
        shape = masks[0].shape
    return [m.astype(bool, copy=False) for m in masks], shape
