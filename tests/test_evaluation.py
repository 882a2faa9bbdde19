"""evaluate(): known answers from stub predictors on tiny folders, and a smoke run of the real one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from unimed import datasets
from unimed.datasets import DatasetError, DatasetSpec, Sample, dataset_spec, read_dataset
from unimed.evaluation import case_spread, evaluate, format_table
from unimed.labels import LabelRegistry
from unimed.networks.unimednet import unimed_tiny
from unimed.predictor import Prediction, Predictor
from unimed.tasks import Task
from unimed.tokens import ClassificationAnnotation, DetectionAnnotation, SegmentationAnnotation
from unimed.transforms import GridSpec

REG = LabelRegistry()
EDEMA, LUNG = REG.get("edema").id, REG.get("lung_tumor").id


# -- tiny folders ---------------------------------------------------------------------------------------
def _nifti(path: Path, data: np.ndarray, affine=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))


def brats_folder(root: Path) -> Path:
    """Case a: 11 edema voxels around 1 enhancing voxel; case b: no tumour."""
    for seed, name in enumerate(("a", "b")):
        rng = np.random.default_rng(seed)
        label = np.zeros((8, 6, 5), np.float32)
        if name == "a":
            label[2:5, 1:3, 3:5] = 2.0
            label[3, 2, 4] = 4.0
        _nifti(root / name / "Flair.nii.gz", rng.normal(size=label.shape).astype(np.float32))
        _nifti(root / name / "T1c.nii.gz", rng.normal(size=label.shape).astype(np.float32))
        _nifti(root / name / "OTMultiClass.nii.gz", label)
    return root


def medmnist_file(root: Path) -> Path:
    images = np.arange(3 * 4**3, dtype=np.uint8).reshape(3, 4, 4, 4)
    labels = np.array([[1], [0], [1]], np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "adrenalmnist3d.npz", train_images=images, train_labels=labels, val_images=images, val_labels=labels)
    return root


def voc_folder(root: Path) -> Path:
    """One 20x10 picture with a WBC, a platelet and an RBC."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 20, 3), dtype=np.uint8)).save(root / "JPEGImages/x.jpg")
    objects = [("WBC", 3, 2, 10, 10), ("Platelets", 12, 1, 15, 4), ("RBC", 11, 5, 20, 10)]
    body = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    (root / "Annotations/x.xml").write_text(f"<annotation><size><width>20</width><height>10</height></size>{body}</annotation>")
    (root / "ImageSets/Main/val.txt").write_text("x\n")
    return root


def msd_file(root: Path) -> Path:
    """6 patches of 8x8; patch 1 has a 2x3 tumour at X 2..3, Y 4..6."""
    root.mkdir(parents=True, exist_ok=True)
    labels = np.zeros((6, 1, 8, 8))
    labels[1, 0, 2:4, 4:7] = 1
    with h5py.File(root / "p.h5", "w") as f:
        f["images"] = np.random.default_rng(0).random((6, 1, 8, 8)).astype(np.float32)
        f["labels"] = labels
    return root / "p.h5"


def datastore_folder(root: Path) -> Path:
    """a: edema and lung tumour; c: edema only; b: unlabelled."""
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        _nifti(root / f"{name}.nii.gz", rng.random((6, 5, 4)).astype(np.float32))
    label = np.zeros((6, 5, 4), np.uint8)
    label[1:3, 1:3, 1:3] = EDEMA
    _nifti(root / "labels/final/c.nii.gz", label)
    label[4, 4, 3] = LUNG
    _nifti(root / "labels/final/a.nii.gz", label)
    return root


# -- stub predictors ---------------------------------------------------------------------------------------
def _key(image: torch.Tensor) -> tuple:
    return tuple(image.shape), np.asarray(torch.as_tensor(image).float()).tobytes()


