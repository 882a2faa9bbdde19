"""Writers of a segmentation answer: a label map file (NIfTI or NRRD) with exactly the image's
geometry, or a DICOM SEG of the series the image came from. Plain functions, no server.
"""

from __future__ import annotations

import tempfile

import nibabel as nib
import numpy as np

from unimed.predictor import Prediction

__all__ = ["OutputError", "LABEL_EXTENSIONS", "check_label_extension", "write_label_map", "write_dicom_seg"]


class OutputError(ValueError):
    """An answer that cannot be written as asked (the message says which and why)."""


#: label-map file types a request can ask for with ``result_extension`` (OHIF asks for NRRD)
LABEL_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")


def check_label_extension(extension: str) -> None:
    """Raise :class:`OutputError` unless ``extension`` is one of :data:`LABEL_EXTENSIONS`.

    Example:
        >>> check_label_extension(".png")
        Traceback (most recent call last):
        ...
        unimed.writers.OutputError: 'result_extension' must be one of .nii.gz, .nii, .nrrd, got '.png'
    """
    if extension not in LABEL_EXTENSIONS:
        raise OutputError(f"'result_extension' must be one of {', '.join(LABEL_EXTENSIONS)}, got {extension!r}")


def write_label_map(pred: Prediction, extension: str = ".nii.gz") -> str:
    """Write the segmentation with exactly the image's shape and affine, as NIfTI or NRRD, to a
    new temporary file, and return its path.

    Raises:
        OutputError: an extension other than :data:`LABEL_EXTENSIONS`.
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
    """Write the segmentation as a DICOM SEG of the series ``image_path`` came from (a series
    folder, or a series a DICOMweb datastore downloaded) to a new temporary file.

    Raises:
        OutputError: the image did not come from DICOM.
    """
    from unimed.dicom.seg import write_seg
    from unimed.dicom.series import dicom_source_of

    source = dicom_source_of(image_path)
    if source is None:
        raise OutputError("output 'dicom_seg' needs an image that came from DICOM (a series folder, or a series "
                          "of a DICOMweb datastore)")
    path = tempfile.NamedTemporaryFile(suffix=".dcm", delete=False).name
    write_seg(pred.label_map(), pred.spec.affine, source, path, labels=pred.labels)
    return path
