"""Clicks in the network and their training: tokens, refiner, the simulator-driven loss, frozen fine-tuning."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from trainers.click_training import ClickTrainConfig, enable_clicks, train_clicks
from trainers.simulated_clicks import click_loss
from trainers.data import GridItem, Source
from unimed.clicks import ClickPrompt, click_tensors
from unimed.loss_weights import LossWeights
from unimed.networks.unimednet import unimed_tiny


def _cube_item(seed: int) -> GridItem:
    """A bright cube (label edema, id 2) at a random place in a noisy 32x32x16 volume."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 32, 32, 16, generator=g) * 0.3
    label = torch.zeros(32, 32, 16, dtype=torch.long)
    x, y = (int(v) for v in torch.randint(2, 20, (2,), generator=g))
    image[0, x:x + 10, y:y + 10, 4:12] += 2.0
    label[x:x + 10, y:y + 10, 4:12] = 2
    return GridItem(image, label, ("edema",), None, [], (), None, "cubes", f"cube{seed}")


def _dice_after_one_click(model, items) -> float:
    scores = []
    for it in items:
        feats = model.encode(it.image[None])
        target = torch.nn.functional.interpolate(it.label_map[None, None].float(), size=feats.pixel.shape[2:])[0, 0] > 0
        inner = np.argwhere(target.numpy()).mean(0)
        points, kinds = click_tensors([ClickPrompt(((inner + 0.5) / np.array(target.shape))[None])])
        ids, pad = model.prompt([("segmentation", None)])
        out = model.decode(feats, ids[:, :1], pad[:, :1], clicks=(points, kinds))
        pred = out["mask_logits"][0, 1] > out["mask_logits"][0, 0]
        scores.append(float(2 * (pred & target).sum() / (pred.sum() + target.sum())))
    return float(np.mean(scores))


def test_click_loss_is_finite_and_reaches_the_click_modules():
    torch.manual_seed(0)
    model = unimed_tiny()
    items = [_cube_item(0), _cube_item(1)]
    feats = model.encode(torch.stack([it.image for it in items]))
    losses = click_loss(model, feats, items, random.Random(0), LossWeights(), max_rounds=2)
    assert set(losses) == {"click_ce", "click_dice"}
    sum(losses.values()).backward()
    assert model.click_encoder.kind_embed.weight.grad.abs().sum() > 0
    assert model.click_refiner.net[-1].weight.grad.abs().sum() > 0


def test_click_loss_skips_items_without_their_labels():
    model = unimed_tiny()
    empty = _cube_item(0)
    empty = GridItem(empty.image, torch.zeros_like(empty.label_map), ("edema",), None, [], (), None, "cubes", "e")
    feats = model.encode(empty.image[None])
    assert click_loss(model, feats, [empty], random.Random(0), LossWeights()) == {}


def test_enable_clicks_keeps_every_other_weight():
    torch.manual_seed(0)
    base = unimed_tiny(clicks=False).eval()
    grown = enable_clicks(base)
    assert grown.config.clicks and grown.click_encoder is not None
    x = torch.randn(1, 1, 32, 32, 16)
    ids, pad = base.prompt([("segmentation", ["edema"])])
    with torch.no_grad():
        assert torch.equal(base(x, ids, pad)["mask_logits"], grown(x, ids, pad)["mask_logits"])
    assert enable_clicks(grown) is grown


@pytest.mark.slow
def test_frozen_click_training_learns_clicks_and_keeps_automatic_answers():
    torch.manual_seed(0)
    model = unimed_tiny()
    train = Source("cubes", [_cube_item(s) for s in range(8)], ("segmentation",), batch_size=2)
    held_out = [_cube_item(100 + s) for s in range(4)]
    x = torch.randn(1, 1, 32, 32, 16)
    ids, pad = model.prompt([("segmentation", ["edema"]), ])
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("click_")}
    with torch.no_grad():
        automatic = model(x, ids, pad)["mask_logits"]
        before = _dice_after_one_click(model, held_out)
    report = train_clicks(model, [train], ClickTrainConfig(steps=60, max_minutes=None, lr=1e-2, box_prob=0.0,
                                                            agnostic_prob=1.0), progress=False)
    assert report["steps"] == 60
    with torch.no_grad():
        after = _dice_after_one_click(model, held_out)
        assert torch.equal(model(x, ids, pad)["mask_logits"], automatic)  # automatic answers unchanged
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
    assert after > before + 0.2, (before, after)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again for whoever trains next
