"""Leave-one-out (or K-fold) cross-validation of the pretraining recipe on one dataset folder.

``python main.py lopo --dataset brats --data FOLDER`` runs :func:`cross_validate`: for each
fold it trains a fresh UniMed with pretraining's recipe restricted to that dataset (its
:class:`~unimed.datasets.TrainingShare`, and the training cases' images for the
self-supervised loss) on every case but the held-out ones, then scores the held-out cases with
the evaluator of ``main.py evaluate``. With one case per fold (BraTS: one patient per fold) this
is leave-one-patient-out; the figures are reported per fold, with their mean and spread.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from trainers.config import TrainConfig
from trainers.joint import JointTrainer, seed_everything
from trainers.pretrain import default_config, images_only, make_source, mix_entry
from unimed.datasets import DatasetSpec, Sample, dataset_spec
from unimed.networks.unimednet import UniMed, unimed_small

__all__ = ["MAX_LEAVE_ONE_OUT", "FoldResult", "fold_assignment", "fold_config", "summarize", "cross_validate",
           "format_folds"]

logger = logging.getLogger(__name__)

#: the most cases leave-one-out takes (one model each); more need an explicit number of folds
MAX_LEAVE_ONE_OUT = 20


@dataclass
class FoldResult:
    """One fold: which cases it held out and trained on, how long it trained, and its figures.

    Attributes:
        fold: the fold's index (0-based).
        held_out: names of the cases scored.
        train: names of the cases trained on.
        steps: optimiser steps run.
        train_minutes: wall-clock training time.
        metrics: the evaluator's metrics on ``held_out``.
    """

    fold: int
    held_out: list[str]
    train: list[str]
    steps: int
    train_minutes: float
    metrics: dict[str, Any] = field(default_factory=dict)


def fold_assignment(names: Sequence[str], folds: int | None = None,
                    max_leave_one_out: int = MAX_LEAVE_ONE_OUT) -> list[list[str]]:
    """The held-out case names of each fold.

    ``folds=None`` is leave-one-out: one fold per case, in the given order. Otherwise case
    ``i`` goes to fold ``i % folds`` (balanced, deterministic).

    Raises:
        ValueError: fewer than 2 cases, repeated names, more than ``max_leave_one_out`` cases
            without ``folds``, or ``folds`` outside ``2..len(names)``.

    Example:
        >>> fold_assignment(["a", "b", "c"])
        [['a'], ['b'], ['c']]
        >>> fold_assignment(["a", "b", "c", "d", "e"], folds=2)
        [['a', 'c', 'e'], ['b', 'd']]
    """
    names = list(names)
    if len(names) < 2:
        raise ValueError(f"cross-validation needs at least 2 annotated cases, got {len(names)}")
    if len(set(names)) != len(names):
        raise ValueError("case names must be unique to tell the held-out case from the training ones")
    if folds is None:
        if len(names) > max_leave_one_out:
            raise ValueError(f"{len(names)} cases: leave-one-out would train {len(names)} models (at most "
                             f"{max_leave_one_out}); give a number of folds (K-fold) instead")
        return [[name] for name in names]
    if not 2 <= folds <= len(names):
        raise ValueError(f"folds must be between 2 and the number of cases ({len(names)}), got {folds}")
    return [names[k::folds] for k in range(folds)]


def fold_config(spec: DatasetSpec, minutes: float | None, steps: int | None = None, seed: int = 0) -> TrainConfig:
    """Pretraining's recipe (:func:`trainers.pretrain.default_config`) restricted to one
    dataset: its training share and the self-supervised share, ``minutes`` per fold.

    Raises:
        ValueError: a dataset kind without a training share.

    Example:
        >>> from unimed.datasets import dataset_spec
        >>> sorted(fold_config(dataset_spec("brats"), 5.0).mix)
        ['brats', 'unlabelled']
    """
    if spec.training is None:
        raise ValueError(f"dataset {spec.kind!r} has no training share (DatasetSpec.training): it cannot be trained on")
    config = default_config(minutes)
    config.mix = {spec.kind: mix_entry(spec.training), "unlabelled": config.mix["unlabelled"]}
    if steps is not None:
        config.steps = steps
    config.seed = seed
    return config


def summarize(folds: Sequence[FoldResult]) -> dict[str, dict[str, float | int | None]]:
    """Mean and sample standard deviation (``n - 1``) of every numeric metric over the folds
    that define it; nested metrics (per-class AP) as ``name/key``. ``sd`` is None below 2 folds.

    Example:
        >>> rows = [FoldResult(i, [], [], 0, 0.0, {"dice": d, "auc": None}) for i, d in enumerate([0.5, 0.7, 0.9])]
        >>> {k: round(v, 4) for k, v in summarize(rows)["dice"].items()}
        {'mean': 0.7, 'sd': 0.2, 'n': 3}
        >>> summarize(rows)["auc"]
        {'mean': None, 'sd': None, 'n': 0}
    """
    values: dict[str, list[float]] = {}
    for fold in folds:
        for name, value in _flatten(fold.metrics).items():
            values.setdefault(name, [])
            if value is not None:
                values[name].append(float(value))
    out: dict[str, dict[str, float | int | None]] = {}
    for name, vals in values.items():
        mean = sum(vals) / len(vals) if vals else None
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
        out[name] = {"mean": mean, "sd": sd, "n": len(vals)}
    return out


def _flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float | None]:
    flat: dict[str, float | None] = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}/"))
        elif value is None or isinstance(value, (int, float)):
            flat[prefix + name] = value
    return flat


def cross_validate(
    kind: str,
    data: str | Path,
    *,
    minutes: float | None = 10.0,
    steps: int | None = None,
    folds: int | None = None,
    init: Callable[[], UniMed] | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    config: TrainConfig | None = None,
) -> dict[str, Any]:
    """Leave-one-out (``folds=None``) or K-fold cross-validation of a fresh model per fold.

    Every annotated case of the folder (the reader with no split: every case) is held out
    once. Each fold trains ``init()`` (default: a fresh :func:`unimed_small`) with
    :func:`fold_config`'s recipe on the other cases for ``minutes`` (or ``steps``), and scores
    the held-out cases with the dataset's evaluator, exactly as ``main.py evaluate`` does. The
    held-out cases never enter a fold's training sources, labelled or self-supervised.

    Starting each fold from a checkpoint's weights (an ``init`` that loads one) is only an
    honest estimate if that checkpoint never saw any of the cases.

    Args:
        kind: a registered dataset kind with a training share.
        data: its folder or file.
        minutes: training budget per fold; None: ``steps`` only.
        steps: optimiser steps per fold (default: the recipe's).
        folds: None for leave-one-out, else K.
        init: builds the model each fold starts from (called once per fold).
        seed: every fold's seed.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        progress: a progress bar over the folds.
        config: the recipe (default: :func:`fold_config`); ``minutes``, ``steps`` and ``seed``
            are then ignored.

    Returns:
        ``{"dataset", "data", "cases", "folds": [FoldResult as dict...], "summary":
        {metric: {"mean", "sd", "n"}}, "config"}``.

    Raises:
        ValueError: a kind without a training share, too few cases or a bad number of folds
            (see :func:`fold_assignment`).
        DatasetError: the reader's errors.

    Example:
        >>> result = cross_validate("brats", "/data/brats2013", minutes=30)  # doctest: +SKIP
        >>> result["summary"]["dice_wt"]  # doctest: +SKIP
        {'mean': 0.8, 'sd': 0.05, 'n': 4}
    """
    from tqdm.auto import tqdm

    from unimed.evaluation import evaluate_samples
    from unimed.predictor import Predictor

    spec = dataset_spec(kind)
    config = config or fold_config(spec, minutes, steps, seed)
    cases = [s for s in spec.reader(data, None) if spec.annotated(s)]
    by_name = {s.name: s for s in cases}
    assignment = fold_assignment([s.name for s in cases], folds)
    results: list[FoldResult] = []
    bar = tqdm(assignment, desc=f"cross-validate {kind}", unit="fold", disable=not progress, dynamic_ncols=True)
    for index, held_out in enumerate(bar):
        held = set(held_out)
        train = [s for s in cases if s.name not in held]
        seed_everything(config.seed)
        sources = [make_source(kind, train, config.mix[kind])]
        unlabelled = make_source("unlabelled", images_only(train), config.mix["unlabelled"]) \
            if "unlabelled" in config.mix else None
        model = (init or unimed_small)().to(device)
        trainer = JointTrainer(model, sources, config, unlabelled)
        start = time.time()
        trainer.train()
        minutes_spent = (time.time() - start) / 60
        metrics = evaluate_samples(kind, [by_name[name] for name in held_out], Predictor(model))
        result = FoldResult(index, list(held_out), [s.name for s in train], trainer.step_count,
                            round(minutes_spent, 2), metrics)
        results.append(result)
        line = (f"fold {index + 1}/{len(assignment)} held out {', '.join(held_out)}: {trainer.step_count} steps in "
                f"{minutes_spent:.1f} min; " + _metric_text(metrics))
        logger.info(line)
        if progress:
            bar.write(line)
    return {
        "dataset": kind,
        "data": str(data),
        "cases": len(cases),
        "folds": [asdict(r) for r in results],
        "summary": summarize(results),
        "config": config.to_dict(),
    }


def _metric_text(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in _flatten(metrics).items())


def format_folds(result: dict[str, Any]) -> str:
    """A text table of :func:`cross_validate`'s result: a row per fold (its held-out cases, or
    their number above 3), then mean and sd.

    Example:
        >>> folds = [FoldResult(0, ["a"], ["b"], 3, 0.1, {"dice": 0.5}), FoldResult(1, ["b"], ["a"], 3, 0.1, {"dice": 0.7})]
        >>> print(format_folds({"dataset": "toy", "cases": 2, "folds": [asdict(f) for f in folds],
        ...                     "summary": summarize(folds)}))
        toy: 2 folds, 2 cases
        fold  held out    dice
        1     a         0.5000
        2     b         0.7000
        mean            0.6000
        sd              0.1414
    """
    names = list(result["summary"])
    rows = [["fold", "held out"] + names]
    for fold in result["folds"]:
        flat = _flatten(fold["metrics"])
        held = fold["held_out"]
        label = ",".join(held) if len(held) <= 3 else f"{len(held)} cases"
        rows.append([str(fold["fold"] + 1), label] + [_cell(flat.get(n)) for n in names])
    for stat in ("mean", "sd"):
        rows.append([stat, ""] + [_cell(result["summary"][n][stat]) for n in names])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{result['dataset']}: {len(result['folds'])} folds, {result['cases']} cases"]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])] + [c.rjust(w) for c, w in zip(row[2:], widths[2:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
