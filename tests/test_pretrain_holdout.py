"""Cross-validation of the whole pretraining recipe: ``pretrain --hold-out``'s cases, the summary of
its runs (mean ± sd over runs) and ``main.py cv-card``, which puts it into the shipped run's card."""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import trainers.pretrain
from trainers.config import MixEntry, TrainConfig
from trainers.data import Source, to_grid_item
from trainers.joint import JointTrainer, seed_everything
from trainers.model_card import cross_validation_summary, write_model_card
from trainers.pretrain import Holdout, build_sources, default_config, pretrain, split_cases
from trainers.run_state import save_state
from unimed.datasets.sample import Sample
from unimed.networks.unimednet import unimed_tiny

REPO = Path(__file__).resolve().parents[1]
CASES = [f"brats_2013_pat000{i}_1" for i in range(1, 5)]
HELD = "brats_2013_pat0002_1"


# -- Holdout.parse -----------------------------------------------------------------------------------
def test_holdout_parses_a_dataset_and_its_cases():
    assert Holdout.parse("brats:a,b") == Holdout("brats", ("a", "b"))
    assert Holdout.parse("brats: a , b,") == Holdout("brats", ("a", "b"))


@pytest.mark.parametrize("text, message", [("brats", r"'brats': write DATASET:CASE"),
                                           ("brats:", r"'brats:': write DATASET:CASE"),
                                           ("brats: , ", r"write DATASET:CASE"),
                                           ("nope:x", r"unknown dataset 'nope' \(one of brats, ")])
def test_holdout_rejects_what_is_not_dataset_colon_cases(text, message):
    with pytest.raises(ValueError, match=message):
        Holdout.parse(text)


# -- the cases of a run, on the shared BraTS folder --------------------------------------------------
def test_holding_out_a_brats_case_trains_on_the_other_three(shared_data):
    train, held, split = split_cases(shared_data, "brats", Holdout("brats", (HELD,)))
    assert sorted(s.name for s in train) == [c for c in CASES if c != HELD]
    assert [s.name for s in held] == [HELD]
    assert split == f"train+val without {HELD}"
    # a hold-out of another dataset leaves BraTS on its training split, its validation split scored
    train, held, split = split_cases(shared_data, "brats", Holdout("voc", ("x",)))
    assert held is None and split == "train" and len(train) == 3


def test_all_splits_trains_on_every_brats_case(shared_data):
    train, held, split = split_cases(shared_data, "brats", all_splits=True)
    assert sorted(s.name for s in train) == CASES
    assert held is None and split == "train+val"


def test_an_unknown_held_out_case_is_refused_with_the_cases_listed(shared_data):
    with pytest.raises(ValueError, match=r"has no case pat9 \(it has .*" + HELD) as err:
        split_cases(shared_data, "brats", Holdout("brats", (HELD, "pat9")))
    assert all(c in str(err.value) for c in CASES)


def test_a_held_out_case_stays_out_of_the_self_supervised_source_too(shared_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "brats2013").symlink_to(shared_data / "brats2013", target_is_directory=True)
    config = default_config()
    config.mix = {"brats": config.mix["brats"], "unlabelled": config.mix["unlabelled"]}
    sources, unlabelled, plan = build_sources(data, config, Holdout("brats", (HELD,)))
    assert [s.name for s in sources] == ["brats"]
    trained = sorted(item.name for item in sources[0].items)
    assert trained == [c for c in CASES if c != HELD]
    assert unlabelled is not None and sorted(item.name for item in unlabelled.items) == trained
    assert [s.name for s in plan["brats"]["held_out"]] == [HELD]
    with pytest.raises(ValueError, match="holds no voc data to hold cases out of"):
        build_sources(data, config, Holdout("voc", ("x",)))


# -- the summary of the runs -------------------------------------------------------------------------
def _run_card(case: str, dice: float, map50: float, platelet: float) -> dict:
    """A --hold-out run's model card, as far as the summary reads it."""
    return {"command": f"python main.py pretrain --data /d --hold-out brats:{case}", "device": "cuda",
            "config": {"max_minutes": 80.0, "steps": 20000},
            "validation": {
                "brats": {"dataset": "brats", "split": f"held out: {case}", "n": 1,
                          "metrics": {"dice_wt": dice, "dice_tc": dice / 2},
                          "command": f"python main.py pretrain --data /d --hold-out brats:{case}"},
                "voc": {"dataset": "voc", "split": "val", "n": 87,
                        "metrics": {"map50": map50, "ap50": {"platelet": platelet}, "per_image": [1, 2]},
                        "command": "python main.py evaluate --dataset voc --data /d/bccd --split val"}}}


