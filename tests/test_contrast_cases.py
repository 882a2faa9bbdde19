"""benchmarks.contrast_cases: the same annotated images through fixed intensity curves."""

import nibabel as nib
import numpy as np
import pytest

from benchmarks.contrast_cases import CURVES, apply_curve, main, write_contrast_cases
from unimed.datasets import read_datastore


@pytest.fixture
def folder(tmp_path):
    data = tmp_path / "cases"
    (data / "labels" / "final").mkdir(parents=True)
    image = np.zeros((16, 16, 8), np.float32)  # air 0, a dim tissue 100, a bright structure 400
    image[2:14, 2:14] = 100.0
    image[6:10, 6:10, 2:6] = 400.0
    mask = (image == 400.0).astype(np.uint8)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(data / "mr.nii.gz"))
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(data / "labels" / "final" / "mr.nii.gz"))
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(data / "unlabelled.nii.gz"))
    return data


def test_each_annotated_image_through_each_curve_with_its_mask(folder, tmp_path):
    out = tmp_path / "contrasts"
    cases = write_contrast_cases(folder, out)
    assert [c["name"] for c in cases] == [f"mr_{c}" for c in CURVES]  # the unlabelled image is left out
    labelled, unlabelled = read_datastore(out)
    assert unlabelled == [] and len(labelled) == len(CURVES)
    masks = {s.name: np.asarray(s.label_map) for s in labelled}
    assert all(int(m[7, 7, 3]) != 0 and int((m != 0).sum()) == 64 for m in masks.values())  # masks as they were
    inverted = np.asarray(nib.load(str(out / "mr_invert.nii.gz")).dataobj)
    assert inverted[0, 0, 0] == 0.0  # air stays dark
    assert inverted[7, 7, 3] < inverted[3, 3, 3]  # the bright structure is now darker than the tissue around it
    squared = np.asarray(nib.load(str(out / "mr_gamma.nii.gz")).dataobj)
    assert squared[7, 7, 3] > squared[3, 3, 3]  # gamma keeps the order


def test_errors(folder, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown curve 'blue'"):
        apply_curve(np.zeros((4, 4, 4)), "blue")
    with pytest.raises(ValueError, match="unknown curve 'blue'"):
        write_contrast_cases(folder, tmp_path / "o", ["blue"])
    with pytest.raises(ValueError, match="no NIfTI image with a mask"):
        write_contrast_cases(tmp_path / "missing", tmp_path / "o")
    assert main(["--data", str(folder), "--out", str(tmp_path / "o"), "--curves", "gamma,blue"]) == 2
    assert "unknown curve 'blue'" in capsys.readouterr().err
    assert main(["--data", str(folder), "--out", str(tmp_path / "o"), "--curves", "invert"]) == 0
    assert "1 cases written" in capsys.readouterr().out
