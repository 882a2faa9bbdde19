"""The contract of a task: everything task-specific, in one object per task.

The codec, the composed decoder, the predictor, uncertainty scoring, joint training, the
infer task's writer and the command line never branch on the task: they look up its
:class:`TaskSpec` in :data:`unimed.tasks.TASKS` and call it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Optional, Protocol, Sequence

import torch

from unimed.sequence import TokenSequence

if TYPE_CHECKING:  # the modules below import unimed.tasks themselves
    from unimed.composer import ComposedDecoder
    from unimed.labels import Label, LabelRegistry
    from unimed.loss_weights import LossWeights
    from unimed.networks.unimed import Features, UniMed
    from unimed.predictor import Prediction
    from unimed.tasks.task import Task
    from unimed.tokens import TokenCodec
    from unimed.transforms import GridSpec

__all__ = ["TaskSpec", "ParsedObject", "TrainingItem", "OutputFile"]

#: the file an answer is written to besides its JSON: a label image, a Slicer ROI markup, or none
OutputFile = Optional[Literal["label_map", "roi_markup"]]


@dataclass
class ParsedObject:
    """One object of a token sequence: its label token (at ``pos``) and the argument tokens after it."""

    pos: int
    label: "Label"
    args: list[int] = field(default_factory=list)


class TrainingItem(Protocol):
    """What a task's loss reads from a training batch item (``trainers.data.GridItem`` is one)."""

    image: torch.Tensor  # (C, gx, gy, gz)
    label_map: torch.Tensor | None  # (gx, gy, gz) registry ids
    seg_labels: tuple[str, ...]
    boxes: torch.Tensor | None  # (N, 6) normalised
    box_labels: list[str]
    det_labels: tuple[str, ...]
    class_labels: dict[str, int] | None


class TaskSpec(ABC):
    """Everything one task means to UniMed: grammar, decoding, uncertainty, loss and answer.

    A subclass sets the class attributes and implements the methods; one instance of it is
    registered in :data:`unimed.tasks.TASKS` (see ``docs/adding_a_task.md``).

    Attributes:
        task: the :class:`~unimed.tasks.Task` member it implements.
        token: short name: the task token is ``<token>``, and ``token`` is an alias in requests.
        annotation_type: the dataclass its answers decode to.
        arity: argument tokens after each label token (0 for none).
        argument_kind: the kind of those argument tokens (``"mask"``, ``"coord"``) or None.
        unique_labels: whether a label may appear at most once in a sequence.
        output_file: the file an answer is written to (``"label_map"``, ``"roi_markup"``) or None.

    Example:
        >>> from unimed.tasks import TASKS, Task
        >>> spec = TASKS[Task.DETECTION]
        >>> spec.token, spec.arity, spec.argument_kind, spec.output_file
        ('det', 6, 'coord', 'roi_markup')
    """

    task: ClassVar["Task"]
    annotation_type: ClassVar[type]
    arity: ClassVar[int] = 0
    argument_kind: ClassVar[str | None] = None
    unique_labels: ClassVar[bool] = True
    output_file: ClassVar[OutputFile] = None

    @property
    def token(self) -> str:
        """The task's short token (``seg``, ``det``, ``cls``): ``<token>`` in sequences."""
        return self.task.token

    # -- codec ----------------------------------------------------------------------------------
    @abstractmethod
    def encode(self, annotation: Any, codec: "TokenCodec") -> TokenSequence:
        """Annotation -> token sequence; raises ValueError for an invalid annotation."""

    @abstractmethod
    def decode(self, seq: TokenSequence, objects: list[ParsedObject], scores: list[float] | None,
               codec: "TokenCodec") -> Any:
        """Parsed objects of a grammatical sequence -> annotation; raises TokenDecodeError."""

    def truncated(self, label: str, obj: ParsedObject, got: int, at: int) -> str:
        """The message for an object whose argument tokens stop after ``got`` of :attr:`arity`."""
        return f"position {at}: truncated object: {label} at position {obj.pos} has {got} of {self.arity} arguments"

    # -- network outputs -> tokens ----------------------------------------------------------------
    @abstractmethod
    def compose(self, outputs: Mapping[str, torch.Tensor], labels: Sequence["Label"], grid: "GridSpec",
                composer: "ComposedDecoder") -> TokenSequence:
        """One image's decoder outputs (batch axis removed) -> the answer's token sequence."""

    @abstractmethod
    def uncertainty(self, outputs: Mapping[str, torch.Tensor], labels: Sequence["Label"], registry: "LabelRegistry",
                    *, top_fraction: float, region_threshold: float) -> float:
        """How unsure one image's outputs are, in ``[0, 1]`` (see :mod:`unimed.uncertainty`)."""

    # -- training ---------------------------------------------------------------------------------
    @abstractmethod
    def has_targets(self, items: Sequence[TrainingItem]) -> bool:
        """Whether every item of a batch carries this task's ground truth."""

    @abstractmethod
    def target_labels(self, items: Sequence[TrainingItem]) -> list[str]:
        """The names of the labels this task's ground truth holds in any of the items, sorted."""

    @abstractmethod
    def loss(self, model: "UniMed", feats: "Features", items: Sequence[TrainingItem],
             weights: "LossWeights") -> dict[str, torch.Tensor]:
        """Weighted supervised loss terms of one batch, from its backbone features."""

    # -- the answer -------------------------------------------------------------------------------
    @abstractmethod
    def result_fields(self, pred: "Prediction", registry: "LabelRegistry") -> dict[str, Any]:
        """JSON-ready fields of the server's answer (MONAI Label's result format)."""

    @abstractmethod
    def report(self, pred: "Prediction", source: str) -> tuple[list[str], dict[str, Any]]:
        """The command line's answer: lines to print and a JSON-ready result."""

