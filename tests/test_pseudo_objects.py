"""Objects nobody labelled (trainers.pseudo_objects) and the click refiner's appearance cue."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from trainers.click_training import ClickTrainConfig, enable_clicks, train_clicks
from trainers.data import GridItem, Source
from trainers.pseudo_objects import PseudoObjectConfig, pseudo_object, with_pseudo_objects
from unimed.clicks import BACKGROUND, FOREGROUND, ClickPrompt, click_tensors
from unimed.networks.click_prompt import ClickRefiner, appearance_map
from unimed.networks.unimednet import UniMedConfig, unimed_tiny

EXACT = PseudoObjectConfig(levels=(3, 3), smooth=0.0, min_share=0.01, max_share=0.3)


def _two_blobs() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """A flat volume with a bright block and a dark block of other sizes."""
    image = torch.zeros(1, 32, 32, 16)
    bright = np.zeros((32, 32, 16), bool)
    dark = np.zeros((32, 32, 16), bool)
    bright[2:10, 2:10, 2:10] = True
    dark[16:30, 18:30, 4:12] = True
    image[0][torch.from_numpy(bright)] = 3.0
    image[0][torch.from_numpy(dark)] = -2.0
    return image, bright, dark


def test_a_pseudo_object_is_one_region_of_one_intensity_level():
    image, bright, dark = _two_blobs()
    found = {int(pseudo_object(image, random.Random(seed), EXACT).sum()) for seed in range(20)}
    assert found == {int(bright.sum()), int(dark.sum())}  # the flat rest is too large to be an object
    mask = pseudo_object(image, random.Random(0), EXACT)
    assert np.array_equal(mask, bright) or np.array_equal(mask, dark)


def test_a_flat_image_has_no_pseudo_object():
    assert pseudo_object(torch.ones(2, 16, 16, 16), random.Random(0)) is None


def test_a_2d_image_is_smoothed_in_plane_only():
    image = torch.zeros(3, 48, 48, 1)
    image[:, 10:20, 30:44] = 1.0  # an RGB patch
    mask = pseudo_object(image, random.Random(0), PseudoObjectConfig(levels=(2, 2), smooth=1.0, max_share=0.2))
    assert mask.shape == (48, 48, 1)
    assert 100 <= mask.sum() <= 200 and mask[14, 36, 0]


@pytest.mark.parametrize("kwargs", [dict(levels=(1, 3)), dict(levels=(5, 4)), dict(min_share=0.5, max_share=0.2),
                                    dict(smooth=-1.0), dict(tries=0), dict(min_voxels=0)])
def test_pseudo_object_config_names_the_broken_constraint(kwargs):
    with pytest.raises(ValueError, match="levels|shares|smooth"):  # one message per broken constraint
        PseudoObjectConfig(**kwargs)


def test_with_pseudo_objects_marks_the_object_with_the_stand_in_label():
    image, bright, dark = _two_blobs()
    net = unimed_tiny()
    stand_in = net.registry.get("edema")
    flat = GridItem(torch.zeros(1, 16, 16, 16), None, (), None, [], (), None, "d", "flat")
    item = GridItem(image, None, (), None, [], (), {"brain_tumor": 1}, "d", "blobs")
    out = with_pseudo_objects([item, flat], random.Random(0), stand_in, EXACT)
    assert out[0].seg_labels == ("edema",) and torch.equal(out[0].image, image)
    marked = out[0].label_map.numpy() == stand_in.id
    assert np.array_equal(marked, bright) or np.array_equal(marked, dark)
    assert set(np.unique(out[0].label_map.numpy())) == {0, stand_in.id}
    assert not out[1].label_map.any()  # no object: an empty map, the item sits the step out


def test_appearance_guidance_says_which_voxels_look_like_the_clicked_ones():
    image, bright, dark = _two_blobs()
    pixel = torch.randn(1, 4, 16, 16, 8)
    appearance = appearance_map(image[None], (16, 16, 8))
    fg = (np.array([6.0, 6.0, 6.0]) + 0.5) / np.array([32, 32, 16])  # inside the bright block
    bg = (np.array([24.0, 24.0, 8.0]) + 0.5) / np.array([32, 32, 16])  # inside the dark block
    points, kinds = click_tensors([ClickPrompt(fg[None], bg[None])])
    assert kinds[0].tolist() == [FOREGROUND, BACKGROUND]
    refiner = ClickRefiner(appearance=True)
    guide = refiner.guidance(pixel, points, kinds, torch.randn(1, 2, 4), appearance)
    assert guide.shape == (1, 9, 16, 16, 8)
    like_fg, like_bg = guide[0, 7], guide[0, 8]
    assert float(like_fg[2, 2, 2]) > 0.99 and float(like_fg[8, 10, 4]) < 0.01  # bright block / dark block
    assert float(like_bg[12, 12, 4]) > 0.99 and float(like_bg[2, 2, 2]) < 0.01
    with pytest.raises(ValueError, match="appearance"):
        refiner(torch.zeros(1, 16, 16, 8), pixel, points, kinds, torch.randn(1, 2, 4))


def test_appearance_inputs_start_at_zero_so_old_clicks_answer_unchanged():
    torch.manual_seed(0)
    old = unimed_tiny(click_appearance=False).eval()
    torch.nn.init.normal_(old.click_refiner.net[-1].weight)  # an old refiner that corrects something
    grown = enable_clicks(old)
    assert grown is not old and grown.config.click_appearance and grown.click_refiner.appearance
    image = torch.randn(1, 1, 32, 32, 16)
    points, kinds = click_tensors([ClickPrompt(np.array([[0.4, 0.5, 0.5]]), np.array([[0.1, 0.1, 0.5]]))])
    ids, pad = old.prompt([("segmentation", None)])
    with torch.no_grad():
        before = old.decode(old.encode(image), ids[:, :1], pad[:, :1], clicks=(points, kinds))["mask_logits"]
        after = grown.decode(grown.encode(image), ids[:, :1], pad[:, :1], clicks=(points, kinds))["mask_logits"]
    assert torch.allclose(before, after, atol=1e-6)
    assert enable_clicks(grown) is grown


def test_a_checkpoint_config_from_before_the_appearance_cue_reads_embeddings_only():
    old = {k: v for k, v in UniMedConfig().to_dict().items() if k != "click_appearance"}
    assert UniMedConfig.from_dict(old).click_appearance is False
    assert UniMedConfig().click_appearance is True


def test_click_training_learns_from_pseudo_objects():
    torch.manual_seed(0)
    model = enable_clicks(unimed_tiny(click_appearance=False))
    image, _, _ = _two_blobs()
    labelled = GridItem(image, torch.from_numpy(np.where(_two_blobs()[1], 2, 0)), ("edema",), None, [], (), None,
                        "blobs", "b")
    unlabelled = GridItem(image + 0.1 * torch.randn_like(image), None, (), None, [], (), None, "plain", "p")
    first = model.click_refiner.net[0].weight
    report = train_clicks(model, [Source("blobs", [labelled], ("segmentation",))],
                          ClickTrainConfig(steps=10, max_minutes=None, pseudo_objects=1.0),
                          pseudo_sources=[Source("plain", [unlabelled], ("classification",))], progress=False)
    assert report["pseudo_object_sources"] == {"plain": 1}
    assert any(k.startswith("plain:objects/") for k in report["last_losses"])  # also after a logged step (10)
    assert first[:, ClickRefiner.IN_CHANNELS:].abs().sum() > 0  # the appearance inputs learnt


def test_click_training_bounds_the_size_of_pseudo_objects():
    assert ClickTrainConfig(pseudo_max_share=0.03).pseudo_max_share == 0.03
    for share in (0.0, 1.5, 0.0001):  # 0.0001 is below the smallest object's share
        with pytest.raises(ValueError, match="share"):
            ClickTrainConfig(pseudo_max_share=share)
