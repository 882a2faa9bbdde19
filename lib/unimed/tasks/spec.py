"""The contract of a task: everything task-specific, in one object per task.

The codec, the composed decoder, the predictor, uncertainty scoring, joint training, the
infer task's writer and the command line never branch on the task: they look up its
:class:`TaskSpec` in :data:`unimed.tasks.TASKS` and call it.

The specs sit below those callers: they import the label registry, the token vocabulary and
the grid geometry, never the codec, the composer, the network or the predictor. What a spec
needs of those it receives as plain values (:class:`~unimed.vocabulary.TokenVocabulary`,
:class:`ComposeOptions`) or reads through the small protocols here (:class:`TaskModel`,
:class:`TaskPrediction`), which the real classes satisfy without naming them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Literal, Mapping, Optional, Protocol, Sequence

import numpy as np
import torch

from unimed.labels import Label, LabelRegistry
from unimed.loss_weights import LossWeights
from unimed.sequence import TokenSequence
from unimed.task_names import Task
from unimed.transforms import GridSpec
from unimed.vocabulary import TokenVocabulary

__all__ = ["TaskSpec", "ParsedObject", "TrainingItem", "OutputFile", "ComposeOptions", "TaskModel", "TaskPrediction"]

#: the file an answer is written to besides its JSON: a label image, a Slicer ROI markup, or none
OutputFile = Optional[Literal["label_map", "roi_markup"]]


@dataclass(frozen=True)
class ComposeOptions:
    """How a task turns one image's decoder outputs into tokens; the composed decoder
    (:class:`unimed.composer.ComposedDecoder`) passes its own settings.

    Attributes:
        score_threshold: least class probability for a detection.
        nms_iou: IoU above which a lower-scoring box of the same label is dropped.
        max_detections: most boxes returned.

    Example:
        >>> ComposeOptions(score_threshold=0.5)
        ComposeOptions(score_threshold=0.5, nms_iou=0.5, max_detections=100)
    """

    score_threshold: float = 0.3
    nms_iou: float = 0.5
    max_detections: int = 100


class NetworkConfig(Protocol):
    """What a task's loss reads of the network's settings (``UniMedConfig`` is one)."""

    @property
    def num_bins(self) -> int:
        """Coordinate bins per box coordinate."""


class TaskModel(Protocol):
    """What a task's loss uses of the network (:class:`unimed.networks.unimednet.UniMed` is one).

    ``features`` are the network's image features (``unimed.networks.unimednet.Features``, what
    its ``encode`` gives); a spec only hands them back to :meth:`decode`.
    """

    @property
    def registry(self) -> LabelRegistry:
        """The shared label space."""

    @property
    def config(self) -> NetworkConfig:
        """The network's settings."""

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        """The network's parameters (their device is the batch's)."""

    def prompt(
        self, requests: Sequence[tuple[Task | str, Sequence[Label | str] | None]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and padding mask for a batch of ``(task, labels)`` requests."""

    def decode(
        self, features: Any, prompt_ids: torch.Tensor, prompt_pad: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The decoder's outputs for the prompts over the images' ``features``."""


class TaskPrediction(Protocol):
    """What a task's answer reads of a prediction (:class:`unimed.predictor.Prediction` is one)."""

    @property
    def labels(self) -> Sequence[Label]:
        """The labels asked for."""

    @property
    def annotation(self) -> Any:
        """The decoded annotation (the spec's :attr:`TaskSpec.annotation_type`)."""

    def label_map(self) -> np.ndarray:
        """A segmentation as an array of the image's spatial shape (registry label ids)."""

    def boxes_voxel(self) -> np.ndarray:
        """Boxes as ``[x0, y0, z0, x1, y1, z1]`` continuous voxel-index coordinates."""

    def boxes_world(self) -> np.ndarray:
        """Boxes as ``[cx, cy, cz, sx, sy, sz]`` in world millimetres, LPS."""


@dataclass
class ParsedObject:
    """One object of a token sequence: its label token (at ``pos``) and the argument tokens after it."""

    pos: int
    label: Label
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
    class_prevalence: dict[str, float] | None  # positive share of each class label in its source, or None
    teacher_scores: dict[str, float] | None  # a single-task teacher's probability of each class label, or None


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

    task: ClassVar[Task]
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
    def encode(self, annotation: Any, vocab: TokenVocabulary) -> TokenSequence:
        """Annotation -> token sequence of ``vocab``'s ids; raises ValueError for an invalid annotation
        (check labels with :meth:`~unimed.vocabulary.TokenVocabulary.label_for`)."""

    @abstractmethod
    def decode(self, seq: TokenSequence, objects: list[ParsedObject], scores: list[float] | None,
               vocab: TokenVocabulary) -> Any:
        """Parsed objects of a grammatical sequence (the codec checked the grammar) -> annotation;
        raises TokenDecodeError."""

    def truncated(self, label: str, obj: ParsedObject, got: int, at: int) -> str:
        """The message for an object whose argument tokens stop after ``got`` of :attr:`arity`."""
        return f"position {at}: truncated object: {label} at position {obj.pos} has {got} of {self.arity} arguments"

    # -- network outputs -> tokens ----------------------------------------------------------------
    @abstractmethod
    def compose(self, outputs: Mapping[str, torch.Tensor], labels: Sequence[Label], grid: GridSpec,
                vocab: TokenVocabulary, options: ComposeOptions) -> TokenSequence:
        """One image's decoder outputs (batch axis removed) -> the answer's token sequence."""

    @abstractmethod
    def uncertainty(self, outputs: Mapping[str, torch.Tensor], labels: Sequence[Label], registry: LabelRegistry,
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
    def loss(self, model: TaskModel, feats: Any, items: Sequence[TrainingItem],
             weights: LossWeights) -> dict[str, torch.Tensor]:
        """Weighted supervised loss terms of one batch, from its backbone features ``feats``
        (what ``model.encode`` gave; passed on to ``model.decode``)."""

    # -- the answer -------------------------------------------------------------------------------
    @abstractmethod
    def result_fields(self, pred: TaskPrediction, registry: LabelRegistry) -> dict[str, Any]:
        """JSON-ready fields of the server's answer (MONAI Label's result format)."""

    @abstractmethod
    def report(self, pred: TaskPrediction, source: str) -> tuple[list[str], dict[str, Any]]:
        """The command line's answer: lines to print and a JSON-ready result."""

