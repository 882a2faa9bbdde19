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

pytestmark = pytest.mark.slow


def infer(client: MONAILabelClient, model: str, image: str, params: dict, **kwargs):
    """``client.infer``, with the JSON decoded where the server sent no file (the client then
    hands back the raw body, as it does for MONAI Label's stock classification models)."""
    out, result = client.infer(model, image, params, **kwargs)
    return out, result if isinstance(result, dict) else json.loads(result)


@pytest.fixture(scope="module")
def server(tmp_path_factory, start_sample_server):
    # scoring and label-triggered training are covered by test_active_learning; off here, so
    # that saving a label here queues no training run behind the ones these tests start
    with start_sample_server(tmp_path_factory, conf={"auto_train_labels": "0"},
                             env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}) as srv:
        yield srv


def test_info_lists_the_five_models(server):
    info = server["client"].info()
    models = info["models"]
    assert {"unimed": "others", "unimed_seg": "segmentation", "unimed_det": "detection",
            "unimed_cls": "classification", "unimed_interactive": "deepedit"} == {k: v["type"] for k, v in models.items()}
    assert models["unimed_interactive"]["clicks"] is info["unimed"]["clicks"] is True  # the shipped checkpoint takes clicks
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


def test_training_through_the_rest_api_publishes_a_version_that_infer_then_serves(server, finished_training):
    client = server["client"]
    before = client.info()["unimed"]["version"]
    details = finished_training(client, {"max_epochs": 1, "max_minutes": 5})
    assert "epoch 1/1 step 2/2 loss" in details and "eta" in details  # two labelled images, one epoch
    after = client.info()["unimed"]["version"]
    assert after == (before or 0) + 1
    assert (server["model_dir"] / "versions" / f"v{after:04d}.pt").exists()
    _, params = infer(client, "unimed_cls", "adrenal_val_000", {})
    assert params["model_version"] == after


@pytest.mark.parametrize("model, body, status, message", [
    ("unimed", {"ssl_loss": "contrast"}, 422, "ssl_loss must be one of reconstruction, consistency, mean_teacher"),
    ("unimed", {"max_epochs": 0}, 422, "max_epochs must be >= 1, got 0"),
    ("unimed", {"unimed": {"max_epochs": 1}}, 422, "the body is flat"),
    ("unimed", {"epochs": 1}, 422, "unknown train parameter 'epochs'"),
    ("unimed_seg", {}, 404, "model 'unimed_seg' does not train; models that train: unimed"),
])
def test_a_bad_train_request_is_refused_before_it_is_queued(server, model, body, status, message):
    import requests

    def runs() -> int:
        res = requests.get(f"{server['url']}/train/", params={"all": "true"}, timeout=30)
        return len(res.json()) if res.status_code == 200 else 0  # 404: no run yet

    before = runs()
    res = requests.post(f"{server['url']}/train/{model}", json=body, timeout=30)
    assert res.status_code == status and message in res.json()["detail"], res.text
    assert runs() == before  # nothing was queued


# -- the other calls the 3D Slicer plugin makes ------------------------------------------------------
#: the parts of Slicer's markups-schema-v1.0.3 that an ROI file must meet (required "@schema" and
#: "markups"; each markup's "type" from the schema's enum; an ROI's "center" and "size" of 3 numbers and
#: "orientation" a 3x3 matrix of 9 numbers; LPS or RAS coordinates; control points as objects)
_NUMBERS = {"type": "array", "items": {"type": "number"}}
SLICER_ROI_SCHEMA = {
    "type": "object",
    "required": ["@schema", "markups"],
    "properties": {
        "@schema": {"type": "string", "pattern": "markups-schema-v1\\.0\\.[0-9]+\\.json"},
        "markups": {"type": "array", "items": {
            "type": "object",
            "required": ["type", "coordinateSystem", "center", "size", "orientation", "controlPoints"],
            "properties": {
                "type": {"enum": ["ROI"]},
                "coordinateSystem": {"enum": ["LPS", "RAS"]},
                "center": {**_NUMBERS, "minItems": 3, "maxItems": 3},
                "size": {**_NUMBERS, "minItems": 3, "maxItems": 3},
                "orientation": {**_NUMBERS, "minItems": 9, "maxItems": 9},
                "controlPoints": {"type": "array", "items": {"type": "object"}},
            },
        }},
    },
}


