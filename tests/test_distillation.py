"""Distillation from single-task teachers: teacher files, soft classification targets, the
pretrain wiring and the accuracy benchmark writing them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.test_evaluation import medmnist_file
from trainers.data import GridItem
from trainers.distillation import (TEACHER_FORMAT, TeacherScores, platt_scaling, read_teachers, sigmoid_logit,
                                   with_teacher_scores, write_teacher_scores)
from trainers.pretrain import build_sources, default_config
from unimed.loss_weights import LossWeights
from unimed.tasks.classification import classification_loss

POS, NEG = "adrenal_hyperplasia", "adrenal_normal"


def _item(name: str, labels: dict[str, int] | None) -> GridItem:
    return GridItem(torch.zeros(1, 4, 4, 4), None, (), None, [], (), labels, "medmnist", name)


def test_teacher_file_round_trip(tmp_path):
    teacher = TeacherScores("medmnist", "3D ResNet-18", "train", {"train_0000": {POS: 0.25, NEG: 0.75}})
    path = write_teacher_scores(tmp_path / "medmnist.json", teacher, steps=3)
    body = json.loads(path.read_text())
    assert body["format"] == TEACHER_FORMAT and body["steps"] == 3 and not list(tmp_path.glob("*.tmp"))
    back = read_teachers(tmp_path)
    assert list(back) == ["medmnist"] and back["medmnist"].scores == {"train_0000": {POS: 0.25, NEG: 0.75}}
    assert back["medmnist"].teacher == "3D ResNet-18" and back["medmnist"].path == path


@pytest.mark.parametrize("body,message", [
    ("not json", "not readable JSON"),
    ({"format": "other"}, "format must be 'unimed-teacher/1'"),
    ({"format": TEACHER_FORMAT, "dataset": "coco", "scores": {"a": {POS: 0.5}}}, "unknown dataset 'coco'"),
    ({"format": TEACHER_FORMAT, "dataset": "medmnist", "scores": {}}, "'scores' must map sample names"),
    ({"format": TEACHER_FORMAT, "dataset": "medmnist", "scores": {"a": {POS: 1.5}}}, "'a' 'adrenal_hyperplasia' scores 1.5"),
    ({"format": TEACHER_FORMAT, "dataset": "medmnist", "scores": {"a": {POS: float("nan")}}}, "not a probability"),
])
def test_a_bad_teacher_file_is_named(tmp_path, body, message):
    path = tmp_path / "t.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    with pytest.raises(ValueError, match=message) as err:
        read_teachers(tmp_path)
    assert str(path) in str(err.value)


def test_teacher_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        read_teachers(tmp_path / "absent")
    with pytest.raises(ValueError, match="holds no teacher file"):
        read_teachers(tmp_path)
    teacher = TeacherScores("medmnist", "a", "train", {"x": {POS: 0.5}})
    write_teacher_scores(tmp_path / "a.json", teacher)
    write_teacher_scores(tmp_path / "b.json", teacher)
    with pytest.raises(ValueError, match="a second teacher of medmnist"):
        read_teachers(tmp_path)


def test_items_get_the_scores_of_their_own_labels():
    items = [_item("a", {POS: 1}), _item("b", {POS: 0}), _item("c", None)]
    teacher = TeacherScores("medmnist", "t", "train", {"a": {POS: 0.9, NEG: 0.1}, "c": {POS: 0.2}, "z": {POS: 0.5}})
    out = with_teacher_scores(items, teacher)  # one scored item: one class, nothing to calibrate on
    assert [it.teacher_scores for it in out] == [{POS: 0.9}, None, None]
    assert out[0].class_labels == {POS: 1} and items[0].teacher_scores is None  # the input is left alone
    with pytest.raises(ValueError, match="scores none of the 3 medmnist training items.*'z'"):
        with_teacher_scores(items, TeacherScores("medmnist", "t", "train", {"z": {POS: 0.5}}))


def test_a_biased_teacher_passes_on_its_ranking_not_its_bias():
    """Like the AdrenalMNIST3D peer: ranks well, but scores most images positive where 20 % are."""
    rng = np.random.default_rng(0)
    labels = (rng.random(500) < 0.2).astype(int)
    scores = 1 / (1 + np.exp(-(1.5 + 2.0 * (labels - 0.5) + rng.normal(size=500))))  # mostly above 0.5
    assert scores.mean() > 0.6
    a, b = platt_scaling(scores, labels)
    rescaled = np.array([sigmoid_logit(p, a, b) for p in scores])
    assert abs(rescaled.mean() - labels.mean()) < 0.02  # the level now matches the labels
    assert (np.argsort(rescaled) == np.argsort(scores)).all() and a > 0  # the ranking is kept
    assert ((rescaled > 0.5) == labels).mean() > ((scores > 0.5) == labels).mean() + 0.2
    items = [_item(f"i{k}", {POS: int(y)}) for k, y in enumerate(labels)]
    teacher = TeacherScores("medmnist", "t", "train", {f"i{k}": {POS: float(p)} for k, p in enumerate(scores)})
    calibrated = [it.teacher_scores[POS] for it in with_teacher_scores(items, teacher)]
    assert calibrated == pytest.approx(rescaled.tolist())
    raw = [it.teacher_scores[POS] for it in with_teacher_scores(items, teacher, calibrate=False)]
    assert raw == pytest.approx(scores.tolist())
    with pytest.raises(ValueError, match="as many labels as scores"):
        platt_scaling([0.5, 0.6], [1])


def test_the_loss_moves_its_target_towards_the_teacher():
    valid = torch.tensor([[False, True, True]])
    targets = torch.tensor([[0, 1, 0]])
    logits = torch.zeros(1, 3, requires_grad=True)
    w = LossWeights(distill=0.5)
    hard = classification_loss(logits, targets, valid, w)["cls"]
    agree = classification_loss(logits, targets, valid, w, teacher=torch.tensor([[0.3, 1.0, 0.0]]))["cls"]
    assert float(agree.detach()) == pytest.approx(float(hard.detach()))  # a teacher that agrees with the labels changes nothing
    # the teacher doubts both: the targets become 0.75 and 0.25, and the logits' gradient shrinks to half
    (grad_hard,) = torch.autograd.grad(hard, logits)
    soft = classification_loss(logits, targets, valid, w, teacher=torch.tensor([[0.3, 0.5, 0.5]]))["cls"]
    (grad_soft,) = torch.autograd.grad(soft, logits)
    assert torch.allclose(grad_soft, grad_hard / 2) and float(grad_soft[0, 1]) < 0 < float(grad_soft[0, 2])
    # NaN: no teacher for that token, its label alone
    part = classification_loss(logits, targets, valid, w, teacher=torch.tensor([[0.0, float("nan"), 0.5]]))["cls"]
    (grad_part,) = torch.autograd.grad(part, logits)
    assert grad_part[0, 1] == pytest.approx(float(grad_hard[0, 1])) and grad_part[0, 2] == pytest.approx(float(grad_soft[0, 2]))
    with pytest.raises(ValueError, match=r"distill .* must be in \[0, 1\], got 1.5"):
        LossWeights(distill=1.5)


def test_pretrain_sources_carry_the_teachers_scores(tmp_path):
    data = tmp_path / "data"
    medmnist_file(data / "adrenalmnist3d")
    write_teacher_scores(tmp_path / "t" / "medmnist.json", TeacherScores(
        "medmnist", "t", "train", {"train_0000": {POS: 0.8, NEG: 0.2}, "train_0002": {POS: 0.6, NEG: 0.4}}))
    config = default_config()
    sources, _, _ = build_sources(data, config, teachers=read_teachers(tmp_path / "t"))
    (medmnist,) = [s for s in sources if s.name == "medmnist"]
    assert {it.name: it.teacher_scores for it in medmnist.items} == {
        "train_0000": {POS: 0.8, NEG: 0.2}, "train_0001": None, "train_0002": {POS: 0.6, NEG: 0.4}}
    assert all(it.class_prevalence for it in medmnist.items)  # balancing is kept


@pytest.mark.slow
def test_cli_pretrain_teachers_errors_are_one_line(tmp_path):
    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    data = tmp_path / "data"
    medmnist_file(data / "adrenalmnist3d")
    out = subprocess.run([sys.executable, str(repo / "main.py"), "pretrain", "--data", str(data), "--model-dir",
                          str(tmp_path / "m"), "--teachers", str(tmp_path / "none"), "--steps", "1", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "teachers:" in out.stderr and "is not a folder" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_run_saved_before_distill_existed_still_resumes():
    from trainers.run_state import check_same_run, comparable_config

    config = default_config()
    saved = comparable_config(config)
    del saved["loss"]["distill"]  # a state written before the field was added
    check_same_run({"config": saved}, config)
    config.loss.distill = 0.8  # but not with another teacher share than the one it trained with
    with pytest.raises(ValueError, match=r"loss.distill: saved \(absent\), now 0.8"):
        check_same_run({"config": saved}, config)
