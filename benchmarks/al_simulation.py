"""Simulated active learning: how fast each strategy turns labels into a better model.

``python main.py al-sim`` runs :func:`simulate`. A dataset's training split is the pool of
"unlabelled" studies, its validation split is fixed. Every strategy starts from the same model
and the same empty label set; each round it picks ``per_round`` pool samples, a simulated
annotator reveals their true labels, the model fine-tunes for a fixed number of steps (joint
training: the labelled samples' supervised losses, plus the unsupervised loss on the pool's
still-unlabelled images when ``ssl`` is on), and the dataset's :func:`evaluate` metric
is recorded on the validation split. Like the server's loop, each round continues from the
previous round's model.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from trainers.config import TrainConfig
from trainers.data import GridItem, Source, to_grid_item
from trainers.joint import JointTrainer, check_device, seed_everything
from trainers.pretrain import DATASETS, default_config
from trainers.ssl import check_ssl_loss, make_ssl
from unimed.datasets import read_dataset
from unimed.datasets.sample import Sample
from unimed.evaluation import evaluate_samples
from unimed.figures import save_figure
from unimed.networks.unimednet import UniMed
from unimed.predictor import Predictor
from unimed.selection import select_diverse, select_sampled, select_uncertain
from unimed.tasks import TASKS, Task
from unimed.uncertainty import ImageScore, score_image

__all__ = ["STRATEGIES", "PRIMARY_METRIC", "SimulationConfig", "StartModel", "simulate", "run_seed", "simulate_seeds",
           "combine_seeds", "seed_runs", "merge_results", "labels_to_reach", "paired_gain", "plot"]

logger = logging.getLogger(__name__)

#: strategies the simulation knows (the server's of the same name pick the same way)
STRATEGIES = ("random", "uncertainty", "uncertainty_sampled", "diversity")
#: the metric recorded per dataset kind (its spec's primary metric, a key of :func:`evaluate`'s metrics)
PRIMARY_METRIC = {kind: spec.primary_metric for kind, spec in DATASETS.items()}


@dataclass(kw_only=True)
class SimulationConfig:
    """One simulation.

    Attributes:
        dataset: dataset kind (``brats``, ``msd_patches``, ``medmnist``).
        strategies: strategies compared, each from the same starting model.
        rounds: label-and-train rounds.
        per_round: samples labelled per round.
        steps_per_round: optimiser steps after each round's labels arrive.
        lr: AdamW learning rate of the fine-tuning.
        ssl: the unsupervised loss on the still-unlabelled pool images.
        ssl_loss: which (:data:`trainers.ssl.SSL_LOSSES`): ``reconstruction`` (masked-image
            reconstruction), ``consistency`` (confident pseudo-labels across two views) or
            ``mean_teacher`` (the same, from an averaged teacher).
        initial: samples labelled at random before the first round, the same for every
            strategy (a seed set: an untrained model's uncertainty says little); the model
            fine-tunes on them once and every curve starts there.
        pool_size: use a fixed random subset of the training split as the pool (None: all).
        val_size: the same for the validation split.
        seed: seeds the pool subset, random picks and training.
        top_fraction: see :func:`unimed.uncertainty.score_image`.
        device: where the model trains and predicts (``cpu``, ``cuda``, ``cuda:1``).
    """

    dataset: str
    strategies: tuple[str, ...] = ("random", "uncertainty")
    rounds: int = 4
    per_round: int = 8
    steps_per_round: int = 40
    lr: float = 1e-3
    ssl: bool = True
    ssl_loss: str = "reconstruction"
    initial: int = 0
    pool_size: int | None = None
    val_size: int | None = None
    seed: int = 0
    top_fraction: float = 0.1
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.dataset not in PRIMARY_METRIC or self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; al-sim takes {', '.join(sorted(PRIMARY_METRIC))}")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise ValueError(f"unknown strategies {unknown or '(none given)'}; known: {', '.join(STRATEGIES)}")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"strategies must not repeat, got {list(self.strategies)}")
        for name in ("rounds", "per_round", "steps_per_round"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_ssl_loss(self.ssl_loss)
        if self.initial < 0:
            raise ValueError(f"initial must be >= 0, got {self.initial}")
        for name in ("pool_size", "val_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        check_device(self.device)


@dataclass
class _Pool:
    samples: list[Sample]
    items: list[GridItem]
    task: Task
    labels: list[str]


def _subset(samples: list[Sample], size: int | None, seed: int) -> list[Sample]:
    if size is None or size >= len(samples):
        return samples
    keep = sorted(random.Random(seed).sample(range(len(samples)), size))
    return [samples[i] for i in keep]


def _score_task(samples: Sequence[Sample]) -> tuple[Task, list[str]]:
    """The task whose outputs rank the pool: the first task (in registry order: segmentation where
    masks exist) whose ground truth the first sample carries, and the labels the pool holds."""
    for task, spec in TASKS.items():
        if spec.has_targets(samples[:1]):
            return task, spec.target_labels(samples)
    raise ValueError(f"{samples[0].name}: a sample with no annotation of any task")


def _pick(strategy: str, scores: list[ImageScore] | None, labelled: list[int], unlabelled: list[int], k: int,
          rng: random.Random) -> list[int]:
    if strategy == "random":
        return sorted(rng.sample(unlabelled, min(k, len(unlabelled))))
    assert scores is not None
    u = np.array([scores[i].uncertainty for i in unlabelled])
    if strategy == "uncertainty":
        return [unlabelled[j] for j in select_uncertain(u, k)]
    if strategy == "uncertainty_sampled":
        return [unlabelled[j] for j in select_sampled(u, k, np.random.default_rng(rng.getrandbits(64)))]
    emb = np.stack([scores[i].embedding for i in unlabelled])
    refs = np.stack([scores[i].embedding for i in labelled]) if labelled else None
    return [unlabelled[j] for j in select_diverse(u, emb, refs, k)]


def _train_round(model: UniMed, ssl: torch.nn.Module, pool: _Pool, labelled: list[int], config: SimulationConfig,
                 round_: int) -> None:
    """Fine-tune on the labelled pool samples (and the unsupervised loss on the others when
    ``ssl`` is on)."""
    kind = config.dataset
    mix = replace(default_config().mix[kind], every=1)  # the only labelled source: it joins every step
    taken = set(labelled)
    rest = [item for i, item in enumerate(pool.items) if i not in taken]
    train_config = TrainConfig(steps=config.steps_per_round, lr=config.lr, warmup_steps=0, seed=config.seed + round_,
                               log_every=config.steps_per_round, mix={kind: mix})
    labelled_src = Source(kind, [pool.items[i] for i in labelled], mix.tasks, mix.batch_size)
    unlabelled_src = Source("unlabelled", rest, (), mix.batch_size, every=2) if config.ssl and rest else None
    seed_everything(config.seed + round_)
    JointTrainer(model, [labelled_src], train_config, unlabelled_src, ssl=ssl).train()


def _run_strategy(strategy: str, start: UniMed, start_ssl: torch.nn.Module, initial: list[int], pool: _Pool,
                  val: list[Sample], config: SimulationConfig, start_value: float | None,
                  on_round: Callable[[str, int, float | None], None]) -> list[dict[str, Any]]:
    metric = PRIMARY_METRIC[config.dataset]
    model, ssl = copy.deepcopy(start), copy.deepcopy(start_ssl)
    rng = random.Random(config.seed + 1)
    labelled = list(initial)
    curve = [{"labels": len(labelled), "value": start_value}]
    for r in range(1, config.rounds + 1):
        unlabelled = [i for i in range(len(pool.samples)) if i not in set(labelled)]
        if not unlabelled:
            logger.info("%s: the pool is fully labelled after %d rounds", strategy, r - 1)
            break
        scores = None
        if strategy != "random":
            predictor = Predictor(model, cache_size=0)
            scores = [score_image(predictor, s.meta_image(), pool.task, pool.labels, top_fraction=config.top_fraction)
                      for s in pool.samples]
        labelled += _pick(strategy, scores, labelled, unlabelled, config.per_round, rng)
        _train_round(model, ssl, pool, labelled, config, r)
        value = evaluate_samples(config.dataset, val, Predictor(model, cache_size=0))[metric]
        curve.append({"labels": len(labelled), "value": value})
        on_round(strategy, r, value)
    return curve


def simulate(
    data: str | Path,
    start: UniMed,
    config: SimulationConfig,
    *,
    on_round: Callable[[str, int, float | None], None] | None = None,
) -> dict[str, Any]:
    """Run every strategy of ``config`` from ``start`` (not modified) on a dataset folder.

    Args:
        data: the dataset's folder (as ``main.py evaluate --data`` takes it).
        start: the starting model.
        config: the simulation.
        on_round: called with ``(strategy, round, value)`` after each round (progress).

    Returns:
        ``{"dataset", "metric", "strategies": {name: [{"labels": n, "value": v}, ...]}, "config",
        "pool", "val", "seconds"}``; the first point of each curve is the starting model (after
        its fine-tuning on the ``initial`` labels, if any).

    Raises:
        ValueError: a pool smaller than one round's labels.
        DatasetError: the reader's errors.

    Example:
        >>> from unimed.networks.unimednet import unimed_tiny
        >>> cfg = SimulationConfig(dataset="msd_patches", rounds=1, per_round=2, steps_per_round=1, pool_size=6)
        >>> simulate("/data/msd_lung_patches", unimed_tiny(), cfg)["metric"]  # doctest: +SKIP
        'dice'
    """
    t0 = time.time()
    spec = DATASETS[config.dataset]
    pool_samples = _subset(read_dataset(spec.kind, data, spec.train_split), config.pool_size, config.seed)
    val = _subset(read_dataset(spec.kind, data, spec.val_split), config.val_size, config.seed)
    if len(pool_samples) < config.initial + config.per_round:
        raise ValueError(f"the pool holds {len(pool_samples)} samples, fewer than initial + per_round = "
                         f"{config.initial} + {config.per_round}")
    task, labels = _score_task(pool_samples)
    if config.ssl and config.ssl_loss != "reconstruction" and task is not Task.SEGMENTATION:
        raise ValueError(f"the {config.ssl_loss} loss trains segmentation outputs; {config.dataset} has no label maps "
                         "(use --ssl-loss reconstruction)")
    pool = _Pool(pool_samples, [to_grid_item(s) for s in pool_samples], task, labels)
    metric = PRIMARY_METRIC[config.dataset]
    start = copy.deepcopy(start).to(config.device).eval()
    start_ssl = make_ssl(config.ssl_loss, mask_dim=start.config.mask_dim, labels=labels).to(config.device)
    initial = sorted(random.Random(config.seed).sample(range(len(pool_samples)), config.initial))
    if initial:
        _train_round(start, start_ssl, pool, initial, config, 0)
    start_value = evaluate_samples(config.dataset, val, Predictor(start, cache_size=0))[metric]
    logger.info("%s: pool %d, validation %d, %d initial labels, starting %s %s", config.dataset, len(pool_samples),
                len(val), len(initial), metric, start_value)
    curves = {name: _run_strategy(name, start, start_ssl, initial, pool, val, config, start_value,
                                  on_round or (lambda *a: None))
              for name in config.strategies}
    return {"dataset": config.dataset, "metric": metric, "strategies": curves, "reach": labels_to_reach(curves),
            "config": asdict(config), "pool": len(pool_samples), "val": len(val), "seconds": round(time.time() - t0, 1)}


def labels_to_reach(curves: dict[str, list[dict[str, Any]]], reference: str = "random") -> dict[str, Any]:
    """How many labels each strategy needs to reach the reference strategy's final value.

    Returns:
        ``{"target": V, "reference_labels": N, name: {"labels": n or None, "share": n / N or None}}``
        (``{}`` without the reference curve); ``labels`` is the first point of the curve at or
        above ``V`` (None: never reached).

    Example:
        >>> r = labels_to_reach({"random": [{"labels": 8, "value": 0.5}, {"labels": 16, "value": 0.6}],
        ...                      "uncertainty": [{"labels": 8, "value": 0.5}, {"labels": 16, "value": 0.7}]})
        >>> r["uncertainty"], r["target"]
        ({'labels': 16, 'share': 1.0}, 0.6)
    """
    ref = curves.get(reference)
    if not ref or ref[-1]["value"] is None:
        return {}
    target, total = ref[-1]["value"], ref[-1]["labels"]
    out: dict[str, Any] = {"target": target, "reference_labels": total}
    for name, curve in curves.items():
        n = next((p["labels"] for p in curve if p["value"] is not None and p["value"] >= target), None)
        out[name] = {"labels": n, "share": None if n is None else round(n / total, 4)}
    return out


def combine_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from several seeds' :func:`simulate` results of the same configuration.

    Each point's ``value`` is the mean over the seeds (``sd`` their sample standard deviation,
    ``values`` every seed's); ``reach`` is computed on the mean curves; ``runs`` keeps each seed's;
    ``seconds`` is the seeds' total (see :func:`simulate_seeds` for the wall time).

    Raises:
        ValueError: no runs, or runs whose datasets, strategies or label counts differ.
    """
    if not runs:
        raise ValueError("no runs to combine")
    first = runs[0]
    for run in runs[1:]:
        if run["dataset"] != first["dataset"] or set(run["strategies"]) != set(first["strategies"]):
            raise ValueError("runs of different datasets or strategies cannot be combined")
    curves: dict[str, list[dict[str, Any]]] = {}
    for name, curve in first["strategies"].items():
        points = []
        for i, point in enumerate(curve):
            labels = {len(run["strategies"][name]) > i and run["strategies"][name][i]["labels"] for run in runs}
            if labels != {point["labels"]}:
                raise ValueError(f"{name}: the seeds' label counts differ at point {i}: {sorted(map(str, labels))}")
            values = [run["strategies"][name][i]["value"] for run in runs]
            known = [v for v in values if v is not None]
            mean = float(np.mean(known)) if known else None
            sd = float(np.std(known, ddof=1)) if len(known) > 1 else 0.0 if known else None
            points.append({"labels": point["labels"], "value": mean, "sd": sd, "values": values})
        curves[name] = points
    config = dict(first["config"])
    config.pop("seed", None)
    return {"dataset": first["dataset"], "metric": first["metric"], "strategies": curves, "reach": labels_to_reach(curves),
            "seeds": [run["config"]["seed"] for run in runs], "config": config, "pool": first["pool"],
            "val": first["val"], "seconds": round(sum(run["seconds"] for run in runs), 1), "runs": list(runs)}


def seed_runs(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every seed's own run in an al-sim result: its ``runs`` when it combines several seeds,
    else the result itself."""
    return result.get("runs") or [result]


def _settings(run: dict[str, Any], *ignored: str) -> dict[str, Any]:
    """A run's configuration without the ``ignored`` keys, read as the current code writes it."""
    config = {"ssl_loss": "reconstruction"}  # results written before the choice existed
    config.update((k, v) for k, v in run["config"].items() if k not in ignored)
    return config


def _join_strategies(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One seed's run from runs of that seed that each hold other strategies.

    Every strategy of a seed starts from the same model and seed labels, so curves run apart
    join as if run together; the runs must agree on everything else, and their curves must
    start at the same point (the same starting model reached the same value).
    """
    seed = runs[0]["config"]["seed"]
    curves: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for name, curve in run["strategies"].items():
            if name in curves:
                raise ValueError(f"seed {seed} holds the {name} curve more than once")
            curves[name] = curve

    reference = _settings(runs[0], "strategies"), runs[0].get("start")
    for run in runs[1:]:
        if (_settings(run, "strategies"), run.get("start")) != reference:
            raise ValueError(f"seed {seed}: runs of other strategies differ in their settings; only the strategies "
                             "may differ")
    starts = {(curve[0]["labels"], curve[0]["value"]) for curve in curves.values()}
    if len(starts) > 1:
        raise ValueError(f"seed {seed}: the strategies' curves start at different points {sorted(map(str, starts))}; "
                         "they did not start from the same model")
    order = sorted(curves, key=lambda name: (STRATEGIES.index(name) if name in STRATEGIES else len(STRATEGIES), name))
    curves = {name: curves[name] for name in order}
    config = {**_settings(runs[0]), "strategies": order}
    return {**runs[0], "strategies": curves, "reach": labels_to_reach(curves), "config": config,
            "seconds": round(sum(run["seconds"] for run in runs), 1)}


def merge_results(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from al-sim results of the same simulation run apart (seeds split over
    several machines, say, or strategies run one at a time): every seed's run (a result's
    ``runs``, or the result itself when it holds one seed) is pooled, the runs of one seed that
    hold different strategies are joined, and the seeds are combined in seed order by
    :func:`combine_seeds`.

    Raises:
        ValueError: no results, a seed's strategy given twice, runs of one seed that do not
            start from the same point, or seeds whose simulations differ in anything but the
            seed and the device (the configuration, the strategies, or the starting model).

    Example:
        >>> merged = merge_results([json.load(open(f)) for f in ("seed6.json", "seeds0-5.json")])  # doctest: +SKIP
        >>> merged["seeds"]  # doctest: +SKIP
        [0, 1, 2, 3, 4, 5, 6]
    """
    pooled = [run for result in results for run in seed_runs(result)]
    if not pooled:
        raise ValueError("no results to merge")
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for run in pooled:
        by_seed.setdefault(run["config"]["seed"], []).append(run)
    repeated = sorted(seed for seed, group in by_seed.items()
                      if len({frozenset(run["strategies"]) for run in group}) < len(group))
    if repeated:
        raise ValueError(f"seeds given more than once: {repeated}")
    runs = [group[0] if len(group) == 1 else _join_strategies(group) for group in by_seed.values()]
    seeds = [run["config"]["seed"] for run in runs]

    reference_config, reference_start = _settings(runs[0], "seed", "device"), runs[0].get("start")
    for run in runs[1:]:
        config, start = _settings(run, "seed", "device"), run.get("start")
        if (config, start) != (reference_config, reference_start):
            keys = config.keys() | reference_config.keys()
            diff = sorted(k for k in keys if config.get(k) != reference_config.get(k))
            raise ValueError(f"seed {run['config']['seed']} ran another simulation than seed {seeds[0]}: "
                             f"{', '.join(diff) or 'the starting model'} differ")
    runs = sorted(runs, key=lambda run: run["config"]["seed"])
    merged = combine_seeds(runs)
    merged.update(start=runs[0].get("start"), devices=sorted({run["config"].get("device", "cpu") for run in runs}))
    return merged


@dataclass(frozen=True)
class StartModel:
    """The starting model, as a recipe a worker process can rebuild: a checkpoint path, or
    ``"scratch"`` for untrained :func:`unimed_small` weights drawn from the run's seed."""

    checkpoint: str

    def build(self, seed: int) -> tuple[UniMed, str]:
        """The model and a name for it."""
        if self.checkpoint == "scratch":
            from unimed.networks.unimednet import unimed_small

            torch.manual_seed(seed)
            return unimed_small(), "scratch"
        from unimed.checkpoint import load_checkpoint

        model, meta = load_checkpoint(self.checkpoint)
        return model, f"{self.checkpoint} (version {meta.get('version')})"


def run_seed(data: str | Path, start: StartModel, config: SimulationConfig, threads: int | None = None,
             on_round: Callable[[str, int, float | None], None] | None = None) -> dict[str, Any]:
    """:func:`simulate` from ``start`` built for ``config.seed``; the result names the start.

    ``threads`` sets torch's CPU threads first (on a busy CPU, fewer threads than cores is often faster).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    model, name = start.build(config.seed)
    result = simulate(data, model, config, on_round=on_round)
    result["start"] = name
    return result


def simulate_seeds(
    data: str | Path,
    start: StartModel,
    config: SimulationConfig,
    seeds: Sequence[int],
    *,
    jobs: int = 1,
    threads: int | None = None,
    on_seed: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """:func:`simulate` once per seed (pool subset, seed labels, picks, training and, from
    scratch, the initial weights all follow the seed), ``jobs`` seeds at a time in worker
    processes, combined by :func:`combine_seeds`.

    Args:
        data: the dataset's folder.
        start: the starting model's recipe.
        config: the simulation; its ``seed`` is replaced by each of ``seeds``.
        seeds: the seeds, at least one.
        jobs: worker processes (1: in this process).
        threads: torch threads per run (None: torch's choice).
        on_seed: called with each seed's result as it finishes (progress).

    Raises:
        ValueError: no seeds, repeated seeds, or ``jobs`` < 1; and :func:`simulate`'s errors.
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be one or more distinct integers, got {list(seeds)}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    t0 = time.time()
    configs = [replace(config, seed=s) for s in seeds]
    done = on_seed or (lambda r: None)
    runs: list[dict[str, Any]] = []
    if jobs == 1 or len(configs) == 1:
        for c in configs:
            runs.append(run_seed(data, start, c, threads))
            done(runs[-1])
    else:
        # spawn, not fork: a forked child of a process that has used torch's threads or CUDA can hang
        with ProcessPoolExecutor(max_workers=min(jobs, len(configs)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_seed, str(data), start, c, threads) for c in configs]
            for f in futures:
                runs.append(f.result())
                done(runs[-1])
    combined = combine_seeds(runs)
    combined.update(start=runs[0]["start"], jobs=jobs, wall_seconds=round(time.time() - t0, 1))
    return combined


def paired_gain(result: dict[str, Any], baseline: dict[str, Any], strategy: str = "random") -> list[dict[str, Any]]:
    """What ``result`` gains over ``baseline`` at each point, seed by seed (the same seeds label the
    same samples, so their difference cancels most of the spread between seeds).

    Args:
        result, baseline: al-sim results (one seed, or several with ``runs``).
        strategy: the curve compared.

    Returns:
        per point ``{"labels", "result", "baseline", "gain", "se", "gains", "seeds"}``: the two
        means over the seeds both hold, the mean difference and its standard error (0 for one
        seed), how many seeds gain, and how many are compared.

    Raises:
        ValueError: different datasets, no seed in common, a seed held twice by one side, a
            missing curve, or curves whose label counts differ.

    Example:
        >>> a = {"dataset": "brats", "config": {"seed": 0}, "strategies": {"random": [{"labels": 1, "value": 0.7}]}}
        >>> b = {"dataset": "brats", "config": {"seed": 0}, "strategies": {"random": [{"labels": 1, "value": 0.6}]}}
        >>> [round(p["gain"], 3) for p in paired_gain(a, b)]
        [0.1]
    """
    def by_seed(res: dict[str, Any], which: str) -> dict[int, list[dict[str, Any]]]:
        out = {}
        for run in seed_runs(res):
            if strategy not in run["strategies"]:
                raise ValueError(f"the {which} has no {strategy!r} curve")
            seed = run["config"]["seed"]
            if seed in out:
                raise ValueError(f"the {which} holds seed {seed} twice")
            out[seed] = run["strategies"][strategy]
        return out

    if result.get("dataset") != baseline.get("dataset"):
        raise ValueError(f"the result is on {result.get('dataset')}, the baseline on {baseline.get('dataset')}")
    ours, theirs = by_seed(result, "result"), by_seed(baseline, "baseline")
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        raise ValueError(f"no seed in common: the result has {sorted(ours)}, the baseline {sorted(theirs)}")
    points = []
    for i, point in enumerate(ours[seeds[0]]):
        for s in seeds:
            for curve in (ours[s], theirs[s]):
                if len(curve) <= i or curve[i]["labels"] != point["labels"]:
                    raise ValueError(f"seed {s}: the curves' label counts differ at point {i}")
        pairs = [(ours[s][i]["value"], theirs[s][i]["value"]) for s in seeds]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not pairs:
            continue
        a, b = np.array(pairs, dtype=np.float64).T
        d = a - b
        se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
        points.append({"labels": point["labels"], "result": float(a.mean()), "baseline": float(b.mean()),
                       "gain": float(d.mean()), "se": se, "gains": int((d > 0).sum()), "seeds": len(d)})
    return points


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Metric vs. number of labels, one line per strategy, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for name, curve in result["strategies"].items():
        points = [p for p in curve if p["value"] is not None]
        xs, ys = [p["labels"] for p in points], [p["value"] for p in points]
        ax.plot(xs, ys, marker="o", label=name)
        if points and all(p.get("sd") is not None for p in points) and len(result.get("seeds", [])) > 1:
            sd = [p["sd"] for p in points]
            ax.fill_between(xs, [y - e for y, e in zip(ys, sd)], [y + e for y, e in zip(ys, sd)], alpha=0.15)
    ssl = result.get("config", {}).get("ssl")
    seeds = len(result.get("seeds", [])) or 1
    ax.set_title(f"{result['dataset']}: active learning" + ("" if ssl is None else f" (ssl {'on' if ssl else 'off'})")
                 + (f", mean ± sd of {seeds} seeds" if seeds > 1 else ""), fontsize=10)
    ax.set_xlabel("labelled samples")
    ax.set_ylabel(f"{result['metric']} (validation)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
