"""Answer files that need no server: a label map as NIfTI or NRRD, or a DICOM SEG.

Each writes to a new temporary file with the image's own geometry and returns its path. The
Slicer ROI markup of a detection needs MONAI Label, so the infer task writes it.
"""

from __future__ import annotations

import tempfile

import nibabel as nib
import numpy as np

from unimed.dicom.series import dicom_source_of
from unimed.predictor import Prediction

__all__ = ["LABEL_EXTENSIONS", "OutputFormatError", "check_label_extension", "write_label_map", "write_dicom_seg"]

#: label-map file types a request can ask for with ``result_extension`` (OHIF asks for NRRD)
LABEL_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")


class OutputFormatError(ValueError):
    """An answer that cannot be written as asked (the message says why)."""


def check_label_extension(extension: str) -> None:
    """Raise :class:`OutputFormatError` unless ``extension`` is one of :data:`LABEL_EXTENSIONS`."""
    if extension not in LABEL_EXTENSIONS:
        raise OutputFormatError(f"'result_extension' must be one of {', '.join(LABEL_EXTENSIONS)}, got {extension!r}")


def write_label_map(pred: Prediction, extension: str = ".nii.gz") -> str:
    """Write the segmentation with exactly the image's shape and affine, as NIfTI or NRRD.

    Raises:
        OutputFormatError: an extension other than :data:`LABEL_EXTENSIONS`.
    """
    check_label_extension(extension)
    path = tempfile.NamedTemporaryFile(suffix=extension, delete=False).name
    if extension == ".nrrd":
        import SimpleITK as sitk

        from unimed.dicom.series import LPS

        lps = LPS @ pred.spec.affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        label = sitk.GetImageFromArray(np.ascontiguousarray(pred.label_map().reshape(pred.spec.shape).transpose(2, 1, 0)))
        label.SetSpacing(spacing.tolist())
        label.SetOrigin(lps[:3, 3].tolist())
        label.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
        sitk.WriteImage(label, path, useCompression=False)
        return path
    img = nib.Nifti1Image(pred.label_map(), pred.spec.affine)
    img.set_qform(pred.spec.affine, code=1)
    img.set_sform(pred.spec.affine, code=1)
    nib.save(img, path)
    return path


def write_dicom_seg(pred: Prediction, image_path: str) -> str:
    """Write the segmentation as a DICOM SEG of the series the image at ``image_path`` came from.

    Raises:
        OutputFormatError: the image did not come from DICOM.
    """
    from unimed.dicom.seg import write_seg

    source = dicom_source_of(image_path)
    if source is None:
        raise OutputFormatError("output 'dicom_seg' needs an image that came from DICOM (a series folder, or a series "
                                "of a DICOMweb datastore)")
    path = tempfile.NamedTemporaryFile(suffix=".dcm", delete=False).name
    write_seg(pred.label_map(), pred.spec.affine, source, path, labels=pred.labels)
    return path
