"""DICOM image series: read one with its geometry, write a volume as one, give an anonymised
series the identifiers a PACS needs.

Geometry convention: a series is a volume indexed ``(i, j, k)`` = (column, row, slice), the
order ITK, MONAI and NIfTI use, with a 4x4 voxel-to-world affine in RAS (MONAI's frame). DICOM
itself is in LPS; :data:`LPS` converts between the two (it is its own inverse).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

__all__ = [
    "LPS",
    "DicomSeriesError",
    "SeriesGeometry",
    "read_series",
    "series_geometry",
    "dicom_source_of",
    "volume_to_series",
    "assign_missing_uids",
    "stable_uid",
]

#: RAS <-> LPS: flips the first two world axes
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

_IMPLEMENTATION = "UniMed Label"


class DicomSeriesError(ValueError):
    """A folder that does not hold exactly one readable, regularly spaced DICOM image series."""


@dataclass(frozen=True)
class SeriesGeometry:
    """Where a series' voxels are.

    Attributes:
        shape: ``(columns, rows, slices)``.
        affine: 4x4 voxel ``(i, j, k)`` to world RAS millimetres.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    def world_lps(self, ijk: np.ndarray) -> np.ndarray:
        """World LPS coordinates of ``(N, 3)`` voxel indices."""
        ijk = np.asarray(ijk, dtype=np.float64).reshape(-1, 3)
        return (LPS @ self.affine @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]


def stable_uid(*parts: str) -> str:
    """A DICOM UID that is the same every time for the same ``parts`` (under pydicom's root).

    Example:
        >>> stable_uid("a", "b") == stable_uid("a", "b") != stable_uid("a", "c")
        True
    """
    return generate_uid(entropy_srcs=["unimed", *parts])


def _normal(ds: Dataset) -> np.ndarray:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    return np.cross(iop[:3], iop[3:])


