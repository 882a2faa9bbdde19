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
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Sequence, Union

import numpy as np

from unimed.labels import Label, LabelRegistry
from unimed.tasks import Task

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

PAD_ID = 0
EOS_ID = 1

TokenKind = Literal["pad", "eos", "task", "label", "coord", "mask"]

_TASK_NAMES = {Task.SEGMENTATION: "seg", Task.DETECTION: "det", Task.CLASSIFICATION: "cls"}
_BOX_AXES = ("x", "y", "z")


class TokenDecodeError(ValueError):
    """A token sequence that is not well formed; the message names the position and the problem."""


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
        out += [f"<{_TASK_NAMES[task]}>" for task in Task]
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


@dataclass
class TokenSequence:
    """Token ids plus the payloads they point at.

    Attributes:
        ids: token ids, starting with a task token and ending with ``<eos>`` and optional ``<pad>``.
        masks: binary masks, one per mask-reference: ``masks[q]`` is the payload of ``<mask:q>``.
        scores: optional score of each object, one per label token, in sequence order.
        shape: spatial shape of a segmentation; needed to decode one that has no masks.
    """

    ids: list[int]
    masks: list[np.ndarray] | None = None
    scores: list[float] | None = None
    shape: tuple[int, ...] | None = None


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


@dataclass
class ClassificationAnnotation:
    """The labels present in an image.

    Attributes:
        labels: registry names of the labels present, each at most once.
        scores: optional score of each label.
    """

    labels: list[str]
    scores: list[float] | None = None


Annotation = Union[SegmentationAnnotation, DetectionAnnotation, ClassificationAnnotation]


