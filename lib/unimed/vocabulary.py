"""The discrete token vocabulary of the composed decoder: which id means which token.

Token ids are laid out in ranges::

    0 <pad> | 1 <eos> | task tokens | label tokens | coordinate tokens | mask tokens

so a network can map its class logits and coordinate-bin logits onto token ids by adding
:attr:`TokenVocabulary.label_offset` (class index - 1) or :attr:`TokenVocabulary.coord_offset`.
The vocabulary knows the task names (:mod:`unimed.task_names`) but not the task registry, so
the task specs (:mod:`unimed.tasks`) can build and read tokens with it; the codec that joins the
two is :class:`unimed.tokens.TokenCodec`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from unimed.labels import Label, LabelRegistry
from unimed.sequence import EOS_ID, PAD_ID
from unimed.task_names import Task

__all__ = ["TokenKind", "TokenVocabulary"]

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
        out += [f"<{task.token}>" for task in Task]
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

    def label_for(self, name: str, task: Task) -> Label:
        """The registry label ``name`` (a name or alias), checked to be valid for ``task``.

        Raises:
            UnknownLabelError: the registry does not hold the label.
            ValueError: the label is not valid for ``task``.

        Example:
            >>> vocab = TokenVocabulary(LabelRegistry())
            >>> vocab.label_for("rbc", Task.DETECTION).name
            'red_blood_cell'
            >>> vocab.label_for("rbc", Task.SEGMENTATION)
            Traceback (most recent call last):
            ...
            ValueError: label 'red_blood_cell' is not valid for segmentation
        """
        label = self.registry.get(name)
        if task not in label.tasks:
            raise ValueError(f"label {label.name!r} is not valid for {task.value}")
        return label

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
