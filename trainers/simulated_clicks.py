"""The interactive segmentation loss: an object, a first click or box, simulated corrections.

:func:`click_loss` is one interactive step on a batch of segmentation items: it picks an object
in each (a label of the item, or every labelled voxel for the class-agnostic prompt), places a
first click at the object's innermost voxel (or a box around it), then a few rounds of the
evaluation protocol (:func:`unimed.clicks.next_click` on the network's own answer), and scores
the answer after the last click with cross-entropy and soft Dice. Joint training mixes it into
a segmentation source's steps (``MixEntry.clicks``); :mod:`trainers.click_training` trains
with it alone.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from trainers.data import GridItem
from unimed.clicks import ClickPrompt, click_tensors, innermost_voxel, next_click
from unimed.loss_weights import LossWeights
from unimed.networks.unimednet import Features, UniMed
from unimed.task_names import Task
from unimed.tasks.segmentation import segmentation_loss

__all__ = ["click_loss"]


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
    sub = feats.select(keep)
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
