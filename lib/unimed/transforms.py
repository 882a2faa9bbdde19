"""Image loading and the mapping between an image's own voxel grid and the model's grid.

The model sees every image on a "model grid": intensities normalised per channel (robust to
raw CT Hounsfield units, raw MR and 8-bit RGB alike), resampled isotropically in physical
units, each side rounded to a multiple of 16 (a 2D image keeps a depth of 1). A volume's grid
has a fixed voxel size in millimetres (:data:`GRID_SPACING_3D`), so anatomy has the same size in
grid voxels whatever the scanner's field of view; it is coarser only where the longest side would
pass ``max_size`` (memory). A 2D image's pixels carry no reliable physical size, so its longest
side is fit to ``max_size``. :class:`GridSpec` remembers the original geometry so that outputs
go back to exactly the image's shape and affine.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from unimed.networks.layers import SIZE_DIVISOR

__all__ = ["GRID_SPACING_3D", "MAX_GRID_SIZE_3D", "MIN_PATCH_SIZE_3D", "parse_grid_spacing", "ImageLoadError",
           "GridSpec", "load_image", "image_affine", "normalize_intensity", "grid_shape", "to_model_grid",
           "resize_to_image", "resize_to_image_slabs", "voxel_spacing"]

#: voxel size (mm) of a volume's model grid: a 240 mm brain MR (BraTS) lands on 128 voxels, the grid
#: the shipped checkpoint was trained on
GRID_SPACING_3D = 1.875

#: the longest side a volume's model grid may have (memory): a wider field of view is coarsened to fit
MAX_GRID_SIZE_3D = 256

#: a volume whose longest side is under this many voxels at :data:`GRID_SPACING_3D` is a patch, not
#: anatomy at scale (AdrenalMNIST3D's 28 mm crops): its grid keeps this many voxels, at most its own
MIN_PATCH_SIZE_3D = 32

#: file types a datastore or the command line can hand to UniMed
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


class ImageLoadError(ValueError):
    """An image that cannot be read or has no usable pixel data."""


@dataclass(frozen=True)
class GridSpec:
    """Geometry of an image and of its model grid.

    Attributes:
        shape: the image's spatial shape, 3 entries (depth 1 for a 2D image).
        spatial_ndim: 2 or 3, as the image came in.
        affine: 4x4 voxel-to-world matrix (RAS, as MONAI reads it).
        grid: the model grid's spatial shape.
    """

    shape: tuple[int, int, int]
    spatial_ndim: int
    affine: np.ndarray
    grid: tuple[int, int, int]

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The spatial shape as the image has it (2 entries for a 2D image)."""
        return self.shape[: self.spatial_ndim]


@functools.lru_cache(maxsize=2)
def _image_loader(keep_dtype: bool = False):
    """One MONAI ``LoadImage`` per process and dtype policy: building it tries every reader, and MONAI's optional
    GPU DICOM reader logs a warning each time it finds nvImageCodec missing (this project does not install it).
    Calling it mutates no state, so threads may share it."""
    from monai.transforms import LoadImage

    if keep_dtype:
        return LoadImage(image_only=True, ensure_channel_first=True, dtype=None)
    return LoadImage(image_only=True, ensure_channel_first=True)


