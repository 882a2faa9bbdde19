"""Resumable training: a run stopped and resumed ends bit-identical to one that never stopped."""

from __future__ import annotations

import doctest
import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import trainers.run_state
from trainers.config import MixEntry, TrainConfig
from trainers.data import Source, to_grid_item
from trainers.joint import JointTrainer, seed_everything
from trainers.model_card import write_model_card
from trainers.pretrain import STATE_FILE, pretrain
from trainers.run_state import TrainingInterrupted, load_state, save_state
from unimed.datasets.sample import Sample
from unimed.networks.unimednet import unimed_tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sources() -> tuple[Source, Source]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(4):
        img = rng.normal(size=(1, 16, 16, 8)).astype(np.float32)
        lm = np.zeros((16, 16, 8), np.uint8)
        lm[4 + i:12, 4:12, 2:6] = 2
        img[0][lm > 0] += 2
        samples.append(Sample(torch.tensor(img), np.eye(4), "toy", f"s{i}", label_map=lm, seg_labels=("edema",),
                              class_labels={"brain_tumor": i % 2}))
    items = [to_grid_item(s) for s in samples]
    return Source("toy", items, ("segmentation", "classification"), batch_size=2), Source("unlabelled", items, ())


def _trainer(config: TrainConfig) -> JointTrainer:
    seed_everything(config.seed)
    src, unl = _sources()
    return JointTrainer(unimed_tiny(), [src], config, unl)


def _weights(trainer: JointTrainer) -> dict[str, torch.Tensor]:
    return {**trainer.model.state_dict(), **{f"ssl.{k}": v for k, v in trainer.ssl.state_dict().items()}}


@pytest.mark.slow  # 12 steps of the tiny network: 15-50 s on a shared 2-core CPU
@pytest.mark.parametrize("ssl_loss", ["reconstruction", "mean_teacher"])
def test_stopped_and_resumed_training_ends_bit_identical(tmp_path, ssl_loss):
    config = TrainConfig(steps=4, warmup_steps=1, log_every=100, ssl_loss=ssl_loss, ssl_threshold=0.5, ssl_block=8)
    whole = _trainer(config)
    whole.train()

    first = _trainer(config)
    first.train(callback=lambda rep: rep.step == 2)  # stopped after 2 steps
    assert first.step_count == 2
    save_state(first.state_dict(), tmp_path / "state.pt")
    assert not (tmp_path / "state.pt.tmp").exists()
    second = _trainer(config)  # as a new process would: a fresh network, optimiser and random states
    random.random(), np.random.rand(), torch.rand(3)
    second.load_state_dict(load_state(tmp_path / "state.pt"))
    assert second.step_count == 2 and second.elapsed_seconds == first.elapsed_seconds > 0
    second.train()
    assert second.step_count == 4
    ours, theirs = _weights(second), _weights(whole)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), [k for k in ours if not torch.equal(ours[k], theirs[k])]
    if ssl_loss == "mean_teacher":
        assert torch.equal(second.ssl.teacher.backbone.stem.weight, whole.ssl.teacher.backbone.stem.weight)
    # the optimiser's moments too
    assert second.optimizer.state_dict()["state"][0]["exp_avg"].equal(whole.optimizer.state_dict()["state"][0]["exp_avg"])


def test_the_state_holds_the_process_wide_random_states():
    trainer = _trainer(TrainConfig(steps=2))
    state = trainer.state_dict()
    draws = lambda: (random.random(), float(np.random.rand()), float(torch.rand(1)), trainer.rng.random(),  # noqa: E731
                     float(torch.rand(1, generator=trainer.generator)))
    first = draws()
    trainer.load_state_dict(state)
    assert draws() == first


def test_a_resumed_run_keeps_its_schedule_and_time_budget():
    trainer = _trainer(TrainConfig(steps=100, warmup_steps=0, max_minutes=1.0))
    state = trainer.state_dict()
    state["elapsed_seconds"] = 61.0  # the first part spent the whole budget
    trainer.load_state_dict(state)
    assert trainer.train() == []  # no step: the budget counts the earlier part
    longer = _trainer(TrainConfig(steps=100, warmup_steps=0, max_minutes=2.0))  # a new budget is allowed
    longer.load_state_dict(state)
    seen = []
    longer.train(callback=lambda rep: seen.append(longer.optimizer.param_groups[0]["lr"]) or True)
    # half of the 2-minute budget was spent before: the cosine continues from half-way, not from the top
    assert seen[0] == pytest.approx(longer.lr_at(0, 61.0 / 120), rel=1e-3)
    assert seen[0] < 0.6 * longer.config.lr


