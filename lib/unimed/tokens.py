"""The discrete token vocabulary of the composed decoder, and the codec for annotations.

Every annotation UniMed reads or writes, whatever its task, is standardised into one
sequence of tokens (in the manner of Pix2Seq), so that one decoder serves all tasks:

* segmentation: ``<seg> (<label:L> <mask:q>)* <eos>``, where ``<mask:q>`` points at the
  ``q``-th binary mask carried beside the token ids;
* detection: ``<det> (<label:L> x0 y0 z0 x1 y1 z1)* <eos>``, six coordinate tokens per box;
* classification: ``<cls> <label:L>* <eos>``.

Any number of ``<pad>`` tokens may follow ``<eos>``. Token ids are laid out in ranges::

    0 <pad> | 1 <eos> | task tokens | label tokens | coordinate tokens | mask tokens

so a network can map its class logits and coordinate-bin logits onto token ids by adding
:attr:`TokenVocabulary.label_offset` (class index - 1) or :attr:`TokenVocabulary.coord_offset`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Sequence, Union

import numpy as np

from unimed.labels import Label, LabelRegistry
from unimed.sequence import EOS_ID, PAD_ID, TokenDecodeError, TokenSequence, score_list
from unimed.tasks import TASKS, Task
from unimed.tasks.classification import ClassificationAnnotation
from unimed.tasks.detection import DetectionAnnotation
from unimed.tasks.segmentation import SegmentationAnnotation
from unimed.tasks.spec import ParsedObject

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

TokenKind = Literal["pad", "eos", "task", "label", "coord", "mask"]


@dataclass(frozen=True)
class TokenVocabulary:
    """The token ids of the composed decoder, built from a label registry.

    Args:
        registry: the shared label space; one label token per label, in registry order.
        num_bins: number of equal bins a normalised coordinate in [0, 1] is quantised into.
        num_mask_refs: number of mask-reference tokens, i.e. of pixel outputs a sequence can use.

    Raises:
        ValueError: ``num_bins < 2`` or ``num_mask_refs < 1``.

    Example:
        >>> vocab = TokenVocabulary(LabelRegistry(), num_bins=64, num_mask_refs=32)
        >>> vocab.token_str(vocab.task_token(Task.DETECTION))
        '<det>'
        >>> vocab.token_str(vocab.label_token("oedema"))
        '<label:edema>'
        >>> vocab.kind(vocab.coord_token(10)), vocab.bin_of(vocab.coord_token(10))
        ('coord', 10)
        >>> int(vocab.quantize(0.5)), vocab.dequantize(32)
        (32, 0.5078125)
    """

    registry: LabelRegistry
    num_bins: int = 64
    num_mask_refs: int = 32

    def __post_init__(self) -> None:
        for name, minimum in (("num_bins", 2), ("num_mask_refs", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < minimum:
                raise ValueError(f"{name} must be at least {minimum}, got {value}")

    # -- id layout ------------------------------------------------------------------------

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>`` (always 0)."""
        return PAD_ID

    @property
    def eos_id(self) -> int:
        """Id of ``<eos>`` (always 1)."""
        return EOS_ID

    @property
    def task_offset(self) -> int:
        """First task-token id; tasks follow the order of :class:`Task`."""
        return 2

    @property
    def label_offset(self) -> int:
        """First label-token id: the label with class index ``c`` has id ``label_offset + c - 1``."""
        return self.task_offset + len(Task)

    @property
    def num_labels(self) -> int:
        """Number of label tokens (the registry's size)."""
        return len(self.registry)

    @property
    def coord_offset(self) -> int:
        """First coordinate-token id: bin ``k`` has id ``coord_offset + k``."""
        return self.label_offset + self.num_labels

    @property
    def mask_offset(self) -> int:
        """First mask-reference id: ``<mask:q>`` has id ``mask_offset + q``."""
        return self.coord_offset + self.num_bins

    @property
    def size(self) -> int:
        """Number of tokens; valid ids are ``0 .. size - 1``."""
        return self.mask_offset + self.num_mask_refs

    @cached_property
    def _strings(self) -> tuple[str, ...]:
        out = ["<pad>", "<eos>"]
        out += [f"<{TASKS[task].token}>" for task in Task]
        out += [f"<label:{lab.name}>" for lab in self.registry]
        out += [f"<bin:{k}>" for k in range(self.num_bins)]
        out += [f"<mask:{q}>" for q in range(self.num_mask_refs)]
        return tuple(out)

    @cached_property
    def _ids(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self._strings)}

    # -- token ids from values ------------------------------------------------------------

    def task_token(self, task: Task | str) -> int:
        """Id of the task token that starts a sequence of ``task``."""
        return self.task_offset + list(Task).index(Task.parse(task))

    def label_token(self, label: Label | str) -> int:
        """Id of the label token of ``label`` (a :class:`Label`, name or alias).

        Raises:
            UnknownLabelError: the registry does not hold the label.
        """
        return self.label_offset + self.registry.class_index(label) - 1

    def coord_token(self, bin: int) -> int:
        """Id of the coordinate token of bin ``bin`` (``0 <= bin < num_bins``)."""
        return self.coord_offset + _in_range(bin, self.num_bins, "coordinate bin")

    def mask_token(self, q: int) -> int:
        """Id of ``<mask:q>``, which points at the ``q``-th mask payload (``0 <= q < num_mask_refs``)."""
        return self.mask_offset + _in_range(q, self.num_mask_refs, "mask reference")

    # -- values from token ids ------------------------------------------------------------

    def token_str(self, id: int) -> str:
        """The readable form of token ``id``, e.g. ``'<label:edema>'`` or ``'<bin:3>'``."""
        return self._strings[_in_range(id, self.size, "token id")]

    def id_of(self, token_str: str) -> int:
        """The id of a readable token (the inverse of :meth:`token_str`).

        Raises:
            ValueError: no token is written that way.
        """
        try:
            return self._ids[token_str]
        except KeyError:
            raise ValueError(f"unknown token {token_str!r}") from None

    def kind(self, id: int) -> TokenKind:
        """Which range token ``id`` belongs to.

        Raises:
            ValueError: ``id`` is outside ``0 .. size - 1``.
        """
        i = _in_range(id, self.size, "token id")
        if i == PAD_ID:
            return "pad"
        if i == EOS_ID:
            return "eos"
        if i < self.label_offset:
            return "task"
        if i < self.coord_offset:
            return "label"
        if i < self.mask_offset:
            return "coord"
        return "mask"

    def task_of(self, id: int) -> Task:
        """The task of a task token."""
        return list(Task)[self._offset_in(id, "task", self.task_offset)]

    def label_of(self, id: int) -> Label:
        """The label of a label token."""
        return self.registry.from_class_index(self._offset_in(id, "label", self.label_offset) + 1)

    def bin_of(self, id: int) -> int:
        """The bin of a coordinate token."""
        return self._offset_in(id, "coord", self.coord_offset)

    def mask_index_of(self, id: int) -> int:
        """The mask-payload index ``q`` of ``<mask:q>``."""
        return self._offset_in(id, "mask", self.mask_offset)

    def _offset_in(self, id: int, kind: TokenKind, offset: int) -> int:
        actual = self.kind(id)
        if actual != kind:
            raise ValueError(f"token {self.token_str(id)} (id {int(id)}) is a {actual} token, not a {kind} token")
        return int(id) - offset

    # -- coordinates ----------------------------------------------------------------------

    def quantize(self, x: np.ndarray | float) -> np.ndarray | int:
        """Bins of normalised coordinates: ``min(floor(x * num_bins), num_bins - 1)`` after clipping to [0, 1].

        Returns an ``int`` for a scalar and an int64 array of the same shape for an array.

        Raises:
            ValueError: a coordinate is NaN.
        """
        arr = np.asarray(x, dtype=np.float64)
        if np.isnan(arr).any():
            raise ValueError("cannot quantize NaN coordinates")
        bins = np.minimum(np.floor(np.clip(arr, 0.0, 1.0) * self.num_bins), self.num_bins - 1).astype(np.int64)
        return int(bins) if bins.ndim == 0 else bins

    def dequantize(self, bins: np.ndarray | int) -> np.ndarray | float:
        """Centres ``(k + 0.5) / num_bins`` of bins; within one bin width of the quantised value.

        Raises:
            ValueError: a bin is outside ``0 .. num_bins - 1``.
        """
        arr = np.asarray(bins)
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"bins must be integers, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.num_bins):
            raise ValueError(f"bins must be in 0..{self.num_bins - 1}, got range {arr.min()}..{arr.max()}")
        centres = (arr.astype(np.float64) + 0.5) / self.num_bins
        return float(centres) if centres.ndim == 0 else centres


def _in_range(value: int, stop: int, what: str) -> int:
    try:
        i = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if not 0 <= i < stop:
        raise ValueError(f"{what} {i} is outside 0..{stop - 1}")
    return i


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
                return spec.encode(annotation, self)
        raise TypeError(f"cannot encode {type(annotation).__name__}; expected an annotation")

    def label_for(self, name: str, task: Task) -> Label:
        """The registry label ``name`` (a name or alias), checked to be valid for ``task``.

        Raises:
            UnknownLabelError, ValueError: an unknown label, or one not valid for the task.
        """
        label = self.vocab.registry.get(name)
        if task not in label.tasks:
            raise ValueError(f"label {label.name!r} is not valid for {task.value}")
        return label

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
        return TASKS[task].decode(seq, objects, score_list(seq.scores), self)

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
