"""The examples in the docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "unimed.task_names", "unimed.labels", "unimed.vocabulary", "unimed.tokens", "unimed.networks.layers", "unimed.networks.backbone",
    "unimed.networks.pixel_decoder", "unimed.networks.decoder", "unimed.networks.unimednet", "unimed.composer",
    "unimed.transforms", "unimed.checkpoint", "unimed.predictor", "unimed.service", "unimed.uncertainty",
    "unimed.selection", "unimed.dicom.series", "unimed.dicom.seg", "unimed.writers",
    "unimed.tasks.spec", "unimed.tasks.segmentation", "unimed.tasks.classification", "unimed.boxes",
    "benchmarks.machine", "benchmarks.timing", "benchmarks.report", "benchmarks.stock",
    "servers.child_process", "servers.users", "servers.auth_realm", "trainers.ssl", "benchmarks.al_simulation",
    "trainers.train_request", "unimed.datasets.datastore", "unimed.clicks", "unimed.interactive_evaluation", "unimed.figures",
    "trainers.pretrain", "trainers.model_card",
]

#: modules of the MONAI Label app (its package ``lib``, importable with the app folder on the path)
APP_MODULES = ["lib.datastore.dicomweb", "lib.log_redaction", "lib.endpoints.cors", "lib.endpoints.routes",
               "lib.datastore.errors", "lib.datastore.names", "lib.datastore.files", "lib.datastore.local",
               "lib.safe_text", "lib.infers.image_access", "lib.endpoints.infer_route", "lib.infers.click_request",
               "lib.infers.interactive"]


def _check(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    _check(name)


@pytest.mark.parametrize("name", APP_MODULES)
def test_app_docstring_examples(name, app_lib):
    _check(name)