@dataclass
class _Object:
    """One parsed object of a sequence: its label token and the argument tokens after it."""

    pos: int
    label: Label
    args: list[int] = field(default_factory=list)


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
        if isinstance(annotation, SegmentationAnnotation):
            return self._encode_segmentation(annotation)
        if isinstance(annotation, DetectionAnnotation):
            return self._encode_detection(annotation)
        if isinstance(annotation, ClassificationAnnotation):
            return self._encode_classification(annotation)
        raise TypeError(f"cannot encode {type(annotation).__name__}; expected an annotation")

    def _label_for(self, name: str, task: Task) -> Label:
        label = self.vocab.registry.get(name)
        if task not in label.tasks:
            raise ValueError(f"label {label.name!r} is not valid for {task.value}")
        return label

    def _encode_segmentation(self, ann: SegmentationAnnotation) -> TokenSequence:
        label_map = np.asarray(ann.label_map)
        if label_map.ndim == 0:
            raise ValueError("label_map must have at least one spatial dimension")
        if not np.issubdtype(label_map.dtype, np.integer):
            raise ValueError(f"label_map must be an integer array, got dtype {label_map.dtype}")
        present = [int(v) for v in np.unique(label_map) if v != 0]
        labels = []
        for value in present:
            try:
                label = self.vocab.registry.by_id(value)
            except ValueError:
                raise ValueError(f"label_map value {value} is not a label id of the registry") from None
            labels.append(self._label_for(label.name, Task.SEGMENTATION))
        if len(labels) > self.vocab.num_mask_refs:
            raise ValueError(f"label_map has {len(labels)} labels but only {self.vocab.num_mask_refs} mask references")
        scores = None
        if ann.scores is not None:
            given = {self.vocab.registry.get(name).name: float(s) for name, s in ann.scores.items()}
            missing = [lab.name for lab in labels if lab.name not in given]
            if missing:
                raise ValueError(f"scores lack labels present in label_map: {', '.join(missing)}")
            scores = [given[lab.name] for lab in labels]
        ids = [self.vocab.task_token(Task.SEGMENTATION)]
        for q, label in enumerate(labels):
            ids += [self.vocab.label_token(label), self.vocab.mask_token(q)]
        ids.append(EOS_ID)
        masks = [label_map == lab.id for lab in labels]
        return TokenSequence(ids, masks=masks, scores=scores, shape=tuple(label_map.shape))

    def _encode_detection(self, ann: DetectionAnnotation) -> TokenSequence:
        boxes = np.asarray(ann.boxes, dtype=np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 6)
        if boxes.ndim != 2 or boxes.shape[1] != 6:
            raise ValueError(f"boxes must have shape (N, 6), got {boxes.shape}")
        if len(ann.labels) != len(boxes):
            raise ValueError(f"got {len(boxes)} boxes but {len(ann.labels)} labels")
        _check_scores(ann.scores, len(boxes), "boxes")
        if not np.isfinite(boxes).all() or (boxes < 0).any() or (boxes > 1).any():
            raise ValueError("box coordinates must be finite and within [0, 1]")
        inverted = np.argwhere(boxes[:, :3] > boxes[:, 3:])
        if len(inverted):
            n, axis = inverted[0]
            raise ValueError(f"box {n} is inverted: {_BOX_AXES[axis]}0 > {_BOX_AXES[axis]}1")
        labels = [self._label_for(name, Task.DETECTION) for name in ann.labels]
        bins = self.vocab.quantize(boxes)
        ids = [self.vocab.task_token(Task.DETECTION)]
        for label, row in zip(labels, bins):
            ids.append(self.vocab.label_token(label))
            ids += [self.vocab.coord_token(int(b)) for b in row]
        ids.append(EOS_ID)
        return TokenSequence(ids, scores=_score_list(ann.scores))

    def _encode_classification(self, ann: ClassificationAnnotation) -> TokenSequence:
        _check_scores(ann.scores, len(ann.labels), "labels")
        labels = [self._label_for(name, Task.CLASSIFICATION) for name in ann.labels]
        names = [lab.name for lab in labels]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"classification labels are repeated: {', '.join(repeated)}")
        ids = [self.vocab.task_token(Task.CLASSIFICATION)]
        ids += [self.vocab.label_token(label) for label in labels]
        ids.append(EOS_ID)
        return TokenSequence(ids, scores=_score_list(ann.scores))

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
        scores = _score_list(seq.scores)
        if task is Task.SEGMENTATION:
            return self._decode_segmentation(seq, objects, scores)
        if task is Task.DETECTION:
            return self._decode_detection(objects, scores)
        return ClassificationAnnotation([obj.label.name for obj in objects], scores=scores)

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
            raise TokenDecodeError(f"position 0: expected a task token (<seg>, <det>, <cls>), got {got}")
        return self.vocab.task_of(ids[0])

    def _read_objects(self, ids: list[int], task: Task) -> list[_Object]:
        """Parse ``(<label> args)* <eos> <pad>*`` after the task token."""
        arity, arg_kind = {Task.SEGMENTATION: (1, "mask"), Task.DETECTION: (6, "coord")}.get(task, (0, ""))
        objects: list[_Object] = []
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
            if task is not Task.DETECTION:
                if label.name in seen:
                    raise TokenDecodeError(f"position {pos}: label {label.name!r} is repeated in a {task.value}")
                seen.add(label.name)
            obj = _Object(pos, label)
            for k in range(arity):
                at = pos + 1 + k
                if at >= len(ids) or ids[at] == EOS_ID:
                    raise TokenDecodeError(self._truncated(task, obj, k, at))
                if self.vocab.kind(ids[at]) != arg_kind:
                    raise TokenDecodeError(f"position {at}: expected a {arg_kind} token, got {self._describe(ids[at])}")
                obj.args.append(ids[at])
            objects.append(obj)
            pos += 1 + arity
        for after in range(pos + 1, len(ids)):
            if ids[after] != PAD_ID:
                got = self._describe(ids[after])
                raise TokenDecodeError(f"position {after}: only <pad> may follow <eos>, got {got}")
        return objects

    def _truncated(self, task: Task, obj: _Object, got: int, at: int) -> str:
        label = self.vocab.token_str(self.vocab.label_token(obj.label))
        if task is Task.DETECTION:
            return f"position {at}: truncated box: {label} at position {obj.pos} has {got} of 6 coordinates"
        return f"position {at}: truncated segment: {label} at position {obj.pos} has no mask reference"

    def _decode_segmentation(
        self, seq: TokenSequence, objects: list[_Object], scores: list[float] | None
    ) -> SegmentationAnnotation:
        masks, shape = _checked_masks(seq.masks or [], seq.shape)
        for obj in objects:
            q = self.vocab.mask_index_of(obj.args[0])
            if q >= len(masks):
                raise TokenDecodeError(f"position {obj.pos + 1}: <mask:{q}> has no payload ({len(masks)} masks given)")
        if shape is None:
            raise TokenDecodeError("cannot decode a segmentation without a shape: no mask payloads and no shape given")
        label_map = np.zeros(shape, dtype=np.uint8)
        for obj in objects:
            label_map[masks[self.vocab.mask_index_of(obj.args[0])]] = obj.label.id
        named = None if scores is None else {obj.label.name: s for obj, s in zip(objects, scores)}
        return SegmentationAnnotation(label_map, scores=named)

    def _decode_detection(self, objects: list[_Object], scores: list[float] | None) -> DetectionAnnotation:
        bins = np.array([[self.vocab.bin_of(i) for i in obj.args] for obj in objects], dtype=np.int64).reshape(-1, 6)
        for obj, row in zip(objects, bins):
            for axis, name in enumerate(_BOX_AXES):
                if row[axis] > row[axis + 3]:
                    raise TokenDecodeError(
                        f"position {obj.pos}: box has {name}0 > {name}1 (bin {row[axis]} > bin {row[axis + 3]})"
                    )
        boxes = np.asarray(self.vocab.dequantize(bins), dtype=np.float64).reshape(-1, 6)
        return DetectionAnnotation(boxes, [obj.label.name for obj in objects], scores=scores)


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


def _check_scores(scores: Sequence[float] | None, n: int, what: str) -> None:
    if scores is not None and len(scores) != n:
        raise ValueError(f"got {len(scores)} scores for {n} {what}")


def _score_list(scores: Sequence[float] | None) -> list[float] | None:
    return None if scores is None else [float(s) for s in scores]
