"""How unsure the network is about one image: the score active learning ranks images by.

The measure is the entropy of the network's own semantic outputs for the task asked (each
task's :meth:`unimed.tasks.TaskSpec.uncertainty`, defined in its module), from one
backbone pass (the features come from :meth:`Predictor.features`, cached per image, so scoring
an image the viewer just showed costs only the decoder):

- segmentation: per-voxel entropy of the softmax over background and the asked labels,
  normalised to ``[0, 1]`` by ``log(1 + L)``, averaged over the *region in doubt*: the voxels
  to which the model gives at least ``region_threshold`` chance of holding a label. A plain
  mean over the image is dominated by the large, confidently empty background, so a small
  doubtful lesion would score like an empty image. A mean over a fixed share of the image's
  most uncertain voxels (this module's first measure) grows with the lesion's boundary, so it
  ranked large lesions first; on the MSD lung patches it picked tumours covering 10-30 % of a
  patch where the typical one covers 2 % (``docs/active_learning.md``). Averaged over the
  region in doubt, a large lesion's confident interior lowers its score, a small or faint
  finding scores high, and an image with no voxel in doubt scores 0.
- classification: mean binary entropy (normalised by ``log 2``) of the presence
  probabilities of the asked labels: highest where the model says 50/50.
- detection: the normalised entropy of each query's class distribution over "no object" and
  the asked labels, averaged over the most uncertain ``top_fraction`` of the queries.

Entropy needs one pass, where Monte-Carlo dropout or test-time augmentation need several;
on a CPU server that is the difference between scoring a datastore in minutes or in hours.
The same pass gives the backbone's global ``embedding``, kept for diversity-aware selection
(:mod:`unimed.selection`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np
import torch

from unimed.labels import Label
from unimed.predictor import Predictor
from unimed.tasks import TASKS, Task
from unimed.tasks.classification import presence_entropy
from unimed.tasks.detection import query_entropy
from unimed.tasks.segmentation import segmentation_entropy

__all__ = ["ImageScore", "segmentation_entropy", "presence_entropy", "query_entropy", "score_image"]


@dataclass(frozen=True)
class ImageScore:
    """The active-learning score of one image.

    Attributes:
        uncertainty: in ``[0, 1]``; higher means the model is less sure.
        embedding: the backbone's global image embedding (1-D float32).
    """

    uncertainty: float
    embedding: np.ndarray


@torch.inference_mode()
def score_image(
    predictor: Predictor,
    image: torch.Tensor,
    task: Task | str = Task.SEGMENTATION,
    labels: Sequence[str | Label] | None = None,
    *,
    key: Hashable | None = None,
    top_fraction: float = 0.1,
    region_threshold: float = 0.1,
) -> ImageScore:
    """Uncertainty and embedding of one channel-first image, from one backbone pass.

    Args:
        predictor: the served predictor (its feature cache is used when ``key`` is given).
        image: ``(C, X, Y[, Z])`` image, as :meth:`Predictor.predict` takes it.
        task: whose outputs are measured.
        labels: the labels asked for; None for every label of the task.
        key: feature-cache key of the image.
        top_fraction: share of the detection queries averaged, see the module notes.
        region_threshold: label probability that puts a voxel in the segmentation's region
            in doubt, see the module notes.

    Raises:
        UnknownTaskError, UnknownLabelError: an unknown task or label.

    Example:
        >>> from unimed.networks.unimednet import unimed_tiny
        >>> s = score_image(Predictor(unimed_tiny()), torch.rand(1, 32, 32, 16), "segmentation", ["edema"])
        >>> 0.0 <= s.uncertainty <= 1.0, s.embedding.shape
        (True, (16,))
    """
    task, resolved = predictor.resolve(task, labels)
    model = predictor.model
    feats, _ = predictor.features(image, key)
    ids, pad = model.prompt([(task, resolved)])
    out = {name: value[0] for name, value in model.decode(feats, ids, pad).items()}
    value = TASKS[task].uncertainty(out, resolved, model.registry, top_fraction=top_fraction,
                                    region_threshold=region_threshold)
    return ImageScore(value, feats.embedding[0].float().cpu().numpy().astype(np.float32))