class Oracle:
    """Answers each request from the ground truth of the sample whose image it is given."""

    def __init__(self, kind: str, path: Path, split: str | None = None):
        # the reader itself: split None is every case the folder holds
        self.samples = {_key(s.image): s for s in dataset_spec(kind).reader(path, split)}
        self.calls: list[tuple[str, list[str]]] = []

    def answer(self, s: Sample, task: Task, labels: list[str]):
        if task is Task.SEGMENTATION:
            ids = [REG.get(n).id for n in labels]
            return SegmentationAnnotation(np.where(np.isin(s.label_map, ids), s.label_map, 0))
        if task is Task.DETECTION:
            keep = [i for i, lab in enumerate(s.box_labels) if lab in labels]
            return DetectionAnnotation(s.boxes[keep], [s.box_labels[i] for i in keep], [1.0] * len(keep))
        return ClassificationAnnotation(list(labels), [float(s.class_labels[n]) for n in labels])

    def predict(self, image: torch.Tensor, task: str, labels=None, **kwargs) -> Prediction:
        assert hasattr(image, "affine")
        s = self.samples[_key(image)]
        np.testing.assert_allclose(np.asarray(image.affine), s.affine)
        task = Task.parse(task)
        self.calls.append((task.value, list(labels)))
        shape = (tuple(s.spatial_shape) + (1,))[:3]
        spec = GridSpec(shape=shape, spatial_ndim=len(s.spatial_shape), affine=s.affine, grid=(16, 16, 16))
        return Prediction(task, [REG.get(n) for n in labels], self.answer(s, task, list(labels)), spec)


class Wrong(Oracle):
    """Known mistakes: see each test."""

    def answer(self, s: Sample, task: Task, labels: list[str]):
        if s.dataset == "brats":  # every tumour voxel called edema
            return SegmentationAnnotation(np.where(s.label_map > 0, EDEMA, 0).astype(np.uint8))
        if s.dataset == "msd_patches":  # the mask moved one voxel along X
            return SegmentationAnnotation(np.roll(s.label_map, 1, axis=0))
        if s.dataset == "datastore":  # the lung tumour missed
            return SegmentationAnnotation(np.where(s.label_map == LUNG, 0, s.label_map))
        if s.dataset == "medmnist":  # targets 1, 0, 1
            score = {"train_0000": 0.2, "train_0001": 0.6, "train_0002": 0.9}[s.name.replace("val", "train")]
            return ClassificationAnnotation(["adrenal_hyperplasia", "adrenal_normal"], [score, 1 - score])
        boxes = s.boxes.copy()
        boxes[2] += [0.2, 0, 0, 0.2, 0, 0]  # the RBC moved by 4 of its 10 pixels: IoU 6/14
        extra = np.array([[0, 0, 0, 0.1, 0.1, 1]])  # a platelet where there is none, ranked first
        return DetectionAnnotation(np.concatenate([boxes, extra]), s.box_labels + ["platelet"], [1.0, 0.5, 1.0, 0.9])


@pytest.fixture
def folders(tmp_path) -> dict[str, Path]:
    return {
        "brats": brats_folder(tmp_path / "brats"),
        "medmnist": medmnist_file(tmp_path / "medmnist"),
        "voc": voc_folder(tmp_path / "voc"),
        "msd_patches": msd_file(tmp_path / "msd"),
        "datastore": datastore_folder(tmp_path / "store"),
    }


EXPECTED_NAMES = {
    "brats": {"dice_wt", "dice_tc", "dice_et"},
    "medmnist": {"auc", "acc"},
    "voc": {"map50", "ap50"},
    "msd_patches": {"dice", "dice_global"},
    "datastore": {"dice_edema", "dice_lung_tumor", "dice_mean"},
}
EXPECTED_N = {"brats": 2, "medmnist": 3, "voc": 1, "msd_patches": 6, "datastore": 2}


