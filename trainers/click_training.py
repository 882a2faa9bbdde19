"""Training with simulated clicks and boxes (``python main.py train-clicks``).

:func:`click_loss` is one interactive step on a batch of segmentation items: it picks an object
in each (a label of the item, or every labelled voxel for the class-agnostic prompt), places a
first click at the object's innermost voxel (or a box around it), then a few rounds of the
evaluation protocol (:func:`unimed.clicks.next_click` on the network's own answer), and scores
the answer after the last click with cross-entropy and soft Dice. Joint training mixes it into a
segmentation source's steps (``MixEntry.clicks``), and :func:`train_clicks` teaches a trained
checkpoint clicks with every other weight frozen, so that its automatic answers stay
bit-identical.
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
import torch.nn.functional as F

from trainers.data import GridItem, Source, batch_modalities, collate
from unimed.clicks import ClickPrompt, click_tensors, innermost_voxel, next_click
from unimed.loss_weights import LossWeights
from unimed.networks.unimednet import Features, UniMed
from unimed.task_names import Task
from unimed.tasks.segmentation import segmentation_loss

__all__ = ["ClickTrainConfig", "click_loss", "click_sources", "enable_clicks", "train_clicks"]

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


def _pixel_targets(items: Sequence[GridItem], shape: tuple[int, ...], registry, rng: random.Random,
                   agnostic_prob: float) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Per item, the object's mask on the pixel grid and the label that names it (None: class-agnostic)."""
    masks, names = [], []
    for it in items:
        ids = {registry.get(name).id: name for name in it.seg_labels}
        lm = F.interpolate(it.label_map[None, None].float(), size=shape, mode="nearest")[0, 0].long().numpy()
        present = [v for v in ids if (lm == v).any()]
        if not present:
            masks.append(None)
            names.append(None)
        elif rng.random() < agnostic_prob:
            masks.append(np.isin(lm, present))
            names.append(None)
        else:
            v = rng.choice(present)
            masks.append(lm == v)
            names.append(ids[v])
    return masks, names


def _normalised(index: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    return (np.asarray(index, dtype=np.float64) + 0.5) / np.asarray(shape, dtype=np.float64)


def _first_prompt(mask: np.ndarray, rng: random.Random, box_prob: float) -> ClickPrompt:
    """A first click at the object's innermost voxel, or (``box_prob``) a loose box around it."""
    if rng.random() < box_prob:
        where = np.argwhere(mask)
        lo, hi = where.min(0), where.max(0)
        size = np.asarray(mask.shape)
        jitter = [rng.randint(0, 2) for _ in range(6)]
        lo = np.maximum(lo - jitter[:3], 0)
        hi = np.minimum(hi + jitter[3:], size - 1)
        return ClickPrompt(box=np.concatenate([lo / size, (hi + 1) / size]))
    return ClickPrompt(_normalised(innermost_voxel(mask), mask.shape)[None])


def click_loss(model: UniMed, feats: Features, items: Sequence[GridItem], rng: random.Random, weights: LossWeights,
               *, max_rounds: int = 3, box_prob: float = 0.2, agnostic_prob: float = 0.5) -> dict[str, torch.Tensor]:
    """An interactive segmentation loss on a batch of items with label maps.

    Args:
        model: the network (with ``config.clicks``).
        feats: the batch's features (:meth:`UniMed.encode`).
        items: the batch; items whose labels are absent from their map sit out.
        rng: draws the object, the prompt and the rounds.
        weights: ``seg_ce`` and ``seg_dice`` weigh the two terms.
        max_rounds: correction rounds are drawn from ``0..max_rounds``; each runs the network
            without gradients and adds a click at its largest error.
        box_prob: probability of a box instead of the first click.
        agnostic_prob: probability that the prompt names no label.

    Returns:
        ``{"click_ce", "click_dice"}``, or an empty dict when no item has an object.
    """
    shape = tuple(feats.pixel.shape[2:])
    masks, names = _pixel_targets(items, shape, model.registry, rng, agnostic_prob)
    keep = [i for i, m in enumerate(masks) if m is not None]
    if not keep:
        return {}
    sub = Features(pixel=feats.pixel[keep], memory=[m[keep] for m in feats.memory], dense=feats.dense[keep],
                   embedding=feats.embedding[keep])
    masks, names = [masks[i] for i in keep], [names[i] for i in keep]
    # one prompt row per item: the label when named, else only the task token (padding after it)
    ids, pad = model.prompt([(Task.SEGMENTATION, [n] if n else [model.registry.resolve(None, Task.SEGMENTATION)[0].name])
                             for n in names])
    pad = pad.clone()
    pad[:, 1] = torch.tensor([n is None for n in names], device=pad.device)
    prompts = [_first_prompt(m, rng, box_prob) for m in masks]
    device = feats.pixel.device
    for _ in range(rng.randint(0, max_rounds)):
        with torch.no_grad():
            out = model.decode(sub, ids, pad, clicks=click_tensors(prompts, device))
        pred = (out["mask_logits"][:, 1] > out["mask_logits"][:, 0]).cpu().numpy()
        for j, (p, m) in enumerate(zip(pred, masks)):
            click = next_click(p, m)
            if click is not None:
                prompts[j] = prompts[j].with_click(_normalised(click[0], shape), click[1])
    out = model.decode(sub, ids, pad, clicks=click_tensors(prompts, device))
    target = torch.as_tensor(np.stack(masks), dtype=torch.long, device=device)
    losses = segmentation_loss(out["mask_logits"], target, weights)
    return {"click_ce": losses["seg_ce"], "click_dice": losses["seg_dice"]}


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
                    ids = torch.stack([model.modality_ids(m, len(view.channels) if view.channels else items[0].image.shape[0])
                                       for m in batch_modalities(items, view)])
                    feats = model.encode(collate(items, view), ids)
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
