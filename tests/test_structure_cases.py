"""benchmarks.structure_cases: one datastore case per structure of a multi-label map."""

import nibabel as nib
import numpy as np
import pytest

from benchmarks.structure_cases import main, write_structure_cases
from unimed.datasets import read_datastore


@pytest.fixture
def volume(tmp_path):
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    image = np.random.default_rng(0).normal(size=(20, 16, 12)).astype(np.float32)
    seg = np.zeros((20, 16, 12), np.int16)
    seg[2:8, 2:8, 2:8] = 7  # 216 voxels
    seg[10:14, 10:14, 2:6] = 3  # 64 voxels
    seg[15, 15, 11] = 9  # 1 voxel
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "mr.nii.gz"))
    nib.save(nib.Nifti1Image(seg, affine), str(tmp_path / "seg.nii.gz"))
    return tmp_path


def test_one_case_per_structure_large_enough(volume):
    out = volume / "cases"
    cases = write_structure_cases(volume / "mr.nii.gz", volume / "seg.nii.gz", out, min_voxels=50)
    assert cases == [{"name": "mr_label7", "label": 7, "voxels": 216}, {"name": "mr_label3", "label": 3, "voxels": 64}]
    labelled, unlabelled = read_datastore(out)
    assert unlabelled == []
    masks = {s.name: np.asarray(s.label_map) for s in labelled}
    assert sorted(masks) == ["mr_label3", "mr_label7"]
    assert int((masks["mr_label7"] > 0).sum()) == 216 and int((masks["mr_label3"] > 0).sum()) == 64
    assert int(masks["mr_label7"][4, 4, 4]) != 0 and int(masks["mr_label7"][11, 11, 3]) == 0


def test_only_and_min_voxels(volume):
    cases = write_structure_cases(volume / "mr.nii.gz", volume / "seg.nii.gz", volume / "c", min_voxels=1, labels=[9])
    assert cases == [{"name": "mr_label9", "label": 9, "voxels": 1}]
    with pytest.raises(ValueError, match="no structure with at least 500 voxels"):
        write_structure_cases(volume / "mr.nii.gz", volume / "seg.nii.gz", volume / "d", min_voxels=500)
    with pytest.raises(ValueError, match="min_voxels must be >= 1"):
        write_structure_cases(volume / "mr.nii.gz", volume / "seg.nii.gz", volume / "d", min_voxels=0)


def test_shape_mismatch_is_a_clear_error(volume, capsys):
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.int16), np.eye(4)), str(volume / "small.nii.gz"))
    rc = main(["--image", str(volume / "mr.nii.gz"), "--labels", str(volume / "small.nii.gz"), "--out", str(volume / "e")])
    assert rc == 2
    assert "differs from the image's (20, 16, 12)" in capsys.readouterr().err
    assert not (volume / "e").exists()
