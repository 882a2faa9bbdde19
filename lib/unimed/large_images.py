"""Large images in bounded memory: a voxel limit checked from the file's header before the
pixels are read, and a segmentation composed at the image's resolution one slab at a time.

A 512x512x600 CT has 157 million voxels; six segmentation channels of it in float32 would
take 3.8 GB, their softmax as much again. :func:`segmentation_tokens_at_image` keeps the
full-size answer as boolean masks and holds the float channels of one slab only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from unimed.labels import Label
from unimed.sequence import TokenSequence
from unimed.transforms import GridSpec, resize_to_image, resize_to_image_slabs
from unimed.vocabulary import TokenVocabulary

__all__ = ["DEFAULT_MAX_VOXELS", "WHOLE_BYTES", "SLAB_BYTES", "full_logit_bytes", "VoxelLimitError",
           "header_voxel_count", "check_voxel_limit", "segmentation_tokens_at_image"]

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


def full_logit_bytes(mask_logits: torch.Tensor, spec: GridSpec) -> int:
    """Bytes of ``mask_logits``' channels as float32 at the image's resolution (``spec.shape``)."""
    return 4 * mask_logits.shape[0] * math.prod(spec.shape)


def segmentation_tokens_at_image(
    tokens_of: Callable[[torch.Tensor], TokenSequence],
    vocab: TokenVocabulary,
    mask_logits: torch.Tensor,
    spec: GridSpec,
    labels: Sequence[Label],
    max_whole_bytes: int = WHOLE_BYTES,
    slab_bytes: int = SLAB_BYTES,
) -> TokenSequence:
    """The segmentation tokens at the image's resolution from model-grid ``mask_logits``.

    Args:
        tokens_of: the task's own composition of image-resolution logits into tokens
            (:func:`unimed.tasks.segmentation.segmentation_tokens` with its vocabulary and
            labels): one mask payload per label present, in ``labels`` order, with one score each
            (the mean probability over the label's voxels).
        vocab: the token vocabulary ``tokens_of`` writes with.
        mask_logits: ``(1 + L, ...)``, background then one channel per label, on the model grid.
        spec: the image's geometry.
        labels: the labels of the channels.
        max_whole_bytes: full-size float32 logits up to this size are resized and composed
            whole (as :func:`~unimed.transforms.resize_to_image`); larger ones slab by slab along
            the last axis, the masks joined and a label's score the voxel-weighted mean of its
            slabs' scores (slab and whole results agree to float rounding).
        slab_bytes: float32 logits per slab.

    Example:
        >>> from unimed.networks.unimednet import unimed_tiny
        >>> from unimed.tasks.segmentation import segmentation_tokens
        >>> model = unimed_tiny()
        >>> labs = [model.registry.get("edema")]
        >>> spec = GridSpec(shape=(32, 32, 40), spatial_ndim=3, affine=np.eye(4), grid=(16, 16, 16))
        >>> seq = segmentation_tokens_at_image(lambda x: segmentation_tokens(model.vocab, x, labs), model.vocab,
        ...                                    torch.rand(2, 16, 16, 16), spec, labs, 2**14, 2**14)
        >>> seq.shape
        (32, 32, 40)
    """
    if spec.spatial_ndim == 2 or spec.shape[2] == 1 or full_logit_bytes(mask_logits, spec) <= max_whole_bytes:
        return tokens_of(resize_to_image(mask_logits, spec))
    label_tokens = [vocab.label_token(lab) for lab in labels]
    masks: dict[int, np.ndarray] = {}
    weighted: dict[int, float] = {}
    counts: dict[int, int] = {}
    ends = None
    for z0, z1, logits in resize_to_image_slabs(mask_logits, spec, slab_bytes):
        part = tokens_of(logits)
        ends = part.ids[0], part.ids[-1]
        present = [i for i, token in enumerate(label_tokens) if token in part.ids]  # the payloads' order
        for mask, score, i in zip(part.masks or [], part.scores or [], present):
            mask = np.asarray(mask, dtype=bool)
            if i not in masks:
                masks[i] = np.zeros(spec.shape, dtype=bool)
            masks[i][..., z0:z1] = mask
            n = int(np.count_nonzero(mask))
            weighted[i] = weighted.get(i, 0.0) + score * n
            counts[i] = counts.get(i, 0) + n
    ids, joined, scores = [ends[0]], [], []
    for i in sorted(masks):
        ids += [label_tokens[i], vocab.mask_token(len(joined))]
        joined.append(masks[i])
        scores.append(weighted[i] / counts[i])
    ids.append(ends[1])
    return TokenSequence(ids=ids, masks=joined, scores=scores, shape=tuple(spec.shape))
