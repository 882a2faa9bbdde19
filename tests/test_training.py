"""Joint training: losses, matching, the self-supervised term, steps on real data, versions."""

from __future__ import annotations

import dataclasses
import random
import re

import numpy as np
import pytest
import torch

from trainers.config import MixEntry, TrainConfig
from trainers.data import GridItem, Source, augment, crop, random_contrast, to_grid_item
from trainers.joint import JointTrainer, seed_everything
from trainers.ssl import MaskedReconstruction, PseudoLabelConsistency, make_ssl
from trainers.train_request import TrainRequest, TrainRequestError
from unimed.boxes import generalized_box_iou
from unimed.checkpoint import load_checkpoint
from unimed.datasets.sample import Sample
from unimed.loss_weights import LossWeights
from unimed.model_store import ModelStore
from unimed.networks.unimednet import unimed_tiny
from unimed.tasks.detection import match
from unimed.tasks.segmentation import segmentation_loss


def test_giou_of_known_boxes():
    a = torch.tensor([[0.0, 0, 0, 2, 2, 2]])
    b = torch.tensor([[1.0, 0, 0, 3, 2, 2], [0.0, 0, 0, 2, 2, 2], [4.0, 0, 0, 6, 2, 2]])
    g = generalized_box_iou(a, b)[0]
    # overlap 4 of union 12; identical; disjoint with hull 12 and union 16 -> 0 - (12 - 16)/... hull 6x2x2=24
    assert torch.allclose(g, torch.tensor([4 / 12, 1.0, 0 - (24 - 16) / 24]))


def test_hungarian_match_pairs_each_box_with_its_query():
    gt = torch.tensor([[0.1, 0.1, 0, 0.2, 0.2, 1], [0.6, 0.6, 0, 0.9, 0.9, 1]])
    boxes = torch.tensor([[0.6, 0.6, 0, 0.9, 0.9, 1], [0.5, 0.1, 0, 0.6, 0.2, 1], [0.1, 0.1, 0, 0.2, 0.2, 1]])
    logits = torch.zeros(3, 4)
    q, g = match(logits, boxes, torch.tensor([1, 1]), gt, LossWeights())
    assert dict(zip(g.tolist(), q.tolist())) == {0: 2, 1: 0}


def test_segmentation_loss_is_low_for_the_right_answer_and_high_for_the_wrong_one():
    target = torch.zeros(1, 8, 8, 1, dtype=torch.long)
    target[0, 2:5, 2:5] = 1
    good = torch.stack([(target[0] == 0).float(), (target[0] == 1).float()])[None] * 20 - 10
    bad = good.flip(1)
    w = LossWeights()
    assert sum(segmentation_loss(good, target, w).values()) < 0.01
    assert sum(segmentation_loss(bad, target, w).values()) > 5


def test_flip_augmentation_moves_boxes_with_the_image():
    img = torch.zeros(1, 16, 16, 1)
    img[0, 2:6, 10:14] = 1
    sample = Sample(img, np.eye(4), "toy", "t", boxes=np.array([[2 / 16, 10 / 16, 0, 6 / 16, 14 / 16, 1]]),
                    box_labels=["platelet"], det_labels=("platelet",))
    item = to_grid_item(sample)
    for seed in range(8):
        out = augment(item, random.Random(seed))
        b = (out.boxes[0] * 16).round().long().tolist()
        inside = out.image[0, b[0]:b[3], b[1]:b[4], 0]
        assert inside.mean() > out.image[0].mean() + 0.5  # the box still covers the bright square


def test_random_contrast_remaps_intensities_and_keeps_the_anatomy():
    # three tissues and air: 0 (air), 1, 2, 3, in blocks
    x = torch.zeros(1, 12, 12, 6)
    x[0, 2:10, 2:10] = 1.0
    x[0, 3:9, 3:9, 1:5] = 2.0
    x[0, 5:7, 5:7, 2:4] = 3.0
    tissues = [x[0] == v for v in (0.0, 1.0, 2.0, 3.0)]
    swapped = False
    for seed in range(20):
        y = random_contrast(x, random.Random(seed))
        assert torch.equal(y, random_contrast(x, random.Random(seed)))  # drawn from the generator alone
        assert abs(float(y.mean())) < 1e-5 and abs(float(y.std()) - 1.0) < 1e-4  # standardised again
        values = [y[0][t] for t in tissues]
        assert all(float(v.max() - v.min()) < 1e-5 for v in values)  # one tissue, one value: the shape is kept
        means = [float(v.mean()) for v in values]
        assert means[0] == min(means)  # air stays darkest
        swapped |= means[2] < means[1]  # a tissue may become darker than one it was brighter than
    assert swapped
    flat = torch.full((1, 4, 4, 4), 3.0)
    assert torch.equal(random_contrast(flat, random.Random(0)), flat)  # nothing to remap
    with pytest.raises(ValueError, match="at least 2 control points"):
        random_contrast(x, random.Random(0), points=1)


