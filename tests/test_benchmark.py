"""main.py benchmark: every section runs on tiny inputs and writes well-formed JSON and Markdown.
Timings are never asserted: they only have to be there, positive and consistent."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.test_evaluation import brats_folder, medmnist_file, msd_file, voc_folder
from benchmarks.machine import machine_info
from benchmarks.peers import (PEERS, AccuracyConfig, BratsPeer, VOCPeer, check_held_out, default_peer_minutes,
                                     run_accuracy)
from benchmarks.report import load_results, merge_results, plot, to_markdown, write_json
from benchmarks.speed import VARIANTS, SpeedConfig, benchmark_speed
from benchmarks.stock import StockSegmentation, StockSegmentationConfig
from benchmarks.timing import peak_rss_mib, run_in_fresh_process, summarize
from benchmarks.training import TrainingBenchConfig, benchmark_training
from unimed.checkpoint import save_checkpoint
from unimed.datasets import dataset_spec, read_dataset, shared_datasets
from unimed.networks.unimednet import unimed_tiny

TINY_STOCK = StockSegmentationConfig(roi_size=16, init_filters=8)


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vol") / "tiny.nii.gz"
    data = np.random.default_rng(0).random((36, 30, 20)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.5, 1.0])), str(path))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = save_checkpoint(unimed_tiny(), tmp_path_factory.mktemp("model") / "unimed.pt", {"version": 1})
    (path.parent / "model_card.json").write_text(json.dumps({"train_minutes": 8.0, "data": {"a": {}, "b": {}}}))
    return path


def _finite_positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_summarize():
    s = summarize([3.0, 1.0, 2.0, 10.0])
    assert s["median"] == s["p50"] == 2.5 and s["min"] == 1.0 and s["max"] == 10.0 and s["n"] == 4
    assert 2.5 < s["p95"] <= 10.0
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_fresh_process_does_not_inherit_the_parents_peak():
    hog = np.ones(400 * 2**20 // 8)  # 400 MiB touched here, not in the child
    parent = peak_rss_mib()
    child = run_in_fresh_process(peak_rss_mib)
    assert 0 < child < parent - 200
    del hog


@pytest.mark.slow
def test_stock_pipeline_restores_the_images_grid():
    from monai.data import MetaTensor

    seg = StockSegmentation(StockSegmentationConfig(in_channels=2, roi_size=16, init_filters=8))
    image = MetaTensor(torch.rand(2, 21, 17, 9), affine=torch.diag(torch.tensor([-1.0, 1.0, 2.5, 1.0])))
    labels = seg.predict(image)
    assert labels.shape == (21, 17, 9) and labels.max() < 5
    with pytest.raises(ValueError, match="multiple of 8"):
        StockSegmentationConfig(roi_size=20)


@pytest.mark.slow
def test_speed_benchmark_json_and_markdown(volume, tmp_path):
    config = SpeedConfig(image=volume, model="tiny", repeats=2, memory=False,
                         predictor={"max_size_3d": 32, "roi_size_3d": 32}, stock=TINY_STOCK)
    result = json.loads(json.dumps(benchmark_speed(config)))  # JSON-ready
    assert result["image_shape"] == [1, 36, 30, 20]
    assert set(result["variants"]) == set(VARIANTS)
    for name, v in result["variants"].items():
        assert v["seconds"]["n"] == 2 and _finite_positive(v["seconds"]["median"])
        assert _finite_positive(v["ratio_to_segresnet"])
    stages = result["variants"]["unimed_all_tasks"]["stages"]
    assert {"load", "segmentation", "detection", "classification", "detection/encode"} <= set(stages)
    assert result["variants"]["segresnet_stock"]["ratio_to_segresnet"] == 1.0
    assert result["targets"]["all_tasks_ratio"]["met"] == (result["variants"]["unimed_all_tasks"]["ratio_to_segresnet"] <= 0.1)

    results = {"machine": machine_info(), "speed": result}
    md = to_markdown(results)
    assert "### Speed and memory" in md and "| `unimed_all_tasks` |" in md and "| `segresnet_stock` |" in md
    assert plot(results, tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_speed_measures_peak_rss_per_variant(volume):
    config = SpeedConfig(image=volume, model="tiny", repeats=1, variants=("unimed_classification",),
                         predictor={"max_size_3d": 32, "roi_size_3d": 32})
    rss = benchmark_speed(config)["variants"]["unimed_classification"]["peak_rss_mib"]
    assert 0 < rss["setup_mib"] <= rss["peak_mib"]


def test_speed_config_errors(volume):
    with pytest.raises(ValueError, match="subset"):
        SpeedConfig(image=volume, variants=("segresnet",))
    with pytest.raises(ValueError, match="repeats"):
        SpeedConfig(image=volume, repeats=0)


@pytest.mark.slow
def test_training_benchmark_on_given_patches():
    rng = torch.Generator().manual_seed(0)
    patches = [(torch.randn(2, 16, 16, 16, generator=rng), torch.randint(0, 5, (16, 16, 16), generator=rng))
               for _ in range(4)]
    config = TrainingBenchConfig(data=Path("unused"), patch_size=16, batch_size=2, steps=1, warmup_steps=1,
                                 model="tiny", stock_init_filters=8)
    result = json.loads(json.dumps(benchmark_training(config, patches=patches)))
    assert set(result["models"]) == {"unimed", "segresnet_stock"}
    for m in result["models"].values():
        assert _finite_positive(m["samples_per_second"]) and m["step_seconds"]["n"] == 1
    with pytest.raises(ValueError, match="need 4 patches"):
        benchmark_training(config, patches=patches[:3])
    assert "### Training throughput" in to_markdown({"training": result})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny folder laid out like ../shared/data."""
    root = tmp_path_factory.mktemp("data")
    brats_folder(root / "brats2013")
    medmnist_file(root / "adrenalmnist3d")
    voc = voc_folder(root / "bccd")
    shutil.copy(voc / "ImageSets/Main/val.txt", voc / "ImageSets/Main/train.txt")
    msd_file(root / "msd_lung_patches")
    return root


