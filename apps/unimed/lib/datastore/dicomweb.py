"""MONAI Label's DICOMweb datastore, made to list every modality UniMed serves and to send
saved labels back to the PACS as DICOM SEG written by :func:`unimed.dicom.seg.write_seg`.

The stock datastore lists only series matching one search filter (``{"Modality": "CT"}`` by
default, the setting ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER``), so MR studies never show, and it
writes SEG with dcmqi's ``itkimage2segimage`` binary, which it downloads from GitHub at start.
This one searches each modality of the app's ``dicomweb_modalities`` conf (``CT,MR`` by
default) and needs no download.
"""

from __future__ import annotations

import logging
import os
import pathlib
import tempfile
from typing import Any, Callable, Sequence

import numpy as np
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image
from monailabel.datastore.utils.dicom import dicom_web_download_series, dicom_web_upload_dcm
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset

from unimed.dicom.seg import read_seg, write_seg
from unimed.labels import LabelRegistry

__all__ = ["UniMedDICOMwebDatastore", "parse_modalities", "label_to_seg", "seg_to_label_image"]

logger = logging.getLogger(__name__)


def parse_modalities(value: str | Sequence[str]) -> list[str]:
    """``"CT,MR"`` or ``["CT", "MR"]`` -> ``["CT", "MR"]``.

    Raises:
        ValueError: no modality, or one that is not a DICOM modality code (letters/digits, at
            most 16 characters) or is SEG (labels are not images).

    Example:
        >>> parse_modalities("ct, MR")
        ['CT', 'MR']
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    out = [m.strip().upper() for m in items if m.strip()]
    if not out:
        raise ValueError("dicomweb_modalities must name at least one modality, e.g. 'CT,MR'")
    for m in out:
        if not m.isalnum() or len(m) > 16 or m == "SEG":
            raise ValueError(f"dicomweb_modalities: {m!r} is not an image modality code such as CT or MR")
    return out


def label_to_seg(image_dir: str | os.PathLike, label_file: str | os.PathLike, names: Sequence[str] = (),
                 registry: LabelRegistry | None = None) -> str:
    """A label image (NIfTI, NRRD ...) of the series in ``image_dir`` as a DICOM SEG file.

    Args:
        image_dir: the source series' folder.
        label_file: the label image; a file that already is a DICOM SEG (an infer result with
            ``output: dicom_seg``) is returned as it is.
        names: labels to write as segments even when absent from the image (so that an empty
            answer still gives a SEG), besides every label present.

    Raises:
        UnknownLabelError: a name or a label value that the registry does not have.
        SegError: nothing to write (empty image and no names).
    """
    from monai.transforms import LoadImage

    from unimed.transforms import image_affine

    label_file = str(label_file)
    if label_file.endswith(".dcm"):
        return label_file
    registry = registry or LabelRegistry()
    label = LoadImage(image_only=True)(label_file)
    label_map = np.asarray(label).astype(np.uint8)
    segments = [registry.get(n) for n in names]
    segments += [registry.by_id(v) for v in np.unique(label_map) if v and registry.by_id(v) not in segments]
    out = tempfile.NamedTemporaryFile(suffix=".dcm", delete=False).name
    write_seg(label_map, image_affine(label), image_dir, out, labels=segments or None, registry=registry,
              series_description="UniMed label")
    return out


def seg_to_label_image(seg_file: str | os.PathLike, image_dir: str | os.PathLike, out_path: str | os.PathLike,
                       registry: LabelRegistry | None = None) -> str:
    """A DICOM SEG as a NIfTI label map of registry ids on its source series' grid.

    Segments are matched to registry labels by tracking id or segment label, not by segment
    number (a SEG numbers its segments 1, 2, ... whatever they are).

    Raises:
        UnknownLabelError: a segment that names no registry label.
        SegError: overlapping segments, or frames off the series' grid.
    """
    import nibabel as nib

    seg = read_seg(seg_file, source=image_dir)
    label_map = seg.label_map(registry or LabelRegistry())
    img = nib.Nifti1Image(label_map, seg.affine)
    img.set_qform(seg.affine, code=1)
    img.set_sform(seg.affine, code=1)
    nib.save(img, str(out_path))
    return str(out_path)


class UniMedDICOMwebDatastore(DICOMWebDatastore):
    """A DICOMweb datastore over every modality in ``modalities``.

    Args:
        url: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web`` (Orthanc).
        modalities: series modalities to list as images.
        cache_path: local cache (MONAI Label's default under ``~/.cache`` when None).
        registry: returns the served checkpoint's label space, which names a label's segments
            (default: the default labels).

    Example:
        >>> # UniMedDICOMwebDatastore.from_settings("http://127.0.0.1:8042/dicom-web", ["CT", "MR"])
    """

    def __init__(self, client, *, modalities: Sequence[str], cache_path: str | None = None,
                 fetch_by_frame: bool = False, registry: Callable[[], LabelRegistry] | None = None):
        self.modalities = parse_modalities(modalities)
        self._registry = registry or LabelRegistry
        base = dict(settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER or {})
        base.pop("Modality", None)
        self._filters = [{**base, "Modality": m} for m in self.modalities]
        super().__init__(client, search_filter=self._filters[0], cache_path=cache_path, fetch_by_frame=fetch_by_frame,
                         convert_to_nifti=True)

    @classmethod
    def from_settings(cls, url: str, modalities: Sequence[str],
                      registry: Callable[[], LabelRegistry] | None = None) -> "UniMedDICOMwebDatastore":
        """Build the client from MONAI Label's settings (credentials, URL prefixes, cache path)."""
        session = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            from dicomweb_client.session_utils import create_session_from_user_pass

            session = create_session_from_user_pass(settings.MONAI_LABEL_DICOMWEB_USERNAME,
                                                    settings.MONAI_LABEL_DICOMWEB_PASSWORD)
        client = DICOMwebClientX(url=url, session=session, qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                                 wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                                 stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
        cache = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or None
        return cls(client, modalities=modalities, cache_path=cache,
                   fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME, registry=registry)

    def list_images(self) -> list[str]:
        """SeriesInstanceUIDs of every series of the configured modalities (asked afresh each
        time, so that a study sent to the PACS shows at once)."""
        series: list[str] = []
        for search in self._filters:
            for item in self._client.search_for_series(search_filters=search):
                uid = str(Dataset.from_json(item)["SeriesInstanceUID"].value)
                if uid not in series:
                    series.append(uid)
        return series

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        """Series that have a SEG in the PACS, asked afresh (the stock method caches the answer
        for ``MONAI_LABEL_DICOMWEB_CACHE_EXPIRY`` seconds, two hours by default, so a label just
        saved would not count)."""
        return DICOMWebDatastore.get_labeled_images.__wrapped__(self, label_tag, labels)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """A final label is a SEG series in the PACS: fetched once, then kept as a NIfTI label map
        of registry ids (the stock conversion would give segment numbers instead)."""
        if label_tag != DefaultLabelTag.FINAL:
            return LocalDatastore.get_label_uri(self, label_id, label_tag)
        existing = LocalDatastore.get_label_uri(self, image_id, label_tag) if image_id else ""
        if existing and os.path.exists(existing):
            return existing
        seg_dir = os.path.join(self._datastore.label_path(label_tag), label_id)
        if not os.path.isdir(seg_dir) or not os.listdir(seg_dir):
            dicom_web_download_series(None, label_id, seg_dir, self._client, self._fetch_by_frame)
        self.get_image_uri(image_id)  # the source series, for the grid
        seg_file = os.path.join(seg_dir, sorted(os.listdir(seg_dir))[0])
        with tempfile.TemporaryDirectory() as tmp:
            label = seg_to_label_image(seg_file, os.path.join(self._datastore.image_path(), image_id),
                                       os.path.join(tmp, f"{image_id}.nii.gz"), registry=self._registry())
            LocalDatastore.save_label(self, image_id, label, label_tag, self._dicom_info(label_id))
        return LocalDatastore.get_label_uri(self, image_id, label_tag)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any],
                   label_id: str = "") -> str:
        """Save a label; a final label also goes to the PACS as a DICOM SEG of its series."""
        image_uri = self.get_image_uri(image_id)
        converted = ""
        if "".join(pathlib.Path(label_filename).suffixes) == ".bin":  # OHIF sends raw voxels
            converted = label_filename = binary_to_image(image_uri, label_filename)
        if label_tag == DefaultLabelTag.FINAL:
            image_dir = os.path.join(self._datastore.image_path(), image_id)
            seg_file = label_to_seg(image_dir, label_filename, registry=self._registry())
            seg_series = dicom_web_upload_dcm(seg_file, self._client)
            os.unlink(seg_file)
            if not seg_series:
                raise RuntimeError(f"the PACS did not store the SEG of image {image_id}")
            info = self.get_image_info(image_id)
            label_info = {**label_info, "SeriesInstanceUID": seg_series, "Modality": "SEG",
                          "PatientID": info.get("PatientID"), "StudyInstanceUID": info.get("StudyInstanceUID")}
            logger.info(f"label of {image_id} stored in the PACS as SEG series {seg_series}")
        label_id = LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
        if converted:
            os.unlink(converted)
        return label_id