@pytest.mark.parametrize("kind", sorted(EXPECTED_NAMES))
def test_ground_truth_scores_perfectly(folders, kind):
    split = "val" if kind in ("medmnist", "voc") else None
    oracle = Oracle(kind, folders[kind], split)
    result = evaluate(kind, folders[kind], oracle)
    assert result["dataset"] == kind and result["split"] == split and result["n"] == EXPECTED_N[kind]
    assert set(result["metrics"]) == EXPECTED_NAMES[kind]
    flat = {k: v for k, v in result["metrics"].items() if not isinstance(v, dict)}
    assert all(v == pytest.approx(1.0) for v in flat.values()), result
    if kind == "voc":
        assert result["metrics"]["ap50"] == {"platelet": 1.0, "red_blood_cell": 1.0, "white_blood_cell": 1.0}
        assert oracle.calls == [("detection", ["red_blood_cell", "white_blood_cell", "platelet"])]
    if kind == "brats":
        assert oracle.calls[0] == ("segmentation", ["necrosis", "edema", "non_enhancing_tumor", "enhancing_tumor"])
    if kind == "medmnist":
        assert oracle.calls[0] == ("classification", ["adrenal_hyperplasia", "adrenal_normal"])
    if kind == "datastore":
        assert [labels for _, labels in oracle.calls] == [["edema", "lung_tumor"]] * 2


@pytest.mark.parametrize("kind", sorted(EXPECTED_NAMES))
def test_primary_metric_is_one_the_evaluator_gives(kind):
    assert set(EXPECTED_NAMES) == set(datasets.DATASETS)
    assert dataset_spec(kind).primary_metric in EXPECTED_NAMES[kind]


def test_a_registered_toy_dataset_is_read_and_evaluated(monkeypatch, tmp_path):
    """The registry is the one list: a spec registered here is read and scored with no other edit."""

    def read_toy(path, split):
        if split not in ("train", "val"):
            raise DatasetError(f"toy split must be 'train' or 'val', got {split!r}")
        return [Sample(torch.zeros(1, 2, 2), np.eye(4), "toy", f"{split}_{i}", class_labels={"x": 1} if i else None)
                for i in range(3)]

    seen = []

    def evaluate_toy(samples, predictor):
        seen.extend(s.name for s in samples)
        return {"n_scored": float(len(samples)), "predictor": predictor}

    toy = DatasetSpec("toy", reader=read_toy, evaluator=evaluate_toy, annotated=lambda s: s.class_labels is not None,
                      primary_metric="n_scored", default_split="train", eval_split="val")
    monkeypatch.setitem(datasets.DATASETS, "toy", toy)
    assert [s.name for s in read_dataset("toy", tmp_path)] == ["train_0", "train_1", "train_2"]
    result = evaluate("toy", tmp_path, "a predictor")
    assert result == {"dataset": "toy", "split": "val", "n": 2, "metrics": {"n_scored": 2.0, "predictor": "a predictor"}}
    assert seen == ["val_1", "val_2"]
    assert evaluate("toy", tmp_path, "p", split="train", progress=True)["n"] == 2
    with pytest.raises(DatasetError, match="'train' or 'val', got 'test'"):
        evaluate("toy", tmp_path, "p", split="test")


def test_progress_does_not_change_the_figures(folders):
    oracle = Wrong("datastore", folders["datastore"])
    assert evaluate("datastore", folders["datastore"], oracle, progress=True) == evaluate(
        "datastore", folders["datastore"], oracle)


def test_known_wrong_answers(folders):
    def metrics(kind: str, split: str | None = None) -> dict:
        return evaluate(kind, folders[kind], Wrong(kind, folders[kind], split), split)["metrics"]

    # case a: WT right, TC and ET (the enhancing voxel) missed; case b (no tumour) right
    assert metrics("brats") == pytest.approx({"dice_wt": 1.0, "dice_tc": 0.5, "dice_et": 0.5})
    # positives 0.2 and 0.9 vs negative 0.6: 1 of 2 pairs; predictions 0, 1, 1 vs 1, 0, 1
    assert metrics("medmnist", "val") == pytest.approx({"auc": 0.5, "acc": 1 / 3})
    # WBC found; RBC IoU 6/14 < 0.5 -> AP 0; platelet: FP (0.9) then TP (0.5) -> AP 1/2
    voc = metrics("voc", "val")
    assert voc["ap50"] == pytest.approx({"white_blood_cell": 1.0, "red_blood_cell": 0.0, "platelet": 0.5})
    assert voc["map50"] == pytest.approx(0.5)
    # patch 1: 3 of 6 voxels overlap -> 0.5; five empty patches -> 1
    assert metrics("msd_patches") == pytest.approx({"dice": (5 + 0.5) / 6, "dice_global": 0.5})
    assert metrics("msd_patches", "train") == pytest.approx({"dice": (4 + 0.5) / 5, "dice_global": 0.5})
    assert metrics("datastore") == pytest.approx({"dice_edema": 1.0, "dice_lung_tumor": 0.0, "dice_mean": 0.5})


