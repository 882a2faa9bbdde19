"""The real MONAI Label server with the UniMed app, driven through MONAILabelClient
(the class the 3D Slicer plugin calls), on a copy of the shipped sample datastore."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from unimed.server_process import ServerProcess, ServerStartError

pytestmark = pytest.mark.slow


def infer(client: MONAILabelClient, model: str, image: str, params: dict, **kwargs):
    """``client.infer``, with the JSON decoded where the server sent no file (the client then
    hands back the raw body, as it does for MONAI Label's stock classification models)."""
    out, result = client.infer(model, image, params, **kwargs)
    return out, result if isinstance(result, dict) else json.loads(result)


@pytest.fixture(scope="module")
def server(repo, sample, tmp_path_factory):
    studies = tmp_path_factory.mktemp("datastore")
    shutil.copytree(sample, studies, dirs_exist_ok=True)
    model_dir = tmp_path_factory.mktemp("model")  # training in these tests must not touch the shipped model
    shipped = repo / "apps" / "unimed" / "model" / "unimed.pt"
    if shipped.exists():
        shutil.copy(shipped, model_dir / "unimed.pt")
    proc = ServerProcess(app_dir=repo / "apps" / "unimed", studies=studies, model_path=model_dir / "unimed.pt",
                         log_path=tmp_path_factory.mktemp("log") / "server.log")
    try:
        proc.start()
    except ServerStartError as exc:
        pytest.fail(str(exc))
    yield {"url": proc.url, "studies": studies, "model_dir": model_dir,
           "client": MONAILabelClient(proc.url, tmpdir=str(studies.parent))}
    proc.stop()


def test_info_lists_the_four_models(server):
    info = server["client"].info()
    models = info["models"]
    assert {"unimed": "others", "unimed_seg": "segmentation", "unimed_det": "detection",
            "unimed_cls": "classification"} == {k: v["type"] for k, v in models.items()}
    assert models["unimed_seg"]["labels"]["edema"] == 2
    assert "red_blood_cell" in models["unimed_det"]["labels"]
    assert "adrenal_hyperplasia" in models["unimed_cls"]["labels"]
    assert "edema" not in models["unimed_cls"]["labels"]
    assert set(info["unimed"]) >= {"checkpoint", "trained", "version"}


def test_datastore_lists_the_sample_images(server):
    objects = server["client"].datastore()["objects"]
    assert {"brats_pat0001_flair", "bccd_BloodImage_00000", "lung_patch_000", "adrenal_val_000"} <= set(objects)


@pytest.mark.parametrize("image", ["brats_pat0001_flair", "lung_patch_000"])
def test_segmentation_label_has_the_images_shape_and_affine(server, image):
    label, params = infer(server["client"], "unimed_seg", image, {})
    assert params["task"] == "segmentation"
    src = nib.load(server["studies"] / f"{image}.nii.gz")
    out = nib.load(label)
    assert out.shape == src.shape
    assert np.allclose(out.affine, src.affine)
    values = set(np.unique(np.asarray(out.dataobj)).tolist())
    assert values <= {0} | set(params["label_names"].values())


def test_generic_model_takes_the_task_from_params(server):
    _, params = infer(server["client"], "unimed", "bccd_BloodImage_00000", {"task": "detection",
                                                                          "labels": ["rbc", "wbc", "platelet"]})
    assert params["task"] == "detection"
    assert len(params["box"]) == len(params["label"]) == len(params["score"])
    assert set(params["label"]) <= {"red_blood_cell", "white_blood_cell", "platelet"}
    assert all(len(b) == 6 for b in params["box"])


def test_detection_returns_boxes_and_a_slicer_markup(server):
    markup, params = infer(server["client"], "unimed_det", "brats_pat0001_flair", {})
    assert params["box_format"] == "cccwhd" and params["coordinate_system"] == "LPS"
    assert len(params["box"]) == len(params["label"]) == len(params["score"])
    doc = json.loads(Path(markup).read_text())
    assert len(doc["markups"]) == len(params["box"])
    assert all(m["type"] == "ROI" and len(m["center"]) == 3 for m in doc["markups"])


def test_classification_format(server):
    _, params = infer(server["client"], "unimed_cls", "adrenal_val_001", {})
    preds = params["prediction"]
    assert {p["label"] for p in preds} == {"brain_tumor", "lung_tumor", "adrenal_hyperplasia", "adrenal_normal"}
    assert all(set(p) == {"idx", "label", "score"} and 0 <= p["score"] <= 1 for p in preds)


@pytest.mark.parametrize(
    "model, image, params, status, message",
    [
        ("unimed", "lung_patch_000", {"task": "banana"}, 400, "unknown task 'banana'"),
        ("unimed_seg", "lung_patch_000", {"labels": ["kidney_stone"]}, 400, "unknown label 'kidney_stone'"),
        ("unimed_cls", "lung_patch_000", {"labels": ["edema"]}, 400, "not available for classification"),
        ("unimed_seg", "lung_patch_000", {"task": "detection"}, 400, "serves segmentation only"),
        ("unimed_seg", "lung_patch_000", {"labels": 7}, 400, "'labels' must be"),
        ("unimed_seg", "no_such_image", {}, 404, "'no_such_image' is not in the datastore"),
        ("no_such_model", "lung_patch_000", {}, 404, "unknown model 'no_such_model'"),
    ],
)
def test_bad_requests_get_a_4xx_that_names_the_problem(server, model, image, params, status, message):
    with pytest.raises(MONAILabelClientException) as err:
        infer(server["client"], model, image, params)
    assert f"Status: {status}" in err.value.msg
    assert message in err.value.msg
    assert server["client"].info()["name"] == "UniMed"  # still serving


def test_unreadable_upload_gets_422(server, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    with pytest.raises(MONAILabelClientException) as err:
        infer(server["client"], "unimed_seg", "", {}, file=str(bad))
    assert "Status: 422" in err.value.msg and "cannot read" in err.value.msg


def test_training_through_the_rest_api_publishes_a_version_that_infer_then_serves(server):
    client = server["client"]
    before = client.info()["unimed"]["version"]
    client.train_start("unimed", {"max_epochs": 1, "max_minutes": 5})
    deadline = time.time() + 600
    while True:
        status = client.train_status()
        if status.get("status") in ("DONE", "ERROR") or time.time() > deadline:
            break
        time.sleep(2)
    details = "\n".join(status.get("details", []))
    assert status["status"] == "DONE", details[-3000:]
    assert "epoch 1/1 step 2/2 loss" in details and "eta" in details  # two labelled images, one epoch
    after = client.info()["unimed"]["version"]
    assert after == (before or 0) + 1
    assert (server["model_dir"] / "versions" / f"v{after:04d}.pt").exists()
    _, params = infer(client, "unimed_cls", "adrenal_val_000", {})
    assert params["model_version"] == after
