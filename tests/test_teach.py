"""The label space lives in the checkpoint and grows: add_label, the token's start, teach."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unimed.checkpoint import load_checkpoint, save_checkpoint
from unimed.label_growth import add_label, fit_label_token, pool_prototype
from unimed.labels import LabelRegistry, label_from_dict, label_to_dict, registry_from_config
from unimed.networks.unimednet import UniMed, UniMedConfig, unimed_tiny
from unimed.task_names import Task

REPO = Path(__file__).resolve().parents[1]

#: old-label requests whose outputs must not move when the label space grows
OLD_REQUESTS = [("segmentation", ["edema", "necrosis"]), ("detection", ["edema", "platelet"]),
                ("classification", ["lung_tumor", "adrenal_normal"])]


def _outputs(net: UniMed, image: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """The old requests' outputs (one encode: growth leaves the backbone alone, the decode is what grows)."""
    with torch.no_grad():
        feats = net.encode(image)
        return [net.decode(feats, *net.prompt([request])) for request in OLD_REQUESTS]


def _assert_old_outputs_equal(before, after, k: int) -> None:
    for b, a in zip(before, after):
        for key, value in b.items():
            got = a[key]
            if key == "class_logits":
                got = got[..., : k + 1]
            elif key == "heat_logits":
                got = got[:, :k]
            assert torch.equal(value, got), key


def _cube_image(seed: int, shape=(32, 32, 16)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 0.1, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    x, y = 8 + seed, 10
    mask[x: x + 12, y: y + 12, 4:12] = 1
    image[mask > 0] += 3.0
    return image, mask


def _datastore(folder: Path, n: int = 2, mask_value: int = 7) -> Path:
    (folder / "labels" / "final").mkdir(parents=True)
    for i in range(n):
        image, mask = _cube_image(i)
        nib.save(nib.Nifti1Image(image, np.eye(4)), folder / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(mask * mask_value, np.eye(4)), folder / "labels" / "final" / f"case{i}.nii.gz")
    return folder


def test_label_definitions_round_trip():
    reg = LabelRegistry()
    assert [label_from_dict(label_to_dict(lab)) for lab in reg] == list(reg)
    sub = registry_from_config(["platelet", "edema"])
    assert sub.class_index("edema") == 2 and sub.get("edema").id == 2
    with pytest.raises(ValueError, match="no definition"):
        registry_from_config(["spinal_cord"])
    with pytest.raises(ValueError, match="malformed label definition"):
        label_from_dict({"id": 12, "name": "x"})


def test_a_registry_of_its_own_travels_in_the_config():
    from unimed.labels import Label
    from unimed.task_names import Task

    liver = Label(1, "liver", "Liver", frozenset({Task.SEGMENTATION}), (1, 2, 3))
    net = UniMed(UniMedConfig(labels=("liver",), channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), stem_channels=8, dim=24,
                              mask_dim=8, heads=2, layers=2, num_queries=8, num_bins=16), LabelRegistry([liver]))
    again = UniMed(UniMedConfig.from_dict(net.config.to_dict()))
    assert list(again.registry) == [liver]
    with pytest.raises(ValueError, match="differs from the network's label space"):
        UniMed(UniMedConfig(labels=("edema",)), LabelRegistry([liver]))


def test_growth_keeps_old_outputs_bit_identical():
    """On a 2D image (fast); the slow fresh-process test checks a volume."""
    torch.manual_seed(0)
    net = unimed_tiny().eval()
    k = len(net.registry)
    image = torch.randn(1, 2, 64, 64, 1)
    before = _outputs(net, image)
    old_tokens = {lab.name: net.vocab.label_token(lab) for lab in net.registry}
    label = add_label(net, "Spinal cord", ["segmentation", "detection"], color=(1, 2, 3))
    assert (label.name, label.id, label.color) == ("spinal_cord", 12, (1, 2, 3))
    assert net.registry.class_index(label) == k + 1
    assert {lab.name: net.vocab.label_token(lab) for lab in list(net.registry)[:k]} == old_tokens
    assert net.vocab.token_str(net.vocab.label_token(label)) == "<label:spinal_cord>"
    assert net.decoder.class_head.out_features == k + 2 and net.proposal_head.heat.out_channels == k + 1
    _assert_old_outputs_equal(before, _outputs(net, image), k)
    # the new label answers through the same decoder
    with torch.no_grad():
        out = net(image, *net.prompt([("segmentation", ["spinal_cord", "edema"])]))
    assert out["mask_logits"].shape[1] == 3
    # a second label grows again; the first stays where it was
    second = add_label(net, "liver", ["segmentation"])
    assert second.id == 13 and net.registry.class_index("spinal_cord") == k + 1
    # past a group of OUTPUT_GROUP head rows (heat map 16 -> 18 channels, class head 17 -> 19 rows)
    for name in ("kidney", "spleen", "aorta", "pancreas", "bladder"):
        add_label(net, name, ["detection"])
    assert net.proposal_head.heat.out_channels == 18
    _assert_old_outputs_equal(before, _outputs(net, image), k)