def load_image(path: str | Path, *, keep_dtype: bool = False) -> torch.Tensor:
    """Read an image as a channel-first MONAI ``MetaTensor`` ``(C, X, Y[, Z])`` with its affine.

    NIfTI, NRRD, MetaImage, a DICOM series folder and 2D JPEG/PNG/TIFF are read. A 4D NIfTI is
    read as channels.

    Args:
        path: the image file or DICOM series folder.
        keep_dtype: keep the file's pixel type (a CT's int16 takes half of float32) instead of
            float32; :func:`to_model_grid` takes either and gives the same grid.

    Raises:
        ImageLoadError: the file is missing or cannot be read as an image.
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"image not found: {path}")
    _check_pixel_type(path)
    try:
        image = _image_loader(keep_dtype)(str(path))
    except Exception as exc:  # readers raise many types; the caller needs one
        raise ImageLoadError(f"cannot read {path.name} as an image: {exc}") from exc
    if image.ndim not in (3, 4) or min(image.shape) < 1:
        raise ImageLoadError(f"{path.name}: expected a 2D or 3D image, got array shape {tuple(image.shape)}")
    if image.shape[0] > 8:
        raise ImageLoadError(f"{path.name}: {image.shape[0]} channels; UniMed takes 1 to 8")
    return image


def _check_pixel_type(path: Path) -> None:
    """Refuse a NIfTI of complex or structured pixels from its header, before the pixels are
    read: casting it to intensities would silently drop the imaginary part or the fields."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return
    import nibabel as nib

    try:
        dtype = nib.load(str(path)).header.get_data_dtype()
    except Exception:  # unreadable headers are reported by the loader with its own reason
        return
    if dtype.kind not in "biuf":
        raise ImageLoadError(f"{path.name}: pixels of type {dtype} are not intensities; expected integer or real values")


