"""Teaching a trained checkpoint clicks and boxes (``python main.py train-clicks``).

:func:`train_clicks` trains only the click modules with the interactive loss
(:func:`trainers.simulated_clicks.click_loss`), every other weight frozen, so that the
checkpoint's automatic answers stay bit-identical.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from trainers.data import Source, collate, modality_batch
from trainers.pseudo_objects import PseudoObjectConfig, with_pseudo_objects
from trainers.simulated_clicks import click_loss
from unimed.loss_weights import LossWeights
from unimed.networks.unimednet import UniMed
from unimed.task_names import Task

__all__ = ["ClickTrainConfig", "click_sources", "pseudo_object_sources", "enable_clicks", "train_clicks"]

logger = logging.getLogger(__name__)


@dataclass
class ClickTrainConfig:
    """How :func:`train_clicks` teaches clicks.

    Attributes:
        steps: optimiser steps (the run may stop earlier at ``max_minutes``).
        max_minutes: wall-clock budget; None for no limit.
        lr: AdamW learning rate of the click modules (cosine decay after a warm-up).
        max_rounds: simulated correction rounds per step, drawn from ``0..max_rounds``.
        box_prob: share of steps that give a box around the object.
        agnostic_prob: share of prompts without a label (the clicked object, class-agnostic).
        pseudo_objects: share of steps that also train on a batch of objects nobody labelled
            (:mod:`trainers.pseudo_objects`), from one of the pseudo-object sources.
        pseudo_max_share: the largest such object, as a share of its image's voxels.
        seed: seeds the run.
    """

    steps: int = 2000
    max_minutes: float | None = 30.0
    lr: float = 2e-3
    max_rounds: int = 3
    box_prob: float = 0.2
    agnostic_prob: float = 0.5
    pseudo_objects: float = 0.5
    pseudo_max_share: float = PseudoObjectConfig.max_share
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("box_prob", "agnostic_prob", "pseudo_objects"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        PseudoObjectConfig(max_share=self.pseudo_max_share)  # raises for a share outside its bounds


def enable_clicks(model: UniMed) -> UniMed:
    """``model`` itself when it takes clicks with the appearance cue, else a copy of it that does:
    new click modules where it had none, or, for clicks that read only the embeddings (before
    version 2.1), the same click modules with the refiner's appearance inputs added at zero
    weight, so the copy answers clicks exactly as ``model`` did until it is trained. Every other
    weight is as it was.

    Example:
        >>> from unimed.networks.unimednet import unimed_tiny
        >>> grown = enable_clicks(unimed_tiny(clicks=False))
        >>> grown.config.clicks, grown.config.click_appearance
        (True, True)
    """
    from dataclasses import replace

    if model.config.clicks and model.config.click_appearance:
        return model
    grown = UniMed(replace(model.config, clicks=True, click_appearance=True), registry=model.registry)
    grown = grown.to(next(model.parameters()).device)
    state = dict(model.state_dict())
    first = "click_refiner.net.0.weight"
    if first in state:  # embeddings-only refiner: its weights, and zeros for the appearance inputs
        wider = torch.zeros_like(grown.state_dict()[first])
        wider[:, : state[first].shape[1]] = state[first]
        state[first] = wider
    missing, unexpected = grown.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(("click_encoder.", "click_refiner.")) for k in missing):
        raise ValueError(f"the weights do not fit a network with clicks: missing {missing}, unexpected {unexpected}")
    return grown.eval()


def _click_parameters(model: UniMed) -> list[torch.nn.Parameter]:
    return list(model.click_encoder.parameters()) + list(model.click_refiner.parameters())


def _training_splits(data: str | Path, wanted) -> list[Source]:
    """A source of the training split of each dataset of ``data`` (shared layout) that ``wanted(name, spec)``."""
    from trainers.pretrain import make_source, mix_entry
    from unimed.datasets import DATASETS

    data = Path(data)
    return [make_source(name, spec.read(data / spec.folder, spec.train_split), mix_entry(spec.training))
            for name, spec in DATASETS.items()
            if spec.training is not None and wanted(name, spec) and (data / spec.folder).exists()]


def click_sources(data: str | Path, datasets: Sequence[str] = ()) -> list[Source]:
    """The training splits of the segmentation datasets a folder in the shared data layout holds
    (only ``datasets``, when given).

    Raises:
        ValueError: the folder holds none.
    """
    sources = _training_splits(data, lambda name, spec: Task.SEGMENTATION.value in spec.training.tasks
                               and (not datasets or name in datasets))
    if not sources:
        raise ValueError(f"{data} holds no segmentation dataset to learn clicks from")
    return sources


def pseudo_object_sources(data: str | Path, datasets: Sequence[str] = ()) -> list[Source]:
    """The training splits of every dataset a folder in the shared data layout holds (only
    ``datasets``, when given), whatever their labels: their images give objects nobody
    labelled (:mod:`trainers.pseudo_objects`). Empty when the folder holds none."""
    return _training_splits(data, lambda name, spec: not datasets or name in datasets)


def train_clicks(model: UniMed, sources: Sequence[Source], config: ClickTrainConfig | None = None, *,
                 pseudo_sources: Sequence[Source] = (), progress: bool = True) -> dict[str, Any]:
    """Teach a trained network clicks and boxes, every weight but the click modules frozen.

    Each step trains on a batch of every source and, with probability ``config.pseudo_objects``,
    on a batch of one pseudo-object source whose objects are asked for class-agnostically.

    Args:
        model: the network; it must take clicks (:func:`enable_clicks`). Trained in place.
        sources: segmentation sources (:func:`click_sources`).
        config: the recipe.
        pseudo_sources: sources whose images give objects nobody labelled
            (:func:`pseudo_object_sources`); none: labelled objects only.
        progress: show a progress bar.

    Returns:
        A report: steps, minutes, the sources and the last losses.

    Raises:
        ValueError: a network without clicks, or no source.
    """
    from tqdm import tqdm

    from trainers.joint import seed_everything

    config = config or ClickTrainConfig()
    if not model.config.clicks:
        raise ValueError("the network takes no clicks: build it with enable_clicks() first")
    if not sources:
        raise ValueError("no segmentation source to learn clicks from")
    seed_everything(config.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    params = _click_parameters(model)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-4)
    rng = random.Random(config.seed)
    stand_in = model.registry.resolve(None, Task.SEGMENTATION)[0]
    objects = PseudoObjectConfig(max_share=config.pseudo_max_share)
    weights = LossWeights()
    budget = float("inf") if config.max_minutes is None else config.max_minutes * 60
    start, step, recent, last = time.perf_counter(), 0, [], {}
    bar = tqdm(total=config.steps, desc="clicks", unit="step", disable=not progress, dynamic_ncols=True)
    model.eval()  # frozen layers keep their inference behaviour; only the click modules learn
    try:
        while step < config.steps and time.perf_counter() - start < budget:
            done = min(1.0, max(step / config.steps, (time.perf_counter() - start) / budget))
            for group in optimizer.param_groups:
                group["lr"] = config.lr * min(1.0, (step + 1) / 20) * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * done)))
            optimizer.zero_grad(set_to_none=True)
            losses: dict[str, float] = {}
            batches = [(src.name, *src.batch(rng, True), config.agnostic_prob) for src in sources]
            if pseudo_sources and rng.random() < config.pseudo_objects:
                src = rng.choice(pseudo_sources)
                items, view = src.batch(rng, True)
                batches.append((f"{src.name}:objects", with_pseudo_objects(items, rng, stand_in, objects), view, 1.0))
            for name, items, view, agnostic in batches:
                with torch.no_grad():
                    feats = model.encode(collate(items, view), modality_batch(model, items, view))
                terms = click_loss(model, feats, items, rng, weights, max_rounds=config.max_rounds,
                                   box_prob=config.box_prob, agnostic_prob=agnostic)
                if terms:
                    sum(terms.values()).backward()
                    losses.update({f"{name}/{k}": float(v.detach()) for k, v in terms.items()})
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
            recent.append(losses)
            last = losses
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses.values()):.3f}")
            if step % 10 == 0:
                keys = sorted({k for r in recent for k in r})
                logger.info("clicks step %d/%d %s", step, config.steps,
                            ", ".join(f"{k} {np.mean([r[k] for r in recent if k in r]):.3f}" for k in keys))
                recent = []
    finally:
        bar.close()
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
    return {"steps": step, "minutes": round((time.perf_counter() - start) / 60, 2),
            "sources": {s.name: len(s.items) for s in sources},
            "pseudo_object_sources": {s.name: len(s.items) for s in pseudo_sources}, "last_losses": last,
            "config": asdict(config)}
