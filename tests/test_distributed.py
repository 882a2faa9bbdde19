"""The same trainer under torchrun: two CPU processes (gloo) train a few steps and agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _msd_like_folder(root, n=12):
    """A tiny folder in the MSD lung-patch format: bright discs are the 'tumours'."""
    folder = root / "msd_lung_patches"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    images = rng.normal(0.3, 0.05, size=(n, 1, 48, 48)).astype(np.float32)
    labels = np.zeros((n, 1, 48, 48))
    for i in range(n):
        cy, cx, r = rng.integers(12, 36), rng.integers(12, 36), rng.integers(4, 9)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        images[i, 0][disc] += 0.5
        labels[i, 0][disc] = 1
    with h5py.File(folder / "patches.h5", "w") as f:
        f["images"], f["labels"] = images, labels
    return root


def test_two_processes_train_in_step_and_publish_one_model(repo, tmp_path):
    data = _msd_like_folder(tmp_path / "data")
    out = tmp_path / "model"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(repo / "main.py"), "pretrain", "--data", str(data), "--model-dir", str(out), "--steps", "3",
         "--no-eval", "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env, cwd=repo,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    card = json.loads((out / "model_card.json").read_text())
    assert card["processes"] == 2
    assert card["replicas_agree"] is True
    assert card["steps"] == 3
    assert card["device"] == "cpu"  # --device left at cpu: gloo, even where a GPU exists
    assert (out / "unimed.pt").exists()