def test_augmentation_without_contrast_draws_as_before():
    """contrast 0 takes nothing from the generator: pretraining's random stream, and so resumed
    runs' bit-identity, are unchanged; contrast 1 always remaps."""
    item = GridItem(torch.rand(1, 8, 8, 8), None, (), None, [], (), None, "d", "n")
    a, b = random.Random(3), random.Random(3)
    assert torch.equal(augment(item, a).image, augment(item, b, contrast=0.0).image) and a.random() == b.random()
    plain, remapped = augment(item, random.Random(3), intensity=False), augment(item, random.Random(3), False, 1.0)
    assert not torch.allclose(plain.image, remapped.image)
    with pytest.raises(ValueError, match="contrast must be a probability"):
        Source("s", [item], ("segmentation",), contrast=1.5)


def test_a_wide_volume_is_cropped_to_the_training_window_with_its_labels_and_boxes():
    # each voxel holds its own x index, so the window's origin can be read off the crop
    x = torch.arange(160, dtype=torch.float32).view(1, 160, 1, 1).expand(1, 160, 96, 48).contiguous()
    lm = torch.zeros(160, 96, 48, dtype=torch.long)
    lm[60:70, 10:20, 10:20] = 2  # in every window: the windows stay uniform
    boxes = torch.tensor([[140 / 160, 10 / 96, 10 / 48, 150 / 160, 20 / 96, 20 / 48],  # near the far end
                          [0.0, 0.0, 0.0, 10 / 160, 0.5, 0.5]])  # at the near end
    item = GridItem(x, lm, ("edema",), boxes, ["edema", "necrosis"], ("edema",), {"brain_tumor": 1}, "toy", "wide")
    seen_kept = set()
    for seed in range(12):
        out = crop(item, 128, random.Random(seed))
        assert tuple(out.image.shape) == (1, 128, 96, 48)
        x0 = int(out.image[0, 0, 0, 0])
        assert torch.equal(out.label_map, lm[x0:x0 + 128])  # the label map moved with the image
        assert out.class_labels == {"brain_tumor": 1}
        assert len(out.boxes) == len(out.box_labels)
        for b, name in zip(out.boxes, out.box_labels):
            lo, hi = float(b[0]) * 128 + x0, float(b[3]) * 128 + x0
            want = (max(140, x0), min(150, x0 + 128)) if name == "edema" else (x0, 10)
            assert (lo, hi) == pytest.approx(want, abs=1e-3)
        seen_kept.add(tuple(out.box_labels))
    assert ("edema",) in seen_kept and ("necrosis",) in seen_kept  # a box outside the window is dropped
    small = dataclasses.replace(item, image=x[:, :96], label_map=lm[:96])
    assert crop(small, 128, random.Random(0)) is small
    with pytest.raises(ValueError, match="multiple of 16"):
        crop(item, 100, random.Random(0))


def test_the_window_of_a_labelled_volume_holds_a_labelled_voxel_at_random():
    lm = torch.zeros(160, 96, 48, dtype=torch.long)
    lm[140:150, 10:20, 10:20] = 3  # near the far end: most uniform windows (start 0..32) would miss it
    x = torch.arange(160, dtype=torch.float32).view(1, 160, 1, 1).expand(1, 160, 96, 48).contiguous()
    item = GridItem(x, lm, ("edema",), None, [], (), None, "toy", "wide")
    starts = set()
    for seed in range(40):
        out = crop(item, 128, random.Random(seed))
        x0 = int(out.image[0, 0, 0, 0])
        assert out.label_map.any() and torch.equal(out.label_map, lm[x0:x0 + 128])
        starts.add(x0)
    assert min(starts) >= 140 - 127 and len(starts) > 5  # holds the structure, at random places around it
    empty = dataclasses.replace(item, label_map=torch.zeros_like(lm))
    assert {int(crop(empty, 128, random.Random(s)).image[0, 0, 0, 0]) for s in range(40)} & set(range(13))