def test_a_state_of_another_run_is_refused_with_the_difference_named():
    state = _trainer(TrainConfig(steps=4, lr=1e-3)).state_dict()
    other = _trainer(TrainConfig(steps=8, lr=2e-3))
    with pytest.raises(ValueError, match=r"lr: saved 0.001, now 0.002; steps: saved 4, now 8"):
        other.load_state_dict(state)
    mixed = TrainConfig(steps=4, mix={"toy": MixEntry(("segmentation",), batch_size=3)})
    with pytest.raises(ValueError, match=r"mix.toy: saved \(absent\)"):
        _trainer(mixed).load_state_dict(state)
    with pytest.raises(ValueError, match="seed: saved 0, now 1"):
        _trainer(TrainConfig(steps=4, lr=1e-3, seed=1)).load_state_dict(state)
    _trainer(TrainConfig(steps=4, lr=1e-3, max_minutes=9, log_every=1)).load_state_dict(state)  # a new budget is fine


def test_a_torn_step_is_not_saved(monkeypatch):
    trainer = _trainer(TrainConfig(steps=4, warmup_steps=1))

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "batch_losses", broken)
    with pytest.raises(KeyboardInterrupt):
        trainer.step()
    assert trainer.torn
    with pytest.raises(RuntimeError, match="cut off halfway"):
        trainer.state_dict()


def test_a_state_is_saved_atomically_and_checked_when_read(tmp_path):
    path = tmp_path / "state.pt"
    with pytest.raises(FileNotFoundError, match="no training state"):
        load_state(path)
    torch.save({"format": 99}, path)
    with pytest.raises(ValueError, match="not a training state of format 1"):
        load_state(path)
    path.write_bytes(b"half a state")
    with pytest.raises(ValueError, match="not a readable training state"):
        load_state(path)
    assert doctest.testmod(trainers.run_state).failed == 0


