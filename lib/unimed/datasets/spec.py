"""What the project knows about one dataset kind, in one frozen :class:`DatasetSpec`.

Each dataset module (``brats.py``, ``medmnist.py``...) defines its reader, its evaluator and a
``SPEC``; :mod:`unimed.datasets` registers the specs, and everything that handles a dataset
kind reads them: :func:`unimed.evaluation.evaluate`, pretraining and its default mix, the
active-learning simulation, the accuracy benchmark and the command line's choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from unimed.datasets.sample import Sample

__all__ = ["PER_CASE", "DatasetSpec", "Predicts", "TrainingShare"]

#: the key of an evaluator's metrics under which it may return each case's figures,
#: ``{case name: {metric: value}}``, when its figures are means over cases
PER_CASE = "per_case"


class Predicts(Protocol):
    """Anything whose ``predict`` answers like :meth:`unimed.predictor.Predictor.predict`
    (the predictor itself, or a benchmark's peer)."""

    def predict(self, image: Any, task: str, labels: Sequence[str] | None = None, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class TrainingShare:
    """A dataset's default share of one joint-training step (the trainers' ``MixEntry``).

    Attributes:
        tasks: the tasks trained on its samples (``segmentation``, ``detection``, ``classification``).
        batch_size: samples per step.
        every: it joins every ``every``-th step (1: every step).
        channel_dropout: probability that a multi-channel batch keeps a random subset of its channels.
        modality_dropout: probability that a batch's channel modalities read as unknown.
        augment_intensity: intensity and resolution augmentation besides flips (off where the
            intensities are the signal, as in binary shape masks).
        clicks: probability that a segmentation batch also trains with simulated clicks.
    """

    tasks: tuple[str, ...]
    batch_size: int = 1
    every: int = 1
    channel_dropout: float = 0.0
    modality_dropout: float = 0.1
    augment_intensity: bool = True
    clicks: float = 0.0


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset kind: how it is read, scored and trained.

    Attributes:
        kind: the name the command line and the code use (``brats``).
        reader: ``reader(path, split)`` -> samples; raises :class:`~unimed.datasets.DatasetError`
            for a bad folder or an unknown split (naming the valid ones).
        evaluator: ``evaluator(samples, predictor)`` -> metrics, on annotated samples only; an
            evaluator whose figures are means over cases also returns each case's under
            :data:`PER_CASE`.
        annotated: whether a sample carries what ``evaluator`` scores.
        primary_metric: the key of the evaluator's metrics that ranks models (al-sim's curves,
            the accuracy benchmark's verdict).
        default_split: the split :meth:`read` gets for ``split=None`` (None: every case);
            ``reader(path, None)`` itself always reads every case.
        eval_split: the split :func:`~unimed.evaluation.evaluate` reads when none is given and
            the folder holds it (see :meth:`evaluation_split`).
        splits: ``splits(path)`` -> the split names a folder or file holds in its own split
            files (VOC's lists, MedMNIST's keys); None for a kind whose splits are fixed rules.
        folder: its folder in a data folder laid out like ``../shared/data``; None for a kind
            outside that layout (pretraining, its validation, al-sim and the accuracy
            benchmark take the kinds that have one).
        train_split: the split pretraining and al-sim train on.
        val_split: the split they validate on.
        training: its default share of a pretraining step; given exactly when ``folder`` is.

    Example:
        >>> spec = DatasetSpec("toy", reader=lambda path, split: [], evaluator=lambda s, p: {"acc": 1.0},
        ...                    annotated=lambda s: True, primary_metric="acc", default_split="train")
        >>> spec.read("/data/toy"), spec.folder
        ([], None)
    """

    kind: str
    reader: Callable[[str | Path, str | None], list[Sample]]
    evaluator: Callable[[Sequence[Sample], Predicts], dict[str, Any]]
    annotated: Callable[[Sample], bool]
    primary_metric: str
    default_split: str | None = None
    eval_split: str | None = None
    folder: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    training: TrainingShare | None = None
    splits: Callable[[str | Path], tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        if (self.folder is None) != (self.training is None):
            raise ValueError(f"dataset {self.kind!r}: give both folder and training (a dataset pretraining takes) "
                             "or neither")

    def read(self, path: str | Path, split: str | None = None) -> list[Sample]:
        """The samples of ``split`` (None: :attr:`default_split`) of the folder or file ``path``."""
        return self.reader(path, self.default_split if split is None else split)

    def evaluation_split(self, path: str | Path) -> str | None:
        """The split :func:`~unimed.evaluation.evaluate` reads from ``path`` when none is given.

        :attr:`eval_split` where the folder holds it (or where its splits are fixed rules); a
        folder with no split files at all: None, every case; a folder holding one split only
        (e.g. just the official ``test`` files): that split. A folder with several splits but
        not :attr:`eval_split` gets :attr:`eval_split`, so the reader's error names them.

        Example:
            >>> spec = DatasetSpec("toy", reader=lambda path, split: [], evaluator=lambda s, p: {},
            ...                    annotated=lambda s: True, primary_metric="acc", eval_split="val",
            ...                    splits=lambda path: ("test",))
            >>> spec.evaluation_split("/data/toy")
            'test'
        """
        if self.eval_split is None or self.splits is None:
            return self.eval_split
        found = self.splits(path)
        if self.eval_split in found or len(found) > 1:
            return self.eval_split
        return found[0] if found else None
