"""Modality-aware input, balanced classification and per-source gradient clipping (issue 19)."""

from __future__ import annotations

import random

import pytest
import torch

from trainers.config import TrainConfig
from trainers.data import GridItem, Source, View, batch_modalities, collate
from trainers.joint import JointTrainer
from unimed.modalities import (UnknownModalityError, image_modalities, modalities_from_name, parse_modalities,
                               tag_modalities)
from unimed.networks.unimednet import UniMed, UniMedConfig, unimed_tiny
from unimed.predictor import Predictor
from unimed.tasks.classification import balance_weights, classification_loss
from unimed.loss_weights import LossWeights


def _trained_looking(net: UniMed) -> UniMed:
    """A tiny net whose modality embeddings are not all zero, as after training."""
    torch.manual_seed(0)
    torch.nn.init.normal_(net.backbone.modality_film.weight, std=0.5)
    return net.eval()


def test_swapping_two_channels_changes_the_output_and_swapping_their_modalities_too_does_not():
    net = _trained_looking(unimed_tiny())
    x = torch.randn(1, 2, 32, 32, 16)
    ids, pad = net.prompt([("segmentation", ["edema"])])
    mods = net.modality_ids(["flair", "t1c"], 2)[None]
    with torch.no_grad():
        ref = net(x, ids, pad, mods)["mask_logits"]
        swapped = net(x.flip(1), ids, pad, mods)["mask_logits"]
        both = net(x.flip(1), ids, pad, mods.flip(1))["mask_logits"]
    assert (ref - swapped).abs().max() > 1e-3
    torch.testing.assert_close(ref, both, atol=1e-5, rtol=1e-5)


def test_the_predictor_reads_the_modalities_tagged_on_the_image():
    net = _trained_looking(unimed_tiny())
    pred = Predictor(net)
    image = torch.randn(2, 32, 32, 16)
    flair_t1c = pred.features(tag_modalities(image.clone(), ("flair", "t1c")))[0].pixel
    t1c_flair = pred.features(tag_modalities(image.clone(), ("t1c", "flair")))[0].pixel
    unknown = pred.features(image.clone())[0].pixel
    assert (flair_t1c - t1c_flair).abs().max() > 1e-4
    assert (flair_t1c - unknown).abs().max() > 1e-4
    # the cache keys on the modalities too: the same key with other modalities is encoded again
    a = pred.features(tag_modalities(image.clone(), ("flair", "t1c")), key="img")[0].pixel
    b = pred.features(tag_modalities(image.clone(), ("t1c", "flair")), key="img")[0].pixel
    assert (a - b).abs().max() > 1e-4


def test_any_subset_of_channels_is_answered():
    net = _trained_looking(unimed_tiny())
    ids, pad = net.prompt([("segmentation", ["edema"])])
    for c in (1, 2, 3):
        out = net(torch.randn(1, c, 32, 32, 16), ids, pad, net.modality_ids(["flair", "t1c", "t2"][:c], c)[None])
        assert out["mask_logits"].shape == (1, 2, 16, 16, 8)


def test_modality_ids_and_their_errors():
    net = unimed_tiny()
    assert net.modality_ids(None, 3).tolist() == [0, 0, 0]
    assert net.modality_ids(["FLAIR", "t1ce", None], 3).tolist() == [1, 3, 0]
    with pytest.raises(ValueError, match="2 modalities given for an image of 3 channels"):
        net.modality_ids(["flair", "t1c"], 3)
    with pytest.raises(UnknownModalityError, match="unknown modality 'pet'; known: unknown, flair"):
        net.modality_ids(["pet"], 1)
    with pytest.raises(ValueError, match=r"modality indices must be in \[0, 11\)"):
        net.backbone(torch.zeros(1, 1, 16, 16, 16), torch.tensor([[11]]))


def test_a_version_1_config_builds_the_blind_stem_and_token_only_presence():
    old = {k: v for k, v in UniMedConfig().to_dict().items() if k not in ("modalities", "presence_evidence")}
    cfg = UniMedConfig.from_dict(old)
    assert cfg.modalities == () and cfg.presence_evidence is False
    net = UniMed(cfg)
    assert not hasattr(net.backbone, "modality_film") and net.presence is None
    x = torch.randn(1, 2, 32, 32, 16)
    ids, pad = net.prompt([("classification", None)])
    with torch.no_grad():
        a = net(x, ids, pad)["presence_logits"]
        b = net(x.flip(1), ids, pad)["presence_logits"]
    torch.testing.assert_close(a, b)  # version 1 cannot tell its channels apart


