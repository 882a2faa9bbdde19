"""One annotated (or unannotated) image, whatever dataset it came from.

Every reader turns its format into :class:`Sample`: the image channel-first in its own voxel
grid, and its annotations expressed in the shared label space, so that one trainer and one
evaluator serve every dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Sample"]


@dataclass
class Sample:
    """An image and whatever annotations it has.

    Attributes:
        image: ``(C, X, Y)`` or ``(C, X, Y, Z)`` float or integer tensor, MONAI's axis order
            (X = columns of a 2D picture, Y = rows).
        affine: 4x4 voxel-to-world matrix (RAS); identity where the format has none.
        dataset: the reader's name (``brats``, ``medmnist``, ``voc``, ``msd_patches``, ``datastore``).
        name: the case's id inside its dataset.
        label_map: ``(X, Y[, Z])`` integer map of registry label ids (0 background), or None.
        seg_labels: registry names that ``label_map`` annotates completely (a label listed
            here and absent from the map is a true negative).
        boxes: ``(N, 6)`` float boxes ``[x0, y0, z0, x1, y1, z1]`` normalised to the image
            extent (edges: 0 is the outer edge of the first voxel, 1 of the last); a 2D image
            has ``z0 = 0, z1 = 1``. None when the sample has no box annotation.
        box_labels: registry name of each box.
        det_labels: registry names the boxes annotate completely.
        class_labels: image-level labels, ``{registry name: 0 or 1}``, or None.
        modalities: each channel's modality (:mod:`unimed.modalities`), or None when unknown.
    """

    image: torch.Tensor
    affine: np.ndarray
    dataset: str
    name: str
    label_map: np.ndarray | None = None
    seg_labels: tuple[str, ...] = ()
    boxes: np.ndarray | None = None
    box_labels: list[str] = field(default_factory=list)
    det_labels: tuple[str, ...] = ()
    class_labels: dict[str, int] | None = None
    modalities: tuple[str, ...] | None = None

    @property
    def is_labelled(self) -> bool:
        return self.label_map is not None or self.boxes is not None or self.class_labels is not None

    def meta_image(self) -> torch.Tensor:
        """The image as a MONAI MetaTensor carrying ``affine``, so the model grid sees the spacing,
        and the channels' modalities."""
        from monai.data import MetaTensor

        from unimed.modalities import tag_modalities

        raw = self.image.as_tensor() if isinstance(self.image, MetaTensor) else torch.as_tensor(self.image)
        return tag_modalities(MetaTensor(raw, affine=torch.as_tensor(np.asarray(self.affine, dtype=np.float64))),
                              self.modalities)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])