def test_add_label_errors():
    net = unimed_tiny()
    with pytest.raises(ValueError, match="already exists"):
        add_label(net, "Oedema", ["segmentation"])  # an alias of edema
    with pytest.raises(ValueError, match="at least one task"):
        add_label(net, "liver", [])
    with pytest.raises(ValueError, match="three values"):
        add_label(net, "liver", ["segmentation"], color=(0, 300, 0))
    with pytest.raises(ValueError, match="prototype must have shape"):
        add_label(net, "liver", ["segmentation"], prototype=torch.zeros(3))
    assert "liver" not in net.registry  # a refused label leaves the network as it was
    with pytest.raises(ValueError, match="letters or digits"):
        add_label(net, " - ", ["segmentation"])


def test_pool_prototype_weighs_by_area():
    pixel = torch.zeros(1, 2, 4, 4, 1)
    pixel[0, 0, 0] = 2.0
    masks = torch.zeros(1, 8, 8, 1)
    masks[0, :2] = 1  # the first pixel row, whole
    assert pool_prototype(pixel, masks).tolist() == [2.0, 0.0]
    with pytest.raises(ValueError, match="empty"):
        pool_prototype(pixel, torch.zeros(1, 8, 8, 1))


def test_token_from_prototype_fires_inside_the_structure():
    """A token started from the examples gives higher mask logits inside the structure than
    outside, on the image it came from; the other labels do not move."""
    torch.manual_seed(0)
    net = unimed_tiny().eval()
    image = 0.1 * torch.randn(1, 1, 64, 64, 1)
    mask = torch.zeros(1, 64, 64, 1)
    mask[0, 16:40, 20:44] = 1
    image[0, 0][mask[0] > 0] += 3.0
    before = _outputs(net, image)
    label = add_label(net, "cube", ["segmentation"])
    losses = fit_label_token(net, label, image, mask, steps=5)
    assert len(losses) == 6 and losses[-1] < losses[0]
    with torch.no_grad():
        logits = net(image, *net.prompt([("segmentation", ["cube"])]))["mask_logits"][0, 1]
    inside = F.adaptive_avg_pool3d(mask[None], tuple(logits.shape))[0, 0] > 0.5
    assert float(logits[inside].mean()) > float(logits[~inside].mean()) + 0.05
    _assert_old_outputs_equal(before, _outputs(net, image), 11)


@pytest.mark.slow
def test_grown_checkpoint_loads_in_a_fresh_process(tmp_path):
    """A grown checkpoint loads with no code change, lists its label, answers it, and answers
    the old labels on a volume exactly as the checkpoint it grew from."""
    torch.manual_seed(0)
    base_path = save_checkpoint(unimed_tiny(), tmp_path / "base.pt")
    net, _ = load_checkpoint(base_path)
    add_label(net, "spinal_cord", ["segmentation", "detection"], color=(10, 20, 30))
    path = save_checkpoint(net, tmp_path / "grown.pt")
    code = f"""
import json, torch
from unimed.checkpoint import load_checkpoint
base, grown = load_checkpoint({str(base_path)!r})[0], load_checkpoint({str(path)!r})[0]
image = torch.randn(1, 1, 32, 32, 16, generator=torch.Generator().manual_seed(0))
same = []
with torch.no_grad():
    for request in {OLD_REQUESTS!r}:
        b, g = base(image, *base.prompt([request])), grown(image, *grown.prompt([request]))
        g["class_logits"], g["heat_logits"] = g["class_logits"][..., :12], g["heat_logits"][:, :11]
        same.append(all(torch.equal(b[k], g[k]) for k in b))
    out = grown(image, *grown.prompt([("segmentation", ["spinal_cord"])]))
lab = grown.registry.get("spinal_cord")
print(json.dumps({{"names": grown.registry.names, "id": lab.id, "color": lab.color, "same": same,
                  "index": grown.registry.class_index(lab), "shape": list(out["mask_logits"].shape)}}))
"""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'lib'}{os.pathsep}{REPO}"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["names"][-1] == "spinal_cord" and got["id"] == 12 and got["index"] == 12
    assert got["color"] == [10, 20, 30] and got["shape"] == [1, 2, 16, 16, 8]
    assert got["same"] == [True, True, True]


