"""The click simulator on masks with known answers, clicks-eval on a tiny BraTS-format folder,
and the parsing of the viewers' click requests (the app's ``lib.infers.click_request``).

The model is ``unimed_tiny()`` with its click refiner set by hand (conftest's
``make_clicking_model``: the object is there near foreground clicks, not near background ones),
so the curves are the plumbing's, not a trained model's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from unimed.clicks import innermost_voxel, next_click
from unimed.datasets import DatasetError
from unimed.interactive_evaluation import clicks_evaluation, paired_click_gain, simulate_clicks, summarise_cases
from unimed.labels import LabelRegistry, UnknownLabelError
from unimed.predictor import Predictor

REG = LabelRegistry()


# -- the simulator ----------------------------------------------------------------------------------
def test_innermost_voxel_of_a_box_is_its_centre_and_the_image_edge_is_border():
    region = np.zeros((9, 9, 9), bool)
    region[2:7, 2:7, 2:7] = True
    assert innermost_voxel(region) == (4, 4, 4)
    corner = np.zeros((10, 10), bool)
    corner[0:5, 0:5] = True  # in the image's corner: the edge counts as border, so not (0, 0)
    assert innermost_voxel(corner) == (2, 2)
    flat = np.zeros((7, 7, 1), bool)
    flat[1:6, 1:6, 0] = True  # a 2D mask stored with depth 1: the depth axis is ignored
    assert innermost_voxel(flat) == (3, 3, 0)
    with pytest.raises(ValueError, match="empty"):
        innermost_voxel(np.zeros((3, 3), bool))


def test_innermost_voxel_of_an_l_shape_lies_in_its_thick_part():
    region = np.zeros((12, 12), bool)
    region[1:11, 1:4] = True  # thin arm, 3 wide
    region[6:11, 1:11] = True  # thick foot, 5 high
    i, j = innermost_voxel(region)
    assert region[i, j] and 6 < i < 10 and j >= 3


def test_next_click_targets_the_largest_error_region():
    target = np.zeros((20, 20), bool)
    target[2:12, 2:12] = True
    assert next_click(np.zeros_like(target), target) == ((6, 6), True)  # nothing found: the object's centre
    pred = target.copy()
    pred[2:7, 2:7] = False  # missed a 5x5 square (25 voxels)
    pred[15:18, 15:18] = True  # spilled over a 3x3 square (9 voxels)
    assert next_click(pred, target) == ((4, 4), True)
    pred = target.copy()
    pred[2:5, 2:5] = False  # missed 9 voxels
    pred[14:19, 14:19] = True  # spilled over 25: a background click at the spill's centre
    assert next_click(pred, target) == ((16, 16), False)
    assert next_click(target, target) is None
    with pytest.raises(ValueError, match="differ in shape"):
        next_click(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_next_click_picks_the_largest_connected_component_not_the_largest_kind():
    target = np.zeros((30, 30), bool)
    target[1:5, 1:5] = target[10:14, 1:5] = target[20:24, 1:5] = True  # three missed 16-voxel squares (48)
    pred = np.zeros_like(target)
    pred[10:30, 10:30] = True  # one spilled 20x20 region (400 voxels)... of course the largest
    pred[20:30, 20:30] = False  # ... now 300 voxels, still one component
    step = next_click(pred, target)
    assert step is not None and step[1] is False and pred[step[0]] and not target[step[0]]
    pred[:] = False
    pred[1:3, 1:5] = True  # the first square half found: the other two (16 each) tie, the first in order wins
    assert next_click(pred, target) == ((11, 2), True)


# -- simulate_clicks and clicks-eval with the hand-set click model --------------------------------------
def _ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    return ((grid - np.array(centre)) ** 2).sum(-1) <= radius ** 2


def test_simulate_clicks_places_the_first_click_at_the_innermost_voxel_and_scores_each(clicking_model):
    shape = (32, 32, 24)
    target = _ball(shape, (15, 16, 12), 5)
    image = torch.rand(1, *shape)
    out = simulate_clicks(Predictor(clicking_model, max_size_3d=64), image, target, None, clicks=3, key="ball")
    assert out["clicks"][0] == [[15, 16, 12], True]
    assert len(out["dice"]) == 3 and all(0.0 <= d <= 1.0 for d in out["dice"])
    assert out["dice"][0] > 0.3  # the hand-set refiner puts a blob of about the ball's size at the click
    assert len(out["seconds_per_click"]) == len(out["clicks"]) <= 3
    assert set(out["clicks_to"]) == {"0.85", "0.90"}
    with pytest.raises(ValueError, match="empty"):
        simulate_clicks(Predictor(clicking_model), image, np.zeros(shape, bool))
    with pytest.raises(ValueError, match="shape"):
        simulate_clicks(Predictor(clicking_model), image, np.ones((4, 4, 4), bool))


def test_summary_counts_cases_that_never_reach_a_threshold():
    cases = [{"dice": [0.8, 0.86, 0.95], "clicks_to": {"0.85": 2, "0.90": 3}, "seconds_per_click": [1.0, 2.0, 3.0]},
             {"dice": [0.9, 0.9, 0.9], "clicks_to": {"0.85": 1, "0.90": 1}, "seconds_per_click": [4.0]},
             {"dice": [0.1, 0.2, 0.3], "clicks_to": {"0.85": None, "0.90": None}, "seconds_per_click": [5.0, 6.0, 7.0]}]
    s = summarise_cases(cases)
    assert s["dice"][2]["mean"] == pytest.approx((0.95 + 0.9 + 0.3) / 3)
    assert s["clicks_to"]["0.85"] == {"mean": 1.5, "sd": pytest.approx(0.7071, abs=1e-4), "reached": 2, "never": 1}
    assert s["median_seconds_per_click"] == 4.0


def test_paired_gain_pairs_cases_by_name_and_refuses_runs_that_do_not_pair():
    run = {"clicks": 2, "cases": [{"name": "a", "dice": [0.2, 0.9]}, {"name": "b", "dice": [0.5, 0.5]},
                                  {"name": "new", "dice": [1.0, 1.0]}]}
    base = {"clicks": 2, "cases": [{"name": "b", "dice": [0.4, 0.7]}, {"name": "a", "dice": [0.2, 0.6]},
                                   {"name": "old", "dice": [0.0, 0.0]}]}
    g = paired_click_gain(run, base)
    assert g["n"] == 2 and g["only_in_result"] == ["new"] and g["only_in_baseline"] == ["old"]
    assert g["gain"][0] == {"mean": pytest.approx(0.05), "sd": pytest.approx(0.0707, abs=1e-4), "better": 1, "worse": 0}
    assert g["gain"][1]["mean"] == pytest.approx(0.05) and (g["gain"][1]["better"], g["gain"][1]["worse"]) == (1, 1)
    with pytest.raises(ValueError, match="same --clicks"):
        paired_click_gain(run, {**base, "clicks": 3})
    with pytest.raises(ValueError, match="no case of this run's"):
        paired_click_gain(run, {"clicks": 2, "cases": [{"name": "z", "dice": [0.1, 0.2]}]})
    with pytest.raises(ValueError, match="case a has fewer than 2"):
        paired_click_gain(run, {"clicks": 2, "cases": [{"name": "a", "dice": [0.1]}]})


@pytest.mark.parametrize("content, message", [(None, "no such file"), ("{", "not JSON"),
                                              ('{"clicks": 2}', "not a clicks-eval result")])
def test_clicks_eval_refuses_a_baseline_that_is_not_a_clicks_eval_result(repo, tmp_path, content, message):
    baseline = tmp_path / "base.json"
    if content is not None:
        baseline.write_text(content)
    run = subprocess.run([sys.executable, str(repo / "main.py"), "clicks-eval", "--dataset", "brats", "--data",
                          str(tmp_path), "--compare", str(baseline), "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"--compare {baseline}: {message}" in run.stderr


def brats_folder(root: Path) -> Path:
    """Case a: an edema ball with an enhancing core; b: an edema ball elsewhere; c: no tumour."""
    shape = (32, 32, 24)
    for seed, (name, centre) in enumerate((("a", (12, 14, 10)), ("b", (20, 18, 12)), ("c", None))):
        label = np.zeros(shape, np.float32)
        if centre is not None:
            label[_ball(shape, centre, 5)] = 2.0
            label[_ball(shape, centre, 2)] = 4.0 if name == "a" else 2.0
        rng = np.random.default_rng(seed)
        for file, data in (("Flair.nii.gz", rng.normal(size=shape)), ("T1c.nii.gz", rng.normal(size=shape)),
                           ("OTMultiClass.nii.gz", label)):
            (root / name).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), str(root / name / file))
    return root


def test_clicks_evaluation_on_a_brats_folder_class_agnostic_and_per_label(tmp_path, clicking_model):
    folder = brats_folder(tmp_path / "brats")
    predictor = Predictor(clicking_model, max_size_3d=64)
    result = clicks_evaluation("brats", folder, predictor, clicks=2)
    assert result["n"] == 2 and [c["name"] for c in result["cases"]] == ["a", "b"]
    assert result["skipped"] == [{"name": "c", "reason": "the target is empty"}]
    assert result["label"] is None and len(result["summary"]["dice"]) == 2
    assert result["cases"][0]["clicks"][0] == [[12, 14, 10], True]  # the whole tumour's centre
    enhancing = clicks_evaluation("brats", folder, predictor, label="enhancing_tumor", clicks=1)
    assert enhancing["label"] == "enhancing_tumor" and [c["name"] for c in enhancing["cases"]] == ["a"]
    with pytest.raises(UnknownLabelError):
        clicks_evaluation("brats", folder, predictor, label="red_blood_cell")
    with pytest.raises(DatasetError, match="non-empty target"):
        clicks_evaluation("brats", folder / "c", predictor)


def test_clicks_evaluation_refuses_a_model_without_clicks():
    from unimed.networks.unimednet import unimed_tiny

    with pytest.raises(ValueError, match="not trained for clicks"):
        clicks_evaluation("brats", "/nonexistent", Predictor(unimed_tiny(clicks=False)))


@pytest.mark.slow
def test_clicks_eval_command_writes_json_and_png(repo, tmp_path, clicking_checkpoint):
    folder = brats_folder(tmp_path / "brats")
    out_json, out_png = tmp_path / "clicks.json", tmp_path / "clicks.png"
    run = subprocess.run([sys.executable, str(repo / "main.py"), "clicks-eval", "--dataset", "brats", "--data",
                          str(folder), "--clicks", "2", "--checkpoint", str(clicking_checkpoint), "--json",
                          str(out_json), "--png", str(out_png), "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    doc = json.loads(out_json.read_text())
    assert doc["n"] == 2 and doc["checkpoint"]["version"] == 1 and len(doc["cases"][0]["dice"]) == 2
    assert doc["boundary_refinement"]["band"] == 10.0 and len(doc["cases"][0]["refinement"]) == 2
    assert "median seconds per click" in run.stdout and "mean ± sd" in run.stdout
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = subprocess.run([sys.executable, str(repo / "main.py"), "clicks-eval", "--dataset", "brats", "--data",
                            str(folder), "--clicks", "2", "--checkpoint", str(clicking_checkpoint), "--compare",
                            str(out_json), "--json", str(tmp_path / "again.json"), "--no-progress"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    compared = json.loads((tmp_path / "again.json").read_text())["compared_to"]  # the same checkpoint: no gain
    assert compared["n"] == 2 and compared["path"] == str(out_json)
    assert [(g["mean"], g["better"], g["worse"]) for g in compared["gain"]] == [(0.0, 0, 0), (0.0, 0, 0)]
    assert "paired with the baseline over 2 cases" in again.stdout and "click 2: +0.000" in again.stdout
    fewer = subprocess.run([sys.executable, str(repo / "main.py"), "clicks-eval", "--dataset", "brats", "--data",
                            str(folder), "--clicks", "1", "--compare", str(out_json), "--no-progress"],
                           capture_output=True, text=True, timeout=600)
    assert fewer.returncode == 2 and "has 2 clicks per case, this run 1" in fewer.stderr
    unrefined = subprocess.run([sys.executable, str(repo / "main.py"), "clicks-eval", "--dataset", "brats", "--data",
                                str(folder), "--clicks", "1", "--checkpoint", str(clicking_checkpoint),
                                "--no-boundary-refinement", "--json", str(tmp_path / "net.json"), "--no-progress"],
                               capture_output=True, text=True, timeout=600)
    assert unrefined.returncode == 0, unrefined.stderr
    net = json.loads((tmp_path / "net.json").read_text())
    assert net["boundary_refinement"] is None and net["cases"][0]["refinement"] == [None]
    from unimed.checkpoint import save_checkpoint
    from unimed.networks.unimednet import unimed_tiny

    plain = save_checkpoint(unimed_tiny(clicks=False), tmp_path / "plain.pt", {"version": 1})
    refused = subprocess.run([sys.executable, str(repo / "main.py"), "clicks-eval", "--dataset", "brats", "--data",
                              str(folder), "--checkpoint", str(plain), "--no-progress"],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "not trained for clicks" in refused.stderr and "Traceback" not in refused.stderr


# -- the viewers' click requests -------------------------------------------------------------------------
@pytest.fixture
def parse(app_lib):
    from lib.infers.click_request import parse_click_request

    return lambda params: parse_click_request(params, REG)


def test_slicer_deepedit_request_segments_the_edited_label_last(parse):
    """Slicer sends every model label's clicks and ``label``, the segment being edited."""
    req = parse({"label": "edema", "necrosis": [[1, 2, 3]], "edema": [[4, 5, 6]], "enhancing_tumor": [],
                 "background": [[7, 8, 9]], "task": "segmentation", "labels": []})
    assert [t.label.name for t in req.targets] == ["necrosis", "edema"]
    necrosis, edema = req.targets
    assert edema.foreground == ((4, 5, 6),) and set(edema.background) == {(7, 8, 9), (1, 2, 3)}
    assert necrosis.foreground == ((1, 2, 3),) and set(necrosis.background) == {(7, 8, 9), (4, 5, 6)}


