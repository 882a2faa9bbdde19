"""Large images in bounded memory: the slab-wise resize and composition agree with the whole
ones, the voxel limit reads headers only, and a 512^3 volume is inferred in under 3 GB."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
import torch

from unimed.composer import ComposedDecoder
from unimed.dicom.series import read_series, series_geometry
from unimed.large_images import VoxelLimitError, check_voxel_limit, header_voxel_count, segmentation_tokens_at_image
from unimed.networks.unimednet import unimed_tiny
from unimed.tasks.segmentation import segmentation_tokens
from unimed.transforms import GridSpec, normalize_intensity, resize_to_image, resize_to_image_slabs


@pytest.mark.parametrize("grid,shape", [((16, 16, 10), (40, 37, 23)), ((32, 32, 32), (20, 50, 17)), ((8, 8, 8), (8, 8, 8))])
def test_slabs_match_the_whole_resize(grid, shape):
    torch.manual_seed(0)
    logits = torch.randn(3, *grid)
    spec = GridSpec(shape=shape, spatial_ndim=3, affine=np.eye(4), grid=grid)
    whole = resize_to_image(logits, spec)
    slabs = list(resize_to_image_slabs(logits, spec, max_bytes=4 * 3 * shape[0] * shape[1] * 5))
    assert [z0 for z0, _, _ in slabs] == list(range(0, shape[2], 5))
    joined = torch.cat([s for _, _, s in slabs], dim=-1)
    assert joined.shape == whole.shape
    assert torch.allclose(joined, whole, atol=1e-5)


def test_slab_bytes_must_be_positive():
    spec = GridSpec(shape=(4, 4, 4), spatial_ndim=3, affine=np.eye(4), grid=(4, 4, 4))
    with pytest.raises(ValueError, match="positive"):
        list(resize_to_image_slabs(torch.zeros(2, 4, 4, 4), spec, max_bytes=0))


def test_slab_composition_gives_the_whole_masks_and_scores():
    torch.manual_seed(1)
    model = unimed_tiny()
    labels = [model.registry.get(n) for n in ("necrosis", "edema", "enhancing_tumor")]
    logits = torch.randn(4, 16, 16, 12) * 3
    spec = GridSpec(shape=(40, 36, 30), spatial_ndim=3, affine=np.eye(4), grid=(16, 16, 12))

    def compose(**sizes):
        seq = segmentation_tokens_at_image(lambda x: segmentation_tokens(model.vocab, x, labels), model.vocab,
                                           logits, spec, labels, **sizes)
        return seq, ComposedDecoder(model.vocab).decode(seq)

    whole_seq, whole = compose(max_whole_bytes=2**30)
    slab_seq, slabbed = compose(max_whole_bytes=0, slab_bytes=4 * 4 * 40 * 36 * 4)
    assert whole_seq.ids == slab_seq.ids and slab_seq.shape == (40, 36, 30)
    assert (whole.label_map != slabbed.label_map).mean() < 1e-4  # float rounding may flip a tie
    assert whole.scores.keys() == slabbed.scores.keys() and len(whole.scores) == 3
    for name, score in whole.scores.items():
        assert slabbed.scores[name] == pytest.approx(score, abs=1e-4)


def test_normalised_intensities_keep_their_values_for_any_input_dtype():
    x = torch.arange(4 * 5 * 6, dtype=torch.int16).reshape(1, 4, 5, 6) * 7
    assert torch.equal(normalize_intensity(x), normalize_intensity(x.float()))


def test_voxel_limit_reads_the_header_only(tmp_path):
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 20, 30), np.int16), np.eye(4)), path)
    assert header_voxel_count(path) == 6000
    assert check_voxel_limit(path, 6000) == 6000
    with pytest.raises(VoxelLimitError, match="6000 voxels; this server takes at most 5999"):
        check_voxel_limit(path, 5999)
    with pytest.raises(ValueError, match="positive"):
        check_voxel_limit(path, 0)
    assert header_voxel_count(tmp_path / "missing.nii.gz") is None
    (tmp_path / "broken.nii.gz").write_bytes(b"not a NIfTI")
    (tmp_path / "broken.nrrd").write_bytes(b"not an NRRD")
    assert header_voxel_count(tmp_path / "broken.nii.gz") is None and header_voxel_count(tmp_path / "broken.nrrd") is None


def test_voxel_limit_of_a_dicom_series(shared_data):
    folder = shared_data / "totalseg_examples" / "example_ct_dicom"
    assert header_voxel_count(folder) == int(np.prod(series_geometry(read_series(folder)).shape))


_MEMORY_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import nibabel as nib, numpy as np
    path = Path(sys.argv[1]) / "ct512.nii.gz"
    x = np.zeros((512, 512, 512), np.int16)  # a body-like block in air: compresses to a small file
    x[64:448, 96:416, 32:480] = 40
    x[200:300, 200:300, 200:300] = 300
    nib.save(nib.Nifti1Image(x, np.diag([0.7, 0.7, 0.8, 1.0])), path)
    del x
    from benchmarks.timing import peak_rss_mib
    from unimed.service import ModelService
    from unimed.transforms import load_image
    from unimed.writers import write_label_map
    predictor = ModelService(sys.argv[2]).predictor()
    image = load_image(path, keep_dtype=True)  # as the server's infer task reads it
    pred = predictor.predict(image, "segmentation", ["edema", "necrosis"])
    out = write_label_map(pred)
    assert nib.load(out).shape == (512, 512, 512)
    print("PEAK_MIB", peak_rss_mib())
""")


@pytest.mark.slow
def test_a_512_cubed_volume_is_inferred_in_under_3_gb(repo, tmp_path):
    """Load, model grid, encode, segmentation at full size, NIfTI written: the whole infer path of
    the server's task, in a fresh process. Two labels keep it short on two cores; the slab size,
    not the number of labels, bounds the memory of the full-size composition."""
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path), str(repo / "apps/unimed/model/unimed.pt")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak = float(proc.stdout.split("PEAK_MIB")[-1])
    print(f"512^3 load + infer + write: peak RSS {peak:.0f} MiB")
    assert peak <= 3 * 1024, f"peak RSS {peak:.0f} MiB"