def read_series(folder: str | Path, *, pixels: bool = False) -> list[Dataset]:
    """Read the image series in ``folder``, sorted along the slice normal.

    Files that are not DICOM are ignored.

    Args:
        folder: a folder with the instances of one series.
        pixels: also read pixel data (geometry and identifiers need only the headers).

    Raises:
        DicomSeriesError: no DICOM image in the folder, several series, or missing geometry.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomSeriesError(f"{folder} is not a folder")
    datasets = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
        except (InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            datasets.append(ds)
    if not datasets:
        raise DicomSeriesError(f"{folder} holds no DICOM image with a position and orientation")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise DicomSeriesError(f"{folder} mixes {len(series)} series; keep one series per folder")
    normal = _normal(datasets[0])
    return sorted(datasets, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=np.float64))))


def series_geometry(datasets: Sequence[Dataset], *, tolerance: float = 1e-2) -> SeriesGeometry:
    """The shape and RAS affine of a sorted series (as :func:`read_series` returns it).

    Raises:
        DicomSeriesError: slices that differ in orientation or size, or are unevenly spaced.
    """
    first = datasets[0]
    iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    rows, cols = int(first.Rows), int(first.Columns)
    for ds in datasets[1:]:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=np.float64), iop, atol=1e-4):
            raise DicomSeriesError("slices of the series have different orientations")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise DicomSeriesError("slices of the series have different sizes")
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=np.float64) for ds in datasets])
    normal = np.cross(iop[:3], iop[3:])
    if len(datasets) > 1:
        steps = np.diff(positions, axis=0)
        step = steps.mean(axis=0)
        if np.abs(steps - step).max() > tolerance * max(1.0, float(np.linalg.norm(step))):
            raise DicomSeriesError("slices of the series are not evenly spaced")
    else:
        step = normal * float(first.get("SliceThickness") or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing
    lps[:3, 1] = iop[3:] * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return SeriesGeometry(shape=(cols, rows, len(datasets)), affine=LPS @ lps)


def dicom_source_of(image: str | Path) -> Path | None:
    """The DICOM series folder an image came from, or None.

    An image came from DICOM when it is a series folder itself, or when it is a converted
    ``<id>.nii.gz`` beside a folder ``<id>/`` of DICOM files (the layout of MONAI Label's
    DICOMweb cache).
    """
    path = Path(image)
    if path.is_dir():
        return path
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd"):
        if name.endswith(suffix):
            folder = path.with_name(name[: -len(suffix)])
            if folder.is_dir() and any(folder.iterdir()):
                return folder
    return None


def _quantise(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """int16 pixels with slope and intercept that give back ``volume`` to within one step."""
    lo, hi = float(volume.min()), float(volume.max())
    if np.issubdtype(volume.dtype, np.integer) and lo >= -32768 and hi <= 32767:
        return volume.astype(np.int16), 1.0, 0.0
    slope = (hi - lo) / 65000.0 if hi > lo else 1.0
    intercept = lo + 32500.0 * slope
    pixels = np.round((volume - intercept) / slope)
    return np.clip(pixels, -32768, 32767).astype(np.int16), slope, intercept


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.8e}"[:16]


def volume_to_series(
    volume: np.ndarray,
    affine: np.ndarray,
    out_dir: str | Path,
    *,
    patient_id: str,
    patient_name: str = "",
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_description: str = "",
    series_number: int = 1,
    study_description: str = "",
) -> list[Path]:
    """Write a 3D volume as a DICOM MR image series (one Explicit VR Little Endian file per slice).

    Intensities are stored as int16 with a rescale slope and intercept, so a float volume comes
    back to within ``(max - min) / 65000``. Slice ``k`` of the volume is instance ``k + 1``.

    Args:
        volume: ``(X, Y, Z)`` array indexed ``(i, j, k)``.
        affine: its 4x4 voxel-to-world RAS affine (a NIfTI's, or MONAI's ``.affine``).
        out_dir: created if needed; files are ``slice_0000.dcm`` ...
        patient_id: PatientID of the new study.
        study_uid: StudyInstanceUID; derived from the patient and description when None.
        series_uid: SeriesInstanceUID; derived from the study and series number when None.

    Returns:
        The written files, in slice order.

    Example:
        >>> import tempfile
        >>> files = volume_to_series(np.zeros((4, 3, 2)), np.eye(4), tempfile.mkdtemp(), patient_id="p")
        >>> len(files), series_geometry(read_series(files[0].parent)).shape
        (2, (4, 3, 2))
    """
    volume = np.asarray(volume)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"volume must be 3D (X, Y, Z), got shape {volume.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    lps = LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing == 0):
        raise ValueError("affine has a zero-length axis")
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    if abs(float(np.dot(row_dir, col_dir))) > 1e-4:
        raise ValueError("in-plane axes of the affine must be orthogonal for DICOM")
    pixels, slope, intercept = _quantise(volume)
    study_uid = study_uid or stable_uid(patient_id, study_description)
    series_uid = series_uid or stable_uid(study_uid, str(series_number))
    frame_uid = stable_uid(series_uid, "frame")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now()
    files = []
    for k in range(volume.shape[2]):
        sop_uid = stable_uid(series_uid, str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = stable_uid(_IMPLEMENTATION)
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.AccessionNumber = ""
        ds.Modality = "MR"
        ds.Manufacturer = _IMPLEMENTATION
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = study_description
        ds.SeriesDescription = series_description
        ds.PatientName = patient_name or f"{patient_id}^"
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.SliceThickness = _ds(spacing[2])
        ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _ds(intercept), _ds(slope), "US"
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()
        path = out_dir / f"slice_{k:04d}.dcm"
        ds.save_as(path, write_like_original=False)
        files.append(path)
    return files


def assign_missing_uids(src: str | Path, out_dir: str | Path, *, patient_id: str, study_description: str = "") -> list[Path]:
    """Copy a series, filling in the identifiers an anonymised export left empty, with its pixel
    data decompressed.

    A PACS files every instance under its patient, study, series and SOP instance UIDs, so an
    instance with any of them empty is refused. Filled UIDs are derived from the source folder's
    content, so running this twice gives the same study. Identifiers already present are kept.
    Compressed pixel data (e.g. JPEG 2000) is stored as Explicit VR Little Endian, because a
    PACS that cannot transcode (Orthanc without its GDCM plugin) could not hand it to a client
    asking for uncompressed data.

    Returns:
        The written files, in slice order.
    """
    datasets = read_series(src, pixels=True)
    digest = hashlib.sha1(b"".join(str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")).encode()
                                   for ds in datasets)).hexdigest()
    study_uid = stable_uid("study", digest)
    series_uid = stable_uid("series", digest)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for k, ds in enumerate(datasets):
        ds.SOPClassUID = ds.get("SOPClassUID") or ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.get("SOPInstanceUID") or ds.file_meta.get("MediaStorageSOPInstanceUID") or stable_uid(series_uid, str(k))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = ds.get("StudyInstanceUID") or study_uid
        ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or series_uid
        ds.FrameOfReferenceUID = ds.get("FrameOfReferenceUID") or stable_uid(series_uid, "frame")
        ds.PatientID = ds.get("PatientID") or patient_id
        ds.PatientName = ds.get("PatientName") or f"{patient_id}^"
        if study_description and not ds.get("StudyDescription"):
            ds.StudyDescription = study_description
        if ds.get("SeriesNumber") is None:
            ds.SeriesNumber = 1
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        path = out_dir / f"{k:04d}.dcm"
        ds.save_as(path, write_like_original=False)
        files.append(path)
    return files