@pytest.mark.parametrize("name, channels, expected", [
    ("BraTS2021_00495_flair.nii.gz", 1, ("flair",)),
    ("case/T1c_subtrMeanDivStd.nii", 1, ("t1c",)),
    ("sub-01_T1w.nii.gz", 1, ("t1",)),
    ("BraTS2021_00495_t1ce.nii.gz", 1, ("t1c",)),
    ("example_ct_sm.nii.gz", 1, ("ct",)),
    ("scan.nii.gz", 1, None),
    ("flair_and_t2.nii.gz", 1, None),  # two names: no guess
    ("smear.png", 3, ("red", "green", "blue")),
    ("study.nii.gz", 2, None),
])
def test_modalities_from_file_names(name, channels, expected):
    assert modalities_from_name(name, channels) == expected


def test_parse_modalities_and_tags():
    assert parse_modalities(None) is None
    assert parse_modalities("Flair,T1Gd") == ("flair", "t1c")
    with pytest.raises(ValueError, match="1 modalities given for an image of 2 channels"):
        parse_modalities("flair", channels=2)
    image = tag_modalities(torch.zeros(2, 4, 4), ("flair", "t1c"))
    assert image_modalities(image) == ("flair", "t1c") and image_modalities(torch.zeros(1)) is None
    with pytest.raises(ValueError, match="1 modalities given for an image of 2 channels"):
        tag_modalities(torch.zeros(2, 4, 4), ("flair",))


def _items(n: int = 4, channels: int = 2, positives: int = 1) -> list[GridItem]:
    return [GridItem(torch.randn(channels, 16, 16, 16), None, (), None, [], (),
                     {"adrenal_hyperplasia": int(i < positives)}, "toy", f"c{i}", ("flair", "t1c")[:channels])
            for i in range(n)]


def test_channel_and_modality_dropout_views():
    rng = random.Random(0)
    src = Source("toy", _items(), ("classification",), channel_dropout=1.0, modality_dropout=0.0)
    for _ in range(20):
        items, view = src.batch(rng, False)
        assert view.channels in ((0,), (1,)) and not view.hide_modalities
        assert collate(items, view).shape[1] == 1
        assert batch_modalities(items, view)[0] == (("flair", "t1c")[view.channels[0]],)
    hidden = Source("toy", _items(), ("classification",), modality_dropout=1.0).batch(rng, False)
    assert batch_modalities(*hidden) == [None] * len(hidden[0])
    assert batch_modalities(_items(1), View((1, 0))) == [("t1c", "flair")]
    with pytest.raises(ValueError, match=r"modality_dropout must be a probability in \[0, 1\], got 2"):
        Source("toy", _items(), ("classification",), modality_dropout=2)


def test_sources_know_their_class_prevalence_and_the_loss_balances_it():
    src = Source("toy", _items(n=5, positives=1), ("classification",))
    assert src.items[0].class_prevalence == {"adrenal_hyperplasia": pytest.approx(0.2)}
    assert balance_weights(torch.tensor([1, 0]), torch.tensor([0.2, 0.2])).tolist() == pytest.approx([2.5, 0.625])
    assert balance_weights(torch.tensor([1]), torch.tensor([0.001])).tolist() == [5.0]  # capped
    # one positive and four negatives, all predicted 0: balanced, the missed positive weighs as much as all negatives
    logits = torch.zeros(5, 2)
    targets = torch.tensor([[0, 1], [0, 0], [0, 0], [0, 0], [0, 0]])
    valid = torch.zeros(5, 2, dtype=torch.bool)
    valid[:, 1] = True
    prevalence = torch.full((5, 2), 0.2)
    logits[:, 1] = -2.0  # confident "absent": right for 4, wrong for 1
    plain = classification_loss(logits, targets, valid, LossWeights())["cls"]
    balanced = classification_loss(logits, targets, valid, LossWeights(), prevalence)["cls"]
    assert balanced > plain  # the rare positive's error counts for more


def test_source_clip_keeps_a_loud_source_from_drowning_a_quiet_one():
    torch.manual_seed(0)
    net = unimed_tiny()
    trainer = JointTrainer(net, [Source("toy", _items(), ("classification",))], TrainConfig(steps=1, grad_clip=1.0))
    p = next(net.parameters())
    loud = 1000 * p.sum()
    quiet = 0.001 * p.sum()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer._backward(loud)
    trainer._backward(quiet)
    grad = p.grad.clone()
    g = torch.ones_like(p)  # d(p.sum())/dp
    expected = g / g.norm() + 0.001 * g  # the loud source clipped to norm 1, the quiet one as it is
    torch.testing.assert_close(grad, expected)

    trainer.config.grad_balance = "none"
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer._backward(1000 * p.sum())
    torch.testing.assert_close(p.grad, 1000 * g)  # plain backward: the sum is clipped later



def test_a_source_without_intensity_augmentation_only_flips():
    items = _items(n=2, channels=1)
    rng = random.Random(0)
    for flag, same in ((False, True), (True, False)):
        src = Source("toy", items, ("classification",), augment_intensity=flag)
        got, _ = src.batch(rng, True)
        for it in got:
            original = next(o for o in items if o.name == it.name)
            equal = torch.equal(it.image.flatten().sort().values, original.image.flatten().sort().values)
            assert equal is same
