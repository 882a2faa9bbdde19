"""UniMed: one universal medical imaging network for segmentation, detection and classification."""

__version__ = "0.1.0"