def test_a_source_batch_of_wide_volumes_is_cropped():
    items = [GridItem(torch.rand(1, 160, 160, 64), None, (), None, [], (), {"brain_tumor": 1}, "toy", f"w{i}")
             for i in range(2)]
    picked, _ = Source("toy", items, ("classification",), batch_size=2).batch(random.Random(0))
    assert [tuple(it.image.shape) for it in picked] == [(1, 128, 128, 64)] * 2


@pytest.mark.slow
def test_ssl_loss_gives_the_backbone_gradients():
    net = unimed_tiny()
    ssl = MaskedReconstruction(net.config.mask_dim, block=8)
    loss = ssl(net, torch.randn(2, 1, 16, 16, 16))
    loss.backward()
    assert loss > 0
    assert net.backbone.stem.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.decoder.parameters())  # only the dense half learns from it


def _toy_sources():
    rng = np.random.default_rng(0)
    samples = []
    for i in range(4):
        img = rng.normal(size=(1, 32, 32, 16)).astype(np.float32)
        lm = np.zeros((32, 32, 16), np.uint8)
        lm[8 + i:20, 8:20, 4:12] = 2
        img[0][lm > 0] += 2
        samples.append(Sample(torch.tensor(img), np.eye(4), "toy", f"s{i}", label_map=lm, seg_labels=("edema",),
                              class_labels={"brain_tumor": 1}))
    items = [to_grid_item(s) for s in samples]
    return Source("toy", items, ("segmentation", "classification"), batch_size=2), Source("unlabelled", items, ())


def test_unlabelled_images_change_the_weights_through_the_ssl_term():
    seed_everything(0)
    net = unimed_tiny()
    _, unl = _toy_sources()
    before = net.backbone.stem.weight.detach().clone()
    trainer = JointTrainer(net, [], TrainConfig(steps=2, log_every=1), unlabelled=unl)
    history = trainer.train()
    assert all("unlabelled/ssl" in r.losses for r in history)
    assert not torch.equal(before, net.backbone.stem.weight)


def _sharp_logits(model, images, modalities=None):
    """A stand-in network output: background/label logits from the image's sign, very confident."""
    x = images.mean(1)
    return torch.stack([-100 * x, 100 * x], 1)


def test_consistency_mirrors_the_student_view_back_before_comparing(monkeypatch):
    ssl = PseudoLabelConsistency(["edema"], threshold=0.9, ratio=0.0, noise=0.0)
    monkeypatch.setattr(ssl, "_logits", _sharp_logits)
    images = torch.zeros(1, 1, 8, 8, 4)
    images[..., :3, :, :] = 1.0  # asymmetric along every axis, so a misaligned view disagrees
    images[..., 3:, :, :] = -1.0
    images[..., :, :2, :] += 0.5
    images[..., :, :, 0] -= 3.0
    assert float(ssl(None, images)) < 1e-6  # same image, same answer, once mirrored back

    ramp = torch.linspace(-3, 3, 8).view(1, 1, 8, 1, 1)  # a network that sees position is not mirror-equivariant
    monkeypatch.setattr(ssl, "_logits", lambda model, im, mods: _sharp_logits(model, im + ramp))
    assert float(ssl(None, images)) > 1.0


def test_consistency_learns_only_from_confident_voxels(monkeypatch):
    images = torch.randn(2, 1, 8, 8, 1)
    ssl = PseudoLabelConsistency(["edema"], threshold=0.9, ratio=0.0, noise=0.0)
    monkeypatch.setattr(ssl, "_logits", lambda model, im, mods: torch.zeros(im.shape[0], 2, *im.shape[2:]))
    assert float(ssl(None, images)) == 0.0  # a 50/50 teacher teaches nothing


def test_consistency_gives_the_network_gradients_and_needs_labels():
    net = unimed_tiny()
    loss = PseudoLabelConsistency(["edema"], threshold=0.5, block=8)(net, torch.randn(2, 1, 16, 16, 16))
    loss.backward()
    assert loss > 0
    assert net.backbone.stem.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="label names"):
        PseudoLabelConsistency([])
    with pytest.raises(ValueError, match="threshold"):
        PseudoLabelConsistency(["edema"], threshold=1.0)
    with pytest.raises(ValueError, match="unknown ssl loss 'contrast'"):
        make_ssl("contrast", mask_dim=8)


