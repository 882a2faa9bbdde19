"""A clinician teaches UniMed a new structure from the viewer, end to end through MONAILabelClient
(the class the 3D Slicer plugin calls) on a real server: save labels of a new segment name,
train, see the label in ``/info``, infer it; a label the server cannot use is refused at save."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch
from monailabel.client.client import MONAILabelClientException

from unimed.checkpoint import save_checkpoint
from unimed.networks.unimednet import unimed_tiny

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHAPE = (32, 32, 16)
#: the segment as 3D Slicer sends it: its name, its value in the label file, its colour (0..1)
SPINAL_CORD = {"name": "Spinal cord", "idx": 1, "color": [1.0, 0.8, 0.0]}
OLD_LABELS = ["necrosis", "edema", "non_enhancing_tumor", "enhancing_tumor", "lung_tumor"]
#: requests of every task over old labels (as tests/test_teach.py asks them)
OLD_REQUESTS = [("segmentation", ["edema", "necrosis"]), ("detection", ["edema", "platelet"]),
                ("classification", ["lung_tumor", "adrenal_normal"])]


def _case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy volume with a bright cube (the structure, value 1 as Slicer numbers segments)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 0.1, SHAPE).astype(np.float32)
    mask = np.zeros(SHAPE, np.uint8)
    mask[8 + seed: 20 + seed, 10:22, 4:12] = 1
    image[mask > 0] += 3.0
    return image, mask


@pytest.fixture(scope="module")
def server(tmp_path_factory, start_server):
    studies = tmp_path_factory.mktemp("cubes")
    for i in range(3):
        nib.save(nib.Nifti1Image(_case(i)[0], np.eye(4)), studies / f"cube{i}.nii.gz")
    work = tmp_path_factory.mktemp("teach_server")
    torch.manual_seed(0)
    base = save_checkpoint(unimed_tiny(), work / "base.pt", {"version": 1})
    with start_server(studies, work, conf={"auto_train_labels": "0", "replay_data": "none"}, checkpoint=base,
                      env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}) as srv:
        yield {**srv, "studies": studies, "base": base, "work": work}


def _save(server, image_id: str, mask: np.ndarray, params: dict) -> dict:
    path = server["work"] / f"{image_id}_label.nii.gz"
    nib.save(nib.Nifti1Image(mask, np.eye(4)), path)
    return server["client"].save_label(image_id, str(path), tag="final", params=params)


def _label_entry(info: dict, name: str) -> dict:
    return next(lab for lab in info["unimed"]["labels"] if lab["name"] == name)


def test_saving_a_new_segment_name_keeps_the_label_as_pending(server):
    for i in (0, 1):
        saved = _save(server, f"cube{i}", _case(i)[1], {"label_info": [SPINAL_CORD]})
        assert saved["label"] == f"cube{i}"
    info = server["client"].info()
    assert info["unimed"]["pending_labels"] == [
        {"name": "spinal_cord", "display": "Spinal cord", "color": [255, 204, 0], "cases": 2}]
    assert "spinal_cord" not in info["models"]["unimed_seg"]["labels"]
    kept = np.asarray(nib.load(server["studies"] / "labels" / "final" / "cube0.nii.gz").dataobj)
    assert np.array_equal(kept, _case(0)[1])  # the file as sent


@pytest.mark.parametrize("params, values, message", [
    ({"label_info": [SPINAL_CORD]}, (1, 77), "label value 77 is not a registry label id"),
    ({}, (40,), "label value 40"),  # no segment names it: a label id is needed (40 is none)
    ({"label_info": [{"name": "platelet", "idx": 1}]}, (1,), "segmentation labels only"),
    ({"label_info": [{"name": "? !", "idx": 1}]}, (1,), "cannot become a label"),
    ({"label_info": {"name": "x"}}, (1,), "'label_info' must be a list of segments"),
])
def test_a_label_the_server_cannot_use_gets_a_4xx_with_the_reason(server, params, values, message):
    mask = np.zeros(SHAPE, np.uint8)
    for k, value in enumerate(values):
        mask[2 + 4 * k: 4 + 4 * k, 2:6, 2:6] = value
    with pytest.raises(MONAILabelClientException) as err:
        _save(server, "cube2", mask, params)
    msg = err.value.msg
    assert ("Status: 422" in msg or "Status: 400" in msg) and message in msg, msg
    assert "final" not in server["client"].datastore()["objects"]["cube2"].get("labels", {})  # nothing saved


def test_training_teaches_the_new_label_and_publishes_it(server, finished_training):
    client = server["client"]
    details = finished_training(client, {"max_minutes": 1, "teach_steps": 3, "token_steps": 3})
    assert "teach spinal_cord step 3/3 loss" in details and "eta" in details
    info = client.info()
    lab = _label_entry(info, "spinal_cord")
    assert (lab["id"], lab["taught"], lab["taught_cases"], lab["datastore_cases"]) == (12, True, 2, 2)
    assert lab["color"] == [255, 204, 0] and lab["display"] == "Spinal cord"
    assert info["unimed"]["pending_labels"] == [] and info["unimed"]["version"] == 2
    assert info["models"]["unimed_seg"]["labels"]["spinal_cord"] == 12
    assert _label_entry(info, "edema")["taught_cases"] == 0


def test_infer_with_the_new_label_returns_its_mask_name_and_colour(server):
    out, result = server["client"].infer("unimed_seg", "cube2", {"labels": "spinal_cord"})
    result = result if isinstance(result, dict) else json.loads(result)
    seg = nib.load(out)
    assert seg.shape == SHAPE and np.allclose(seg.affine, np.eye(4))
    values = np.asarray(seg.dataobj)
    assert set(np.unique(values).tolist()) <= {0, 12} and (values == 12).any()
    assert result["asked_labels"] == ["spinal_cord"] and result["label_names"]["spinal_cord"] == 12
    assert result["label_info"] == [
        {"name": "spinal_cord", "idx": 12, "display": "Spinal cord", "color": [255, 204, 0]}]


def _fresh_process(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'lib'}{os.pathsep}{REPO}"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_grown_checkpoint_loads_in_a_fresh_process_and_serves_what_the_server_serves(server):
    """The published checkpoint loads (``torch.load(weights_only=True)``) in a new process, holds
    the old labels as they were, and answers them exactly as the server does."""
    out, _ = server["client"].infer("unimed_seg", "cube2", {"labels": OLD_LABELS})
    served = np.asarray(nib.load(out).dataobj)
    published = server["model_dir"] / "unimed.pt"
    image = server["studies"] / "cube2.nii.gz"
    got = _fresh_process(f"""
