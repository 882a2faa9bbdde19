"""A label checked against its image before the datastore keeps it.

Training reads a final label with :func:`unimed.datasets.datastore.read_label` and drops one
it cannot use; checking the same rules at save turns that silent loss into a 422 the
annotator sees: one channel, the image's number of axes (a 3D label on a 2D image is
refused) and spatial shape, integer values that are label ids of the served checkpoint's
registry (0 is background) or segments the viewer named (:mod:`lib.datastore.segments`),
and for a 3D image the same voxel-to-world affine (within 0.01 mm and 1e-4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from lib.datastore.errors import DatastoreRequestError
from lib.datastore.segments import Segment, segments_present
from lib.safe_text import scrub_paths
from unimed.datasets.datastore import check_label_map
from unimed.datasets.errors import DatasetError
from unimed.labels import LabelRegistry
from unimed.transforms import ImageLoadError, image_affine, load_image

__all__ = ["check_label", "check_image"]

AFFINE_ATOL_MM = 0.01
AFFINE_RTOL = 1e-4


def check_image(path: str | Path, what: str = "the uploaded image"):
    """The image at ``path`` read as training reads it.

    Raises:
        DatastoreRequestError: 422 when it cannot be read; the message names no server path.
    """
    try:
        return load_image(path)
    except ImageLoadError as exc:
        raise DatastoreRequestError(422, f"{what} is not a readable image: {scrub_paths(str(exc))}") from None


def check_label(label_path: str | Path, image_path: str | Path, registry: LabelRegistry,
                segments: Sequence[Segment] = ()) -> list[Segment]:
    """The segments present in the label file, once it fits its image.

    Args:
        label_path: the uploaded label file.
        image_path: the image it labels.
        registry: the served checkpoint's label space.
        segments: the segments the viewer named (:func:`~lib.datastore.segments.parse_label_info`);
            a value without one must be a label id of ``registry``.

    Raises:
        DatastoreRequestError: 422 naming what does not fit.

    Example:
        >>> [s.name for s in check_label("upload.nii.gz", "case.nii.gz", LabelRegistry())]  # doctest: +SKIP
        ['edema']
    """
    label = check_image(label_path, "the label")
    image = check_image(image_path, "the image this label is for")
    if label.shape[0] != 1:
        raise DatastoreRequestError(422, f"a label map has one channel, this one has {label.shape[0]}")
    spatial = tuple(int(n) for n in image.shape[1:])
    values = np.asarray(label[0].detach().cpu().numpy())
    try:
        check_label_map(values, spatial, registry, named=range(1, 256))  # axes, shape, integers: values below
    except DatasetError as exc:
        raise DatastoreRequestError(422, f"the label does not fit its image: {exc}") from None
    present = segments_present(values, segments, registry)
    if len(spatial) == 3:
        label_affine, image_affine_ = image_affine(label), image_affine(image)
        if not np.allclose(label_affine, image_affine_, rtol=AFFINE_RTOL, atol=AFFINE_ATOL_MM):
            raise DatastoreRequestError(
                422, "the label's voxel-to-world affine differs from the image's (spacing, origin or orientation): "
                     f"label {np.round(label_affine[:3], 3).tolist()}, image {np.round(image_affine_[:3], 3).tolist()}")
    return present