@pytest.mark.slow
def test_consistency_prompts_the_labelled_sources_segmentation_labels():
    seed_everything(0)
    net = unimed_tiny()
    src, unl = _toy_sources()
    config = TrainConfig(steps=2, log_every=1, ssl_loss="consistency", ssl_threshold=0.5)
    trainer = JointTrainer(net, [src], config, unlabelled=unl)
    assert isinstance(trainer.ssl, PseudoLabelConsistency) and trainer.ssl.labels == ["edema"]
    assert all("unlabelled/ssl" in r.losses for r in trainer.train())
    with pytest.raises(ValueError, match="label names"):  # nothing to prompt without a segmentation source
        JointTrainer(unimed_tiny(), [], config, unlabelled=unl)


def test_mean_teacher_averages_the_weights_and_stays_out_of_training():
    net = unimed_tiny()
    ssl = make_ssl("mean_teacher", mask_dim=net.config.mask_dim, labels=["edema"], threshold=0.5, teacher_decay=0.9)
    images = torch.randn(1, 1, 16, 16, 16)
    ssl(net, images).backward()
    teacher = ssl.teacher
    assert teacher is not None and teacher is not net
    assert list(ssl.parameters()) == [] and ssl.state_dict() == {}  # never trained, never saved
    assert all(p.grad is None for p in teacher.parameters())
    assert net.backbone.stem.weight.grad.abs().sum() > 0  # the student learns
    before = teacher.backbone.stem.weight.detach().clone()
    with torch.no_grad():
        net.backbone.stem.weight.add_(1.0)
    ssl.updates = 100  # past the warm-up, the decay holds: the teacher moves a tenth of the way
    ssl(net, images)
    moved = teacher.backbone.stem.weight - before
    assert torch.allclose(moved, torch.full_like(moved, 0.1), atol=1e-5)
    other = unimed_tiny(mask_dim=net.config.mask_dim + 8)
    ssl(other, images)  # another network's shapes: the teacher starts again as its copy
    assert ssl.updates == 1 and ssl.teacher.config.mask_dim == other.config.mask_dim
    with pytest.raises(ValueError, match="teacher_decay"):
        PseudoLabelConsistency(["edema"], teacher_decay=1.0)


def test_consistency_without_averaging_has_no_teacher():
    ssl = make_ssl("consistency", mask_dim=8, labels=["edema"])
    ssl(unimed_tiny(), torch.randn(1, 1, 16, 16, 16))
    assert ssl.teacher is None


@pytest.mark.slow
def test_training_steps_lower_the_loss_on_toy_data():
    seed_everything(0)
    src, unl = _toy_sources()
    trainer = JointTrainer(unimed_tiny(), [src], TrainConfig(steps=25, lr=3e-3, warmup_steps=2, augment=False), unl)
    history = trainer.train()
    first = np.mean([r.losses["toy/seg_ce"] + r.losses["toy/cls"] for r in history[:3]])
    last = np.mean([r.losses["toy/seg_ce"] + r.losses["toy/cls"] for r in history[-3:]])
    assert last < 0.5 * first


@pytest.mark.slow
def test_training_steps_lower_the_loss_on_real_data(shared_data):
    """MSD lung-tumour patches and BCCD smears, every task, a few steps of the tiny network."""
    from unimed.datasets import read_msd_patches, read_voc

    seed_everything(0)
    msd = [to_grid_item(s) for s in read_msd_patches(shared_data / "msd_lung_patches", split="train")[:8]]
    voc = [to_grid_item(s) for s in read_voc(shared_data / "bccd", split="train")[:2]]
    sources = [Source("msd", msd, ("segmentation", "detection", "classification"), batch_size=8),
               Source("voc", voc, ("detection",), batch_size=2)]
    trainer = JointTrainer(unimed_tiny(), sources, TrainConfig(steps=20, lr=3e-3, warmup_steps=2, augment=False))
    history = trainer.train()
    assert {"msd/seg_ce", "msd/det_giou", "msd/cls", "voc/det_class", "voc/det_token"} <= set(history[0].losses)
    assert np.mean([r.loss for r in history[-3:]]) < np.mean([r.loss for r in history[:3]])


def test_model_store_versions_and_rollback(tmp_path):
    store = ModelStore(tmp_path)
    a, b = unimed_tiny(), unimed_tiny()
    assert store.publish(a, {"kind": "first"}).number == 1
    assert store.publish(b, {"kind": "second"}).number == 2
    assert [v.number for v in store.versions()] == [1, 2] and store.current_version() == 2
    store.rollback(1)
    assert store.current_version() == 1
    with pytest.raises(ValueError, match="no model version 7"):
        store.rollback(7)


