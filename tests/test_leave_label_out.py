"""Leave-one-label-out: ``pretrain --leave-out-label``, teaching that label anew with the shared
data replayed (``teach``'s default) and ``main.py teach-curve``."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from benchmarks.teach_curve import TeachCurveConfig, teach_curve
from trainers.pretrain import DATASETS, build_sources, default_config, pretrain, without_label
from trainers.teach import (REPLAY_ENV, SHARED_DATA, TEACH_MAX_BATCH, VOLUME_REPLAY_EVERY, default_replay_data,
                            teach_samples)
from unimed.checkpoint import save_checkpoint
from unimed.datasets.msd_patches import evaluate_msd_patches, read_msd_patches
from unimed.datasets.sample import Sample
from unimed.labels import Label, LabelRegistry
from unimed.networks.unimednet import unimed_tiny
from unimed.task_names import Task

LUNG = LabelRegistry().get("lung_tumor")
WITHOUT_LUNG = tuple(n for n in LabelRegistry().names if n != "lung_tumor")


def _msd_folder(root: Path, n: int = 10, size: int = 32) -> Path:
    """A shared-data-layout folder with MSD-style patches: a bright square is the tumour in every other one."""
    rng = np.random.default_rng(0)
    images = rng.normal(0, 0.1, (n, 1, size, size)).astype(np.float32)
    labels = np.zeros((n, 1, size, size), np.uint8)
    for i in range(0, n, 2):
        labels[i, 0, 8 + i % 4: 18 + i % 4, 10:20] = 1
    images[labels > 0] += 2.0
    folder = root / "msd_lung_patches"
    folder.mkdir(parents=True)
    with h5py.File(folder / "patches.h5", "w") as f:
        f["images"], f["labels"] = images, labels
    return root


# -- without_label / build_sources / pretrain ---------------------------------------------------------
def test_without_label_takes_away_every_annotation_of_the_label_and_keeps_the_rest():
    label_map = np.zeros((8, 8), np.uint8)
    label_map[:2], label_map[4:6] = LUNG.id, 2  # lung tumour and oedema
    sample = Sample(torch.zeros(1, 8, 8), np.eye(4), "x", "a", label_map=label_map, seg_labels=("edema", "lung_tumor"),
                    boxes=np.array([[0, 0, 0, 0.25, 1, 1], [0.5, 0, 0, 0.75, 1, 1]]),
                    box_labels=["lung_tumor", "edema"],
                    det_labels=("lung_tumor", "edema"), class_labels={"lung_tumor": 1, "brain_tumor": 0})
    out = without_label([sample], "lung_tumor")[0]
    assert set(np.unique(out.label_map)) == {0, 2} and (out.label_map[4:6] == 2).all()
    assert out.seg_labels == ("edema",) and out.det_labels == ("edema",)
    assert out.box_labels == ["edema"] and np.array_equal(out.boxes, [[0.5, 0, 0, 0.75, 1, 1]])
    assert out.class_labels == {"brain_tumor": 0}
    assert sample.seg_labels == ("edema", "lung_tumor")  # the input is left alone


def test_a_dataset_that_annotates_only_the_left_out_label_does_not_train(tmp_path):
    data = _msd_folder(tmp_path)
    assert [s.name for s in build_sources(data, default_config())[0]] == ["msd_patches"]
    assert build_sources(data, default_config(), leave_out="lung_tumor")[0] == []


def test_pretrain_refuses_an_unknown_left_out_label(tmp_path):
    with pytest.raises(ValueError, match="unknown label 'nonsense'"):
        pretrain(tmp_path, tmp_path / "out", leave_out="nonsense")


def test_pretraining_without_a_detection_label_validates_on_the_other_labels(tmp_path):
    """The run's validation asks the network only for what it knows: the left-out label's boxes
    are taken out of the validation cases (it used to stop with "unknown label 'platelet'")."""
    data = _bccd_folder(tmp_path / "shared", n=4)
    config = default_config()
    config.steps = 1
    without = tuple(n for n in LabelRegistry().names if n != "platelet")
    card = pretrain(data, tmp_path / "out", config, progress=False, model=unimed_tiny(labels=without),
                    leave_out="platelet")
    voc = card["validation"]["voc"]
    assert voc["n"] == 2 and "platelet" not in voc["metrics"]["ap50"] and "red_blood_cell" in voc["metrics"]["ap50"]
    assert "without platelet" in voc["command"] and (tmp_path / "out" / "model_card.json").is_file()


def test_a_replay_for_teaching_a_label_leaves_out_the_cases_that_show_it_unannotated(tmp_path):
    data = _bccd_folder(tmp_path, n=6, no_platelet=(1, 3))
    config = default_config()
    kept = build_sources(data, config, leave_out="platelet")[0]
    replay = build_sources(data, config, leave_out="platelet", drop_showing=True)[0]
    assert [len(s.items) for s in kept] == [4]  # every training picture, the platelets unannotated
    assert [[it.name for it in s.items] for s in replay] == [["p1", "p3"]]  # only those without platelets
    assert all("platelet" not in it.box_labels for s in replay for it in s.items)


# -- teaching with the shared data replayed ----------------------------------------------------------
def test_the_default_replay_is_the_named_folder_or_the_shared_data(tmp_path, monkeypatch):
    monkeypatch.setenv(REPLAY_ENV, str(tmp_path))
    assert default_replay_data() == tmp_path
    for off in ("", "none", "None"):
        monkeypatch.setenv(REPLAY_ENV, off)
        assert default_replay_data() is None
    monkeypatch.setenv(REPLAY_ENV, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no such folder"):
        default_replay_data()
    monkeypatch.delenv(REPLAY_ENV)
    assert default_replay_data() == (SHARED_DATA if (SHARED_DATA / "brats2013").is_dir() else None)


def _patches_as_new_label(data: Path, value: int, k: int = 2) -> list[Sample]:
    samples = [s for s in read_msd_patches(data / "msd_lung_patches") if s.label_map.any()][:k]
    return [Sample(s.image, s.affine, "datastore", s.name, label_map=(s.label_map > 0).astype(np.uint8) * value,
                   modalities=s.modalities) for s in samples]


def test_teaching_a_left_out_label_replays_the_shared_data_without_that_label(tmp_path, monkeypatch):
    """``teach``'s default replays the shared data; the taught label's own annotations there
    stay out of the replay (here they are all the folder has, so nothing is left to replay)."""
    data = _msd_folder(tmp_path / "shared")
    monkeypatch.setenv(REPLAY_ENV, str(data))
    torch.manual_seed(0)
    model = unimed_tiny(labels=WITHOUT_LUNG)
    samples = _patches_as_new_label(data, model.registry.next_id())
    with pytest.raises(ValueError, match="holds none of the shared datasets"):
        teach_samples(model, "lung_tumor", samples, steps=2, minutes=None, token_steps=1, progress=False,
                      replay_data="auto")
    taught = unimed_tiny()
    report = teach_samples(taught, "cube", _patches_as_new_label(data, taught.registry.next_id()), steps=2,
                           minutes=None, token_steps=1, progress=False, replay_data="auto")
    assert report["replay"] == f"shared data at {data}" and report["steps"] == 2
    assert report["replay_every"] == {"msd_patches": DATASETS["msd_patches"].training.every}


def test_volumes_replay_half_as_often_as_in_pretraining(tmp_path):
    """A replayed dataset of 3D volumes joins every VOLUME_REPLAY_EVERY-th of its pretraining
    steps (it costs most of a step); a 2D one keeps its pretraining share."""
    data = _msd_folder(tmp_path / "shared")
    rng = np.random.default_rng(0)
    tumour = np.zeros((24, 24, 16), np.float32)
    tumour[8:14, 8:14, 5:10] = 2.0
    for i in (1, 2):  # BraTS trains on all cases but the last
        case = data / DATASETS["brats"].folder / f"brats_2013_pat000{i}_1"
        case.mkdir(parents=True)
        for name, volume in (("Flair.nii.gz", rng.normal(size=tumour.shape) + tumour),
                             ("T1c.nii.gz", rng.normal(size=tumour.shape)), ("OTMultiClass.nii.gz", tumour)):
            nib.save(nib.Nifti1Image(np.asarray(volume, np.float32), np.eye(4)), str(case / name))
    taught = unimed_tiny()
    report = teach_samples(taught, "cube", _patches_as_new_label(data, taught.registry.next_id()), steps=2,
                           minutes=None, token_steps=1, progress=False, replay_data=data)
    assert report["replay_every"] == {"msd_patches": DATASETS["msd_patches"].training.every,
                                      "brats": DATASETS["brats"].training.every * VOLUME_REPLAY_EVERY}
    assert report["batch_size"] == TEACH_MAX_BATCH  # 32x32 patches: as many as the step takes


# -- scoring a label taught anew -----------------------------------------------------------------------
class _Answer:
    def __init__(self, label_map: np.ndarray, label: Label):
        self._map, self.labels = label_map, [label]

    def label_map(self) -> np.ndarray:
        return self._map


class _Answers:
    """Answers one mask, under the answering network's own id of the label."""

    def __init__(self, label: Label, mask: np.ndarray):
        self.label, self.mask = label, mask

    def predict(self, image, task, labels=None, **kwargs):
        return _Answer(self.mask.astype(np.uint8) * self.label.id, self.label)


