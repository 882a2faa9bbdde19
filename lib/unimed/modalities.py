"""Which imaging modality each input channel holds: the names the network embeds.

The backbone embeds every input channel with the same kernel, then tells the channels apart by
a learned embedding of their modality (:class:`unimed.networks.backbone.Backbone`), so that
"bright on T1c" and "bright on FLAIR" are different evidence. A channel whose modality is not
known is ``unknown``; the network is trained with modalities hidden that way, so it still
answers, with less to go on.

Modalities reach the network on the image itself: :func:`tag_modalities` writes them into a
MONAI ``MetaTensor``'s metadata (readers, the command line and the server's infer task do), and
:func:`image_modalities` reads them back.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["MODALITIES", "UNKNOWN", "UnknownModalityError", "parse_modality", "parse_modalities",
           "modalities_from_name", "tag_modalities", "image_modalities"]

#: the modality vocabulary of new checkpoints, in embedding-index order (a checkpoint keeps its own)
MODALITIES: tuple[str, ...] = ("unknown", "flair", "t1", "t1c", "t2", "ct", "mr", "red", "green", "blue", "grey")

UNKNOWN = "unknown"

#: other spellings, as file names and DICOM series descriptions write them
_ALIASES = {
    "t1ce": "t1c", "t1gd": "t1c", "t1post": "t1c", "t1+c": "t1c", "t1-c": "t1c", "t1w": "t1", "t2w": "t2",
    "t2flair": "flair", "t2-flair": "flair", "fl": "flair", "gray": "grey", "r": "red", "g": "green", "b": "blue",
    "": UNKNOWN, "none": UNKNOWN, "other": UNKNOWN,
}

#: metadata key of a MetaTensor's modalities
META_KEY = "unimed_modalities"


class UnknownModalityError(ValueError):
    """A modality name that is neither in :data:`MODALITIES` nor an alias of one."""


def parse_modality(name: str, known: Sequence[str] = MODALITIES) -> str:
    """The canonical name of a modality (case and common spellings forgiven).

    Raises:
        UnknownModalityError: the name is not a known modality.

    Example:
        >>> parse_modality("T1ce"), parse_modality("FLAIR")
        ('t1c', 'flair')
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in known:
        raise UnknownModalityError(f"unknown modality {name!r}; known: {', '.join(known)}")
    return key


def parse_modalities(value: str | Sequence[str] | None, channels: int | None = None) -> tuple[str, ...] | None:
    """Modalities from a comma-separated string or a list; None stays None (unknown).

    Raises:
        UnknownModalityError: a name is not a known modality.
        ValueError: ``channels`` is given and the count differs.

    Example:
        >>> parse_modalities("flair, t1ce", channels=2)
        ('flair', 't1c')
    """
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else list(value)
    parsed = tuple(parse_modality(str(n)) for n in names)
    if channels is not None and len(parsed) != channels:
        raise ValueError(f"{len(parsed)} modalities given for an image of {channels} channels")
    return parsed


_TOKEN = re.compile(r"[^a-z0-9+]+")


def modalities_from_name(path: str | Path, channels: int) -> tuple[str, ...] | None:
    """Guess a single-channel image's modality from its file name (``BraTS_00001_flair.nii.gz``,
    ``T1c_subtrMeanDivStd.nii``), and an RGB picture's from its suffix; None when the name says
    nothing.

    Example:
        >>> modalities_from_name("case/BraTS2021_00001_flair.nii.gz", 1)
        ('flair',)
        >>> modalities_from_name("smear.jpg", 3)
        ('red', 'green', 'blue')
        >>> modalities_from_name("scan.nii.gz", 1) is None
        True
    """
    name = Path(str(path)).name.lower()
    if channels == 3 and name.endswith((".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")):
        return ("red", "green", "blue")
    if channels != 1:
        return None
    stem = re.sub(r"\.(nii\.gz|nii|nrrd|mha|mhd|jpg|jpeg|png|tif|tiff|bmp)$", "", name)
    found = set()
    for token in _TOKEN.split(stem):
        for part in (token, re.sub(r"\d+$", "", token) if token not in ("t1", "t2") else token):
            key = _ALIASES.get(part, part)
            if key in MODALITIES and key != UNKNOWN and part:
                found.add(key)
    return (found.pop(),) if len(found) == 1 else None


def tag_modalities(image: torch.Tensor, modalities: Sequence[str] | None) -> torch.Tensor:
    """The image as a MetaTensor whose metadata names each channel's modality (None: unknown).

    Raises:
        ValueError: the count differs from the image's channels.
    """
    from monai.data import MetaTensor

    if modalities is not None and len(modalities) != image.shape[0]:
        raise ValueError(f"{len(modalities)} modalities given for an image of {image.shape[0]} channels")
    out = image if isinstance(image, MetaTensor) else MetaTensor(image)
    out.meta[META_KEY] = None if modalities is None else tuple(modalities)
    return out


def image_modalities(image: torch.Tensor) -> tuple[str, ...] | None:
    """The modalities :func:`tag_modalities` put on an image, or None."""
    meta = getattr(image, "meta", None)
    value = meta.get(META_KEY) if isinstance(meta, dict) else None
    return tuple(value) if value is not None else None
