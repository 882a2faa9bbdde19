"""The command line: help for every command, infer without a server, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(repo, *args):
    return subprocess.run([sys.executable, str(repo / "main.py"), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["serve", "infer", "info"])
def test_every_command_has_help(repo, command):
    out = run(repo, command, "--help")
    assert out.returncode == 0 and "usage: main.py " + command in out.stdout


def test_infer_detection_prints_boxes(repo, sample, tmp_path):
    result = tmp_path / "boxes.json"
    out = run(repo, "infer", "--task", "detection", "--image", str(sample / "bccd_BloodImage_00000.jpg"),
              "--out", str(result))
    assert out.returncode == 0, out.stderr
    assert "boxes in" in out.stdout
    doc = json.loads(result.read_text())
    assert len(doc["box"]) == len(doc["label"]) == len(doc["score"])


def test_infer_segmentation_writes_a_label_map(repo, sample, tmp_path):
    import nibabel as nib

    out_path = tmp_path / "label.nii.gz"
    out = run(repo, "infer", "--task", "segmentation", "--image", str(sample / "lung_patch_000.nii.gz"),
              "--labels", "lung_tumor", "--out", str(out_path))
    assert out.returncode == 0, out.stderr
    assert nib.load(out_path).shape == nib.load(sample / "lung_patch_000.nii.gz").shape


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


def test_info_describes_the_network(repo):
    out = run(repo, "info")
    assert out.returncode == 0
    info = json.loads(out.stdout[out.stdout.index("{"):])
    assert info["parameters"] > 0 and len(info["labels"]) == len(info["config"]["labels"])
