"""Supervised losses of joint training; each lives with its task in :mod:`unimed.tasks`.

Kept here under their old names for the training code and its users:

* segmentation: cross-entropy plus soft Dice (:func:`unimed.tasks.segmentation.segmentation_loss`);
* detection: Hungarian matching, class, box L1, GIoU and coordinate-token losses, and the
  proposal head's heat-map and extent losses (:mod:`unimed.tasks.detection`);
* classification: binary cross-entropy of presence logits
  (:func:`unimed.tasks.classification.classification_loss`).
"""

from __future__ import annotations

from unimed.boxes import generalized_box_iou
from unimed.loss_weights import LossWeights
from unimed.tasks.classification import classification_loss
from unimed.tasks.detection import detection_loss, match, proposal_loss
from unimed.tasks.segmentation import segmentation_loss

__all__ = [
    "LossWeights", "segmentation_loss", "detection_loss", "proposal_loss", "classification_loss", "generalized_box_iou",
    "match",
]