def test_default_budget_is_unimeds_share(checkpoint, tmp_path):
    assert default_peer_minutes(checkpoint) == 4.0
    with pytest.raises(ValueError, match="--peer-minutes"):
        default_peer_minutes(tmp_path / "unimed.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PEERS))
def test_accuracy_trains_a_peer_and_scores_both_like_evaluate(name, data, checkpoint):
    config = AccuracyConfig(data=data, checkpoint=checkpoint, peer_minutes=0.001, max_steps=1, small=True)
    result = json.loads(json.dumps(run_accuracy(name, config), default=float))
    assert result["dataset"] == name and result["split"] == "val" and result["n"] >= 1
    assert result["peer"]["steps"] == 1 and result["peer"]["samples"] >= 1
    assert set(result["peer"]["metrics"]) == set(result["unimed"]["metrics"])  # the same metric code
    primary = result["primary"]
    assert primary["metric"] == dataset_spec(name).primary_metric and primary["metric"] in result["peer"]["metrics"]
    assert name in shared_datasets()  # a peer is for a dataset of the shared layout
    if primary["unimed"] is not None and primary["peer"] is not None:
        assert primary["unimed_at_least_peer"] == (primary["unimed"] >= primary["peer"])
    assert f"| {name} | val |" in to_markdown({"accuracy": {name: result}})


def test_a_checkpoint_that_trained_on_the_split_is_refused(tmp_path):
    ckpt = tmp_path / "unimed.pt"
    check_held_out(ckpt, "voc", "val")  # no card: nothing to check
    card = {"data": {"voc": {"split": "train+val"}, "medmnist": {"split": "train"},
                     "brats": {"split": "train+val without brats_2013_pat0004_1"}}}
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"trained on the val split of voc .*'train\+val'.*--hold-out"):
        check_held_out(ckpt, "voc", "val")
    check_held_out(ckpt, "medmnist", "val")
    check_held_out(ckpt, "msd_patches", "val")  # not in the card
    check_held_out(ckpt, "brats", "val", ["brats_2013_pat0004_1"])  # the hold-out run kept the split's case out
    check_held_out(ckpt, "brats", "val")
    with pytest.raises(ValueError, match="val split of brats"):
        check_held_out(ckpt, "brats", "val", ["brats_2013_pat0001_1"])


@pytest.mark.slow
def test_a_classification_peer_writes_a_teacher_file(data, checkpoint, tmp_path):
    from trainers.distillation import read_teachers

    config = AccuracyConfig(data=data, checkpoint=checkpoint, peer_minutes=0.001, max_steps=1, small=True,
                            teachers=tmp_path / "teachers")
    result = run_accuracy("medmnist", config)
    teachers = read_teachers(tmp_path / "teachers")
    assert result["peer"]["teacher_file"] == str(tmp_path / "teachers" / "medmnist.json")
    scored = teachers["medmnist"].scores
    train = read_dataset("medmnist", data / "adrenalmnist3d", "train")
    assert sorted(scored) == sorted(s.name for s in train)
    assert all(set(v) == {"adrenal_hyperplasia", "adrenal_normal"} and sum(v.values()) == pytest.approx(1.0)
               for v in scored.values())
    assert run_accuracy("msd_patches", config)["peer"]["teacher_file"] is None  # segmentation peers teach nothing yet


