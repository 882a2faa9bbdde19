"""Dataset readers: each turns one on-disk format into a list of :class:`Sample`.

Every reader validates its input and raises :class:`DatasetError` (a ``ValueError``) naming
the path and what is wrong. :func:`read_dataset` picks a reader by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from unimed.datasets.brats import read_brats
from unimed.datasets.datastore import read_datastore
from unimed.datasets.errors import DatasetError
from unimed.datasets.medmnist import read_medmnist
from unimed.datasets.msd_patches import read_msd_patches
from unimed.datasets.sample import Sample
from unimed.datasets.voc import read_voc

__all__ = [
    "DatasetError",
    "Sample",
    "READERS",
    "read_dataset",
    "read_brats",
    "read_medmnist",
    "read_voc",
    "read_msd_patches",
    "read_datastore",
]


def _datastore_labelled(path: str | Path, split: str | None = None) -> list[Sample]:
    return read_datastore(path)[0]


def _split_or_default(reader: Callable[..., list[Sample]], default: str) -> Callable[..., list[Sample]]:
    def read(path: str | Path, split: str | None = None) -> list[Sample]:
        return reader(path, split or default)

    return read


#: dataset kind -> ``reader(path, split)``; a ``None`` split means the reader's default
READERS: dict[str, Callable[..., list[Sample]]] = {
    "brats": read_brats,
    "medmnist": _split_or_default(read_medmnist, "train"),
    "voc": _split_or_default(read_voc, "train"),
    "msd_patches": read_msd_patches,
    "datastore": _datastore_labelled,
}


def read_dataset(kind: str, path: str | Path, split: str | None = None) -> list[Sample]:
    """Read a dataset of ``kind`` (``brats``, ``medmnist``, ``voc``, ``msd_patches`` or
    ``datastore``).

    ``split`` is passed to the reader: ``None`` is every case for BraTS and the MSD patches
    and ``"train"`` for MedMNIST and VOC. A datastore ignores it and gives its labelled samples.

    Raises:
        ValueError: an unknown kind (the known kinds are listed).
        DatasetError: the reader's errors.

    Example:
        >>> read_dataset("mnist", "/data")
        Traceback (most recent call last):
        ...
        ValueError: unknown dataset kind 'mnist'; known kinds: brats, medmnist, voc, msd_patches, datastore
    """
    if kind not in READERS:
        raise ValueError(f"unknown dataset kind {kind!r}; known kinds: {', '.join(READERS)}")
    return READERS[kind](path, split)