def test_each_case_and_the_spread_over_cases(folders):
    """Figures that are means over cases come with each case's and their sample sd; set-level
    figures (AUC, AP) come alone."""
    brats = evaluate("brats", folders["brats"], Wrong("brats", folders["brats"]))
    assert brats["per_case"] == {"a": {"dice_wt": 1.0, "dice_tc": 0.0, "dice_et": 0.0},
                                 "b": {"dice_wt": 1.0, "dice_tc": 1.0, "dice_et": 1.0}}
    assert brats["sd"] == pytest.approx({"dice_wt": 0.0, "dice_tc": 2 ** -0.5, "dice_et": 2 ** -0.5})
    msd = evaluate("msd_patches", folders["msd_patches"], Wrong("msd_patches", folders["msd_patches"]))
    dices = sorted(case["dice"] for case in msd["per_case"].values())
    assert len(msd["per_case"]) == msd["n"] == 6 and dices == pytest.approx([0.5] + [1.0] * 5)
    assert msd["sd"]["dice"] == pytest.approx(float(np.std(dices, ddof=1)))
    store = evaluate("datastore", folders["datastore"], Wrong("datastore", folders["datastore"]))
    assert store["per_case"] == {"a": {"dice_edema": 1.0, "dice_lung_tumor": 0.0}, "c": {"dice_edema": 1.0}}
    assert store["sd"] == {"dice_edema": 0.0, "dice_lung_tumor": None}  # one image holds the tumour
    for kind, split in (("medmnist", "val"), ("voc", "val")):
        assert set(evaluate(kind, folders[kind], Wrong(kind, folders[kind], split), split)) == {
            "dataset", "split", "n", "metrics"}
    table = format_table(brats).splitlines()
    assert table[3].split() == ["dice_tc", "0.5000", "±", "0.7071"]
    assert table[-2].split() == ["a", "1.0000", "0.0000", "0.0000"] and table[-1].split()[0] == "b"


def test_case_spread_skips_undefined_figures():
    assert case_spread({"a": {"x": 1.0, "y": None}, "b": {"x": 3.0, "y": 2.0}, "c": {"x": 2.0}}) == {
        "x": pytest.approx(1.0), "y": None}
    assert case_spread({}) == {}


def test_voc_boxes_compared_in_pixels(folders):
    """A box off by half a pixel on each side of a 2-pixel-wide object still matches (IoU 0.5+),
    one pixel off does not: GT and predictions share the pixel frame."""

    class Shifted(Oracle):
        def __init__(self, shift: float):
            super().__init__("voc", folders["voc"], "val")
            self.shift = shift

        def answer(self, s, task, labels):
            boxes = s.boxes.copy()
            boxes[:, [0, 3]] += self.shift / 20  # W = 20
            return DetectionAnnotation(boxes, list(s.box_labels), [1.0] * len(boxes))

    # the platelet is 4 pixels wide: a shift of 1 pixel gives IoU 3/5 > 0.5, 2 pixels 2/6 < 0.5
    assert evaluate("voc", folders["voc"], Shifted(1.0))["metrics"]["ap50"]["platelet"] == 1.0
    assert evaluate("voc", folders["voc"], Shifted(2.0))["metrics"]["ap50"]["platelet"] == 0.0