def test_the_summary_gives_mean_and_sample_sd_over_runs_and_flattens_nested_metrics():
    summary = cross_validation_summary([_run_card("a", 0.6, 0.5, 0.2), _run_card("b", 0.8, 0.7, 0.4)])
    brats, voc = summary["brats"], summary["voc"]
    assert brats["runs"] == 2 and brats["cases"] == 2 and brats["split"] == "held out, one case per run"
    assert brats["held_out"] == [["a"], ["b"]]
    dice = brats["metrics"]["dice_wt"]
    assert dice["mean"] == pytest.approx(0.7) and dice["sd"] == pytest.approx(0.141421, abs=1e-6)
    assert dice["values"] == [0.6, 0.8]
    assert brats["metrics"]["dice_tc"]["mean"] == pytest.approx(0.35)
    assert voc["split"] == "val" and voc["runs"] == 2 and voc["cases"] == 174
    assert set(voc["metrics"]) == {"map50", "ap50_platelet"}  # the list is not a figure
    assert voc["metrics"]["ap50_platelet"]["mean"] == pytest.approx(0.3)
    assert voc["metrics"]["ap50_platelet"]["sd"] == pytest.approx(0.141421, abs=1e-6)
    one = cross_validation_summary([_run_card("a", 0.6, 0.5, 0.2)])["brats"]["metrics"]["dice_wt"]
    assert one == {"mean": 0.6, "sd": 0.0, "values": [0.6]}


def test_the_summary_refuses_runs_it_cannot_summarise():
    with pytest.raises(ValueError, match="no run's model card"):
        cross_validation_summary([])
    with pytest.raises(ValueError, match="run 2's card has no validation figures"):
        cross_validation_summary([_run_card("a", 0.6, 0.5, 0.2), {"command": "python main.py pretrain --all-splits"}])
    plain = _run_card("a", 0.6, 0.5, 0.2)
    plain["validation"]["brats"]["split"] = "val"
    with pytest.raises(ValueError, match="run 1's card holds no case out"):
        cross_validation_summary([plain])
    with pytest.raises(ValueError, match="brats case a is held out by runs 1 and 2"):
        cross_validation_summary([_run_card("a", 0.6, 0.5, 0.2), _run_card("a", 0.8, 0.7, 0.4)])


def test_the_module_examples_run():
    assert doctest.testmod(trainers.pretrain).failed == 0


# -- cv-card -----------------------------------------------------------------------------------------
def _shipped_card() -> dict:
    """The --all-splits run's card: no validation figures."""
    machine = {"platform": "Linux", "cpus": 16, "torch": "2.13.0"}
    return {"version": 1, "command": "python main.py pretrain --data /d --all-splits", "train_minutes": 80.0,
            "steps": 20000, "parts": [{"started": "2026-12-01T09:00:00+00:00", "minutes": 80.0, "steps": 20000,
                                       "device": "cuda", "machine": machine}],
            "devices": ["cuda"], "machine": machine, "device": "cuda", "unlabelled_samples": 4,
            "data": {"brats": {"split": "train+val", "samples": 4, "tasks": ["segmentation"]}}}


def _cv_tree(tmp_path: Path) -> tuple[list[Path], Path]:
    runs = []
    for case, dice in (("a", 0.6), ("b", 0.8)):
        run = tmp_path / "cv" / f"holdout_{case}"
        run.mkdir(parents=True)
        (run / "model_card.json").write_text(json.dumps(_run_card(case, dice, 0.5, 0.2)))
        runs.append(run)
    shipped = tmp_path / "cv" / "all"
    shipped.mkdir()
    write_model_card(shipped, _shipped_card())
    return runs, shipped