def test_detection_markup_is_a_valid_slicer_roi_file_of_the_boxes(server):
    import jsonschema

    markup, params = infer(server["client"], "unimed", "bccd_BloodImage_00000", {"task": "detection"})
    doc = json.loads(Path(markup).read_text())
    jsonschema.validate(doc, SLICER_ROI_SCHEMA)
    for node, box in zip(doc["markups"], params["box"]):
        assert np.allclose(node["center"], box[:3]) and np.allclose(node["size"], box[3:])
        assert np.allclose(np.abs(np.linalg.det(np.reshape(node["orientation"], (3, 3)))), 1.0)  # a rotation
    with pytest.raises(jsonschema.ValidationError):  # the check can fail
        jsonschema.validate({**doc, "markups": [{**doc["markups"][0], "size": [1, 2]}]} if doc["markups"]
                            else {"markups": []}, SLICER_ROI_SCHEMA)


@pytest.mark.parametrize("model, params", [
    ("unimed_seg", {"labels": ["edema", "enhancing_tumor"]}),
    ("unimed_det", {"labels": "edema"}),
    ("unimed_cls", {"labels": ["brain_tumor"]}),
])
def test_per_task_models_take_label_params(server, model, params):
    out, result = infer(server["client"], model, "brats_pat0001_flair", params)
    asked = params["labels"] if isinstance(params["labels"], list) else [params["labels"]]
    assert result["asked_labels"] == asked
    if model == "unimed_seg":
        values = set(np.unique(np.asarray(nib.load(out).dataobj)).tolist())
        assert values <= {0} | {result["label_names"][name] for name in asked}
    elif model == "unimed_det":
        assert set(result["label"]) <= set(asked)
    else:
        assert [p["label"] for p in result["prediction"]] == asked


def test_next_sample_upload_session_and_save_label(server, tmp_path):
    client = server["client"]
    sample = client.next_sample("random", {})
    assert sample["id"] in client.datastore()["objects"]
    # a volume the server does not have: uploaded, then inferred and labelled as Slicer does
    src = server["studies"] / "lung_patch_001.nii.gz"
    upload = tmp_path / "uploaded_patch.nii.gz"
    shutil.copy(src, upload)
    image_id = client.upload_image(str(upload), "uploaded_patch")["image"]
    assert image_id == "uploaded_patch" and "uploaded_patch" in client.datastore()["objects"]
    session = client.create_session(str(upload))["session_id"]
    label, _ = infer(client, "unimed_seg", "", {}, session_id=session)
    assert nib.load(label).shape == nib.load(src).shape
    saved = client.save_label("uploaded_patch", label, tag="final")
    assert saved["image"] == "uploaded_patch"
    stored = client.datastore()["objects"]["uploaded_patch"]["labels"]["final"]
    assert np.array_equal(np.asarray(nib.load(server["studies"] / "labels" / "final" / f"uploaded_patch{stored['ext']}").dataobj),
                          np.asarray(nib.load(label).dataobj))


def test_training_can_be_stopped(server):
    client = server["client"]
    client.train_start("unimed", {"max_epochs": 50, "max_minutes": 10})
    deadline = time.time() + 60
    while not client.train_status(check_if_running=True) and time.time() < deadline:
        time.sleep(0.5)  # the task is queued before it runs
    status = client.train_status()
    assert client.train_status(check_if_running=True), "\n".join(status.get("details", []))[-2000:]
    client.train_stop()
    deadline = time.time() + 120
    while client.train_status(check_if_running=True) and time.time() < deadline:
        time.sleep(1)
    assert not client.train_status(check_if_running=True)
    assert client.train_status()["status"] in ("STOPPED", "ERROR", "DONE")