# -- pretrain and the CLI ----------------------------------------------------------------------------
def _data(tmp_path):
    """A data folder with one shared dataset: a tiny AdrenalMNIST3D file."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "adrenalmnist3d"
    folder.mkdir(parents=True)
    images = rng.integers(0, 255, size=(6, 8, 8, 8), dtype=np.uint8)
    labels = np.array([[0], [1], [0], [1], [1], [0]], np.uint8)
    np.savez(folder / "adrenalmnist3d.npz", train_images=images, train_labels=labels, val_images=images[:2],
             val_labels=labels[:2])
    return tmp_path / "data"


def _config() -> TrainConfig:
    return TrainConfig(steps=5, warmup_steps=1, augment=True, log_every=100,
                       mix={"medmnist": MixEntry(("classification",), batch_size=2)})


def _pretrain(data, model_dir, **kwargs):
    seed_everything(0)  # the same initial weights for every run
    return pretrain(data, model_dir, _config(), progress=False, evaluate_after=False, model=unimed_tiny(), **kwargs)


@pytest.mark.slow
def test_pretrain_interrupted_and_resumed_publishes_the_same_weights_and_adds_up_its_parts(tmp_path, monkeypatch):
    data = _data(tmp_path)
    whole = _pretrain(data, tmp_path / "whole")
    assert len(whole["parts"]) == 1 and (tmp_path / "whole" / STATE_FILE).is_file()

    step = JointTrainer.step

    def sigterm_after_two(self, *args, **kwargs):
        rep = step(self, *args, **kwargs)
        if self.step_count == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # noted; training stops after this step
        return rep

    monkeypatch.setattr(JointTrainer, "step", sigterm_after_two)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 2") as stopped:
        _pretrain(data, tmp_path / "parts")
    assert stopped.value.path == tmp_path / "parts" / STATE_FILE
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are back
    monkeypatch.undo()
    saved = load_state(stopped.value.path)
    assert saved["step_count"] == 2 and [p["steps"] for p in saved["parts"]] == [2]

    card = _pretrain(data, tmp_path / "parts", resume=True)
    # the final states hold the float32 weights (the published checkpoint halves them)
    ours, theirs = (load_state(tmp_path / run / STATE_FILE) for run in ("parts", "whole"))
    assert ours["model"].keys() == theirs["model"].keys()
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in ours["model"])
    assert all(torch.equal(ours["ssl"][k], theirs["ssl"][k]) for k in ours["ssl"])

    assert [p["steps"] for p in card["parts"]] == [2, 3] and card["steps"] == 5 == whole["steps"]
    assert card["train_minutes"] == round(sum(p["minutes"] for p in card["parts"]), 2)
    assert card["devices"] == ["cpu"] and all(p["device"] == "cpu" and p["started"] for p in card["parts"])
    on_disk = json.loads((tmp_path / "parts" / "model_card.json").read_text())
    assert on_disk["parts"] == card["parts"]
    text = (tmp_path / "parts" / "MODEL_CARD.md").read_text()
    assert "in 2 parts" in text and f"total 5 steps, {card['train_minutes']} minutes on cpu" in text

    with pytest.raises(ValueError, match="has finished its 5 steps"):
        _pretrain(data, tmp_path / "parts", resume=True)
    longer = _config()
    longer.steps = 6
    with pytest.raises(ValueError, match="another config: steps: saved 5, now 6"):  # before the data is read
        pretrain(tmp_path / "no-data", tmp_path / "parts", longer, resume=True)


def _main(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(REPO, "lib"), REPO])}
    return subprocess.run([sys.executable, os.path.join(REPO, "main.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_resume_without_a_saved_run_is_a_one_line_error(tmp_path):
    data = _data(tmp_path)
    out = _main("pretrain", "--data", str(data), "--model-dir", str(tmp_path / "model"), "--resume", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: --resume: no saved run at {tmp_path / 'model' / STATE_FILE} " \
                                 "(pretrain saves one there as it trains)"
    assert "Traceback" not in out.stderr


def test_the_model_card_tells_the_parts_of_a_run_and_their_totals(tmp_path):
    machine = {"platform": "Linux", "cpus": 2, "torch": "2.13.0"}
    parts = [{"started": "2026-11-30T10:00:00+00:00", "minutes": 40.0, "steps": 900, "device": "cpu", "machine": machine},
             {"started": "2026-12-01T09:00:00+00:00", "minutes": 12.5, "steps": 1500, "device": "cuda:0",
              "machine": {**machine, "gpu": "H200"}}]
    card = {"version": 2, "command": "python main.py pretrain --data D", "train_minutes": 52.5, "steps": 2400,
            "parts": parts, "devices": ["cpu", "cuda:0"], "machine": parts[-1]["machine"], "device": "cuda:0",
            "data": {"brats": {"split": "train", "samples": 3, "tasks": ["segmentation"]}}, "unlabelled_samples": 0}
    write_model_card(tmp_path, card)
    text = (tmp_path / "MODEL_CARD.md").read_text()
    assert "in 2 parts (2026-11-30T10:00:00+00:00: 900 steps, 40.0 minutes on cpu; " \
           "2026-12-01T09:00:00+00:00: 1500 steps, 12.5 minutes on cuda:0): " \
           "total 2400 steps, 52.5 minutes on cpu and cuda:0" in text
    assert json.loads((tmp_path / "model_card.json").read_text())["parts"] == parts
    write_model_card(tmp_path, {**card, "parts": parts[:1], "devices": ["cpu"], "device": "cpu"})
    assert "parts" not in (tmp_path / "MODEL_CARD.md").read_text().split("\n")[2]


def test_the_model_card_lists_its_notes_before_the_data(tmp_path):
    machine = {"platform": "Linux", "cpus": 2, "torch": "2.13.0"}
    card = {"version": 2, "command": "python main.py pretrain --data D", "train_minutes": 1.0, "steps": 10,
            "parts": [], "machine": machine, "device": "cpu", "unlabelled_samples": 0,
            "data": {"brats": {"split": "train", "samples": 3, "tasks": ["segmentation"]}},
            "notes": ["Trained on a GPU.", "No figures of its own."]}
    write_model_card(tmp_path, card)
    lines = (tmp_path / "MODEL_CARD.md").read_text().split("\n")
    assert lines[4:6] == ["- Trained on a GPU.", "- No figures of its own."]
    assert lines.index("| source | split | samples | tasks |") > 6