def test_errors(folders, tmp_path):
    with pytest.raises(ValueError, match="known kinds: brats"):
        evaluate("coco", tmp_path, Oracle("msd_patches", folders["msd_patches"]))
    empty = tmp_path / "empty_store"
    _nifti(empty / "x.nii.gz", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(DatasetError, match="no annotated"):
        evaluate("datastore", empty, Oracle("datastore", folders["datastore"]))


def test_format_table():
    table = format_table({"dataset": "brats", "split": None, "n": 2,
                          "metrics": {"dice_wt": 0.5, "dice_tc": None, "ap50": {"platelet": 1.0}}})
    lines = table.splitlines()
    assert lines[0] == "brats (split None, n=2)"
    assert lines[2].split() == ["dice_wt", "0.5000"] and lines[3].split() == ["dice_tc", "n/a"]
    assert lines[4].split() == ["ap50/platelet", "1.0000"]
    assert len({len(line) for line in lines[1:]}) == 1  # aligned


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(unimed_tiny())


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(EXPECTED_NAMES))
def test_real_predictor_smoke(folders, predictor, kind):
    result = evaluate(kind, folders[kind], predictor, progress=kind == "msd_patches")
    assert json.loads(json.dumps(result)) == result
    per_case = kind in ("brats", "msd_patches", "datastore")  # means over cases: each case and the sd too
    assert set(result) == {"dataset", "split", "n", "metrics"} | ({"sd", "per_case"} if per_case else set())
    assert result["n"] == EXPECTED_N[kind]
    assert set(result["metrics"]) == EXPECTED_NAMES[kind]
    for name, value in result["metrics"].items():
        values = value.values() if isinstance(value, dict) else [value]
        assert all(v is None or 0.0 <= v <= 1.0 for v in values), (name, value)
    assert all(name in format_table(result) for name in EXPECTED_NAMES[kind])



