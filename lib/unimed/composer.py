"""The composed decoder: network outputs of one image -> token sequence -> annotation.

Whatever the task, the answer leaves the network as a sequence of discrete tokens of
:class:`unimed.vocabulary.TokenVocabulary` and is read back by :class:`unimed.tokens.TokenCodec`.
How a task's outputs become tokens is the task's own (:meth:`unimed.tasks.TaskSpec.compose`,
one module per task in :mod:`unimed.tasks`); this class holds the shared settings (handed to the
task as :class:`~unimed.tasks.spec.ComposeOptions`) and the codec.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from unimed.labels import Label
from unimed.tasks import TASKS, Task
from unimed.tasks.spec import ComposeOptions
from unimed.tokens import Annotation, TokenCodec, TokenSequence, TokenVocabulary
from unimed.transforms import GridSpec

__all__ = ["ComposedDecoder"]


class ComposedDecoder:
    """Turns one image's network outputs into tokens and, through the codec, annotations.

    Args:
        vocab: the network's token vocabulary.
        score_threshold: least class probability for a detection.
        nms_iou: IoU above which a lower-scoring box of the same label is dropped.
        max_detections: most boxes returned.

    Example:
        >>> import numpy as np
        >>> from unimed.labels import LabelRegistry
        >>> comp = ComposedDecoder(TokenVocabulary(LabelRegistry(), num_bins=16, num_mask_refs=8))
        >>> lab = [comp.vocab.registry.get("adrenal_hyperplasia")]
        >>> grid = GridSpec(shape=(8, 8, 8), spatial_ndim=3, affine=np.eye(4), grid=(16, 16, 16))
        >>> out = {"presence_logits": torch.tensor([0.0, 2.0])}  # the task token's, then the label's
        >>> comp.answer(Task.CLASSIFICATION, out, lab, grid).labels
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

    @property
    def options(self) -> ComposeOptions:
        """The settings a task's :meth:`~unimed.tasks.TaskSpec.compose` reads, from this decoder's."""
        return ComposeOptions(self.score_threshold, self.nms_iou, self.max_detections)

    def tokens(self, task: Task, outputs: Mapping[str, torch.Tensor], labels: Sequence[Label],
               grid: GridSpec) -> TokenSequence:
        """The token sequence of one image's decoder outputs (batch axis removed) for ``task``."""
        return TASKS[task].compose(outputs, labels, grid, self.vocab, self.options)

    def answer(self, task: Task, outputs: Mapping[str, torch.Tensor], labels: Sequence[Label],
               grid: GridSpec) -> Annotation:
        """:meth:`tokens`, decoded (and checked) by the codec into the task's annotation."""
        return self.codec.decode(self.tokens(task, outputs, labels, grid))

    def decode(self, seq: TokenSequence) -> Annotation:
        return self.codec.decode(seq)
