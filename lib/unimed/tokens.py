"""The discrete token vocabulary of the composed decoder, and the codec for annotations.

Every annotation UniMed reads or writes, whatever its task, is standardised into one
sequence of tokens (in the manner of Pix2Seq), so that one decoder serves all tasks:

* segmentation: ``<seg> (<label:L> <mask:q>)* <eos>``, where ``<mask:q>`` points at the
  ``q``-th binary mask carried beside the token ids;
* detection: ``<det> (<label:L> x0 y0 z0 x1 y1 z1)* <eos>``, six coordinate tokens per box;
* classification: ``<cls> <label:L>* <eos>``.

Any number of ``<pad>`` tokens may follow ``<eos>``. Which id means which token is the
vocabulary's (:mod:`unimed.vocabulary`, re-exported here); how each task writes and reads its
objects is the task's spec (:mod:`unimed.tasks`), which the codec looks up by the task token.
"""

from __future__ import annotations

import operator
from typing import Sequence, Union

import numpy as np

from unimed.labels import Label, LabelRegistry
from unimed.sequence import EOS_ID, PAD_ID, TokenDecodeError, TokenSequence, score_list
from unimed.tasks import TASKS, Task
from unimed.tasks.classification import ClassificationAnnotation
from unimed.tasks.detection import DetectionAnnotation
from unimed.tasks.segmentation import SegmentationAnnotation
from unimed.tasks.spec import ParsedObject
from unimed.vocabulary import TokenKind, TokenVocabulary

__all__ = [
    "PAD_ID",
    "EOS_ID",
    "TokenKind",
    "TokenDecodeError",
    "TokenVocabulary",
    "TokenSequence",
    "SegmentationAnnotation",
    "DetectionAnnotation",
    "ClassificationAnnotation",
    "Annotation",
    "TokenCodec",
]

#: an annotation of any task (each task module defines its own type)
Annotation = Union[tuple(spec.annotation_type for spec in TASKS.values())]


class TokenCodec:
    """Encodes annotations into token sequences and decodes (and checks) sequences back.

    Args:
        vocab: the token vocabulary.

    Example:
        >>> codec = TokenCodec(TokenVocabulary(LabelRegistry(), num_bins=10))
        >>> seq = codec.encode(ClassificationAnnotation(["lung_tumor"], scores=[0.9]))
        >>> [codec.vocab.token_str(i) for i in seq.ids]
        ['<cls>', '<label:lung_tumor>', '<eos>']
        >>> codec.decode(seq)
        ClassificationAnnotation(labels=['lung_tumor'], scores=[0.9])
        >>> box = np.array([[0.0, 0.0, 0.0, 0.5, 0.5, 1.0]])
        >>> codec.decode(codec.encode(DetectionAnnotation(box, ["rbc"]))).boxes
        array([[0.05, 0.05, 0.05, 0.55, 0.55, 0.95]])
    """

    def __init__(self, vocab: TokenVocabulary) -> None:
        self.vocab = vocab

    # -- encode ---------------------------------------------------------------------------

    def encode(self, annotation: Annotation) -> TokenSequence:
        """Turn an annotation into a token sequence.

        Raises:
            ValueError: the annotation is invalid (unknown label, label not valid for the task,
                box outside [0, 1] or inverted, mismatched lengths, ...).
            TypeError: ``annotation`` is not one of the annotation types.
        """
        for spec in TASKS.values():
            if isinstance(annotation, spec.annotation_type):
                return spec.encode(annotation, self.vocab)
        raise TypeError(f"cannot encode {type(annotation).__name__}; expected an annotation")

    def label_for(self, name: str, task: Task) -> Label:
        """The registry label ``name`` (a name or alias), checked to be valid for ``task``.

        Raises:
            UnknownLabelError, ValueError: an unknown label, or one not valid for the task.
        """
        return self.vocab.label_for(name, task)

    # -- decode ---------------------------------------------------------------------------

    def decode(self, seq: TokenSequence) -> Annotation:
        """Check a token sequence against the grammar and turn it into an annotation.

        The annotation type follows the leading task token. Trailing ``<pad>`` is ignored.

        Raises:
            TokenDecodeError: the sequence is not well formed; the message says where and why.
        """
        ids = self._checked_ids(seq.ids)
        task = self._read_task(ids)
        objects = self._read_objects(ids, task)
        num_objects = len(objects)
        if seq.scores is not None and len(seq.scores) != num_objects:
            raise TokenDecodeError(f"got {len(seq.scores)} scores for {num_objects} objects (label tokens)")
        return TASKS[task].decode(seq, objects, score_list(seq.scores), self.vocab)

    def _checked_ids(self, raw: Sequence[int]) -> list[int]:
        ids = []
        for pos, value in enumerate(raw):
            try:
                i = operator.index(value)
            except TypeError:
                raise TokenDecodeError(f"position {pos}: token id {value!r} is not an integer") from None
            if not 0 <= i < self.vocab.size:
                raise TokenDecodeError(f"position {pos}: unknown token id {i} (valid ids are 0..{self.vocab.size - 1})")
            ids.append(i)
        if not ids:
            raise TokenDecodeError("empty token sequence: expected a task token followed by <eos>")
        return ids

    def _describe(self, id: int) -> str:
        return f"{self.vocab.kind(id)} token {self.vocab.token_str(id)}"

    def _read_task(self, ids: list[int]) -> Task:
        if self.vocab.kind(ids[0]) != "task":
            got = self._describe(ids[0])
            tokens = ", ".join(f"<{spec.token}>" for spec in TASKS.values())
            raise TokenDecodeError(f"position 0: expected a task token ({tokens}), got {got}")
        return self.vocab.task_of(ids[0])

    def _read_objects(self, ids: list[int], task: Task) -> list[ParsedObject]:
        """Parse ``(<label> args)* <eos> <pad>*`` after the task token, by the task's grammar."""
        spec = TASKS[task]
        objects: list[ParsedObject] = []
        seen: set[str] = set()
        pos = 1
        while True:
            if pos >= len(ids):
                raise TokenDecodeError(f"missing <eos>: the sequence ends at position {len(ids)} without one")
            if ids[pos] == EOS_ID:
                break
            if self.vocab.kind(ids[pos]) != "label":
                got = self._describe(ids[pos])
                raise TokenDecodeError(f"position {pos}: expected a label token or <eos>, got {got}")
            label = self.vocab.label_of(ids[pos])
            if task not in label.tasks:
                raise TokenDecodeError(f"position {pos}: label {label.name!r} is not valid for {task.value}")
            if spec.unique_labels:
                if label.name in seen:
                    raise TokenDecodeError(f"position {pos}: label {label.name!r} is repeated in a {task.value}")
                seen.add(label.name)
            obj = ParsedObject(pos, label)
            for k in range(spec.arity):
                at = pos + 1 + k
                if at >= len(ids) or ids[at] == EOS_ID:
                    raise TokenDecodeError(spec.truncated(self.vocab.token_str(ids[pos]), obj, k, at))
                if self.vocab.kind(ids[at]) != spec.argument_kind:
                    got = self._describe(ids[at])
                    raise TokenDecodeError(f"position {at}: expected a {spec.argument_kind} token, got {got}")
                obj.args.append(ids[at])
            objects.append(obj)
            pos += 1 + spec.arity
        for after in range(pos + 1, len(ids)):
            if ids[after] != PAD_ID:
                got = self._describe(ids[after])
                raise TokenDecodeError(f"position {after}: only <pad> may follow <eos>, got {got}")
        return objects