def test_old_checkpoint_config_still_loads():
    """A config written before label definitions existed builds the default label space."""
    cfg = UniMedConfig(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), stem_channels=8, dim=24, mask_dim=8, heads=2,
                       layers=2, num_queries=8, num_bins=16).to_dict()
    del cfg["label_definitions"]
    net = UniMed(UniMedConfig.from_dict(cfg))
    assert net.registry.names == LabelRegistry().names and net.config.label_definitions == ()


def _main(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'lib'}{os.pathsep}{REPO}"}
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(unimed_tiny(), tmp_path / "base.pt", {"version": 1})


@pytest.mark.slow
def test_teach_then_infer(tmp_path, tiny_checkpoint):
    data = _datastore(tmp_path / "cubes")
    out = tmp_path / "taught.pt"
    done = _main("teach", "--label", "cube", "--data", str(data), "--out", str(out), "--checkpoint",
                 str(tiny_checkpoint), "--steps", "4", "--token-steps", "4", "--minutes", "0.5", "--no-progress",
                 "--replay-data", "none")
    assert done.returncode == 0, done.stderr
    assert "written to" in done.stdout
    model, meta = load_checkpoint(out)
    assert model.registry.names[-1] == "cube" and meta["taught"]["steps"] == 4 and meta["taught"]["samples"] == 2
    label_out = tmp_path / "cube_seg.nii.gz"
    done = _main("infer", "--checkpoint", str(out), "--task", "segmentation", "--labels", "cube",
                 "--image", str(data / "case0.nii.gz"), "--out", str(label_out))
    assert done.returncode == 0, done.stderr
    seg = np.asarray(nib.load(label_out).dataobj)
    assert seg.shape == (32, 32, 16)
    assert set(np.unique(seg)) <= {0, 12} and (seg == 12).any()
    scores = tmp_path / "scores.json"
    done = _main("evaluate", "--checkpoint", str(out), "--dataset", "datastore", "--data", str(data), "--label", "cube",
                 "--json", str(scores))  # with the progress bar, as users run it
    assert done.returncode == 0, done.stderr
    result = json.loads(scores.read_text())
    assert result["n"] == 2 and result["label"] == "cube" and 0.0 <= result["metrics"]["dice_cube"] <= 1.0
    done = _main("evaluate", "--checkpoint", str(out), "--dataset", "brats", "--data", str(data), "--label", "cube")
    assert done.returncode == 2 and "use --dataset datastore" in done.stderr


@pytest.mark.slow
def test_teach_errors(tmp_path, tiny_checkpoint):
    data = _datastore(tmp_path / "cubes")
    common = ("--out", str(tmp_path / "x.pt"), "--checkpoint", str(tiny_checkpoint), "--steps", "1", "--no-progress")
    cases = [
        (("--label", "cube", "--data", str(tmp_path / "missing")), "no such folder"),
        (("--label", "edema", "--data", str(data)), "already exists"),
        (("--label", "cube", "--data", str(data), "--tasks", "classification"), "needs images that do not show it"),
        (("--label", "cube", "--data", str(data), "--tasks", "segmentation,shape"), "unknown task"),
    ]
    cases.append((("--label", "cube", "--data", str(data), "--replay-data", str(tmp_path)), "none of the shared datasets"))
    empty = tmp_path / "empty"
    _datastore(empty, n=1, mask_value=0)
    cases.append((("--label", "cube", "--data", str(empty)), "the mask is empty"))
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    nib.save(nib.Nifti1Image(_cube_image(0)[0], np.eye(4)), unlabelled / "a.nii.gz")
    cases.append((("--label", "cube", "--data", str(unlabelled)), "no image has a mask"))
    for contrast in ("1.5", "often"):
        cases.append((("--label", "cube", "--data", str(data), "--contrast", contrast),
                      "--contrast is auto or a probability"))
    for args, message in cases:
        done = _main("teach", *args, *common)
        assert done.returncode == 2, (args, done.stderr)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.pt").exists()


