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
from trainers.simulated_clicks import click_loss
from unimed.loss_weights import LossWeights
from unimed.networks.unimednet import UniMed
from unimed.task_names import Task

__all__ = ["ClickTrainConfig", "click_sources", "enable_clicks", "train_clicks"]

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
        seed: seeds the run.
    """

    steps: int = 2000
    max_minutes: float | None = 30.0
    lr: float = 2e-3
    max_rounds: int = 3
    box_prob: float = 0.2
    agnostic_prob: float = 0.5
    seed: int = 0


def enable_clicks(model: UniMed) -> UniMed:
    """``model`` itself when it takes clicks, else a copy of it that does, with new (untrained)
    click modules and every other weight as it was.

    Example:
        >>> from unimed.networks.unimednet import unimed_tiny
        >>> enable_clicks(unimed_tiny(clicks=False)).config.clicks
        True
    """
    from dataclasses import replace

    if model.config.clicks:
        return model
    grown = UniMed(replace(model.config, clicks=True)).to(next(model.parameters()).device)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith(("click_encoder.", "click_refiner.")) for k in missing):
        raise ValueError(f"the weights do not fit a network with clicks: missing {missing}, unexpected {unexpected}")
    return grown.eval()


def _click_parameters(model: UniMed) -> list[torch.nn.Parameter]:
    return list(model.click_encoder.parameters()) + list(model.click_refiner.parameters())


def click_sources(data: str | Path, datasets: Sequence[str] = ()) -> list[Source]:
    """The training splits of the segmentation datasets a folder in the shared data layout holds
    (only ``datasets``, when given).

    Raises:
        ValueError: the folder holds none.
    """
    from trainers.pretrain import make_source, mix_entry
    from unimed.datasets import DATASETS

    data = Path(data)
    sources: list[Source] = []
    for name, spec in DATASETS.items():
        if (spec.training is None or Task.SEGMENTATION.value not in spec.training.tasks
                or (datasets and name not in datasets)):
            continue
        if (data / spec.folder).exists():
            sources.append(make_source(name, spec.read(data / spec.folder, spec.train_split), mix_entry(spec.training)))
    if not sources:
        raise ValueError(f"{data} holds no segmentation dataset to learn clicks from")
    return sources


def train_clicks(model: UniMed, sources: Sequence[Source], config: ClickTrainConfig | None = None, *,
                 progress: bool = True) -> dict[str, Any]:
    """Teach a trained network clicks and boxes, every weight but the click modules frozen.

    Args:
        model: the network; it must take clicks (:func:`enable_clicks`). Trained in place.
        sources: segmentation sources (:func:`click_sources`).
        config: the recipe.
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
    weights = LossWeights()
    budget = float("inf") if config.max_minutes is None else config.max_minutes * 60
    start, step, recent = time.perf_counter(), 0, []
    bar = tqdm(total=config.steps, desc="clicks", unit="step", disable=not progress, dynamic_ncols=True)
    model.eval()  # frozen layers keep their inference behaviour; only the click modules learn
    try:
        while step < config.steps and time.perf_counter() - start < budget:
            done = min(1.0, max(step / config.steps, (time.perf_counter() - start) / budget))
            for group in optimizer.param_groups:
                group["lr"] = config.lr * min(1.0, (step + 1) / 20) * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * done)))
            optimizer.zero_grad(set_to_none=True)
            losses: dict[str, float] = {}
            for src in sources:
                items, view = src.batch(rng, True)
                with torch.no_grad():
                    feats = model.encode(collate(items, view), modality_batch(model, items, view))
                terms = click_loss(model, feats, items, rng, weights, max_rounds=config.max_rounds,
                                   box_prob=config.box_prob, agnostic_prob=config.agnostic_prob)
                if terms:
                    sum(terms.values()).backward()
                    losses.update({f"{src.name}/{k}": float(v.detach()) for k, v in terms.items()})
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
            recent.append(losses)
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
            "sources": {s.name: len(s.items) for s in sources}, "last_losses": recent[-1] if recent else {},
            "config": asdict(config)}
