"""The UniMed network: shapes per task and dimensionality, gradients, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unimed.clicks import ClickPrompt, click_tensors
from unimed.labels import LabelRegistry
from unimed.networks.layers import Conv
from unimed.networks.unimednet import UniMed, UniMedConfig, unimed_small, unimed_tiny
from unimed.tasks import Task


@pytest.fixture(scope="module")
def net() -> UniMed:
    torch.manual_seed(0)
    return unimed_tiny()


@pytest.mark.parametrize("shape", [(2, 1, 32, 48, 16), (1, 3, 64, 32, 1), (1, 2, 16, 16, 16)])
@pytest.mark.parametrize("task", list(Task))
def test_output_shapes(net, shape, task):
    labels = [lab.name for lab in net.registry.for_task(task)]
    ids, pad = net.prompt([(task, labels)] * shape[0])
    out = net(torch.randn(shape), ids, pad)
    b, p, q, k = shape[0], 1 + len(labels), net.config.num_queries, len(net.registry)
    half = tuple(n // 2 if n > 1 else 1 for n in shape[2:])
    assert out["mask_logits"].shape == (b, p, *half)
    assert out["query_mask_logits"].shape == (b, q, *half)
    assert out["class_logits"].shape == (b, q, k + 1)
    assert out["box_logits"].shape == (b, q, 6, net.config.num_bins)
    assert out["boxes"].shape == (b, q, 6)
    assert ((out["boxes"] >= 0) & (out["boxes"] <= 1)).all()
    assert out["presence_logits"].shape == (b, p)
    assert out["embedding"].shape == (b, net.config.channels[-1])


def test_prompt_selects_the_output(net):
    """The task and label tokens change what the decoder emits for the same image."""
    x = torch.randn(1, 1, 32, 32, 16)
    feats = net.encode(x)
    a = net.decode(feats, *net.prompt([("segmentation", ["edema"])]))
    b = net.decode(feats, *net.prompt([("detection", ["edema"])]))
    assert not torch.allclose(a["class_logits"], b["class_logits"])


def test_mixed_prompts_in_one_batch_are_padded(net):
    ids, pad = net.prompt([("segmentation", ["edema", "necrosis"]), ("classification", ["adrenal_hyperplasia"])])
    assert ids.shape == (2, 3) and pad.tolist() == [[False, False, False], [False, False, True]]
    out = net(torch.randn(2, 1, 16, 16, 16), ids, pad)
    assert torch.isfinite(out["mask_logits"]).all()


def test_gradients_reach_every_parameter(net):
    net.zero_grad()
    ids, pad = net.prompt([("segmentation", None), ("detection", None)])
    out = net(torch.randn(2, 2, 32, 32, 16), ids, pad)
    loss = sum(out[k].float().pow(2).mean() for k in ("mask_logits", "class_logits", "boxes", "presence_logits",
                                                      "heat_logits", "extents"))
    loss = loss + out["query_mask_logits"].pow(2).mean()
    # clicks: the refiner's last convolution starts at zero (no correction untrained), which
    # also stops gradients to its inner layers; give it weights to see them flow
    torch.nn.init.normal_(net.click_refiner.net[-1].weight)
    points, kinds = click_tensors([ClickPrompt(np.full((1, 3), 0.4), np.full((1, 3), 0.7))] * 2)
    clicked = net.decode(net.encode(torch.randn(2, 2, 32, 32, 16)), *net.prompt([("segmentation", ["edema"])] * 2),
                         clicks=(points, kinds))
    loss = loss + clicked["mask_logits"].pow(2).mean()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_any_number_of_channels_uses_one_set_of_weights(net):
    for c in (1, 2, 3, 4):
        out = net.encode(torch.randn(1, c, 16, 16, 16))
        assert out.pixel.shape[1] == net.config.mask_dim


def test_depth_one_conv_equals_3d_conv_with_zero_padding():
    torch.manual_seed(1)
    conv = Conv(3, 5, kernel_size=3, stride=2)
    x = torch.randn(2, 3, 20, 18, 1)
    ref = F.conv3d(x, conv.weight, conv.bias, stride=2, padding=1)
    assert torch.allclose(conv(x), ref, atol=1e-5)


@pytest.mark.parametrize(
    "shape, message",
    [((1, 1, 30, 32, 16), "multiples of 16"), ((1, 32, 32, 16), r"\(B, C, X, Y, Z\)"), ((1, 0, 16, 16, 16), "channel")],
)
def test_bad_input_raises_a_clear_error(net, shape, message):
    ids, pad = net.prompt([("segmentation", None)] * shape[0])
    with pytest.raises(ValueError, match=message):
        net(torch.randn(shape), ids, pad)


def test_registry_must_match_the_label_space():
    with pytest.raises(ValueError, match="differs from the network's label space"):
        UniMed(UniMedConfig(labels=("edema",)), LabelRegistry())


@pytest.mark.slow
def test_shipped_size_runs_a_brats_sized_grid_quickly():
    """The default network encodes a 128x128x80 grid (a BraTS volume's) in one pass."""
    net = unimed_small().eval()
    with torch.inference_mode():
        feats = net.encode(torch.randn(1, 1, 128, 128, 80))
    assert feats.pixel.shape == (1, net.config.mask_dim, 64, 64, 40)
    assert sum(p.numel() for p in net.parameters()) < 5_000_000
