"""The examples in the library's docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "unimed.tasks", "unimed.labels", "unimed.tokens", "unimed.networks.layers", "unimed.networks.backbone",
    "unimed.networks.pixel_decoder", "unimed.networks.decoder", "unimed.networks.unimed", "unimed.composer",
    "unimed.transforms", "unimed.checkpoint", "unimed.predictor", "unimed.service", "unimed.uncertainty",
    "unimed.selection", "unimed.dicom.series", "unimed.dicom.seg", "unimed.dicom.dicomweb",
    "unimed.benchmarks.machine", "unimed.benchmarks.timing", "unimed.benchmarks.report", "unimed.benchmarks.stock",
    "unimed.child_process", "trainers.ssl", "trainers.active_learning", "trainers.train_request",
    "unimed.tasks.spec", "unimed.tasks.segmentation", "unimed.tasks.classification", "unimed.boxes",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