def test_msd_scores_a_label_taught_anew_under_the_networks_own_id(tmp_path):
    samples = read_msd_patches(_msd_folder(tmp_path) / "msd_lung_patches")[:1]
    grown = Label(12, "lung_tumor", "Lung tumour", frozenset({Task.SEGMENTATION}), (255, 0, 0))
    truth = np.asarray(samples[0].label_map) > 0
    assert evaluate_msd_patches(samples, _Answers(grown, truth))["dice"] == 1.0
    assert evaluate_msd_patches(samples, _Answers(grown, ~truth))["dice"] == 0.0


# -- teach-curve ---------------------------------------------------------------------------------------
@pytest.mark.slow  # two short teaching runs and two scratch networks: about half a minute
def test_teach_curve_teaches_from_nested_cases_and_scores_a_scratch_network(tmp_path, monkeypatch):
    data = _msd_folder(tmp_path / "shared", n=20)
    torch.manual_seed(0)
    base = save_checkpoint(unimed_tiny(labels=WITHOUT_LUNG), tmp_path / "base.pt", {"version": 1})
    result = teach_curve(TeachCurveConfig(data, base, ks=(1, 2), minutes=0.1, replay=False))
    assert [row["k"] for row in result["rows"]] == [1, 2]
    first, second = result["rows"]
    assert second["cases"][:1] == first["cases"]  # nested
    assert result["val_cases"] == 4 and result["base_old"] == {}
    for row in result["rows"]:
        assert 0.0 <= row["taught"]["dice"] <= 1.0 and 0.0 <= row["scratch"]["dice"] <= 1.0
        assert row["teach"]["label"]["name"] == "lung_tumor" and row["teach"]["steps"] >= 1
    json.dumps(result)  # the CLI writes it as JSON


