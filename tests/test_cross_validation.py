"""Leave-one-out cross-validation: folds, what each fold trains on, the summary's arithmetic, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import trainers.cross_validation as cv
from trainers.cross_validation import FoldResult, cross_validate, fold_assignment, fold_config, format_folds, summarize
from unimed.datasets import dataset_spec
from unimed.networks.unimednet import unimed_tiny


def write_case(case: Path, seed: int, shape=(24, 20, 16)) -> Path:
    """A tiny BraTS-format case: noise FLAIR and T1c, a cube of edema around an enhancing core."""
    rng = np.random.default_rng(seed)
    case.mkdir(parents=True)
    label = np.zeros(shape, np.float32)
    label[6:14, 5:12, 4:10] = 2.0
    label[8:11, 7:10, 6:8] = 4.0
    for name, data in (("Flair.nii.gz", rng.normal(size=shape) + (label > 0)), ("T1c.nii.gz", rng.normal(size=shape)),
                       ("OTMultiClass.nii.gz", label)):
        nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), str(case / name))
    return case


@pytest.fixture
def brats3(tmp_path) -> Path:
    for i, name in enumerate(("pat_a", "pat_b", "pat_c")):
        write_case(tmp_path / "brats" / name, i)
    return tmp_path / "brats"


def test_fold_assignment():
    assert fold_assignment(["a", "b"]) == [["a"], ["b"]]
    assert fold_assignment(list("abcdefg"), folds=3) == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    with pytest.raises(ValueError, match="21 cases: leave-one-out would train 21 models.*number of folds"):
        fold_assignment([str(i) for i in range(21)])
    assert len(fold_assignment([str(i) for i in range(21)], folds=5)) == 5
    for names, folds, message in ((["a"], None, "at least 2"), (["a", "a"], None, "unique"),
                                  (["a", "b"], 3, "between 2 and the number of cases \\(2\\), got 3")):
        with pytest.raises(ValueError, match=message):
            fold_assignment(names, folds)


def test_summary_is_the_mean_and_sample_sd_of_each_metric():
    folds = [FoldResult(i, [str(i)], [], 1, 0.0, {"dice": d, "auc": a, "ap50": {"rbc": r}})
             for i, (d, a, r) in enumerate([(0.2, None, 1.0), (0.4, 0.5, 0.0), (0.9, 0.7, 0.5)])]
    summary = summarize(folds)
    assert summary["dice"]["mean"] == pytest.approx(0.5) and summary["dice"]["n"] == 3
    assert summary["dice"]["sd"] == pytest.approx(float(np.std([0.2, 0.4, 0.9], ddof=1)))
    assert summary["auc"] == {"mean": pytest.approx(0.6), "sd": pytest.approx(math.sqrt(0.02)), "n": 2}  # None left out
    assert summary["ap50/rbc"]["mean"] == pytest.approx(0.5)
    assert summarize(folds[:1])["dice"] == {"mean": 0.2, "sd": None, "n": 1}


def test_the_fold_recipe_is_pretrainings_share_of_the_dataset():
    config = fold_config(dataset_spec("brats"), 3.0, steps=7, seed=5)
    share = dataset_spec("brats").training
    assert set(config.mix) == {"brats", "unlabelled"} and config.mix["brats"].tasks == share.tasks
    assert config.mix["brats"].batch_size == share.batch_size and config.mix["brats"].every == share.every
    assert (config.max_minutes, config.steps, config.seed) == (3.0, 7, 5)
    with pytest.raises(ValueError, match="'datastore' has no training share"):
        fold_config(dataset_spec("datastore"), 1.0)


@pytest.mark.slow
def test_leave_one_out_never_trains_on_the_held_out_case(brats3, monkeypatch):
    trained_on = []

    class Recording(cv.JointTrainer):
        def __init__(self, model, sources, config, unlabelled=None, **kwargs):
            super().__init__(model, sources, config, unlabelled, **kwargs)
            trained_on.append({src.name: sorted(it.name for it in src.items) for src in [*sources, unlabelled]})

    monkeypatch.setattr(cv, "JointTrainer", Recording)
    torch.manual_seed(0)
    result = cross_validate("brats", brats3, minutes=None, steps=2, init=unimed_tiny, progress=False)
    assert result["cases"] == 3 and [f["held_out"] for f in result["folds"]] == [["pat_a"], ["pat_b"], ["pat_c"]]
    for fold, sources in zip(result["folds"], trained_on):
        [held] = fold["held_out"]
        assert sources["brats"] == sources["unlabelled"] == sorted(fold["train"]) and held not in fold["train"]
        assert len(fold["train"]) == 2 and fold["steps"] == 2
        assert set(fold["metrics"]) == {"dice_wt", "dice_tc", "dice_et"}
    for metric in ("dice_wt", "dice_tc", "dice_et"):
        values = [f["metrics"][metric] for f in result["folds"]]
        assert result["summary"][metric]["mean"] == pytest.approx(np.mean(values))
        assert result["summary"][metric]["sd"] == pytest.approx(np.std(values, ddof=1))
    table = format_folds(result).splitlines()
    assert table[0] == "brats: 3 folds, 3 cases" and table[2].split()[:2] == ["1", "pat_a"]
    assert table[-2].startswith("mean") and table[-1].startswith("sd")


@pytest.mark.slow
def test_cli_lopo_writes_json_and_refuses_too_many_cases(brats3, tmp_path, capsys):
    import main
    from unimed.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(unimed_tiny(), tmp_path / "tiny.pt", {"version": 1})
    out = tmp_path / "lopo.json"
    assert main.main(["lopo", "--dataset", "brats", "--data", str(brats3), "--folds", "2", "--steps", "1",
                      "--init", str(ckpt), "--json", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert [f["held_out"] for f in doc["folds"]] == [["pat_a", "pat_c"], ["pat_b"]] and doc["init"] == str(ckpt)
    assert "mean" in capsys.readouterr().out
    for args, message in ((["--data", str(tmp_path / "none")], "no such file or folder"),
                          (["--data", str(brats3), "--folds", "9"], "folds must be between 2 and the number of cases"),
                          (["--data", str(brats3), "--init", str(tmp_path / "x.pt")], "no checkpoint at")):
        assert main.main(["lopo", "--dataset", "brats", *args, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
