"""DICOM SEG: a UniMed label map written as a Segmentation of its source series, and any
Segmentation (ours, dcmqi's, a viewer's) read back onto a voxel grid.

Each label present becomes one segment: its label (the registry's display name), tracking id
(the registry name, which is how a SEG is read back into label ids), colour and SNOMED CT
codes come from :class:`unimed.labels.LabelRegistry`. Writing uses highdicom, which builds the
frames' positions from the source images, so the SEG shares the series' frame of reference.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from unimed import __version__
from unimed.dicom.series import LPS, SeriesGeometry, read_series, series_geometry, stable_uid
from unimed.labels import Code, Label, LabelRegistry, UnknownLabelError

__all__ = ["SegError", "Segment", "SegVolume", "write_seg", "read_seg", "resample_to_series", "rgb_to_dicom_lab",
           "dicom_lab_to_rgb"]


class SegError(ValueError):
    """A file that is not a usable DICOM Segmentation, or a label map that cannot become one."""


# -- colours: DICOM keeps CIE L*a*b* (D65 white) scaled to 0..65535 ---------------------------------
_WHITE = np.array([0.95047, 1.0, 1.08883])
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])


def rgb_to_dicom_lab(rgb: Sequence[int]) -> tuple[int, int, int]:
    """sRGB 0..255 to a DICOM ``RecommendedDisplayCIELabValue``.

    Example:
        >>> rgb_to_dicom_lab((255, 255, 255))[0]
        65535
    """
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    t = (_RGB_TO_XYZ @ linear) / _WHITE
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])
    scaled = [lab[0] / 100.0, (lab[1] + 128.0) / 255.0, (lab[2] + 128.0) / 255.0]
    return tuple(int(round(float(np.clip(v, 0.0, 1.0)) * 65535)) for v in scaled)


def dicom_lab_to_rgb(value: Sequence[int]) -> tuple[int, int, int]:
    """The inverse of :func:`rgb_to_dicom_lab` (to within rounding)."""
    v = np.asarray(value, dtype=np.float64) / 65535.0
    lab = np.array([v[0] * 100.0, v[1] * 255.0 - 128.0, v[2] * 255.0 - 128.0])
    fy = (lab[0] + 16) / 116
    f = np.array([fy + lab[1] / 500, fy, fy - lab[2] / 200])
    t = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29))
    linear = np.linalg.solve(_RGB_TO_XYZ, t * _WHITE)
    linear = np.clip(linear, 0.0, 1.0)
    c = np.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)
    return tuple(int(round(float(x) * 255)) for x in c)


#: the algorithm family of UniMed's segments (DICOM CID 7162)
_AI = Code("123110", "DCM", "Artificial Intelligence")


# -- writing ---------------------------------------------------------------------------------------
def resample_to_series(label_map: np.ndarray, affine: np.ndarray, geometry: SeriesGeometry) -> np.ndarray:
    """Nearest-neighbour copy of a label map onto a series' voxel grid (outside it: 0).

    Args:
        label_map: ``(X, Y, Z)`` integer array.
        affine: its 4x4 voxel-to-world RAS affine.
        geometry: the target grid.

    Returns:
        ``geometry.shape`` array; the input itself when the grids are the same.
    """
    label_map = np.asarray(label_map)
    if label_map.ndim != 3:
        raise SegError(f"label map must be 3D, got shape {label_map.shape}")
    if label_map.shape == geometry.shape and np.allclose(affine, geometry.affine, atol=1e-3):
        return label_map
    to_label = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ geometry.affine
    nx, ny, nz = geometry.shape
    ii, jj = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    out = np.zeros(geometry.shape, dtype=label_map.dtype)
    for k in range(nz):
        idx = np.rint(to_label[:3, :3] @ np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, k)]) + to_label[:3, 3:4])
        idx = idx.astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.array(label_map.shape)[:, None]), axis=0)
        plane = np.zeros(ii.size, dtype=label_map.dtype)
        plane[inside] = label_map[idx[0, inside], idx[1, inside], idx[2, inside]]
        out[:, :, k] = plane.reshape(nx, ny)
    return out


def _concept(code: Code):
    from highdicom.sr.coding import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _segment_description(number: int, label: Label, algorithm):
    from highdicom.seg import SegmentAlgorithmTypeValues, SegmentDescription

    desc = SegmentDescription(
        segment_number=number,
        segment_label=label.display,
        segmented_property_category=_concept(label.category),
        segmented_property_type=_concept(label.type),
        algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=stable_uid("label", label.name),
        tracking_id=label.name,
        anatomic_regions=[_concept(label.region)] if label.region else None,
    )
    desc.RecommendedDisplayCIELabValue = list(rgb_to_dicom_lab(label.color))
    return desc


def write_seg(
    label_map: np.ndarray,
    affine: np.ndarray,
    source: str | Path | Sequence[Dataset],
    out_path: str | Path,
    *,
    labels: Sequence[Label] | None = None,
    registry: LabelRegistry | None = None,
    series_description: str = "UniMed segmentation",
    series_number: int = 900,
    algorithm_version: str = __version__,
) -> Path:
    """Write a label map as a DICOM SEG (BINARY) of its source series.

    Args:
        label_map: ``(X, Y, Z)`` registry label ids (0 background), on any grid that covers the
            series; it is copied onto the series' own grid by nearest neighbour.
        affine: the label map's 4x4 voxel-to-world RAS affine.
        source: the source series (a folder, or its datasets).
        out_path: the ``.dcm`` to write.
        labels: the segments to describe; by default the labels present in the map. A label
            in the map but not here is an error; a listed label absent from the map gives an
            empty segment (so an empty prediction still yields a valid SEG).
        registry: label ids, names, colours and codes (the default registry if None).
        series_description: the SEG series' description in a PACS and viewers.

    Returns:
        ``out_path``.

    Raises:
        SegError: no segment to write, a label id outside ``labels``, or a map that is not 3D.
        UnknownLabelError: a label id the registry does not have.

    Example:
        >>> # write_seg(pred.label_map(), pred.spec.affine, "series_dir", "out.dcm")
    """
    import highdicom as hd

    registry = registry or LabelRegistry()
    datasets = read_series(source) if isinstance(source, (str, Path)) else list(source)
    geometry = series_geometry(datasets)
    datasets = complete_source_headers(datasets, geometry)
    on_series = resample_to_series(np.asarray(label_map), affine, geometry)
    present = [int(v) for v in np.unique(on_series) if v != 0]
    described = list(labels) if labels is not None else [registry.by_id(v) for v in present]
    if not described:
        raise SegError("the label map is empty and no labels were given: a DICOM SEG needs at least one segment")
    number = {lab.id: i + 1 for i, lab in enumerate(described)}
    missing = [v for v in present if v not in number]
    if missing:
        raise SegError(f"label ids {missing} are in the label map but not among the segments to write")
    lut = np.zeros(max(256, int(on_series.max()) + 1), dtype=np.uint8)
    for lab_id, n in number.items():
        lut[lab_id] = n
    frames = np.ascontiguousarray(lut[on_series].transpose(2, 1, 0))  # (slices, rows, columns)
    algorithm = hd.AlgorithmIdentificationSequence(name="UniMed", family=_concept(_AI), version=algorithm_version)
    series_uid = stable_uid("seg", str(datasets[0].SeriesInstanceUID), hashlib.sha1(frames.tobytes()).hexdigest(),
                            ",".join(lab.name for lab in described))
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[_segment_description(number[lab.id], lab, algorithm) for lab in described],
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=stable_uid(series_uid, "1"),
            instance_number=1,
            manufacturer="UniMed Label",
            manufacturer_model_name="UniMed",
            software_versions=algorithm_version,
            device_serial_number="0",
            series_description=series_description,
            content_label="UNIMED",
            content_description="UniMed segmentation",
            omit_empty_frames=bool(present),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # highdicom names what the series lacks
        raise SegError(f"the source series cannot be the reference of a DICOM SEG: {type(exc).__name__}: {exc}") from exc
    out_path = Path(out_path)
    seg.save_as(out_path)
    return out_path


#: identifiers of the source images a SEG references; they cannot be derived from the pixels
_SEG_REFERENCES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def complete_source_headers(datasets: Sequence[Dataset], geometry: SeriesGeometry) -> list[Dataset]:
    """The series' datasets with what a DICOM SEG needs and can be derived filled in.

    A series without ``FrameOfReferenceUID`` gets one derived deterministically from its
    SeriesInstanceUID (so every SEG of the series shares it); one without ``SliceThickness`` gets
    the spacing between its slices; SOP class and instance UIDs missing from a dataset are
    taken from its file meta. Datasets that lack nothing are returned as they are; the others
    are copies (the caller's stay untouched).

    Raises:
        SegError: the series lacks an identifier a SEG references and that cannot be derived
            (study, series or SOP instance UID), named in the message.

    Example:
        >>> # complete_source_headers(read_series(folder), series_geometry(read_series(folder)))
    """
    frame_uid = next((str(ds.FrameOfReferenceUID) for ds in datasets if ds.get("FrameOfReferenceUID")), None)
    frame_uid = frame_uid or stable_uid(str(datasets[0].get("SeriesInstanceUID", "")), "frame")
    spacing = float(np.linalg.norm(geometry.affine[:3, 2]))
    out = []
    for ds in datasets:
        meta = getattr(ds, "file_meta", None) or Dataset()
        derived = {
            "FrameOfReferenceUID": frame_uid,
            "SliceThickness": f"{spacing:.6g}",
            "SOPClassUID": meta.get("MediaStorageSOPClassUID"),
            "SOPInstanceUID": meta.get("MediaStorageSOPInstanceUID"),
        }
        todo = {k: v for k, v in derived.items() if not ds.get(k) and v}
        if todo:
            ds = copy.deepcopy(ds)
            for keyword, value in todo.items():
                setattr(ds, keyword, value)
        out.append(ds)
    lacking = [k for k in _SEG_REFERENCES if any(not ds.get(k) for ds in out)]
    if lacking:
        raise SegError(f"the source series lacks {', '.join(lacking)}: a DICOM SEG must reference them "
                       "(assign the series identifiers before asking for a SEG)")
    return out


# -- reading ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """One segment of a SEG.

    Attributes:
        number: SegmentNumber.
        label: SegmentLabel.
        tracking_id: TrackingID ('' when absent); UniMed writes the registry name here.
        category: segmented property category.
        type: segmented property type.
        color: RGB from RecommendedDisplayCIELabValue, or None.
    """

    number: int
    label: str
    tracking_id: str
    category: Code | None
    type: Code | None
    color: tuple[int, int, int] | None

    def registry_label(self, registry: LabelRegistry) -> Label:
        """The registry label this segment stands for (by tracking id, then segment label).

        Raises:
            UnknownLabelError: neither names a registry label.
        """
        for name in (self.tracking_id, self.label):
            if name:
                try:
                    return registry.get(name)
                except UnknownLabelError:
                    continue
        raise UnknownLabelError(f"segment {self.number} ({self.label!r}) is not a label of the registry; "
                                f"known labels: {', '.join(registry.names)}")


@dataclass
class SegVolume:
    """A SEG on a voxel grid.

    Attributes:
        masks: ``(S, X, Y, Z)`` booleans, one per segment in ``segments`` order.
        affine: 4x4 voxel-to-world RAS affine of the grid.
        segments: the segments' descriptions.
        referenced_series: SeriesInstanceUID of the source series ('' if the SEG names none).
    """

    masks: np.ndarray
    affine: np.ndarray
    segments: list[Segment]
    referenced_series: str

    def label_map(self, values: Mapping[int, int] | LabelRegistry | None = None) -> np.ndarray:
        """One ``uint8`` label map.

        Args:
            values: segment number -> label value; a registry maps each segment to its label's
                id; None keeps the segment numbers.

        Raises:
            SegError: segments overlap (a label map cannot hold that; use ``masks``).
            UnknownLabelError: with a registry, a segment that names no registry label.
        """
        if isinstance(values, LabelRegistry):
            values = {s.number: s.registry_label(values).id for s in self.segments}
        values = values or {s.number: s.number for s in self.segments}
        if self.masks.sum(axis=0).max(initial=0) > 1:
            raise SegError("segments overlap, so they cannot form one label map; use SegVolume.masks")
        out = np.zeros(self.masks.shape[1:], dtype=np.uint8)
        for mask, seg in zip(self.masks, self.segments):
            out[mask] = values[seg.number]
        return out


def _code(item: Dataset, keyword: str) -> Code | None:
    seq = item.get(keyword)
    if not seq:
        return None
    c = seq[0]
    return Code(str(c.get("CodeValue", "")), str(c.get("CodingSchemeDesignator", "")), str(c.get("CodeMeaning", "")))


def _frame_geometry(ds: Dataset, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position, orientation, spacing [row, column]) of frame ``index``."""
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else Dataset()
    frame = ds.PerFrameFunctionalGroupsSequence[index]

    def find(keyword: str) -> Dataset:
        for group in (frame, shared):
            if keyword in group:
                return group[keyword][0]
        raise SegError(f"frame {index + 1} of the SEG has no {keyword}")

    position = np.asarray(find("PlanePositionSequence").ImagePositionPatient, dtype=np.float64)
    orientation = np.asarray(find("PlaneOrientationSequence").ImageOrientationPatient, dtype=np.float64)
    spacing = np.asarray(find("PixelMeasuresSequence").PixelSpacing, dtype=np.float64)
    return position, orientation, spacing


#: Label Map Segmentation Storage (DICOM 2024): one frame holds every segment as its number
LABELMAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"


def read_seg(path: str | Path, *, source: str | Path | Sequence[Dataset] | None = None) -> SegVolume:
    """Read a DICOM SEG (BINARY, FRACTIONAL or LABELMAP) onto a voxel grid: the source series'
    grid when given, else the smallest regular grid that holds the SEG's frames.

    Args:
        path: the SEG file.
        source: its source series (a folder or datasets), so that the result has exactly the
            series' shape and affine even when the SEG omits empty or cropped frames.

    Raises:
        SegError: not a Segmentation, frames without geometry, or frames off the grid.
    """
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError) as exc:
        raise SegError(f"cannot read {path} as DICOM: {exc}") from exc
    if ds.get("SOPClassUID") not in (SegmentationStorage, LABELMAP_SEGMENTATION_STORAGE):
        raise SegError(f"{Path(path).name} is not a DICOM Segmentation (SOP class {ds.get('SOPClassUID')})")
    pixels = ds.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    kind = str(ds.get("SegmentationType", "BINARY"))
    if kind == "FRACTIONAL":
        pixels = pixels > int(ds.get("MaximumFractionalValue", 255)) / 2
    elif kind == "LABELMAP" and ds.get("PixelPaddingValue") is not None:
        pixels = np.where(pixels == int(ds.PixelPaddingValue), 0, pixels)
    geoms = [_frame_geometry(ds, f) for f in range(pixels.shape[0])]
    orientation, spacing = geoms[0][1], geoms[0][2]
    positions = np.array([g[0] for g in geoms])
    if source is not None:
        datasets = read_series(source) if isinstance(source, (str, Path)) else list(source)
        geometry = series_geometry(datasets)
    else:
        geometry = _grid_through(ds, positions, orientation, spacing, pixels.shape[1:])
    to_voxel = np.linalg.inv(LPS @ geometry.affine)
    ijk = (to_voxel @ np.c_[positions, np.ones(len(positions))].T).T[:, :3]
    corner = np.rint(ijk).astype(int)
    rows, cols = pixels.shape[1:]
    if (np.abs(ijk - corner).max() > 1e-2 or corner.min() < 0 or np.any(corner[:, 2] >= geometry.shape[2])
            or np.any(corner[:, 0] + cols > geometry.shape[0]) or np.any(corner[:, 1] + rows > geometry.shape[1])):
        raise SegError("the SEG's frames do not lie on the voxel grid of its source series")
    segments = [
        Segment(
            number=int(item.SegmentNumber),
            label=str(item.get("SegmentLabel", "")),
            tracking_id=str(item.get("TrackingID", "")),
            category=_code(item, "SegmentedPropertyCategoryCodeSequence"),
            type=_code(item, "SegmentedPropertyTypeCodeSequence"),
            color=dicom_lab_to_rgb(item.RecommendedDisplayCIELabValue) if "RecommendedDisplayCIELabValue" in item else None,
        )
        for item in ds.SegmentSequence
        if int(item.SegmentNumber) != 0  # a label map's segment 0 is its background
    ]
    slot = {s.number: i for i, s in enumerate(segments)}
    masks = np.zeros((len(segments), *geometry.shape), dtype=bool)
    for f, (i0, j0, k) in enumerate(corner):
        window = (slice(i0, i0 + cols), slice(j0, j0 + rows), k)
        if kind == "LABELMAP":
            for number, n in slot.items():
                masks[n][window] |= (pixels[f] == number).T
        else:
            masks[slot[_frame_segment(ds, f)]][window] |= pixels[f].astype(bool).T
    referenced = ds.get("ReferencedSeriesSequence")
    return SegVolume(masks=masks, affine=geometry.affine, segments=segments,
                     referenced_series=str(referenced[0].SeriesInstanceUID) if referenced else "")