@pytest.mark.slow  # two short teaching runs and two scratch networks
def test_teach_curve_repeats_draw_their_own_cases_and_report_mean_and_sd(tmp_path):
    from benchmarks.teach_curve import format_teach_curve

    data = _msd_folder(tmp_path / "shared", n=20)
    torch.manual_seed(0)
    base = save_checkpoint(unimed_tiny(labels=WITHOUT_LUNG), tmp_path / "base.pt", {"version": 1})
    result = teach_curve(TeachCurveConfig(data, base, ks=(3,), minutes=0.05, replay=False, seed=4, repeats=2))
    assert [(row["seed"], row["k"]) for row in result["rows"]] == [(4, 3), (5, 3)]
    assert result["rows"][0]["cases"] != result["rows"][1]["cases"]  # each seed draws its own
    (entry,) = result["summary"]
    dice = [row["taught"]["dice"] for row in result["rows"]]
    assert entry["k"] == 3 and entry["n"] == 2
    assert entry["taught"]["mean"] == pytest.approx(np.mean(dice))
    assert entry["taught"]["sd"] == pytest.approx(np.std(dice, ddof=1))
    table = format_teach_curve(result)
    assert "| 3 (seed 5) |" in table and "Over 2 seeds, mean ± sd:" in table
    json.dumps(result)


def _bccd_folder(root: Path, n: int = 8, no_platelet: tuple[int, ...] = ()) -> Path:
    """A shared-data-layout folder with BCCD-style pictures: a dark blob with a platelet box (but
    in pictures ``no_platelet``), a bright one with a red cell box; the first n - 2 train, the
    last 2 validate."""
    from PIL import Image

    folder = root / "bccd"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        picture = rng.integers(100, 140, (48, 64, 3), dtype=np.uint8)
        px, py, rx, ry = 4 + 2 * i, 6 + i, 30 + i, 20 + 2 * i
        if i not in no_platelet:
            picture[py:py + 8, px:px + 8] = 20
        picture[ry:ry + 14, rx:rx + 14] = 230
        boxes = [("Platelets", px, py, px + 8, py + 8), ("RBC", rx, ry, rx + 14, ry + 14)][int(i in no_platelet):]
        body = "".join(f"<object><name>{c}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{x}</xmax>"
                       f"<ymax>{y}</ymax></bndbox></object>" for c, a, b, x, y in boxes)
        Image.fromarray(picture).save(folder / f"JPEGImages/p{i}.jpg")
        (folder / f"Annotations/p{i}.xml").write_text(
            f"<annotation><size><width>64</width><height>48</height></size>{body}</annotation>")
    (folder / "ImageSets/Main/train.txt").write_text("".join(f"p{i}\n" for i in range(n - 2)))
    (folder / "ImageSets/Main/val.txt").write_text(f"p{n - 2}\np{n - 1}\n")
    return root