def test_foreground_format_and_box(parse):
    req = parse({"foreground": [[1, 2, 3]], "background": [[3, 2, 1.5]], "box": [0, 0, 0, 5, 5, 5]})
    [t] = req.targets
    assert t.label is None and t.foreground == ((1, 2, 3),) and t.background == ((3, 2, 1.5),)
    assert req.box == (0, 0, 0, 5, 5, 5)
    assert parse({"foreground": [[1, 2, 3]], "labels": ["oedema"]}).targets[0].label.name == "edema"
    assert parse({"box": [0, 0, 0, 5, 5, 5]}).targets[0].label is None  # a box alone: the boxed object
    assert parse({"label": "edema", "edema": [], "roi": [9, 2, 3, 8, 4, 7]}).box == (9, 3, 4, 2, 8, 7)  # Slicer's ROI


@pytest.mark.parametrize("params, message", [
    ({}, "no click and no box"),
    ({"foreground": [[1, 2, 3]], "labels": ["edema", "necrosis"]}, "one structure at a time"),
    ({"foreground": [[True, 2, 3]]}, "2 or 3 numbers"),
    ({"foreground": [[1, 2, 3, 4]]}, "2 or 3 numbers"),
    ({"background": [[1, 2, 3]]}, "foreground click"),
    ({"edema": [[1, 2, 3]], "object": [[3, 4, 5]]}, "segmented alone"),
    ({"foreground": [[1, 2, 3]], "label": 3}, "one label name"),
    ({"foreground": [[1, 2, 3]], "roi": [1, 2, 3]}, r"'roi' must be \[i0, i1"),
])
def test_bad_click_requests_name_the_problem(app_lib, parse, params, message):
    from lib.infers.click_request import ClickRequestError

    with pytest.raises(ClickRequestError, match=message):
        parse(params)


def test_an_unknown_label_is_named(parse):
    with pytest.raises(UnknownLabelError, match="Segment_1"):
        parse({"label": "Segment_1", "edema": [[1, 2, 3]]})


def test_the_shipped_checkpoint_segments_a_tumour_from_one_click(repo, sample):
    """Real data: the sample datastore's FLAIR-only BraTS case, one click at the whole tumour's
    innermost voxel, class-agnostic (measured 0.84 with version 1 and 0.77 with version 2; a
    broken click path gives about 0)."""
    from monai.transforms import LoadImage

    from unimed.checkpoint import load_checkpoint
    from unimed.transforms import load_image

    model, _ = load_checkpoint(repo / "apps" / "unimed" / "model" / "unimed.pt")
    assert model.config.clicks and model.click_encoder is not None
    image = load_image(sample / "brats_pat0001_flair.nii.gz")
    target = np.asarray(LoadImage(image_only=True)(str(sample / "labels" / "final" / "brats_pat0001_flair.nii.gz"))) > 0
    result = simulate_clicks(Predictor(model), image, target, None, clicks=1)
    assert result["dice"][0] >= 0.70, result["dice"]
