"""Validation metrics of a :class:`~unimed.predictor.Predictor` on a dataset folder.

Each dataset kind is scored the way its benchmark is, by the evaluator of its
:class:`~unimed.datasets.DatasetSpec` (BraTS by region Dice, AdrenalMNIST3D by AUC and
accuracy, VOC (BCCD) by AP at IoU 0.5, the MSD lung patches by Dice, a datastore by Dice per
label). The result is a JSON-ready dict; an undefined metric (AUC with one class, AP with no
ground truth) is ``None``. Where a figure is a mean over cases (Dice), the result also holds each
case's figures and their spread (sample standard deviation), because a mean of a few cases alone
says little.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unimed.datasets import DatasetError, DatasetSpec, Predicts, Sample, dataset_spec
from unimed.datasets.spec import PER_CASE

__all__ = ["PER_CASE", "case_spread", "evaluate", "evaluate_samples", "format_table", "score_samples"]

#: at most this many cases are listed one per row by :func:`format_table` (all are in the JSON)
TABLE_CASES = 20


class _CountingPredictor:
    """Forwards ``predict`` to a predictor and ticks a progress bar once per call; any other
    attribute (an evaluator reads ``model.registry`` for a taught label) is the predictor's."""

    def __init__(self, predictor: Predicts, bar: Any):
        self.predictor, self.bar = predictor, bar

    def __getattr__(self, name: str) -> Any:
        if name == "predictor":  # not set yet (a copy in the making): no recursion
            raise AttributeError(name)
        return getattr(self.predictor, name)

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
        ``{"dataset": kind, "split": split, "n": samples scored, "metrics": {...}}``; for a kind
        whose figures are means over cases (``brats``, ``msd_patches``, ``datastore``), also
        ``"sd"`` (:func:`case_spread` of every such figure) and ``"per_case"`` (``{case name:
        {metric: value}}``).

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
    return {"dataset": kind, "split": split, **score_samples(kind, samples, predictor, progress)}


def score_samples(kind: str, samples: Sequence[Sample], predictor: Predicts, progress: bool = False) -> dict[str, Any]:
    """:func:`evaluate`'s result, less ``dataset`` and ``split``, on annotated samples already
    read: ``{"n", "metrics"}``, and ``"sd"`` and ``"per_case"`` where the figures are means
    over cases.

    Raises:
        ValueError: an unknown kind.
    """
    metrics = _score(dataset_spec(kind), samples, predictor, progress)
    per_case = metrics.pop(PER_CASE, None)
    result: dict[str, Any] = {"n": len(samples), "metrics": metrics}
    if per_case is not None:
        result["sd"] = case_spread(per_case)
        result[PER_CASE] = per_case
    return result


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
    return score_samples(kind, samples, predictor, progress)["metrics"]


def case_spread(per_case: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """The sample standard deviation (n - 1) over cases of every figure in ``per_case``, skipping
    the cases where it is undefined; ``None`` where fewer than two cases define it.

    Example:
        >>> case_spread({"a": {"dice": 0.5}, "b": {"dice": 1.0}, "c": {"dice": None}})
        {'dice': 0.3535533905932738}
    """
    names = list(dict.fromkeys(name for figures in per_case.values() for name in figures))
    spread: dict[str, float | None] = {}
    for name in names:
        values = [v for figures in per_case.values() if (v := figures.get(name)) is not None]
        spread[name] = float(np.std(values, ddof=1)) if len(values) >= 2 else None
    return spread


def _score(spec: DatasetSpec, samples: Sequence[Sample], predictor: Predicts, progress: bool) -> dict[str, Any]:
    if not progress:
        return spec.evaluator(samples, predictor)
    from tqdm.auto import tqdm

    with tqdm(total=len(samples), desc=f"evaluate {spec.kind}", unit="case") as bar:
        return spec.evaluator(samples, _CountingPredictor(predictor, bar))


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _rows(metrics: dict[str, Any], sd: dict[str, float | None], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for name, value in metrics.items():
        if isinstance(value, dict):
            rows += _rows(value, {}, f"{prefix}{name}/")
        elif sd.get(name) is not None:
            rows.append((prefix + name, f"{_value(value)} ± {sd[name]:.4f}"))
        else:
            rows.append((prefix + name, _value(value)))
    return rows


def _case_rows(per_case: dict[str, dict[str, float | None]]) -> list[str]:
    names = list(dict.fromkeys(name for figures in per_case.values() for name in figures))
    width = max(len("case"), *(len(case) for case in per_case))
    lines = ["  ".join([f"{'case':<{width}}"] + [f"{name:>10}" for name in names])]
    for case, figures in per_case.items():
        lines.append("  ".join([f"{case:<{width}}"] + [f"{_value(figures.get(name)):>10}" for name in names]))
    return lines


def format_table(result: dict[str, Any]) -> str:
    """A small aligned text table of an :func:`evaluate` result: each figure (``mean ± sd`` over
    cases where the result has a spread), then, for up to 20 cases, one row per case.

    Example:
        >>> print(format_table({"dataset": "voc", "split": "val", "n": 2,
        ...                     "metrics": {"map50": 0.5, "ap50": {"platelet": 0.5}}}))
        voc (split val, n=2)
        metric          value
        map50          0.5000
        ap50/platelet  0.5000
    """
    rows = [("metric", "value")] + _rows(result.get("metrics", {}), result.get("sd") or {})
    width = max(len(name) for name, _ in rows)
    vwidth = max(len(value) for _, value in rows)
    head = f"{result.get('dataset', '?')} (split {result.get('split')}, n={result.get('n', '?')})"
    lines = [head] + [f"{name:<{width}}  {value:>{vwidth}}" for name, value in rows]
    per_case = result.get(PER_CASE) or {}
    if 0 < len(per_case) <= TABLE_CASES:
        lines += [""] + _case_rows(per_case)
    elif per_case:
        lines.append(f"({len(per_case)} cases: each case's figures are in the JSON)")
    return "\n".join(lines)
