"""Dataset kinds: each turns one on-disk format into a list of :class:`Sample` and scores a
predictor on it.

Every kind is one :class:`DatasetSpec` (reader, evaluator, primary metric, splits, training
share), defined in its own module and registered in :data:`DATASETS` below: evaluation,
pretraining, al-sim, the benchmarks and the command line all read the registry. Every reader
validates its input and raises :class:`DatasetError` (a ``ValueError``) naming the path and
what is wrong. See ``docs/adding_a_dataset.md`` to add a kind.
"""

from __future__ import annotations

from pathlib import Path

from unimed.datasets import brats, datastore, medmnist, msd_patches, voc
from unimed.datasets.brats import read_brats
from unimed.datasets.datastore import read_datastore
from unimed.datasets.errors import DatasetError
from unimed.datasets.medmnist import read_medmnist
from unimed.datasets.msd_patches import read_msd_patches
from unimed.datasets.sample import Sample
from unimed.datasets.spec import DatasetSpec, Predicts, TrainingShare
from unimed.datasets.voc import read_voc

__all__ = [
    "DatasetError",
    "DatasetSpec",
    "Predicts",
    "Sample",
    "TrainingShare",
    "DATASETS",
    "register",
    "dataset_spec",
    "shared_datasets",
    "read_dataset",
    "read_brats",
    "read_medmnist",
    "read_voc",
    "read_msd_patches",
    "read_datastore",
]

#: dataset kind -> its spec, in registration order (the order of pretraining's mix and validation)
DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset kind to :data:`DATASETS`.

    Raises:
        ValueError: the kind is registered already.
    """
    if spec.kind in DATASETS:
        raise ValueError(f"dataset kind {spec.kind!r} is registered already")
    DATASETS[spec.kind] = spec
    return spec


register(brats.SPEC)
register(medmnist.SPEC)
register(voc.SPEC)
register(msd_patches.SPEC)
register(datastore.SPEC)


def dataset_spec(kind: str) -> DatasetSpec:
    """The registered spec of ``kind``.

    Raises:
        ValueError: an unknown kind (the known kinds are listed).

    Example:
        >>> dataset_spec("voc").primary_metric
        'map50'
        >>> dataset_spec("mnist")
        Traceback (most recent call last):
        ...
        ValueError: unknown dataset kind 'mnist'; known kinds: brats, medmnist, voc, msd_patches, datastore
    """
    if kind not in DATASETS:
        raise ValueError(f"unknown dataset kind {kind!r}; known kinds: {', '.join(DATASETS)}")
    return DATASETS[kind]


def shared_datasets() -> dict[str, DatasetSpec]:
    """The specs with a folder in a data folder laid out like ``../shared/data``, in registration
    order: pretraining trains and validates on them, al-sim and the accuracy benchmark take them.

    Example:
        >>> list(shared_datasets())
        ['brats', 'medmnist', 'voc', 'msd_patches']
    """
    return {kind: spec for kind, spec in DATASETS.items() if spec.folder is not None}


def read_dataset(kind: str, path: str | Path, split: str | None = None) -> list[Sample]:
    """Read a dataset of a registered ``kind`` (``brats``, ``medmnist``, ``voc``, ``msd_patches``,
    ``datastore``...).

    ``split`` is passed to the kind's reader; ``None`` is the spec's ``default_split``: every case
    for BraTS and the MSD patches, ``"train"`` for MedMNIST and VOC. A datastore has no splits and
    gives its labelled samples.

    Raises:
        ValueError: an unknown kind (the known kinds are listed).
        DatasetError: the reader's errors, among them an unknown split.

    Example:
        >>> read_dataset("mnist", "/data")
        Traceback (most recent call last):
        ...
        ValueError: unknown dataset kind 'mnist'; known kinds: brats, medmnist, voc, msd_patches, datastore
    """
    return dataset_spec(kind).read(path, split)
