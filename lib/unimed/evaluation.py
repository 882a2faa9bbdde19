"""Validation metrics of a :class:`~unimed.predictor.Predictor` on a dataset folder.

Each dataset kind is scored the way its benchmark is, by the evaluator of its
:class:`~unimed.datasets.DatasetSpec` (BraTS by region Dice, AdrenalMNIST3D by AUC and
accuracy, VOC (BCCD) by AP at IoU 0.5, the MSD lung patches by Dice, a datastore by Dice per
label). The result is a JSON-ready dict; an undefined metric (AUC with one class, AP with no
ground truth) is ``None``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from unimed.datasets import DatasetError, DatasetSpec, Predicts, Sample, dataset_spec

__all__ = ["evaluate", "evaluate_samples", "format_table"]


class _CountingPredictor:
    """Forwards ``predict`` to a predictor and ticks a progress bar once per call."""

    def __init__(self, predictor: Predicts, bar: Any):
        self.predictor, self.bar = predictor, bar

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        answer = self.predictor.predict(*args, **kwargs)
        self.bar.update(1)
        return answer


def evaluate(
    kind: str, data: str | Path, predictor: Predicts, split: str | None = None, progress: bool = False
) -> dict[str, Any]:
    """Score ``predictor`` on the annotated samples of a dataset folder or file.

    Metrics by ``kind`` (each spec's evaluator documents its own):

    - ``brats``: ``dice_wt``, ``dice_tc``, ``dice_et`` (mean over cases) of a segmentation of
      necrosis, edema, non-enhancing and enhancing tumour.
    - ``medmnist``: ``auc`` and ``acc`` (threshold 0.5) of the ``adrenal_hyperplasia`` score of
      a classification of adrenal hyperplasia vs. normal.
    - ``voc``: ``map50`` and ``ap50`` (per class) of a detection of the dataset's classes,
      boxes compared in pixel coordinates.
    - ``msd_patches``: ``dice`` (mean per patch, both empty = 1) and ``dice_global`` (pooled
      over all pixels) of a ``lung_tumor`` segmentation.
    - ``datastore``: ``dice_<label>`` (mean over the images whose label holds it) for every
      segmentable label present, and their mean ``dice_mean``.

    Args:
        kind: a registered dataset kind (:data:`unimed.datasets.DATASETS`).
        data: the dataset folder or file, as the reader takes it.
        predictor: a :class:`~unimed.predictor.Predictor` (or anything whose ``predict`` answers
            like one).
        split: the split to read; ``None`` means the spec's
            :meth:`~unimed.datasets.DatasetSpec.evaluation_split`: ``val`` for MedMNIST and VOC
            folders that hold it, the one split of a folder that holds only one (e.g. the
            official ``test``), and every case of a folder with no split files (and always for
            BraTS, the MSD patches and a datastore; see the readers for their fixed splits).
        progress: show a progress bar.

    Returns:
        ``{"dataset": kind, "split": split, "n": samples scored, "metrics": {...}}``.

    Raises:
        ValueError: an unknown kind.
        DatasetError: the reader's errors (an unknown split among them, the valid ones named),
            or no annotated sample to score.

    Example:
        >>> from unimed.networks.unimednet import unimed_tiny
        >>> from unimed.predictor import Predictor
        >>> evaluate("msd_patches", "/data/msd_lung_patches", Predictor(unimed_tiny()), "val")  # doctest: +SKIP
        {'dataset': 'msd_patches', 'split': 'val', 'n': 26, 'metrics': {'dice': ..., 'dice_global': ...}}
    """
    spec = dataset_spec(kind)
    if split is None:
        split = spec.evaluation_split(data)
    samples = [s for s in spec.reader(data, split) if spec.annotated(s)]
    if not samples:
        raise DatasetError(f"{data}: no annotated {kind} samples to evaluate (split {split!r})")
    return {"dataset": kind, "split": split, "n": len(samples), "metrics": _score(spec, samples, predictor, progress)}


def evaluate_samples(kind: str, samples: Sequence[Sample], predictor: Predicts, progress: bool = False) -> dict[str, Any]:
    """The metrics of :func:`evaluate` on samples already read (e.g. a fixed validation split
    scored again after every round of a simulation).

    Raises:
        ValueError: an unknown kind.
        DatasetError: no annotated sample among ``samples``.
    """
    spec = dataset_spec(kind)
    samples = [s for s in samples if spec.annotated(s)]
    if not samples:
        raise DatasetError(f"no annotated {kind} samples to evaluate")
    return _score(spec, samples, predictor, progress)


def _score(spec: DatasetSpec, samples: Sequence[Sample], predictor: Predicts, progress: bool) -> dict[str, Any]:
    if not progress:
        return spec.evaluator(samples, predictor)
    from tqdm.auto import tqdm

    with tqdm(total=len(samples), desc=f"evaluate {spec.kind}", unit="case") as bar:
        return spec.evaluator(samples, _CountingPredictor(predictor, bar))


def _rows(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for name, value in metrics.items():
        if isinstance(value, dict):
            rows += _rows(value, f"{prefix}{name}/")
        else:
            rows.append((prefix + name, "n/a" if value is None else f"{value:.4f}"))
    return rows


def format_table(result: dict[str, Any]) -> str:
    """A small aligned text table of an :func:`evaluate` result.

    Example:
        >>> print(format_table({"dataset": "voc", "split": "val", "n": 2,
        ...                     "metrics": {"map50": 0.5, "ap50": {"platelet": 0.5}}}))
        voc (split val, n=2)
        metric          value
        map50          0.5000
        ap50/platelet  0.5000
    """
    rows = [("metric", "value")] + _rows(result.get("metrics", {}))
    width = max(len(name) for name, _ in rows)
    vwidth = max(len(value) for _, value in rows)
    head = f"{result.get('dataset', '?')} (split {result.get('split')}, n={result.get('n', '?')})"
    return "\n".join([head] + [f"{name:<{width}}  {value:>{vwidth}}" for name, value in rows])
