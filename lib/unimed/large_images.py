"""Large images in bounded memory: a voxel limit checked from the file's header before the
pixels are read, and a segmentation composed at the image's resolution one slab at a time.

A 512x512x600 CT has 157 million voxels; six segmentation channels of it in float32 would
take 3.8 GB, their softmax as much again. :func:`compose_segmentation` keeps the full-size
answer as a ``uint8`` label map and holds the float channels of one slab only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from unimed.composer import ComposedDecoder
from unimed.labels import Label
from unimed.tokens import SegmentationAnnotation
from unimed.transforms import GridSpec, resize_to_image, resize_to_image_slabs

__all__ = ["DEFAULT_MAX_VOXELS", "WHOLE_BYTES", "SLAB_BYTES", "VoxelLimitError", "header_voxel_count", "check_voxel_limit", "compose_segmentation"]

#: default largest image (voxels times channels) a server takes: admits a 512x512x1000 CT
DEFAULT_MAX_VOXELS = 512 * 512 * 1000

#: float32 bytes of full-size logits above which a segmentation is composed in slabs (a 240x240x155
#: MR with all five segmentation channels, 171 MiB, is composed whole)
WHOLE_BYTES = 512 * 2**20

#: float32 bytes of logits per slab
SLAB_BYTES = 64 * 2**20


class VoxelLimitError(ValueError):
    """An image with more voxels than the configured limit."""


def header_voxel_count(path: str | Path) -> int | None:
    """Voxels times channels of an image as its header states them, without reading pixels.

    NIfTI through nibabel, a DICOM series folder through its slices' headers, other formats
    through SimpleITK's image information. None when the header cannot be read (the loader
    will then report the problem).

    Example:
        >>> import tempfile, nibabel as nib
        >>> f = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        >>> nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), np.eye(4)), f)
        >>> header_voxel_count(f)
        120
    """
    path = Path(path)
    try:
        if path.is_dir():
            return _dicom_folder_voxels(path)
        if path.name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            return math.prod(int(n) for n in nib.load(str(path)).header.get_data_shape())
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return math.prod(reader.GetSize()) * reader.GetNumberOfComponents()
    except Exception:  # readers raise many types for an unreadable header; the loader then says why
        return None


def _dicom_folder_voxels(folder: Path) -> int | None:
    import pydicom

    files = [f for f in folder.rglob("*") if f.is_file()]
    total = 0
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True, specific_tags=["Rows", "Columns", "NumberOfFrames"])
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        total += int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * int(ds.get("NumberOfFrames", 1) or 1)
    return total or None


def check_voxel_limit(path: str | Path, max_voxels: int) -> int | None:
    """Raise :class:`VoxelLimitError` if the header of ``path`` states more than ``max_voxels``
    voxels (times channels); return the count (None when the header does not tell).

    Raises:
        ValueError: ``max_voxels`` is not positive.
        VoxelLimitError: the image is larger than the limit.

    Example:
        >>> import tempfile, nibabel as nib
        >>> f = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        >>> nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), np.eye(4)), f)
        >>> check_voxel_limit(f, 100)
        Traceback (most recent call last):
        ...
        unimed.large_images.VoxelLimitError: image has 120 voxels; this server takes at most 100 (conf max_voxels)
    """
    if max_voxels <= 0:
        raise ValueError(f"max_voxels must be positive, got {max_voxels}")
    count = header_voxel_count(path)
    if count is not None and count > max_voxels:
        raise VoxelLimitError(f"image has {count} voxels; this server takes at most {max_voxels} (conf max_voxels)")
    return count


def compose_segmentation(
    composer: ComposedDecoder,
    mask_logits: torch.Tensor,
    spec: GridSpec,
    labels: Sequence[Label],
    max_whole_bytes: int = WHOLE_BYTES,
    slab_bytes: int = SLAB_BYTES,
) -> SegmentationAnnotation:
    """The segmentation at the image's resolution from model-grid ``mask_logits`` ``(1 + L, ...)``.

    When the full-size float32 logits fit in ``max_whole_bytes`` they are resized whole (as
    :func:`~unimed.transforms.resize_to_image`); otherwise slab by slab (``slab_bytes`` of
    logits each) along the last axis, each slab composed on its own and the label maps joined.
    A label's score, the mean probability over its voxels, is then the voxel-weighted mean of
    the slabs' scores; slab and whole results agree to float rounding.

    Example:
        >>> from unimed.networks.unimed import unimed_tiny
        >>> model = unimed_tiny()
        >>> labs = [model.registry.get("edema")]
        >>> spec = GridSpec(shape=(32, 32, 40), spatial_ndim=3, affine=np.eye(4), grid=(16, 16, 16))
        >>> ann = compose_segmentation(ComposedDecoder(model.vocab), torch.rand(2, 16, 16, 16), spec, labs, 2**14, 2**14)
        >>> ann.label_map.shape, ann.label_map.dtype
        ((32, 32, 40), dtype('uint8'))
    """
    full_bytes = 4 * mask_logits.shape[0] * math.prod(spec.shape)
    if spec.spatial_ndim == 2 or spec.shape[2] == 1 or full_bytes <= max_whole_bytes:
        return composer.segmentation(resize_to_image(mask_logits, spec), labels)
    label_map = np.zeros(spec.shape, dtype=np.uint8)
    ids = {lab.name: lab.id for lab in labels}
    weighted: dict[str, float] = {}
    counts: dict[str, int] = {}
    for z0, z1, logits in resize_to_image_slabs(mask_logits, spec, slab_bytes):
        part = composer.segmentation(logits, labels)
        label_map[..., z0:z1] = part.label_map
        for name, score in (part.scores or {}).items():
            n = int(np.count_nonzero(part.label_map == ids[name]))
            weighted[name] = weighted.get(name, 0.0) + score * n
            counts[name] = counts.get(name, 0) + n
    scores = {name: weighted[name] / counts[name] for name in ids if counts.get(name)}
    return SegmentationAnnotation(label_map, scores=scores)