def test_pseudo_labels_replay_the_base_answers_and_the_structure_wins():
    """Replay by pseudo-labels: the base network's segmentation and detections of the old
    labels join the new structure's mask and box; the structure wins where both claim a voxel."""
    from trainers.teach import with_pseudo_labels
    from unimed.datasets.sample import Sample
    from unimed.predictor import Predictor
    from unimed.task_names import Task

    torch.manual_seed(0)
    base_net = unimed_tiny().eval()
    with torch.no_grad():  # a base that answers "edema" everywhere: its background logit very low
        base_net.decoder.token_embed.weight[base_net.vocab.task_token("segmentation")] *= 0
    base = Predictor(base_net)
    grown = unimed_tiny()
    label = add_label(grown, "cube", ["segmentation", "detection"])
    structure = np.zeros((48, 40), np.uint8)
    structure[10:20, 5:15] = label.id
    sample = Sample(torch.rand(1, 48, 40), np.eye(4), "datastore", "a", label_map=structure, seg_labels=("cube",))
    replayed = with_pseudo_labels(sample, label, base, (Task.SEGMENTATION, Task.DETECTION))
    base_map = base.predict(sample.meta_image(), "segmentation", base_net.registry.for_task(Task.SEGMENTATION)).label_map()
    assert (base_map[structure == 0] != 0).any()  # the base answers some old label outside the structure
    assert np.array_equal(replayed.label_map[structure > 0], structure[structure > 0])
    assert np.array_equal(replayed.label_map[structure == 0], base_map[structure == 0])
    old_seg = [lab.name for lab in base_net.registry.for_task(Task.SEGMENTATION)]
    assert replayed.seg_labels == (*old_seg, "cube")
    assert replayed.det_labels[-1] == "cube" and replayed.box_labels[-1] == "cube"
    np.testing.assert_allclose(replayed.boxes[-1], [10 / 48, 5 / 40, 0, 20 / 48, 15 / 40, 1])
    assert len(replayed.boxes) == len(replayed.box_labels)
    assert np.array_equal(sample.label_map, structure)  # the input is left as it was


def test_a_detection_only_label_starts_from_the_examples_too():
    net = unimed_tiny().eval()
    label = add_label(net, "dot", ["detection"])
    image, mask = torch.zeros(1, 1, 32, 32, 1), torch.zeros(1, 32, 32, 1)
    mask[0, 4:12, 4:12] = 1
    image[0, 0][mask[0] > 0] = 2.0
    assert len(fit_label_token(net, label, image, mask, steps=1)) == 2
    with pytest.raises(ValueError, match="empty"):
        fit_label_token(net, label, image, torch.zeros_like(mask), steps=1)


def _cube_samples(value: int, shown: int = 2, empty: int = 2) -> list:
    from unimed.datasets.sample import Sample

    out = []
    for i in range(shown + empty):
        image, mask = _cube_image(i)
        if i >= shown:  # an image that does not show the structure: the same noise, no cube
            image, mask = np.random.default_rng(i).normal(0, 0.1, image.shape).astype(np.float32), mask * 0
        out.append(Sample(torch.from_numpy(image)[None], np.eye(4), "datastore", f"case{i}",
                          label_map=mask * np.uint8(value)))
    return out


def test_masks_teach_classification_when_some_images_do_not_show_the_structure():
    from trainers.teach import teach_samples
    from unimed.predictor import Predictor

    torch.manual_seed(0)
    net = unimed_tiny()
    samples = _cube_samples(net.registry.next_id())
    report = teach_samples(net, "cube", samples, tasks=["segmentation", "detection", "classification"], steps=3,
                           token_steps=2, minutes=None, replay_data=None, progress=False)
    assert report["label"]["tasks"] == ["segmentation", "detection", "classification"] and report["steps"] == 3
    assert report["contrast"] == 0.5  # volumes of no named modality: shown in random contrasts half the time
    answer = Predictor(net.eval()).predict(samples[0].image, "classification", ["cube"]).annotation
    assert 0.0 <= dict(zip(answer.labels, answer.scores)).get("cube", 0.0) <= 1.0
    assert "cube" in [lab.name for lab in net.registry.for_task(Task.CLASSIFICATION)]


