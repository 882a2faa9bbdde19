"""Weights of the loss terms of joint training; they live in the training config."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LossWeights"]


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
    #: share of a teacher's score in a classification target, where a teacher scored the item
    #: (distillation from a single-task peer): ``(1 - distill) * label + distill * teacher``
    distill: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.distill <= 1.0:
            raise ValueError(f"distill is the teacher's share of a target and must be in [0, 1], got {self.distill}")
