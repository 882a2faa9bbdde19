"""Dataset readers: the real shared data, and small folders of each format written here."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from unimed.datasets import (
    DATASETS,
    DatasetError,
    Sample,
    dataset_spec,
    read_brats,
    read_dataset,
    read_datastore,
    read_medmnist,
    read_msd_patches,
    read_voc,
    shared_datasets,
)
from unimed.labels import LabelRegistry

REG = LabelRegistry()
BRATS_NAMES = ("necrosis", "edema", "non_enhancing_tumor", "enhancing_tumor")
BCCD_NAMES = ("red_blood_cell", "white_blood_cell", "platelet")


def _check_boxes(sample: Sample) -> None:
    assert sample.boxes.ndim == 2 and sample.boxes.shape[1] == 6
    assert len(sample.box_labels) == len(sample.boxes)
    assert ((sample.boxes >= 0) & (sample.boxes <= 1)).all()
    assert (sample.boxes[:, :3] <= sample.boxes[:, 3:]).all()


# -- writers of tiny datasets -----------------------------------------------------------------------
def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def write_brats_case(case: Path, shape=(8, 6, 5), label: np.ndarray | None = None, with_label: bool = True) -> Path:
    rng = np.random.default_rng(0)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    write_nifti(case / "Flair_subtrMeanDivStd.nii.gz", rng.normal(size=shape).astype(np.float32), affine)
    write_nifti(case / "T1c_subtrMeanDivStd.nii.gz", rng.normal(size=shape).astype(np.float32), affine)
    if with_label:
        if label is None:
            label = np.zeros(shape, np.float32)
            label[2:5, 1:3, 3:5] = 2.0  # a cube of edema ...
            label[3, 2, 4] = 4.0  # ... around one enhancing voxel
        write_nifti(case / "OTMultiClass.nii.gz", label.astype(np.float32), affine)
    return case


def write_voc(root: Path, objects: list[tuple[str, int, int, int, int]], size=(20, 10), split="train") -> Path:
    width, height = size
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[0:4, 12:16] = 255  # a white block at columns 12..15, rows 0..3
    Image.fromarray(pixels).save(root / "JPEGImages" / "img1.jpg", quality=100)
    xml_objects = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, x0, y0, x1, y1 in objects
    )
    (root / "Annotations" / "img1.xml").write_text(
        f"<annotation><filename>img1.jpg</filename><size><width>{width}</width><height>{height}</height>"
        f"<depth>3</depth></size>{xml_objects}</annotation>"
    )
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("img1\n")
    return root


def write_h5(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f["images"], f["labels"] = images, labels
    return path


def tiny_patches(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    images = np.random.default_rng(0).random((n, 1, 8, 8)).astype(np.float32)
    labels = np.zeros((n, 1, 8, 8))
    labels[1, 0, 2:4, 4:7] = 1.0  # X 2..3, Y 4..6
    return images, labels


# -- real shared data -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def brats(shared_data) -> list[Sample]:
    return read_brats(shared_data / "brats2013")


@pytest.mark.slow
def test_real_brats(brats):
    assert [s.name for s in brats] == [f"brats_2013_pat000{i}_1" for i in range(1, 5)]
    for s in brats:
        assert s.dataset == "brats"
        assert tuple(s.image.shape) == (2, 240, 240, 155) and s.image.dtype.is_floating_point
        assert s.affine.shape == (4, 4) and np.allclose(np.abs(np.diag(s.affine)[:3]), 1)
        assert s.label_map.shape == (240, 240, 155) and s.label_map.dtype == np.uint8
        assert set(np.unique(s.label_map)) == {0, 1, 2, 3, 4}
        assert s.seg_labels == BRATS_NAMES
        assert s.det_labels == ("brain_tumor",) and s.box_labels == ["brain_tumor"]
        assert s.class_labels == {"brain_tumor": 1}
        _check_boxes(s)
        # the box is exactly the tumour's bounding box
        idx = np.nonzero(s.label_map)
        lo = [i.min() / n for i, n in zip(idx, s.label_map.shape)]
        hi = [(i.max() + 1) / n for i, n in zip(idx, s.label_map.shape)]
        np.testing.assert_allclose(s.boxes[0], lo + hi)


def test_real_medmnist(shared_data):
    folder = shared_data / "adrenalmnist3d"
    train, val = read_medmnist(folder, "train"), read_medmnist(folder / "adrenalmnist3d.npz", "val")
    assert (len(train), len(val)) == (1188, 98)
    s = val[0]
    assert tuple(s.image.shape) == (1, 28, 28, 28) and s.image.dtype.is_floating_point
    assert 0 <= float(s.image.min()) and float(s.image.max()) <= 255 and float(s.image.max()) > 1  # uint8 range kept
    np.testing.assert_array_equal(s.affine, np.eye(4))
    raw = np.load(folder / "adrenalmnist3d.npz")
    for i in (0, 4, 97):
        y = int(raw["val_labels"][i, 0])
        assert val[i].class_labels == {"adrenal_hyperplasia": y, "adrenal_normal": 1 - y}
        np.testing.assert_array_equal(val[i].image[0].numpy(), raw["val_images"][i])
    assert 0 < sum(s.class_labels["adrenal_hyperplasia"] for s in train) < len(train)
    big = read_medmnist(folder, "val", size=64)
    assert len(big) == 98 and tuple(big[0].image.shape) == (1, 64, 64, 64)


@pytest.mark.slow
def test_real_voc(shared_data):
    folder = shared_data / "bccd"
    n_train = len((folder / "ImageSets/Main/train.txt").read_text().split())
    train, val = read_voc(folder, "train"), read_voc(folder, "val")
    assert (len(train), len(val)) == (n_train, 87) == (205, 87)
    assert not {s.name for s in train} & {s.name for s in val}
    for s in train[:20] + val[:20]:
        assert tuple(s.image.shape) == (3, 640, 480)
        assert s.det_labels == BCCD_NAMES and set(s.box_labels) <= set(BCCD_NAMES)
        _check_boxes(s)
        np.testing.assert_array_equal(s.boxes[:, [2, 5]], [[0, 1]] * len(s.boxes))
    # BloodImage_00000.xml, first object: WBC, xmin 260 ymin 177 xmax 491 ymax 376 in a 640x480 image
    s = next(s for s in val if s.name == "BloodImage_00000")
    assert s.box_labels[0] == "white_blood_cell" and len(s.boxes) == 20
    np.testing.assert_allclose(s.boxes[0], [259 / 640, 176 / 480, 0, 491 / 640, 376 / 480, 1])
    # an RBC touching the right edge: xmin 555 xmax 640 -> x1 = 1
    np.testing.assert_allclose(s.boxes[5], [554 / 640, 355 / 480, 0, 1.0, 455 / 480, 1])


def test_real_msd_patches(shared_data):
    folder = shared_data / "msd_lung_patches"
    patches = read_msd_patches(folder)
    assert len(patches) == 130 and patches[0].name == "patch_0000"
    val, train = read_msd_patches(folder / "val_patches.h5", "val"), read_msd_patches(folder, "train")
    assert (len(train), len(val)) == (104, 26) and val[0].name == "patch_0004"
    lung = REG.get("lung_tumor").id
    for s in patches:
        assert tuple(s.image.shape) == (1, 48, 48) and s.label_map.shape == (48, 48)
        assert set(np.unique(s.label_map)) <= {0, lung}
        assert s.class_labels == {"lung_tumor": int(s.label_map.any())}
        assert len(s.boxes) == int(s.label_map.any())
        _check_boxes(s)
    assert sum(s.class_labels["lung_tumor"] for s in patches) == 111


def test_real_datastore_matches_the_source_readers(sample, shared_data):
    if not (sample / "labels" / "final").is_dir():
        pytest.skip("the sample datastore has no final labels")
    labelled, unlabelled = read_datastore(sample)
    assert labelled and unlabelled
    names = [s.name for s in labelled + unlabelled]
    assert len(names) == len(set(names))
    for s in labelled:
        assert s.label_map.shape == s.spatial_shape and s.seg_labels
    lung = next((s for s in labelled if s.name == "lung_patch_000"), None)
    if lung is not None:  # a copy of MSD patch 0: the two readers agree on axes and ids
        patch = read_msd_patches(shared_data / "msd_lung_patches")[0]
        np.testing.assert_array_equal(lung.label_map, patch.label_map)
        np.testing.assert_allclose(lung.image[0].numpy(), patch.image[0].numpy())


# -- BraTS format ------------------------------------------------------------------------------------
def test_brats_case_with_a_known_cube(tmp_path):
    write_brats_case(tmp_path / "case_a")
    [s] = read_brats(tmp_path)
    assert s.name == "case_a" and tuple(s.image.shape) == (2, 8, 6, 5) and s.image.dtype.is_floating_point
    np.testing.assert_array_equal(s.affine, np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert s.label_map.dtype == np.uint8
    assert int((s.label_map == REG.get("edema").id).sum()) == 3 * 2 * 2 - 1
    assert s.label_map[3, 2, 4] == REG.get("enhancing_tumor").id
    np.testing.assert_allclose(s.boxes, [[2 / 8, 1 / 6, 3 / 5, 5 / 8, 3 / 6, 5 / 5]])
    assert s.box_labels == ["brain_tumor"] and s.class_labels == {"brain_tumor": 1}
    # the case folder itself reads the same
    [same] = read_brats(tmp_path / "case_a")
    np.testing.assert_array_equal(same.label_map, s.label_map)


def test_brats_without_tumour_or_label(tmp_path):
    write_brats_case(tmp_path / "a_empty", label=np.zeros((8, 6, 5)))
    write_brats_case(tmp_path / "b_unlabelled", with_label=False)
    empty, unlabelled = read_brats(tmp_path)
    assert empty.boxes.shape == (0, 6) and empty.box_labels == [] and empty.class_labels == {"brain_tumor": 0}
    assert not unlabelled.is_labelled and unlabelled.label_map is None and unlabelled.boxes is None


def test_brats_splits(tmp_path):
    for name in ("c", "a", "b"):
        write_brats_case(tmp_path / name, with_label=False)
    assert [s.name for s in read_brats(tmp_path)] == ["a", "b", "c"]
    assert [s.name for s in read_brats(tmp_path, "train")] == ["a", "b"]
    assert [s.name for s in read_brats(tmp_path, "val")] == ["c"]
    with pytest.raises(DatasetError, match="split must be None, 'train' or 'val', got 'test'"):
        read_brats(tmp_path, "test")


def test_brats_errors(tmp_path):
    case = write_brats_case(tmp_path / "case")
    (case / "T1c_subtrMeanDivStd.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"case.*T1c"):
        read_brats(tmp_path)
    write_nifti(case / "T1c.nii.gz", np.zeros((8, 6, 4), np.float32))
    with pytest.raises(DatasetError, match=r"T1c\.nii\.gz.*shape"):
        read_brats(tmp_path)
    with pytest.raises(DatasetError, match=r"missing: not a folder"):
        read_brats(tmp_path / "case" / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no BraTS case folders"):
        read_brats(tmp_path / "empty")
    bad = write_brats_case(tmp_path / "other" / "bad", label=np.full((8, 6, 5), 7.0))
    with pytest.raises(DatasetError, match=r"OTMultiClass.*\[7\]"):
        read_brats(bad)


# -- MedMNIST -------------------------------------------------------------------------------------------
def test_medmnist_tiny(tmp_path):
    images = np.arange(3 * 4 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4, 4)
    np.savez(tmp_path / "tiny.npz", train_images=images, train_labels=np.array([[1], [0], [1]], np.uint8),
             val_images=images[..., None], val_labels=np.array([[0], [0], [1]], np.uint8))
    train = read_medmnist(tmp_path / "tiny.npz")
    assert [s.name for s in train] == ["train_0000", "train_0001", "train_0002"]
    assert tuple(train[1].image.shape) == (1, 4, 4, 4) and train[1].image.dtype.is_floating_point
    np.testing.assert_array_equal(train[1].image[0].numpy(), images[1])
    assert [s.class_labels["adrenal_hyperplasia"] for s in train] == [1, 0, 1]
    assert train[1].class_labels == {"adrenal_hyperplasia": 0, "adrenal_normal": 1}
    val = read_dataset("medmnist", tmp_path, "val")  # the folder's only .npz, trailing channel
    assert tuple(val[0].image.shape) == (1, 4, 4, 4) and val[2].class_labels["adrenal_hyperplasia"] == 1


def test_medmnist_errors(tmp_path):
    path = tmp_path / "tiny.npz"
    np.savez(path, train_images=np.zeros((2, 4, 4, 4), np.uint8), train_labels=np.zeros((2, 1)))
    with pytest.raises(DatasetError, match=r"tiny\.npz.*val_images.*keys present: train_images, train_labels \(splits: train\)"):
        read_medmnist(path, "val")
    with pytest.raises(DatasetError, match="size 64"):
        read_medmnist(tmp_path, "train", size=64)
    with pytest.raises(DatasetError, match="28"):
        read_medmnist(path, "train", size=28)
    np.savez(path, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros((2, 1)))
    with pytest.raises(DatasetError, match=r"tiny\.npz.*shape"):
        read_medmnist(path)
    np.savez(path, train_images=np.zeros((2, 4, 4, 4), np.uint8), train_labels=np.array([[0], [3]]))
    with pytest.raises(DatasetError, match="0 or 1"):
        read_medmnist(path)
    with pytest.raises(DatasetError, match="missing.npz"):
        read_medmnist(tmp_path / "missing.npz")


# -- Pascal VOC -------------------------------------------------------------------------------------------
def test_voc_tiny_box_is_exact(tmp_path):
    root = write_voc(tmp_path / "voc", [("WBC", 3, 2, 10, 10), ("platelets", 1, 1, 20, 5), ("Red Blood Cell", 5, 5, 6, 6)])
    [s] = read_voc(root)
    assert s.name == "img1" and s.dataset == "voc" and tuple(s.image.shape) == (3, 20, 10)  # (C, W, H)
    assert float(s.image[0, 13, 1]) > 200 and float(s.image[0, 1, 8]) < 50  # X = columns, Y = rows
    np.testing.assert_allclose(
        s.boxes,
        [[2 / 20, 1 / 10, 0, 10 / 20, 10 / 10, 1], [0, 0, 0, 1, 5 / 10, 1], [4 / 20, 4 / 10, 0, 6 / 20, 6 / 10, 1]],
    )
    assert s.box_labels == ["white_blood_cell", "platelet", "red_blood_cell"]
    assert s.det_labels == BCCD_NAMES


def test_voc_errors(tmp_path):
    root = write_voc(tmp_path / "voc", [("giraffe", 1, 1, 5, 5)])
    with pytest.raises(DatasetError, match=r"img1\.xml.*giraffe"):
        read_voc(root)
    with pytest.raises(DatasetError, match=r"ImageSets.*val\.txt \(splits: train\)"):
        read_voc(root, "val")
    (root / "Annotations" / "img1.xml").unlink()
    with pytest.raises(DatasetError, match=r"img1\.xml"):
        read_voc(root)
    other = write_voc(tmp_path / "voc2", [("RBC", 1, 1, 5, 5)], size=(20, 10))
    (other / "Annotations" / "img1.xml").write_text(
        (other / "Annotations" / "img1.xml").read_text().replace("<width>20", "<width>64")
    )
    with pytest.raises(DatasetError, match="64x10"):
        read_voc(other)
    (other / "JPEGImages" / "img1.jpg").unlink()
    with pytest.raises(DatasetError, match="img1"):
        read_voc(other)


# -- MSD patches -------------------------------------------------------------------------------------------
def test_msd_patches_tiny(tmp_path):
    write_h5(tmp_path / "p.h5", *tiny_patches())
    patches = read_msd_patches(tmp_path)
    assert [s.name for s in patches] == [f"patch_{i:04d}" for i in range(6)]
    s = patches[1]
    assert tuple(s.image.shape) == (1, 8, 8) and s.image.dtype.is_floating_point
    assert s.label_map.dtype == np.uint8 and set(np.unique(s.label_map)) == {0, REG.get("lung_tumor").id}
    np.testing.assert_allclose(s.boxes, [[2 / 8, 4 / 8, 0, 4 / 8, 7 / 8, 1]])
    assert s.box_labels == ["lung_tumor"] and s.class_labels == {"lung_tumor": 1}
    assert patches[0].boxes.shape == (0, 6) and patches[0].class_labels == {"lung_tumor": 0}
    assert [s.name for s in read_msd_patches(tmp_path / "p.h5", "val")] == ["patch_0004"]
    assert len(read_msd_patches(tmp_path, "train")) == 5


def test_msd_patches_errors(tmp_path):
    images, labels = tiny_patches()
    write_h5(tmp_path / "a.h5", images, labels[:, :, :4])
    with pytest.raises(DatasetError, match=r"a\.h5.*shape"):
        read_msd_patches(tmp_path / "a.h5")
    write_h5(tmp_path / "b.h5", images, labels * 2)
    with pytest.raises(DatasetError, match=r"b\.h5.*0 or 1"):
        read_msd_patches(tmp_path / "b.h5")
    with pytest.raises(DatasetError, match="exactly one"):
        read_msd_patches(tmp_path)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["pixels"] = images
    with pytest.raises(DatasetError, match=r"c\.h5.*images"):
        read_msd_patches(tmp_path / "c.h5")


# -- datastore -------------------------------------------------------------------------------------------
def write_datastore(root: Path) -> Path:
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    write_nifti(root / "a_case.nii.gz", np.random.default_rng(0).random((6, 5, 4)).astype(np.float32), affine)
    write_nifti(root / "b_case.nii.gz", np.zeros((6, 5, 4), np.float32), affine)
    label = np.zeros((6, 5, 4), np.uint8)
    label[1:3, 1:3, 1:3] = REG.get("edema").id
    label[4, 4, 3] = REG.get("lung_tumor").id
    write_nifti(root / "labels" / "final" / "a_case.nii.gz", label, affine)
    (root / "LICENSES").mkdir()
    (root / "datastore_v2.json").write_text("{}")
    (root / "notes.xml").write_text("<a/>")
    return root


def test_datastore_tiny(tmp_path):
    root = write_datastore(tmp_path / "store")
    labelled, unlabelled = read_datastore(root)
    assert [s.name for s in labelled] == ["a_case"] and [s.name for s in unlabelled] == ["b_case"]
    s = labelled[0]
    assert tuple(s.image.shape) == (1, 6, 5, 4) and s.dataset == "datastore"
    np.testing.assert_allclose(np.abs(np.diag(s.affine)), [0.5, 0.5, 2.0, 1.0])
    assert s.seg_labels == ("edema", "lung_tumor")
    assert int((s.label_map == REG.get("edema").id).sum()) == 8
    assert unlabelled[0].label_map is None and not unlabelled[0].is_labelled
    assert [x.name for x in read_dataset("datastore", root)] == ["a_case"]


def test_datastore_errors(tmp_path):
    root = write_datastore(tmp_path / "store")
    write_nifti(root / "labels" / "final" / "a_case.nii.gz", np.full((6, 5, 4), 200, np.uint8))
    with pytest.raises(DatasetError, match=r"a_case\.nii\.gz.*200"):
        read_datastore(root)
    write_nifti(root / "labels" / "final" / "a_case.nii.gz", np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"a_case\.nii\.gz.*shape"):
        read_datastore(root)
    with pytest.raises(DatasetError, match="nowhere"):
        read_datastore(tmp_path / "nowhere")


def test_read_dataset_kinds():
    assert list(DATASETS) == ["brats", "medmnist", "voc", "msd_patches", "datastore"]
    with pytest.raises(ValueError, match="known kinds: brats, medmnist, voc, msd_patches, datastore"):
        read_dataset("coco", "/tmp")
    with pytest.raises(ValueError, match="known kinds: brats, medmnist"):
        dataset_spec("coco")


# -- the registry -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(DATASETS))
def test_every_registered_spec_is_complete(kind):
    """Each kind's reader, evaluator and spec live in its own module; the spec names a metric."""
    spec = dataset_spec(kind)
    assert spec.kind == kind
    assert all(callable(f) for f in (spec.reader, spec.evaluator, spec.annotated))
    assert spec.reader.__module__ == spec.evaluator.__module__ == f"unimed.datasets.{kind}"
    assert isinstance(spec.primary_metric, str) and spec.primary_metric
    assert (spec.folder is None) == (spec.training is None)