@pytest.mark.slow  # a short teaching run from boxes and a scratch RetinaNet
def test_teach_curve_teaches_a_detection_label_from_its_boxes(tmp_path):
    data = _bccd_folder(tmp_path / "shared")
    torch.manual_seed(0)
    without = tuple(n for n in LabelRegistry().names if n != "platelet")
    base = save_checkpoint(unimed_tiny(labels=without), tmp_path / "base.pt", {"version": 1})
    result = teach_curve(TeachCurveConfig(data, base, label="platelet", ks=(2,), minutes=0.05, replay=False))
    assert result["metric"] == "ap50_platelet" and result["dataset"] == "voc" and result["val_cases"] == 2
    (row,) = result["rows"]
    assert row["teach"]["label"]["tasks"] == ["detection"] and row["teach"]["samples"] == 2
    assert 0.0 <= row["taught"]["ap50_platelet"] <= 1.0 and 0.0 <= row["scratch"]["ap50_platelet"] <= 1.0
    # the old figure is the old labels' (red cells here), before and after: the base never knew platelets
    assert set(result["base_old"]) == {"voc/map50"} and result["base_old"]["voc/map50"] is not None
    assert row["old"]["voc/map50"] is not None
    json.dumps(result)


def test_teach_curve_errors_are_one_line(tmp_path, capsys):
    import main

    data = _msd_folder(tmp_path / "shared")
    knows = save_checkpoint(unimed_tiny(), tmp_path / "knows.pt", {"version": 1})
    cases = [(("--checkpoint", str(knows), "--data", str(data)), "already knows 'lung_tumor'"),
             (("--checkpoint", str(knows), "--data", str(tmp_path / "missing")), "no such folder"),
             (("--checkpoint", str(tmp_path / "none.pt"), "--data", str(data)), "no such file"),
             (("--checkpoint", str(knows), "--data", str(data), "--label", "edema"),
              "teach-curve measures lung_tumor, platelet"),
             (("--checkpoint", str(knows), "--data", str(data), "--repeats", "0"), "repeats must be at least 1")]
    for args, message in cases:
        assert main.main(["teach-curve", *args, "--no-progress"]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_the_teach_curve_plot_draws_each_k_with_its_spread(tmp_path):
    from benchmarks.teach_curve import plot_teach_curve, summarise_rows

    rows = [{"k": k, "seed": s, "taught": {"dice": 0.2 * k + 0.1 * s}, "scratch": {"dice": 0.1 * k}}
            for s in (0, 1) for k in (1, 3)]
    result = {"label": "lung_tumor", "dataset": "msd_patches", "metric": "dice", "rows": rows,
              "summary": summarise_rows(rows, "dice")}
    assert [e["n"] for e in result["summary"]] == [2, 2]
    assert result["summary"][1]["taught"]["mean"] == pytest.approx(0.65)
    path = plot_teach_curve(result, tmp_path / "curve.png", reference=(0.745, 0.018))
    assert path.stat().st_size > 1000
    del result["summary"]  # a result written before summaries: summarised from its rows
    assert plot_teach_curve(result, tmp_path / "old.png").stat().st_size > 1000


def test_the_teach_curve_plot_leaves_out_a_k_without_its_metric(tmp_path):
    from benchmarks.teach_curve import plot_teach_curve, summarise_rows

    rows = [{"k": 1, "seed": 0, "taught": {"dice": 0.3}, "scratch": {"dice": 0.1}},
            {"k": 3, "seed": 0, "taught": {}, "scratch": {"dice": 0.2}}]  # k = 3's taught run has no Dice
    result = {"label": "lung_tumor", "dataset": "msd_patches", "metric": "dice", "rows": rows,
              "summary": summarise_rows(rows, "dice")}
    assert result["summary"][1]["taught"]["mean"] is None
    assert plot_teach_curve(result, tmp_path / "curve.png").stat().st_size > 1000
