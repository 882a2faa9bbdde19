"""Classification: ``<cls> <label:L>* <eos>``, answered with scored labels and no file.

Outputs -> tokens: the requested label tokens ranked by their presence score. Uncertainty:
mean binary entropy of the presence probabilities. Loss: class-balanced binary cross-entropy of
each prompt label token's presence logit (positives and negatives of a label weigh alike in its
source, whatever its prevalence); where a single-task teacher scored the image, the target is
blended with the teacher's probability (knowledge distillation, weight ``LossWeights.distill``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from unimed.labels import Label, LabelRegistry
from unimed.loss_weights import LossWeights
from unimed.sequence import EOS_ID, TokenSequence, check_scores, score_list
from unimed.task_names import Task
from unimed.tasks.spec import ComposeOptions, ParsedObject, TaskModel, TaskPrediction, TaskSpec, TrainingItem
from unimed.transforms import GridSpec
from unimed.vocabulary import TokenVocabulary

__all__ = ["ClassificationAnnotation", "ClassificationSpec", "classification_tokens", "presence_entropy",
           "classification_loss"]


@dataclass
class ClassificationAnnotation:
    """The labels present in an image.

    Attributes:
        labels: registry names of the labels present, each at most once.
        scores: optional score of each label.
    """

    labels: list[str]
    scores: list[float] | None = None


def classification_tokens(vocab: TokenVocabulary, presence_logits: torch.Tensor,
                          labels: Sequence[Label]) -> TokenSequence:
    """``presence_logits`` ``(L,)``: one per requested label; tokens ranked by score."""
    if presence_logits.shape[0] != len(labels):
        raise ValueError(f"expected {len(labels)} presence logits, got {presence_logits.shape[0]}")
    scores = presence_logits.float().sigmoid().tolist()
    order = sorted(range(len(labels)), key=lambda i: -scores[i])
    ids = [vocab.task_token(Task.CLASSIFICATION)] + [vocab.label_token(labels[i]) for i in order]
    return TokenSequence(ids=ids + [EOS_ID], scores=[scores[i] for i in order])


def presence_entropy(presence_logits: torch.Tensor) -> float:
    """Mean normalised binary entropy of ``(L,)`` presence logits.

    Example:
        >>> presence_entropy(torch.tensor([0.0, 0.0]))
        1.0
    """
    if presence_logits.numel() == 0:
        raise ValueError("presence logits of at least one label are needed")
    p = presence_logits.float().sigmoid().clamp(1e-7, 1 - 1e-7)
    h = -(p * p.log() + (1 - p) * (1 - p).log()) / math.log(2)
    return float(h.mean())


#: the most one example's balancing weight may grow (a label positive in 1 of 100 images)
MAX_BALANCE_WEIGHT = 5.0


def balance_weights(targets: torch.Tensor, prevalence: torch.Tensor) -> torch.Tensor:
    """Per-example weights ``0.5 / p`` for positives and ``0.5 / (1 - p)`` for negatives of a
    label with positive share ``p``: each class carries half of the loss on average.

    Example:
        >>> balance_weights(torch.tensor([1, 0]), torch.tensor([0.2, 0.2])).tolist()
        [2.5, 0.625]
    """
    p = prevalence.float().clamp(1e-3, 1 - 1e-3)
    w = torch.where(targets.bool(), 0.5 / p, 0.5 / (1 - p))
    return w.clamp(max=MAX_BALANCE_WEIGHT)


def classification_loss(presence_logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                        w: LossWeights, prevalence: torch.Tensor | None = None,
                        teacher: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """BCE of ``(B, P)`` presence logits against 0/1 ``targets`` where ``valid`` (label tokens),
    class-balanced by :func:`balance_weights` where ``prevalence`` ``(B, P)`` is given.

    ``teacher`` ``(B, P)``: a teacher's probabilities, NaN where it gave none; where given, the
    target is ``(1 - w.distill) * target + w.distill * teacher`` (the balancing weight still
    follows the label).

    Example:
        >>> logits, valid = torch.full((1, 2), 2.0), torch.tensor([[False, True]])
        >>> hard = classification_loss(logits, torch.tensor([[0, 1]]), valid, LossWeights())["cls"]
        >>> soft = classification_loss(logits, torch.tensor([[0, 1]]), valid, LossWeights(),
        ...                            teacher=torch.tensor([[float("nan"), 0.5]]))["cls"]
        >>> round(float(hard), 4), round(float(soft), 4)  # the teacher's 0.5 pulls the target to 0.75
        (0.1269, 0.6269)
    """
    weight = None if prevalence is None else balance_weights(targets[valid], prevalence[valid])
    target = targets[valid].float()
    if teacher is not None:
        taught = teacher[valid].float()
        target = torch.where(taught.isnan(), target, (1.0 - w.distill) * target + w.distill * taught)
    loss = F.binary_cross_entropy_with_logits(presence_logits[valid], target, weight=weight)
    return {"cls": w.cls * loss}


class ClassificationSpec(TaskSpec):
    """Classification: label tokens without arguments, answered with scores and no file."""

    task = Task.CLASSIFICATION
    annotation_type = ClassificationAnnotation

    def encode(self, ann: ClassificationAnnotation, vocab: TokenVocabulary) -> TokenSequence:
        check_scores(ann.scores, len(ann.labels), "labels")
        labels = [vocab.label_for(name, self.task) for name in ann.labels]
        names = [lab.name for lab in labels]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"classification labels are repeated: {', '.join(repeated)}")
        ids = [vocab.task_token(self.task)]
        ids += [vocab.label_token(label) for label in labels]
        ids.append(EOS_ID)
        return TokenSequence(ids, scores=score_list(ann.scores))

    def decode(self, seq: TokenSequence, objects: list[ParsedObject], scores: list[float] | None,
               vocab: TokenVocabulary) -> ClassificationAnnotation:
        return ClassificationAnnotation([obj.label.name for obj in objects], scores=scores)

    def compose(self, outputs: Mapping[str, torch.Tensor], labels: Sequence[Label], grid: GridSpec,
                vocab: TokenVocabulary, options: ComposeOptions) -> TokenSequence:
        return classification_tokens(vocab, outputs["presence_logits"][1:], labels)

    def uncertainty(self, outputs: Mapping[str, torch.Tensor], labels: Sequence[Label], registry: LabelRegistry,
                    *, top_fraction: float, region_threshold: float) -> float:
        return presence_entropy(outputs["presence_logits"][1:])

    def has_targets(self, items: Sequence[TrainingItem]) -> bool:
        return all(it.class_labels for it in items)

    def target_labels(self, items: Sequence[TrainingItem]) -> list[str]:
        return sorted({name for it in items for name in it.class_labels or ()})

    def loss(self, model: TaskModel, feats: Any, items: Sequence[TrainingItem],
             weights: LossWeights) -> dict[str, torch.Tensor]:
        device = next(model.parameters()).device
        names = [sorted(it.class_labels) for it in items]
        ids, pad = model.prompt([(self.task, n) for n in names])
        out = model.decode(feats, ids, pad)
        targets = torch.zeros(ids.shape, dtype=torch.long)
        valid = torch.zeros(ids.shape, dtype=torch.bool)
        prevalence = torch.full(ids.shape, 0.5)
        teacher = torch.full(ids.shape, float("nan"))
        for i, (it, n) in enumerate(zip(items, names)):
            shares = getattr(it, "class_prevalence", None) or {}
            taught = getattr(it, "teacher_scores", None) or {}
            for j, name in enumerate(n, start=1):
                targets[i, j], valid[i, j] = int(it.class_labels[name]), True
                prevalence[i, j] = shares.get(name, 0.5)
                teacher[i, j] = taught.get(name, float("nan"))
        return classification_loss(out["presence_logits"], targets.to(device), valid.to(device), weights,
                                   prevalence.to(device), None if teacher.isnan().all() else teacher.to(device))

    def result_fields(self, pred: TaskPrediction, registry: LabelRegistry) -> dict[str, Any]:
        ann = pred.annotation
        return {"prediction": [{"idx": registry.get(name).id, "label": name, "score": round(float(s), 6)}
                               for name, s in zip(ann.labels, ann.scores)]}

    def report(self, pred: TaskPrediction, source: str) -> tuple[list[str], dict[str, Any]]:
        ann = pred.annotation
        lines = [f"classification of {source}:"] + [f"  {name:22s} {s:.3f}" for name, s in zip(ann.labels, ann.scores)]
        return lines, {"prediction": [{"label": n, "score": s} for n, s in zip(ann.labels, ann.scores)]}