def test_shared_datasets_are_what_pretraining_trains_and_al_sim_takes():
    from benchmarks.al_simulation import PRIMARY_METRIC
    from trainers.pretrain import DATASETS as PRETRAINED
    from trainers.pretrain import default_config

    shared = shared_datasets()
    assert list(shared) == ["brats", "medmnist", "voc", "msd_patches"]
    assert PRETRAINED == shared
    assert list(default_config().mix) == [*shared, "unlabelled"]
    assert PRIMARY_METRIC == {kind: spec.primary_metric for kind, spec in shared.items()}
    for kind, spec in shared.items():
        mix = default_config().mix[kind]
        assert (mix.tasks, mix.batch_size, mix.every, mix.channel_dropout) == (
            spec.training.tasks, spec.training.batch_size, spec.training.every, spec.training.channel_dropout)


def test_a_spec_needs_folder_and_training_together():
    from unimed.datasets import DatasetSpec

    with pytest.raises(ValueError, match="'toy'.*folder and training"):
        DatasetSpec("toy", reader=read_voc, evaluator=lambda s, p: {}, annotated=bool, primary_metric="m",
                    folder="toy")
    with pytest.raises(ValueError, match="registered already"):
        from unimed.datasets import register

        register(dataset_spec("voc"))


def test_an_unknown_split_names_the_valid_ones(tmp_path):
    write_brats_case(tmp_path / "brats" / "a")
    patches = write_h5(tmp_path / "p.h5", *tiny_patches())
    npz = tmp_path / "m.npz"
    np.savez(npz, train_images=np.zeros((2, 4, 4, 4), np.uint8), train_labels=np.zeros((2, 1)),
             val_images=np.zeros((2, 4, 4, 4), np.uint8), val_labels=np.zeros((2, 1)))
    voc = write_voc(tmp_path / "voc", [("RBC", 1, 1, 5, 5)])
    (voc / "ImageSets" / "Main" / "val.txt").write_text("img1\n")
    store = write_datastore(tmp_path / "store")
    cases = {"brats": (tmp_path / "brats", "'train' or 'val'"), "msd_patches": (patches, "'train' or 'val'"),
             "medmnist": (npz, r"splits: train, val\)"), "voc": (voc, r"splits: train, val\)"),
             "datastore": (store, "no splits")}
    assert set(cases) == set(DATASETS)
    for kind, (path, valid) in cases.items():
        with pytest.raises(DatasetError, match=valid) as err:
            read_dataset(kind, path, "test")
        assert "'test'" in str(err.value) and "\n" not in str(err.value)