def test_the_new_label_batch_fills_a_voxel_budget():
    from trainers.teach import TEACH_MAX_BATCH, TEACH_VOXELS, teach_batch_size, teach_samples

    assert teach_batch_size([(1, 48, 48, 1)]) == TEACH_MAX_BATCH  # small 2D patches: many per step
    assert teach_batch_size([(4, 128, 128, 80)]) == 1  # a 3D volume: one
    assert teach_batch_size([(1, 64, 64, 1), (1, 512, 512, 1)]) == 1  # the largest item decides
    assert teach_batch_size([(2, 32, 32, 16)]) == TEACH_VOXELS // (32 * 32 * 16)
    with pytest.raises(ValueError, match="at least one"):
        teach_batch_size([])
    net = unimed_tiny()
    report = teach_samples(net, "cube", _cube_samples(net.registry.next_id()), steps=1, token_steps=1, minutes=None,
                           replay_data=None, progress=False)
    assert report["batch_size"] == teach_batch_size([(1, 32, 32, 16)]) > 1


def test_classification_needs_images_with_and_without_the_structure():
    from trainers.teach import teach_samples

    net = unimed_tiny()
    value = net.registry.next_id()
    with pytest.raises(ValueError, match="needs images that do not show it too"):
        teach_samples(net, "cube", _cube_samples(value, empty=0), tasks=["classification"], steps=1, progress=False,
                      replay_data=None)
    with pytest.raises(ValueError, match="no sample shows the structure"):
        teach_samples(net, "cube", _cube_samples(value, shown=0), steps=1, progress=False, replay_data=None)
    assert "cube" not in net.registry  # refused before the label space grew


def test_a_taught_label_is_scored_with_the_progress_bar_on(tmp_path):
    """The progress bar's wrapper is transparent: the evaluator still reads the grown label space."""
    from unimed.datasets.datastore import read_structure
    from unimed.evaluation import score_samples
    from unimed.label_growth import add_label
    from unimed.predictor import Predictor

    torch.manual_seed(0)
    net = unimed_tiny().eval()
    label = add_label(net, "cube", ["segmentation"])
    samples = read_structure(_datastore(tmp_path / "cubes"), label.name, label.id)
    quiet = score_samples("datastore", samples, Predictor(net), progress=False)
    shown = score_samples("datastore", samples, Predictor(net), progress=True)
    assert set(quiet["metrics"]) == {"dice_cube", "dice_mean"} and quiet["metrics"]["dice_cube"] is not None
    assert shown == quiet


def test_contrast_randomisation_is_on_for_mr_volumes_and_off_for_ct_and_2d():
    from trainers.data import GridItem
    from trainers.teach import TEACH_CONTRAST, default_contrast, teach_samples

    volume = GridItem(torch.zeros(1, 8, 8, 8), None, (), None, [], (), None, "d", "n")
    patch = GridItem(torch.zeros(1, 48, 48, 1), None, (), None, [], (), None, "d", "p")
    t1 = dataclasses.replace(volume, modalities=("t1",))
    assert default_contrast([volume]) == default_contrast([t1]) == TEACH_CONTRAST
    assert default_contrast([dataclasses.replace(volume, modalities=("ct",))]) == 0.0
    assert default_contrast([patch]) == 0.0
    net = unimed_tiny()
    with pytest.raises(ValueError, match="contrast must be a probability"):
        teach_samples(net, "cube", _cube_samples(net.registry.next_id()), steps=1, contrast=-0.1, progress=False)