@pytest.mark.slow
def test_retinanet_learns_without_torchvision(data):
    assert "torchvision" not in sys.modules
    train = read_dataset("voc", data / "bccd", "train")
    peer = VOCPeer(train, small=True)
    losses = [peer.train_step(__import__("random").Random(0)) for _ in range(2)]
    assert losses == [2, 2]
    pred = peer.predict(train[0].image, "detection")
    boxes = pred.boxes_voxel()
    assert boxes.shape[1] == 6 and len(boxes) == len(pred.annotation.labels) == len(pred.annotation.scores)
    assert set(pred.annotation.labels) <= set(VOCPeer.classes)
    assert "torchvision" not in sys.modules


def test_brats_peer_answers_in_registry_ids(data):
    train = read_dataset("brats", data / "brats2013")
    peer = BratsPeer(train, small=True)
    lm = peer.predict(train[0].meta_image(), "segmentation").label_map()
    assert lm.shape == train[0].spatial_shape and set(np.unique(lm)) <= {0, 1, 2, 3, 4}


def test_results_merge_per_dataset_and_survive_a_rewrite(tmp_path):
    path = tmp_path / "r.json"
    write_json({"accuracy": {"voc": {"x": 1}}, "speed": {"a": 1}}, path)
    merged = merge_results(load_results(path), {"accuracy": {"brats": {"x": 2}}, "speed": {"b": 2}})
    assert merged == {"accuracy": {"voc": {"x": 1}, "brats": {"x": 2}}, "speed": {"b": 2}}
    assert load_results(tmp_path / "absent.json") == {}
    path.write_text("[1]")
    with pytest.raises(ValueError, match="JSON object"):
        load_results(path)


def run(repo, *args):
    return subprocess.run([sys.executable, str(repo / "main.py"), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--speed", "--image", "/nonexistent.nii.gz"], "--image /nonexistent.nii.gz: no such file"),
    (["--accuracy", "--datasets", "brats,mnist"], "--datasets: unknown mnist"),
    (["--speed", "--checkpoint", "/nonexistent.pt"], "--checkpoint /nonexistent.pt: no such file"),
    (["--speed", "--repeats", "0"], "repeats must be at least 1"),
    (["--speed", "--roi-size", "40"], "multiple of 16, got 40"),
    (["--accuracy", "--data", "sample_datastore/", "--checkpoint", "sample_datastore/lung_patch_000.nii.gz"],
     "pass --peer-minutes"),
])
def test_cli_errors_are_one_line(repo, tmp_path, args, message):
    args = [str(repo / a) if a.startswith("sample_datastore/") else a for a in args]
    out = run(repo, "benchmark", "--json", str(tmp_path / "b.json"), *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_cli_accuracy_resumes_per_dataset(repo, data, checkpoint, tmp_path):
    out_json = tmp_path / "b.json"
    write_json({"accuracy": {"msd_patches": {"dataset": "msd_patches", "peer": {"name": "earlier"}}}}, out_json)
    out = run(repo, "benchmark", "--accuracy", "--datasets", "msd_patches", "--data", str(data), "--checkpoint",
              str(checkpoint), "--json", str(out_json), "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "already in" in out.stdout
    assert json.loads(out_json.read_text())["accuracy"]["msd_patches"]["peer"]["name"] == "earlier"
    assert (tmp_path / "b.md").read_text().startswith("## Benchmarks")


@pytest.mark.slow
def test_server_benchmark_on_loopback(repo, sample, checkpoint):
    from benchmarks.server_load import ServerLoadConfig, benchmark_server

    config = ServerLoadConfig(app_dir=repo / "apps" / "unimed", studies=sample, checkpoint=checkpoint,
                              image="lung_patch_000", clients=(1, 3), requests_per_client=2, cold_repeats=1,
                              info_interval=0.02)
    result = json.loads(json.dumps(benchmark_server(config)))
    assert [lvl["clients"] for lvl in result["levels"]] == [1, 3]
    for lvl, clients in zip(result["levels"], (1, 3)):
        assert lvl["requests"] == 2 * clients and not lvl["errors"]
        assert 0 < lvl["p50"] <= lvl["p95"] <= lvl["max"]
        if lvl.get("info"):  # GET /info probed while the clients inferred
            assert lvl["info"]["probes"] >= 1 and 0 < lvl["info"]["p50"] <= lvl["info"]["max"]
    assert result["levels"][-1]["info"]["probes"] >= 1
    cold = result["three_tasks_cold"]
    assert cold["seconds"]["n"] == 1 and set(cold["per_model_median"]) == {"unimed_seg", "unimed_det", "unimed_cls"}
    md = to_markdown({"server": result})
    assert "### Server latency" in md and "| 3 | 6 |" in md
    with pytest.raises(ValueError, match="not in the datastore"):
        benchmark_server(ServerLoadConfig(app_dir=repo / "apps" / "unimed", studies=sample, checkpoint=checkpoint,
                                          image="no_such_image"))