# -- any folder: no split files means every case; a missing split is a one-line error ------------------
def _only_split_npz(path: Path, split: str = "test", n: int = 3) -> Path:
    """A MedMNIST file holding one split only, as a folder of held-out official test files may."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = np.arange(n * 4**3, dtype=np.uint8).reshape(n, 4, 4, 4)
    np.savez(path, **{f"{split}_images": images, f"{split}_labels": (np.arange(n) % 2)[:, None].astype(np.uint8)})
    return path


def _one_line_error(call, match: str) -> str:
    with pytest.raises(DatasetError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_voc_folder_without_split_lists_is_evaluated_whole(tmp_path):
    root = voc_folder(tmp_path / "voc")
    shutil.copy(root / "JPEGImages/x.jpg", root / "JPEGImages/y.jpg")
    shutil.copy(root / "Annotations/x.xml", root / "Annotations/y.xml")
    shutil.rmtree(root / "ImageSets")
    oracle = Oracle("voc", root)
    result = evaluate("voc", root, oracle)
    assert result["split"] is None and result["n"] == 2 and len(oracle.calls) == 2
    assert result["metrics"]["map50"] == pytest.approx(1.0)
    _one_line_error(lambda: evaluate("voc", root, oracle, split="val"),
                    r"voc: no split 'val'.*\(splits: none: leave the split out to read every image\)")


def test_a_voc_folder_with_lists_but_no_val_names_them(tmp_path):
    root = voc_folder(tmp_path / "voc")
    (root / "ImageSets/Main/val.txt").rename(root / "ImageSets/Main/test.txt")
    assert evaluate("voc", root, Oracle("voc", root, "test"))["split"] == "test"  # its only list
    (root / "ImageSets/Main/trainval.txt").write_text("x\n")
    _one_line_error(lambda: evaluate("voc", root, Oracle("voc", root, "test")), r"no split 'val'.*splits: test, trainval")


def test_medmnist_official_test_split_and_a_test_only_folder(tmp_path):
    full = medmnist_file(tmp_path / "full")  # train and val, as ../shared/data holds
    with np.load(full / "adrenalmnist3d.npz") as data:
        arrays = dict(data)
    _only_split_npz(tmp_path / "test.npz", n=4)
    with np.load(tmp_path / "test.npz") as data:
        arrays.update(data)
    np.savez(full / "adrenalmnist3d.npz", **arrays)  # the official layout: train, val and test keys
    oracle = Oracle("medmnist", full)
    assert evaluate("medmnist", full, oracle)["split"] == "val"  # the default is still val
    result = evaluate("medmnist", full, oracle, split="test")
    assert result["split"] == "test" and result["n"] == 4 and result["metrics"]["auc"] == pytest.approx(1.0)

    only_test = _only_split_npz(tmp_path / "only" / "adrenalmnist3d_64.npz", n=5).parent  # a _64 file alone
    for split in (None, "test"):
        result = evaluate("medmnist", only_test, Oracle("medmnist", only_test), split=split)
        assert (result["split"], result["n"]) == ("test", 5)
    _one_line_error(lambda: evaluate("medmnist", only_test, oracle, split="val"),
                    r"adrenalmnist3d_64\.npz: no val_images or val_labels for split 'val'.*\(splits: test\)")

    npy = tmp_path / "npy"  # the same keys as .npy files
    npy.mkdir()
    np.save(npy / "test_images.npy", arrays["test_images"])
    np.save(npy / "test_labels.npy", arrays["test_labels"])
    result = evaluate("medmnist", npy, Oracle("medmnist", npy))
    assert (result["split"], result["n"]) == ("test", 4)
    _one_line_error(lambda: evaluate("medmnist", npy, oracle, split="train"), r"npy: no train_images.*\(splits: test\)")
    _one_line_error(lambda: evaluate("medmnist", tmp_path / "nothing", oracle), r"nothing: no such MedMNIST")


def test_brats_and_msd_folders_without_split_files(folders):
    for kind in ("brats", "msd_patches"):
        result = evaluate(kind, folders[kind], Oracle(kind, folders[kind]))
        assert result["split"] is None and result["n"] == EXPECTED_N[kind]
        message = _one_line_error(lambda: evaluate(kind, folders[kind], Oracle(kind, folders[kind]), split="test"),
                                  r"split must be None, 'train' or 'val', got 'test'.*leave the split out")
        assert message.startswith(str(folders[kind]))


def test_new_brats_patients_are_all_evaluated(tmp_path, shared_data):
    """Two real patients renamed as new ones (pat0005, pat0006), laid out as ../shared/data/brats2013."""
    for source, name in (("brats_2013_pat0001_1", "brats_2013_pat0005_1"), ("brats_2013_pat0002_1", "brats_2013_pat0006_1")):
        (tmp_path / name).mkdir()
        for f in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz", "OTMultiClass.nii.gz"):
            (tmp_path / name / f).symlink_to(shared_data / "brats2013" / source / f)
    oracle = Oracle("brats", tmp_path)
    result = evaluate("brats", tmp_path, oracle)
    assert result["split"] is None and result["n"] == 2 and len(oracle.calls) == 2
    assert result["metrics"]["dice_wt"] == pytest.approx(1.0)


def test_cli_evaluate_errors_are_one_line(tmp_path, capsys):
    import main
    from unimed.checkpoint import save_checkpoint

    ckpt = save_checkpoint(unimed_tiny(), tmp_path / "tiny.pt", {"version": 1})
    voc = voc_folder(tmp_path / "voc")
    shutil.rmtree(voc / "ImageSets")
    npz = _only_split_npz(tmp_path / "m" / "adrenalmnist3d.npz")
    cases = [(["--dataset", "voc", "--data", str(voc), "--split", "test"], "splits: none"),
             (["--dataset", "medmnist", "--data", str(npz), "--split", "val"], "(splits: test)"),
             (["--dataset", "brats", "--data", str(tmp_path / "missing")], "not a folder of BraTS cases")]
    for args, message in cases:
        assert main.main(["evaluate", *args, "--checkpoint", str(ckpt), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert main.main(["evaluate", "--dataset", "voc", "--data", str(voc), "--checkpoint", str(ckpt), "--no-progress"]) == 0
    assert "voc (split None, n=1)" in capsys.readouterr().out