def normalize_intensity(image: torch.Tensor) -> torch.Tensor:
    """Clip each channel to its 0.5-99.5 percentiles, then z-score it.

    Example:
        >>> x = normalize_intensity(torch.tensor([[[0.0, 1000.0], [2000.0, 3000.0]]]))
        >>> bool(abs(x.mean()) < 1e-6)
        True
    """
    # one float32 copy of the image, normalised in place: a 512^3 volume costs 512 MiB here, not 2 GiB
    out = torch.empty(image.shape, dtype=torch.float32)
    for c in range(image.shape[0]):
        ch = out[c]
        ch.copy_(torch.as_tensor(image[c]))
        if not torch.isfinite(torch.stack(torch.aminmax(ch))).all():  # NaN propagates; no full-size mask
            raise ImageLoadError("image contains NaN or infinite values")
        flat = ch.reshape(-1)
        sample = flat[:: max(1, flat.numel() // 1_000_000)]
        lo, hi = torch.quantile(sample, torch.tensor([0.005, 0.995]))
        ch.clamp_(lo, hi)
        std = ch.std()
        ch.sub_(ch.mean()).div_(std if std > 1e-6 else 1.0)
    return out


def voxel_spacing(affine: np.ndarray, ndim: int = 3) -> np.ndarray:
    """The voxel size along each of the first ``ndim`` axes of a voxel-to-world ``affine``.

    Example:
        >>> voxel_spacing(np.diag([0.5, 2.0, 3.0, 1.0])).tolist()
        [0.5, 2.0, 3.0]
    """
    affine = np.asarray(affine, dtype=np.float64)
    return np.sqrt((affine[:ndim, :ndim] ** 2).sum(axis=0))


def image_affine(image: torch.Tensor) -> np.ndarray:
    """An image's voxel-to-world affine as 4x4 (a 2D image's 3x3 is padded; none gives identity)."""
    aff = getattr(image, "affine", None)
    if aff is None:
        return np.eye(4)
    aff = np.asarray(torch.as_tensor(aff).double().cpu())
    if aff.shape == (4, 4):
        return aff
    nd = aff.shape[0] - 1
    out = np.eye(4)
    out[:nd, :nd], out[:nd, 3] = aff[:nd, :nd], aff[:nd, nd]
    return out


def grid_shape(
    shape: tuple[int, int, int],
    spacing: np.ndarray,
    max_size: int,
    *,
    target_spacing: float | None = None,
    min_size: int = MIN_PATCH_SIZE_3D,
) -> tuple[int, int, int]:
    """Model-grid shape: isotropic in physical units, each side a multiple of 16 (a depth of 1 stays 1).

    Args:
        shape: the image's spatial shape (depth 1 for a 2D image).
        spacing: its voxel size per axis.
        max_size: the longest side the grid may have (memory).
        target_spacing: the grid's voxel size. None fits the longest side to ``max_size``.
            Otherwise the grid is coarser only where its longest side would pass ``max_size``, and
            finer only where it would be under ``min_size`` (a patch).
        min_size: see ``target_spacing``.

    The grid is never finer than the image's own smallest voxel, unless that voxel is coarser
    than ``target_spacing``: such a volume is resampled up to ``target_spacing`` (at most
    ``max_size``), so a structure spans as many grid voxels as it did in training, whatever the
    scanner's resolution (a 15 mm spinal cord: 8 voxels, not 5 at 3 mm).

    Example:
        >>> grid_shape((400, 400, 300), np.ones(3), 256, target_spacing=1.875)
        (208, 208, 160)
        >>> grid_shape((120, 90, 20), np.full(3, 3.0), 256, target_spacing=1.875)  # 3 mm: up to 1.875 mm
        (192, 144, 32)
    """
    if target_spacing is not None and target_spacing <= 0:
        raise ValueError(f"target_spacing must be positive, got {target_spacing}")
    dims = [i for i, n in enumerate(shape) if not (i == 2 and n == 1)]
    extent = np.array([shape[i] * spacing[i] for i in dims])
    if target_spacing is None:
        step = extent.max() / max_size
    else:
        step = max(min(target_spacing, extent.max() / min_size), extent.max() / max_size)
    finest = spacing[dims].min()
    step = max(step, finest if target_spacing is None else min(finest, target_spacing))
    grid = [1, 1, 1]
    for i, e in zip(dims, extent):
        grid[i] = int(max(SIZE_DIVISOR, SIZE_DIVISOR * round(e / step / SIZE_DIVISOR)))
    return tuple(grid)


def parse_grid_spacing(value: str | None, name: str = "grid spacing") -> float | None:
    """A grid voxel size as a user writes it (app conf, command line): millimetres, ``none`` for a
    grid fit to the memory cap, or None (not given) for :data:`GRID_SPACING_3D`.

    Raises:
        ValueError: not a positive number of millimetres nor ``none``; the message starts with ``name``.

    Example:
        >>> parse_grid_spacing("1.5"), parse_grid_spacing("none"), parse_grid_spacing(None)
        (1.5, None, 1.875)
    """
    if value is None:
        return GRID_SPACING_3D
    if value.strip().lower() == "none":
        return None
    try:
        mm = float(value)
    except ValueError:
        raise ValueError(f"{name} must be millimetres or 'none', got {value!r}") from None
    if not mm > 0 or mm == float("inf"):
        raise ValueError(f"{name} must be a positive, finite number of millimetres, got {value!r}")
    return mm


def to_model_grid(
    image: torch.Tensor,
    *,
    max_size_3d: int = MAX_GRID_SIZE_3D,
    max_size_2d: int = 384,
    spacing_3d: float | None = GRID_SPACING_3D,
) -> tuple[torch.Tensor, GridSpec]:
    """Normalise and resample a channel-first image onto the model grid.

    Args:
        image: ``(C, X, Y)`` or ``(C, X, Y, Z)``; a MetaTensor's affine gives the spacing.
        max_size_3d: the longest side a volume's grid may have (memory).
        max_size_2d: longest side of a 2D image's grid.
        spacing_3d: voxel size (mm) of a volume's grid (:func:`grid_shape`); None fits the
            longest side to ``max_size_3d`` whatever the field of view.

    Returns:
        ``(C, gx, gy, gz)`` float tensor and the :class:`GridSpec` to map outputs back.
    """
    ndim = image.ndim - 1
    if ndim not in (2, 3):
        raise ImageLoadError(f"expected a channel-first 2D or 3D image, got shape {tuple(image.shape)}")
    affine = image_affine(image)
    x = normalize_intensity(image)
    if ndim == 2:
        x = x.unsqueeze(-1)
    shape = tuple(int(n) for n in x.shape[1:])
    spacing = np.ones(3)
    spacing[:ndim] = voxel_spacing(affine, ndim)
    if ndim == 3 and shape[2] == 1:
        spacing[2] = spacing[:2].min()
    volume = ndim == 3 and shape[2] > 1
    grid = grid_shape(shape, spacing, max_size_3d if volume else max_size_2d,
                      target_spacing=spacing_3d if volume else None)
    x = _resize(x.unsqueeze(0), grid, antialias=True)[0]
    return x.contiguous(), GridSpec(shape=shape, spatial_ndim=ndim, affine=affine, grid=grid)


def _resize(x: torch.Tensor, size: tuple[int, int, int], antialias: bool = False) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    if x.shape[-1] == 1 and size[-1] == 1:
        return F.interpolate(x[..., 0], size=size[:2], mode="bilinear", align_corners=False, antialias=antialias)[..., None]
    if antialias and any(s < n / 1.5 for s, n in zip(size, x.shape[2:])):
        x = F.adaptive_avg_pool3d(x, [min(s * 2, n) for s, n in zip(size, x.shape[2:])])
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


def resize_to_image(logits: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """Resize ``(K, ...)`` channels from any grid back to the image's spatial shape ``(K, X, Y, Z)``."""
    return _resize(logits.unsqueeze(0).float(), spec.shape)[0]


def resize_to_image_slabs(
    logits: torch.Tensor, spec: GridSpec, max_bytes: int = 256 * 2**20
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Resize ``(K, gx, gy, gz)`` channels to the image's shape one slab of the last axis at a time.

    Each slab ``(K, X, Y, z1 - z0)`` holds at most ``max_bytes`` of float32 (at least one slice),
    so a large volume never has all ``K`` channels at full size at once. The interpolation is
    trilinear with half-pixel centres, as :func:`resize_to_image`: linear along the last axis
    first, then bilinear in each slice; the values agree with :func:`resize_to_image` to float
    rounding (about 1e-6), not bit for bit.

    Yields:
        ``(z0, z1, slab)`` for consecutive slabs covering ``0 .. Z``.

    Raises:
        ValueError: ``logits`` is not ``(K, gx, gy, gz)`` or ``max_bytes`` is not positive.

    Example:
        >>> spec = GridSpec(shape=(8, 8, 6), spatial_ndim=3, affine=np.eye(4), grid=(4, 4, 3))
        >>> [(z0, z1) for z0, z1, _ in resize_to_image_slabs(torch.rand(2, 4, 4, 3), spec, max_bytes=2 * 64 * 4 * 4)]
        [(0, 4), (4, 6)]
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must be (K, gx, gy, gz), got shape {tuple(logits.shape)}")
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    x = logits.float()
    k, depth_in = x.shape[0], x.shape[-1]
    sx, sy, sz = spec.shape
    step = max(1, max_bytes // (4 * k * sx * sy))
    scale = torch.tensor(depth_in / sz, dtype=torch.float32)
    for z0 in range(0, sz, step):
        z1 = min(z0 + step, sz)
        src = (scale * (torch.arange(z0, z1, dtype=torch.float32) + 0.5) - 0.5).clamp(min=0)
        lower = src.long().clamp(max=depth_in - 1)
        upper = (lower + 1).clamp(max=depth_in - 1)
        w_upper = (src - lower).clamp(0, 1)
        planes = x[..., lower] * (1 - w_upper) + x[..., upper] * w_upper  # (K, gx, gy, n)
        planes = planes.permute(3, 0, 1, 2)  # slices as a batch
        if tuple(planes.shape[2:]) != (sx, sy):
            planes = F.interpolate(planes, size=(sx, sy), mode="bilinear", align_corners=False)
        yield z0, z1, planes.permute(1, 2, 3, 0)
