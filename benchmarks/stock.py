"""MONAI Label's stock radiology ``segmentation`` model, rebuilt for comparison.

The settings are those of the radiology sample app that ships with ``monailabel`` 0.8
(``sample-apps/radiology/lib/configs/segmentation.py`` and ``lib/infers/segmentation.py``):
a SegResNet (``init_filters=32``, ``blocks_down=(1, 2, 2, 4)``, ``blocks_up=(1, 1, 1)``,
``dropout_prob=0.2``) on images reoriented to RAS, resampled to 1.5 mm, normalised over the
non-zero voxels, smoothed (sigma 0.4) and scaled to [-1, 1]; a sliding window of 96^3 with
overlap 0.4, two windows per batch, Gaussian blending and replicate padding; softmax, argmax,
and the label map restored to the image's own grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["StockSegmentationConfig", "StockSegmentation"]


@dataclass(frozen=True)
class StockSegmentationConfig:
    """The stock pipeline's settings (defaults: MONAI Label's radiology ``segmentation``).

    Attributes:
        in_channels: image channels (1 in the stock app).
        out_channels: labels plus background (the stock app's 25 organs: 26; BraTS' four
            tumour labels: 5).
        target_spacing: resampling spacing in mm.
        roi_size: sliding-window size per axis.
        sw_batch_size: windows per forward pass.
        overlap: sliding-window overlap.
        init_filters: SegResNet's first width.
    """

    in_channels: int = 1
    out_channels: int = 5
    target_spacing: float = 1.5
    roi_size: int = 96
    sw_batch_size: int = 2
    overlap: float = 0.4
    init_filters: int = 32

    def __post_init__(self) -> None:
        if self.roi_size % 8:
            raise ValueError(f"roi_size must be a multiple of 8 (SegResNet downsamples 3 times), got {self.roi_size}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.target_spacing <= 0:
            raise ValueError(f"target_spacing must be positive, got {self.target_spacing}")


class StockSegmentation:
    """The stock pre-processing, SegResNet, sliding-window inferer and restoration.

    Args:
        config: the settings.
        network: a trained network; an untrained stock SegResNet when None (timing needs no weights).

    Example:
        >>> seg = StockSegmentation(StockSegmentationConfig(roi_size=16, init_filters=8))
        >>> seg.predict(torch.rand(1, 20, 20, 12)).shape
        (20, 20, 12)
    """

    def __init__(self, config: StockSegmentationConfig | None = None, *, network: torch.nn.Module | None = None):
        self.config = config or StockSegmentationConfig()
        self.network = (network or self.build_network(self.config)).eval()
        self._geometry = self.geometry()  # one instance: inverting needs the forward's transforms

    @staticmethod
    def build_network(config: StockSegmentationConfig) -> torch.nn.Module:
        """The stock app's SegResNet with ``config``'s channels."""
        from monai.networks.nets import SegResNet

        return SegResNet(
            spatial_dims=3,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            init_filters=config.init_filters,
            blocks_down=(1, 2, 2, 4),
            blocks_up=(1, 1, 1),
            dropout_prob=0.2,
        )

    def geometry(self) -> Any:
        """The invertible half of the pre-processing: reorientation and resampling."""
        from monai.transforms import Compose, Orientation, Spacing

        return Compose([Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))), Spacing(pixdim=(self.config.target_spacing,) * 3)])

    @staticmethod
    def intensity() -> Any:
        """The intensity half of the pre-processing."""
        from monai.transforms import Compose, GaussianSmooth, NormalizeIntensity, ScaleIntensity

        return Compose([NormalizeIntensity(nonzero=True), GaussianSmooth(sigma=0.4), ScaleIntensity(minv=-1.0, maxv=1.0)])

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Channel-first image (a MetaTensor's affine gives its spacing) -> the network's input grid,
        a MetaTensor that remembers the geometry transforms for :meth:`restore`."""
        from monai.data import MetaTensor

        if not isinstance(image, MetaTensor):
            image = MetaTensor(torch.as_tensor(image))
        x = self._geometry(image.float())
        return self.intensity()(x)

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Sliding-window logits ``(out_channels, ...)`` of a pre-processed image."""
        from monai.inferers import SlidingWindowInferer

        c = self.config
        inferer = SlidingWindowInferer(roi_size=(c.roi_size,) * 3, sw_batch_size=c.sw_batch_size, overlap=c.overlap,
                                       padding_mode="replicate", mode="gaussian")
        return inferer(x.as_tensor()[None] if hasattr(x, "as_tensor") else x[None], self.network)[0]

    def restore(self, probabilities: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
        """Map class probabilities on the network grid back to the image grid; argmax there."""
        from monai.data import MetaTensor

        out = MetaTensor(probabilities, affine=reference.affine, applied_operations=list(reference.applied_operations))
        back = self._geometry.inverse(out)
        return back.argmax(0).numpy().astype(np.uint8)

    def predict(self, image: torch.Tensor) -> np.ndarray:
        """Label map (class indices, 0 background) of a channel-first image, in its own grid."""
        x = self.preprocess(image)
        probs = torch.softmax(self.logits(x).float(), dim=0)
        return self.restore(probs, x)
