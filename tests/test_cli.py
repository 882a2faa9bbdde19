"""The command line: help for every command, infer without a server, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def run(repo, *args):
    return subprocess.run([sys.executable, str(repo / "main.py"), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["serve", "infer", "info", "pacs", "users"])
def test_every_command_has_help(repo, command):
    out = run(repo, command, "--help")
    assert out.returncode == 0 and "usage: main.py " + command in out.stdout


@pytest.mark.slow
def test_the_installed_unimed_command_is_main_py(repo, tmp_path):
    """pyproject.toml installs ``unimed``; it runs main.py's commands, from any folder."""
    unimed = Path(sys.executable).with_name("unimed")
    assert unimed.exists(), "the project is not installed (bash scripts/setup.sh)"
    out = subprocess.run([str(unimed), "evaluate", "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0 and "usage: unimed evaluate" in out.stdout
    words = " ".join(out.stdout.replace("unimed evaluate", "main.py evaluate").split())  # usage lines wrap apart
    assert words == " ".join(run(repo, "evaluate", "--help").stdout.split())
    bad = subprocess.run([str(unimed), "evaluate", "--dataset", "brats", "--data", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_infer_detection_prints_boxes(repo, sample, tmp_path):
    result = tmp_path / "boxes.json"
    out = run(repo, "infer", "--task", "detection", "--image", str(sample / "bccd_BloodImage_00000.jpg"),
              "--out", str(result))
    assert out.returncode == 0, out.stderr
    assert "boxes in" in out.stdout
    doc = json.loads(result.read_text())
    assert len(doc["box"]) == len(doc["label"]) == len(doc["score"])


@pytest.mark.slow
def test_infer_segmentation_writes_a_label_map(repo, sample, tmp_path):
    import nibabel as nib

    out_path = tmp_path / "label.nii.gz"
    out = run(repo, "infer", "--task", "segmentation", "--image", str(sample / "lung_patch_000.nii.gz"),
              "--labels", "lung_tumor", "--out", str(out_path))
    assert out.returncode == 0, out.stderr
    assert nib.load(out_path).shape == nib.load(sample / "lung_patch_000.nii.gz").shape


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "classification", "--image", "missing.nii.gz"], "image not found"),
        (["--task", "segmentation", "--labels", "kidney", "--image", "sample_datastore/lung_patch_000.nii.gz"],
         "unknown label 'kidney'"),
    ],
)
def test_infer_errors_are_one_line(repo, args, message):
    out = subprocess.run([sys.executable, "main.py", "infer", *args], capture_output=True, text=True, cwd=repo)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_info_describes_the_network(repo):
    out = run(repo, "info")
    assert out.returncode == 0
    info = json.loads(out.stdout[out.stdout.index("{"):])
    assert info["parameters"] > 0 and len(info["labels"]) == len(info["config"]["labels"])


@pytest.mark.parametrize("command", ["pretrain", "evaluate", "lopo", "versions", "al-sim"])
def test_training_commands_have_help(repo, command):
    out = run(repo, command, "--help")
    assert out.returncode == 0 and "usage: main.py " + command in out.stdout


@pytest.mark.parametrize("share", ["1.5", "-0.1"])
def test_train_clicks_refuses_a_pseudo_object_share_outside_0_1(repo, tmp_path, share):
    out = run(repo, "train-clicks", "--data", str(tmp_path), "--out", str(tmp_path / "c.pt"), "--pseudo-objects", share)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"--pseudo-objects is a share of steps in [0, 1], got {float(share)}" in out.stderr
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.parametrize("share", ["0", "1.5"])
def test_train_clicks_refuses_a_largest_object_share_outside_0_1(repo, tmp_path, share):
    out = run(repo, "train-clicks", "--data", str(tmp_path), "--out", str(tmp_path / "c.pt"),
              "--pseudo-max-share", share)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"--pseudo-max-share is a share of an image in (0, 1], got {float(share)}" in out.stderr
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("device, message", [("tpu", "device 'tpu': use 'cpu', or 'cuda'/'cuda:N'"),
                                             ("cuda:99", "device 'cuda:99': use 'cpu'")])
def test_pretrain_refuses_a_device_torch_does_not_have(repo, tmp_path, device, message):
    out = run(repo, "pretrain", "--data", str(tmp_path), "--model-dir", str(tmp_path / "m"), "--device", device)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "m").exists()  # refused before anything was trained or published