import json
import numpy as np
from unimed.checkpoint import load_checkpoint
from unimed.modalities import modalities_from_name, tag_modalities
from unimed.predictor import Predictor
from unimed.transforms import load_image
grown, meta = load_checkpoint({str(published)!r})
base, _ = load_checkpoint({str(server["base"])!r})
image = load_image({str(image)!r}, keep_dtype=True)
image = tag_modalities(image, modalities_from_name({str(image)!r}, int(image.shape[0])))
seg = Predictor(grown).predict(image, "segmentation", {OLD_LABELS!r}).label_map()
np.save({str(server["work"] / "fresh.npy")!r}, np.asarray(seg))
def described(labels):
    return [(l.id, l.name, l.color, sorted(t.value for t in l.tasks)) for l in labels]
print(json.dumps({{"same_old_labels": described(list(grown.registry)[:11]) == described(base.registry),
                  "names": grown.registry.names, "version": meta["version"],
                  "taught": meta["taught_labels"]["spinal_cord"]["cases"]}}))
""")
    assert got["same_old_labels"] and got["names"][-1] == "spinal_cord" and got["version"] == 2
    assert got["taught"] == ["cube0", "cube1"]
    fresh = np.load(server["work"] / "fresh.npy")
    assert fresh.shape == served.shape and np.array_equal(fresh, served)


def test_a_token_only_teach_leaves_every_old_output_bit_identical(server, finished_training):
    """``teach_steps: 0`` grows the label space and starts the token, without fine-tuning: in a
    fresh process, the new version answers every label it had (spinal_cord too) bit for bit as
    the version it grew from. (A run with fine-tuning moves the old outputs a little; replay
    keeps them close.)"""
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:10, 4:10, 2:6] = 3  # a Slicer segment numbered 3
    _save(server, "cube2", mask, {"label_info": [{"name": "Kidney", "idx": 3}]})
    details = finished_training(server["client"], {"max_minutes": 1, "teach_steps": 0, "token_steps": 2})
    assert "teaching new label kidney (1/1) from 1 case(s), 0 steps" in details
    info = server["client"].info()
    assert info["unimed"]["version"] == 3 and _label_entry(info, "kidney")["taught_cases"] == 1
    assert _label_entry(info, "spinal_cord")["taught_cases"] == 2  # carried from version to version
    old = OLD_REQUESTS + [("segmentation", ["spinal_cord", "edema"])]
    got = _fresh_process(f"""
import json, torch
from unimed.checkpoint import load_checkpoint
before = load_checkpoint({str(server["model_dir"] / "versions" / "v0002.pt")!r})[0]
after = load_checkpoint({str(server["model_dir"] / "unimed.pt")!r})[0]
k = len(before.registry)
image = torch.randn(1, 1, *{SHAPE!r}, generator=torch.Generator().manual_seed(0))
same = []
with torch.no_grad():
    for request in {old!r}:
        b, a = before(image, *before.prompt([request])), after(image, *after.prompt([request]))
        a["class_logits"], a["heat_logits"] = a["class_logits"][..., :k + 1], a["heat_logits"][:, :k]
        same.append(all(torch.equal(b[key], a[key]) for key in b))
print(json.dumps({{"same": same, "names": after.registry.names[-2:]}}))
""")
    assert got["names"] == ["spinal_cord", "kidney"] and got["same"] == [True] * len(old)


def test_a_train_request_with_a_bad_teach_parameter_is_refused(server):
    res = requests.post(f"{server['url']}/train/unimed", json={"teach_steps": -1}, timeout=30)
    assert res.status_code == 422 and "teach_steps and token_steps must be >= 0" in res.json()["detail"], res.text