def test_a_crash_while_publishing_leaves_the_published_model_intact(tmp_path, monkeypatch):
    store = ModelStore(tmp_path)
    store.publish(unimed_tiny(), {})
    before = store.published.read_bytes()

    def broken_copy(src, dst):
        with open(dst, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr("unimed.model_store.shutil.copyfile", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        store.publish(unimed_tiny(), {})
    assert store.published.read_bytes() == before
    load_checkpoint(store.published)  # still readable
    assert not list(tmp_path.glob("*.tmp"))


def test_the_schedule_follows_whichever_budget_binds_first():
    src, _ = _toy_sources()
    trainer = JointTrainer(unimed_tiny(), [src], TrainConfig(steps=100, lr=1e-3, warmup_steps=10))
    assert trainer.lr_at(0) == pytest.approx(1e-4)
    assert trainer.lr_at(10) == pytest.approx(1e-3)
    # a quarter of the steps but all of the time: the bottom of the cosine, 5% of lr
    assert trainer.lr_at(30, time_fraction=1.0) == pytest.approx(5e-5)
    assert trainer.lr_at(30, time_fraction=0.5) < trainer.lr_at(30, time_fraction=0.1) == trainer.lr_at(30)


def test_channel_dropout_is_a_probability():
    src, _ = _toy_sources()
    with pytest.raises(ValueError, match="channel_dropout"):
        Source("toy", src.items, ("segmentation",), channel_dropout=1.5)
    two = [dataclasses.replace(it, image=it.image.repeat(2, 1, 1, 1)) for it in src.items]
    rng = random.Random(0)
    views = [Source("toy", two, ("segmentation",), channel_dropout=p).batch(rng, False)[1] for p in (0.0, 1.0)]
    assert views[0].channels is None and views[1].channels in ((0,), (1,))


def test_the_server_train_task_names_an_unknown_ssl_loss(tmp_path, app_lib):
    from lib.trainers.unimed import UniMedTrainTask

    task = UniMedTrainTask(tmp_path, tmp_path / "unimed.pt")
    assert task.config() == TrainRequest().to_dict() and task.config()["ssl_loss"] == "reconstruction"
    with pytest.raises(ValueError, match="ssl_loss must be one of reconstruction, consistency, mean_teacher, got 'contrast'"):
        task({"model": "unimed", "ssl_loss": "contrast"}, datastore=None)  # refused before the datastore is read


@pytest.mark.parametrize("body, message", [
    ({"max_epochs": 0}, "max_epochs must be >= 1, got 0"),
    ({"max_epochs": 1.5}, "max_epochs must be a whole number, got 1.5"),
    ({"max_epochs": True}, "max_epochs must be a number, got True"),
    ({"lr": "fast"}, "lr must be a number, got 'fast'"),
    ({"lr": -1}, "lr must be > 0, got -1.0"),
    ({"max_minutes": "nan"}, "max_minutes must be finite"),
    ({"seed": -2}, "seed must be >= 0"),
    ({"ssl_loss": 3}, "ssl_loss must be a string, got 3"),
    ({"epochs": 2}, "unknown train parameter 'epochs'; known: max_epochs, lr, max_minutes, seed, ssl_loss"),
    ({"unimed": {"max_epochs": 1}}, "train parameter 'unimed' holds an object; the body is flat"),
    (["max_epochs"], "the train request body must be a JSON object, got list"),
])
def test_a_train_request_names_its_bad_parameter(body, message):
    with pytest.raises(TrainRequestError, match=re.escape(message)):
        TrainRequest.parse(body, strict=True)


def test_a_train_request_takes_numeric_strings_and_keeps_defaults():
    req = TrainRequest.parse({"max_epochs": "3", "lr": "1e-4", "ssl_loss": "mean_teacher"}, strict=True)
    assert (req.max_epochs, req.lr, req.max_minutes, req.ssl_loss) == (3, 1e-4, 30.0, "mean_teacher")
    assert TrainRequest.parse(None) == TrainRequest()
    assert TrainRequest.parse({"client_id": "slicer", "max_epochs": 1}, strict=True).max_epochs == 1
    assert TrainRequest.parse({"model": "unimed", "bundle_path": None}).max_epochs == 2  # lenient: MONAI Label's keys