def _frame_segment(ds: Dataset, index: int) -> int:
    """The segment number of frame ``index`` of a BINARY or FRACTIONAL SEG."""
    for group in (ds.PerFrameFunctionalGroupsSequence[index], ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]):
        if "SegmentIdentificationSequence" in group:
            return int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    raise SegError(f"frame {index + 1} of the SEG names no segment")


def _grid_through(ds: Dataset, positions: np.ndarray, orientation: np.ndarray, spacing: np.ndarray,
                  frame_shape: tuple[int, int]) -> SeriesGeometry:
    """The smallest regular grid whose voxels hold every frame."""
    axes = np.stack([orientation[:3], orientation[3:], np.cross(orientation[:3], orientation[3:])])
    coords = positions @ axes.T  # along row direction, column direction, normal
    unique = np.unique(np.round(coords[:, 2], 3))
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else Dataset()
    measures = shared.PixelMeasuresSequence[0] if "PixelMeasuresSequence" in shared else Dataset()
    step = float(measures.get("SpacingBetweenSlices") or 0.0)  # frames may skip empty slices
    if step <= 0:
        step = float(np.diff(unique).min()) if len(unique) > 1 else float(measures.get("SliceThickness") or 1.0)
    lo = coords.min(axis=0)
    lps = np.eye(4)
    lps[:3, 0] = axes[0] * spacing[1]
    lps[:3, 1] = axes[1] * spacing[0]
    lps[:3, 2] = axes[2] * step
    lps[:3, 3] = lo @ axes
    extent = coords.max(axis=0) - lo
    shape = (int(round(extent[0] / spacing[1])) + frame_shape[1], int(round(extent[1] / spacing[0])) + frame_shape[0],
             int(round(extent[2] / step)) + 1)
    return SeriesGeometry(shape=shape, affine=LPS @ lps)