def _main(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "lib"), str(REPO)])}
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow  # a subprocess that imports torch: 5-15 s on a shared CPU
def test_cv_card_writes_the_figures_into_the_shipped_card(tmp_path):
    runs, shipped = _cv_tree(tmp_path)
    out = _main("cv-card", *map(str, runs), "--model-dir", str(shipped))
    assert out.returncode == 0, out.stderr
    assert "dice_wt 0.700 ± 0.141" in out.stdout
    card = json.loads((shipped / "model_card.json").read_text())
    section = card["cross_validation"]
    assert section["runs"] == ["holdout_a", "holdout_b"]
    assert section["datasets"]["brats"]["metrics"]["dice_wt"]["values"] == [0.6, 0.8]
    assert section["commands"] == [f"STEPS=20000 bash scripts/pretrain_cv.sh /d {tmp_path / 'cv'} 80.0 cuda",
                                   f"python main.py cv-card {runs[0]} {runs[1]} --model-dir {shipped}"]
    assert card["version"] == 1 and "validation" not in card  # the rest of the card is kept
    text = (shipped / "MODEL_CARD.md").read_text()
    assert "Figures of this recipe on cases its runs never saw (2 runs, each holding out one BraTS case; " \
           "mean ± sd over runs" in text
    assert "| brats | held out, one case per run | 2 | 2 | dice_wt 0.700 ± 0.141, dice_tc 0.350 ± 0.071 |" in text
    assert "| voc | val | 2 | 174 | map50 0.500 ± 0.000, ap50_platelet 0.200 ± 0.000 |" in text
    assert "Held-out brats cases: holdout_a: a, holdout_b: b." in text
    assert f"bash scripts/pretrain_cv.sh /d {tmp_path / 'cv'} 80.0 cuda" in text
    assert "Validation figures" not in text  # the shipped run has none of its own


@pytest.mark.slow  # subprocesses that import the CLI: a few seconds each
def test_cv_card_errors_are_one_line(tmp_path):
    runs, shipped = _cv_tree(tmp_path)
    before = (shipped / "model_card.json").read_text()
    missing = tmp_path / "cv" / "holdout_c"
    out = _main("cv-card", str(runs[0]), str(missing), "--model-dir", str(shipped))
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: run {missing}: no model_card.json (not a finished pretrain run)"
    out = _main("cv-card", str(runs[0]), str(shipped), "--model-dir", str(shipped))
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {shipped / 'model_card.json'} has no validation figures (an --all-splits " \
                                 "or --no-eval run): give the --hold-out runs' folders"
    out = _main("cv-card", *map(str, runs), "--model-dir", str(tmp_path / "nowhere"))
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: --model-dir {tmp_path / 'nowhere'}: no model_card.json " \
                                 "(not a finished pretrain run)"
    assert (shipped / "model_card.json").read_text() == before  # nothing written on an error


# -- resume ------------------------------------------------------------------------------------------
def _saved_run(path: Path, config: TrainConfig, cases: dict | None) -> None:
    """A run's state saved at ``path`` as pretrain saves it, with ``cases`` (None: a state saved
    before runs recorded their cases)."""
    seed_everything(config.seed)
    rng = np.random.default_rng(0)
    samples = [Sample(torch.tensor(rng.normal(size=(1, 8, 8, 8)).astype(np.float32)), np.eye(4), "toy", f"s{i}",
                      class_labels={"adrenal": i % 2}) for i in range(2)]
    items = [to_grid_item(s) for s in samples]
    trainer = JointTrainer(unimed_tiny(), [Source("medmnist", items, ("classification",), batch_size=2)], config,
                           Source("unlabelled", items, ()))
    state = {**trainer.state_dict(), "parts": []}
    if cases is not None:
        state["cases"] = cases
    save_state(state, path)


@pytest.mark.parametrize("saved, holdout, all_splits", [
    ({"hold_out": ["brats", ["a"]], "all_splits": False}, Holdout("brats", ("b",)), False),
    ({"hold_out": ["brats", ["a"]], "all_splits": False}, None, False),
    ({"hold_out": None, "all_splits": True}, Holdout("brats", ("a",)), False),
    (None, None, True),  # a state of a plain run
])
def test_resume_refuses_a_run_saved_with_other_cases(tmp_path, saved, holdout, all_splits):
    config = TrainConfig(steps=5, mix={"medmnist": MixEntry(("classification",), batch_size=2)})
    _saved_run(tmp_path / "model" / "pretrain_state.pt", config, saved)
    refused = "trained on other cases .*: resume it with the same --hold-out / --all-splits"
    with pytest.raises(ValueError, match=refused):
        pretrain(tmp_path / "no-data", tmp_path / "model", config, resume=True, holdout=holdout, all_splits=all_splits,
                 progress=False, model=unimed_tiny())


def test_resume_with_the_same_cases_passes_the_guard(tmp_path):
    config = TrainConfig(steps=5, mix={"medmnist": MixEntry(("classification",), batch_size=2)})
    _saved_run(tmp_path / "model" / "pretrain_state.pt", config, {"hold_out": ["brats", ["a"]], "all_splits": False})
    # past the guard, the data is read: this folder has none, so the hold-out finds no BraTS
    with pytest.raises(ValueError, match="holds no brats data to hold cases out of"):
        pretrain(tmp_path / "no-data", tmp_path / "model", config, resume=True, holdout=Holdout("brats", ("a",)),
                 progress=False, model=unimed_tiny())
