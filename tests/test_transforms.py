"""Loading images and mapping them onto the model grid and back."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from unimed.transforms import (GRID_SPACING_3D, GridSpec, ImageLoadError, grid_shape, load_image, normalize_intensity,
                               resize_to_image, to_model_grid)


@pytest.mark.parametrize(
    "shape, spacing, max_size, expected",
    [
        ((240, 240, 155), (1, 1, 1), 128, (128, 128, 80)),  # BraTS: isotropic shrink
        ((122, 101, 30), (3, 3, 3), 128, (128, 96, 32)),  # CT at 3 mm: kept, sides rounded to 16
        ((28, 28, 28), (1, 1, 1), 128, (32, 32, 32)),  # never shrinks below the voxel size
        ((640, 480, 1), (1, 1, 1), 384, (384, 288, 1)),  # 2D keeps a depth of 1
        ((512, 512, 40), (0.7, 0.7, 5.0), 128, (128, 128, 64)),  # thick slices: isotropic in mm
    ],
)
def test_grid_shape(shape, spacing, max_size, expected):
    assert grid_shape(shape, np.array(spacing, float), max_size) == expected


@pytest.mark.parametrize(
    "shape, spacing, max_size, expected",
    [
        ((240, 240, 155), (1, 1, 1), 256, (128, 128, 80)),  # BraTS at 1 mm: 1.875 mm voxels
        ((360, 360, 155), (1, 1, 1), 256, (192, 192, 80)),  # the same head in a wider view: same voxel size
        ((160, 160, 103), (1.5, 1.5, 1.5), 256, (128, 128, 80)),  # the same 240 mm at 1.5 mm
        ((122, 101, 30), (3, 3, 3), 256, (192, 160, 48)),  # coarser than the grid: resampled up to 1.875 mm
        ((400, 400, 100), (3, 3, 3), 256, (256, 256, 64)),  # ... at most to the memory cap
        ((28, 28, 28), (1, 1, 1), 256, (32, 32, 32)),  # a patch keeps MIN_PATCH_SIZE_3D voxels
        ((512, 512, 600), (0.8, 0.8, 0.8), 256, (224, 224, 256)),  # a 480 mm CT fits the cap at 1.875 mm
        ((512, 512, 700), (0.8, 0.8, 0.8), 256, (192, 192, 256)),  # a 560 mm one: only the memory cap coarsens
    ],
)
def test_grid_shape_at_a_voxel_size(shape, spacing, max_size, expected):
    assert grid_shape(shape, np.array(spacing, float), max_size, target_spacing=GRID_SPACING_3D) == expected


def test_grid_spacing_must_be_positive():
    with pytest.raises(ValueError, match="target_spacing must be positive"):
        grid_shape((10, 10, 10), np.ones(3), 128, target_spacing=0)


def test_normalize_handles_raw_ct_and_constant_images():
    ct = torch.tensor(np.random.default_rng(0).integers(-1024, 3000, size=(1, 20, 20, 10)), dtype=torch.int16)
    out = normalize_intensity(ct)
    assert abs(float(out.mean())) < 1e-4 and abs(float(out.std()) - 1) < 1e-2
    flat = normalize_intensity(torch.full((1, 8, 8), 7.0))
    assert torch.equal(flat, torch.zeros(1, 8, 8))


def test_nan_image_is_rejected():
    with pytest.raises(ImageLoadError, match="NaN"):
        normalize_intensity(torch.tensor([[[float("nan"), 1.0]]]))


@pytest.mark.parametrize(
    "name, channels, spatial",
    [
        ("brats_pat0001_flair.nii.gz", 1, (240, 240, 155)),
        ("ct_abdomen_3mm.nii.gz", 1, (122, 101, 30)),
        ("lung_patch_000.nii.gz", 1, (48, 48)),
        ("adrenal_val_000.nii.gz", 1, (28, 28, 28)),
        ("bccd_BloodImage_00000.jpg", 3, (640, 480)),
    ],
)
def test_sample_images_load_and_map_to_the_grid(sample, name, channels, spatial):
    image = load_image(sample / name)
    assert tuple(image.shape) == (channels, *spatial)
    grid, spec = to_model_grid(image)
    assert spec.image_shape == spatial
    assert all(n % 16 == 0 or n == 1 for n in grid.shape[1:])
    back = resize_to_image(grid[:1], spec)
    assert tuple(back.shape[1:]) == spec.shape


def test_affine_is_the_files_own(sample):
    path = sample / "ct_abdomen_3mm.nii.gz"
    _, spec = to_model_grid(load_image(path))
    assert np.allclose(spec.affine, nib.load(path).affine)


def test_dicom_series_folder_loads(shared_data):
    folder = shared_data / "totalseg_examples" / "example_ct_dicom"
    image = load_image(folder)
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 20


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x00" * 400])
def test_garbage_files_raise_image_load_error(tmp_path, content):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(content)
    with pytest.raises(ImageLoadError, match="bad.nii.gz"):
        load_image(bad)


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.nii.gz")


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_pixels_are_refused_not_cast(tmp_path, dtype):
    path = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), dtype), np.eye(4)), str(path))
    with pytest.raises(ImageLoadError, match="not intensities"):
        load_image(path)


def test_a_4d_nifti_is_channels_up_to_eight(tmp_path):
    for volumes, ok in ((3, True), (20, False)):
        path = tmp_path / f"t{volumes}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((6, 6, 6, volumes), np.float32), np.eye(4)), str(path))
        if ok:
            assert tuple(load_image(path).shape) == (3, 6, 6, 6)
        else:
            with pytest.raises(ImageLoadError, match="20 channels"):
                load_image(path)