@pytest.mark.slow
def test_evaluate_writes_the_documented_json(repo, tmp_path):
    """``evaluate`` on a folder it has never seen: a tiny MSD-format file and a tiny checkpoint."""
    import h5py
    import numpy as np
    import torch

    from unimed.checkpoint import save_checkpoint
    from unimed.networks.unimednet import unimed_tiny

    folder = tmp_path / "patches"
    folder.mkdir()
    images = np.random.default_rng(0).random((5, 1, 48, 48)).astype(np.float32)
    labels = np.zeros((5, 1, 48, 48))
    labels[:, :, 10:20, 10:20] = 1
    with h5py.File(folder / "some_split.h5", "w") as f:
        f["images"], f["labels"] = images, labels
    torch.manual_seed(0)
    ckpt = save_checkpoint(unimed_tiny(), tmp_path / "tiny.pt", {"version": 3})
    out_json = tmp_path / "result.json"
    out = run(repo, "evaluate", "--dataset", "msd_patches", "--data", str(folder), "--checkpoint", str(ckpt),
              "--json", str(out_json), "--no-progress")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out_json.read_text())
    assert doc["dataset"] == "msd_patches" and doc["n"] == 5
    assert set(doc["metrics"]) >= {"dice"} and 0 <= doc["metrics"]["dice"] <= 1
    assert "dice" in out.stdout


def test_evaluate_unknown_split_is_one_line(repo, tmp_path):
    import h5py
    import numpy as np

    with h5py.File(tmp_path / "p.h5", "w") as f:
        f["images"], f["labels"] = np.zeros((5, 1, 8, 8), np.float32), np.zeros((5, 1, 8, 8))
    out = run(repo, "evaluate", "--dataset", "msd_patches", "--data", str(tmp_path), "--split", "test", "--no-progress")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    [line] = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert "split must be None, 'train' or 'val', got 'test'" in line


def test_dataset_choices_come_from_the_registry(monkeypatch):
    import main
    from unimed import datasets

    def choices(command: str, dest: str):
        [sub] = [a for a in main.build_parser()._actions if a.dest == "command"]
        [action] = [a for a in sub.choices[command]._actions if a.dest == dest]
        return action.choices

    assert choices("evaluate", "dataset") == list(datasets.DATASETS)
    assert choices("al-sim", "dataset") == list(datasets.shared_datasets()) == ["brats", "medmnist", "voc", "msd_patches"]
    monkeypatch.setitem(datasets.DATASETS, "toy", datasets.dataset_spec("datastore"))
    assert choices("evaluate", "dataset")[-1] == "toy"


@pytest.mark.slow
def test_versions_lists_and_rolls_back(repo, tmp_path):
    from unimed.model_store import ModelStore
    from unimed.networks.unimednet import unimed_tiny

    store = ModelStore(tmp_path)
    store.publish(unimed_tiny(), {"kind": "a"})
    store.publish(unimed_tiny(), {"kind": "b"})
    out = run(repo, "versions", "--model-dir", str(tmp_path))
    assert out.returncode == 0 and "v0001" in out.stdout and "* v0002" in out.stdout
    out = run(repo, "versions", "--model-dir", str(tmp_path), "--rollback", "1")
    assert out.returncode == 0 and store.current_version() == 1
    out = run(repo, "versions", "--model-dir", str(tmp_path), "--rollback", "9")
    assert out.returncode == 2 and "no model version 9" in out.stderr


@pytest.mark.slow
def test_pacs_with_a_missing_ct_folder_is_a_clear_error(repo, tmp_path):
    out = run(repo, "pacs", "--ct", str(tmp_path / "nope"), "--dir", str(tmp_path / "orthanc"))
    assert out.returncode == 2 and "no such folder" in out.stderr and "Traceback" not in out.stderr


def test_pacs_serves_the_converted_mr_study_until_stopped(repo, tmp_path, port_factory):
    import time
    import urllib.request

    from servers.orthanc import dicomweb_plugin, orthanc_binary

    if orthanc_binary() is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
    port = port_factory()
    proc = subprocess.Popen([sys.executable, str(repo / "main.py"), "pacs", "--port", str(port), "--dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.time() + 120
        while time.time() < deadline and not any("DICOMweb:" in line for line in lines):
            lines.append(proc.stdout.readline())
        assert any("Orthanc is serving 1 series" in line for line in lines), "".join(lines)
        series = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/dicom-web/series?Modality=MR").read())
        assert len(series) == 1
    finally:
        proc.terminate()
        proc.wait(30)
    with pytest.raises(OSError):  # Orthanc went down with the command
        urllib.request.urlopen(f"http://127.0.0.1:{port}/system", timeout=5)