def _box_samples(name: str, n: int = 3) -> list:
    """2D pictures with a bright square and its box (no mask), as detection datasets annotate."""
    from unimed.datasets.sample import Sample

    out = []
    for i in range(n):
        image = np.random.default_rng(i).normal(0, 0.1, (1, 32, 32)).astype(np.float32)
        x0, y0 = 4 + 3 * i, 6 + 2 * i
        image[0, x0:x0 + 8, y0:y0 + 8] += 2.0
        out.append(Sample(torch.from_numpy(image), np.eye(4), "voc", f"pic{i}",
                          boxes=np.array([[x0 / 32, y0 / 32, 0, (x0 + 8) / 32, (y0 + 8) / 32, 1]]),
                          box_labels=[name], det_labels=(name,)))
    return out


@pytest.mark.parametrize("steps", [0, 2])  # the token's start only; fine-tuning with the base's answers replayed
def test_boxes_teach_a_detection_label(steps):
    """A structure annotated by boxes (a detection dataset's) is taught for detection, its token
    started from the voxels inside the boxes; segmentation cannot be asked of boxes."""
    from trainers.data import to_grid_item
    from trainers.teach import structure_on_grid, teach_samples
    from unimed.labels import Label
    from unimed.predictor import Predictor

    torch.manual_seed(0)
    net = unimed_tiny()
    samples = _box_samples("dot")
    on_grid = structure_on_grid(to_grid_item(samples[0]), Label(99, "dot", "Dot", frozenset(), (0, 0, 0)))
    assert 0.03 < float(on_grid.float().mean()) < 0.1  # the 8x8 box of a 32x32 picture, on the grid
    with pytest.raises(ValueError, match="boxes teach detection"):
        teach_samples(net, "dot", samples, progress=False, replay_data=None)
    mixed = [*samples[:1], *_cube_samples(net.registry.next_id(), shown=1, empty=0)]
    with pytest.raises(ValueError, match="all be masks or all be boxes"):
        teach_samples(net, "dot", mixed, tasks=["detection"], progress=False, replay_data=None)
    stray = [dataclasses.replace(samples[0], box_labels=["other"])]
    with pytest.raises(ValueError, match="boxes of 'dot' only"):
        teach_samples(net, "dot", stray, tasks=["detection"], progress=False, replay_data=None)
    assert "dot" not in net.registry  # refused before the label space grew
    report = teach_samples(net, "dot", samples, tasks=["detection"], steps=steps,
                           token_steps=2, minutes=None, replay_data=None, progress=False)
    assert report["label"]["tasks"] == ["detection"] and report["token_loss"] is not None
    assert report["token_loss"][1] < report["token_loss"][0]  # the token learnt from the boxes' voxels
    answer = Predictor(net.eval()).predict(samples[0].meta_image(), "detection", ["dot"])
    assert set(answer.annotation.labels) <= {"dot"}
    with pytest.raises(Exception, match="dot"):
        Predictor(net).predict(samples[0].meta_image(), "segmentation", ["dot"])


def test_box_items_replay_the_base_networks_old_detections_without_replay_data():
    """Taught from boxes without replay data, the new label's items carry the base network's
    detections of the old labels (listed as annotated); with replay data, the new label's alone."""
    import copy
    from types import SimpleNamespace

    from trainers.teach import _structure_only, with_pseudo_labels

    net = unimed_tiny()
    old_box = np.array([0.1, 0.1, 0, 0.3, 0.3, 1])

    class Base:  # the base network (before the label space grew): one red cell wherever it looks
        model = copy.deepcopy(net)

        def predict(self, image, task, labels):
            assert Task.parse(task) is Task.DETECTION and "dot" not in {lab.name for lab in labels}
            return SimpleNamespace(annotation=SimpleNamespace(boxes=[old_box], labels=["red_blood_cell"]))

    old = tuple(lab.name for lab in net.registry.for_task(Task.DETECTION))
    label = add_label(net, "dot", ["detection"])
    sample = _box_samples("dot", 1)[0]
    replayed = with_pseudo_labels(sample, label, Base(), (Task.DETECTION,))
    assert replayed.box_labels == ["red_blood_cell", "dot"] and replayed.det_labels == old + ("dot",)
    np.testing.assert_allclose(replayed.boxes[0], old_box)
    assert replayed.seg_labels == () and replayed.label_map is None
    alone = _structure_only(sample, label, (Task.DETECTION,))
    assert alone.box_labels == ["dot"] and alone.det_labels == ("dot",) and alone.seg_labels == ()
    np.testing.assert_allclose(alone.boxes, sample.boxes)
