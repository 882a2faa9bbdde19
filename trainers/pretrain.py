"""Training the shipped checkpoint on every dataset of a shared data folder, then measuring it.

``python main.py pretrain --data ../shared/data`` runs :func:`pretrain`: it reads the training
splits, trains one UniMed jointly (fixed seed, a wall-clock budget), publishes the checkpoint
and writes a model card with the validation figures beside it.

The run's full state is saved to ``MODEL_DIR/pretrain_state.pt`` every
``TrainConfig.checkpoint_minutes``, at the end, and when Ctrl-C or SIGTERM stops it (after the
step in progress); ``pretrain --resume`` continues from it, on this machine or another, on the
CPU or a GPU. The model card adds up the steps, minutes and devices of every part of the run.

``pretrain --hold-out brats:CASE`` runs one fold of a cross-validation of the whole recipe
(``scripts/pretrain_cv.sh`` runs every fold and the ``--all-splits`` run that ships);
``python main.py cv-card RUN_DIR... --model-dir DIR`` puts the folds' figures
(:func:`trainers.model_card.cross_validation_summary`) into the shipped run's card.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from trainers.config import MixEntry, TrainConfig
from trainers.data import Source, to_grid_item
from trainers.distillation import TeacherScores, read_teachers, with_teacher_scores
from trainers.joint import (JointTrainer, StepReport, check_device, init_distributed, is_main_process, replicas_agree,
                            seed_everything)
from trainers.model_card import HELD_OUT, write_model_card
from trainers.run_state import (TrainingInterrupted, check_same_run, deferred_interrupts, load_state, rank_state_path,
                                save_state)
from unimed.datasets import TrainingShare, shared_datasets
from unimed.datasets.sample import Sample
from unimed.labels import LabelRegistry
from unimed.modalities import modalities_from_name
from unimed.model_store import ModelStore
from unimed.networks.unimednet import UniMed, unimed_small
from unimed.transforms import image_affine, load_image

__all__ = ["DATASETS", "STATE_FILE", "Holdout", "default_config", "mix_entry", "make_source", "images_only",
           "split_cases", "without_label", "shows_label", "build_sources", "pretrain", "validate"]

logger = logging.getLogger(__name__)


#: kind -> spec of the datasets in the shared data layout (:func:`unimed.datasets.shared_datasets`)
DATASETS = shared_datasets()

#: the run's state, in the model folder, unless ``pretrain(state_path=...)`` says otherwise
STATE_FILE = "pretrain_state.pt"

#: unlabelled volumes of the shared folder (their label maps are a model's output, not experts')
UNLABELLED = ("totalseg_examples/example_ct_sm.nii.gz", "totalseg_examples/example_mr_sm.nii.gz")


def mix_entry(share: TrainingShare) -> MixEntry:
    """A dataset's :class:`~unimed.datasets.TrainingShare` as the trainer's :class:`MixEntry`.

    Example:
        >>> mix_entry(DATASETS["voc"].training)
        MixEntry(tasks=('detection',), batch_size=6, every=1, channel_dropout=0.0, modality_dropout=0.1, augment_intensity=True, clicks=0.0)
    """
    return MixEntry(share.tasks, share.batch_size, share.every, share.channel_dropout, share.modality_dropout,
                    share.augment_intensity, share.clicks)


def default_config(minutes: float = 80.0) -> TrainConfig:
    """The shipped checkpoint's recipe: every shared dataset's default training share, then the
    unlabelled volumes' self-supervised share."""
    mix = {kind: mix_entry(spec.training) for kind, spec in DATASETS.items()}
    mix["unlabelled"] = MixEntry((), batch_size=1, every=4, channel_dropout=0.5, modality_dropout=0.25)
    return TrainConfig(steps=2400, max_minutes=minutes, lr=1e-3, mix=mix)


def make_source(name: str, samples: list[Sample], mix: MixEntry) -> Source:
    """A training source of ``samples`` on the model grid, with ``mix``'s tasks and share
    (no tasks: images for the self-supervised loss).

    Raises:
        ValueError: no samples.
    """
    items = [to_grid_item(s) for s in samples]
    logger.info("source %s: %d samples, tasks %s", name, len(items), ", ".join(mix.tasks) or "(self-supervised)")
    return Source(name, items, mix.tasks, mix.batch_size, mix.every, mix.channel_dropout, mix.modality_dropout,
                  mix.augment_intensity, mix.clicks)


def images_only(samples: list[Sample]) -> list[Sample]:
    """The samples' images without their annotations, as the self-supervised source takes them
    (reconstruction needs no label)."""
    return [Sample(s.image, s.affine, "unlabelled", s.name, modalities=s.modalities) for s in samples]


@dataclass(frozen=True)
class Holdout:
    """Cases of one dataset that a run keeps out of training and scores instead (one fold of a
    cross-validation of the whole recipe): the dataset trains on every other case of its
    training and validation splits.

    Attributes:
        dataset: a dataset kind of :data:`DATASETS`.
        cases: the held-out cases' names (:attr:`Sample.name`, e.g. a BraTS case folder's name).

    Example:
        >>> Holdout.parse("brats:brats_2013_pat0001_1")
        Holdout(dataset='brats', cases=('brats_2013_pat0001_1',))
    """

    dataset: str
    cases: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> "Holdout":
        """``DATASET:CASE[,CASE...]`` as a :class:`Holdout`.

        Raises:
            ValueError: not of that form, or an unknown dataset kind.
        """
        kind, sep, names = text.partition(":")
        cases = tuple(n.strip() for n in names.split(",") if n.strip())
        if not sep or not cases:
            raise ValueError(f"hold-out {text!r}: write DATASET:CASE[,CASE...], e.g. brats:brats_2013_pat0001_1")
        if kind not in DATASETS:
            raise ValueError(f"hold-out {text!r}: unknown dataset {kind!r} (one of {', '.join(DATASETS)})")
        return cls(kind, cases)


def split_cases(data: Path, kind: str, holdout: Holdout | None = None,
                all_splits: bool = False) -> tuple[list[Sample], list[Sample] | None, str]:
    """One dataset's training cases, its held-out cases (None: its validation split, read by
    :func:`validate`) and a description of the training split for the model card.

    Raises:
        ValueError: a held-out case the dataset does not hold (the message lists its cases).
    """
    spec = DATASETS[kind]
    folder = data / spec.folder
    holds_out = holdout is not None and holdout.dataset == kind
    if not (holds_out or all_splits):
        return spec.read(folder, spec.train_split), None, spec.train_split
    every = spec.read(folder, spec.train_split) + spec.read(folder, spec.val_split)
    if not holds_out:
        return every, None, f"{spec.train_split}+{spec.val_split}"
    names = [s.name for s in every]
    missing = [c for c in holdout.cases if c not in names]
    if missing:
        raise ValueError(f"hold-out: {kind} at {folder} has no case {', '.join(missing)} (it has {', '.join(names)})")
    train = [s for s in every if s.name not in holdout.cases]
    held = [s for s in every if s.name in holdout.cases]
    return train, held, f"{spec.train_split}+{spec.val_split} without {', '.join(holdout.cases)}"


def without_label(samples: list[Sample], name: str) -> list[Sample]:
    """The samples with every annotation of label ``name`` taken away: its voxels become
    background, its boxes go, and it is no longer listed as annotated for any task (a run that
    leaves a label out, so that ``teach`` can measure learning it as new).

    Example:
        >>> s = Sample(torch.zeros(1, 4, 4), np.eye(4), "msd_patches", "p", label_map=np.full((4, 4), 6, np.uint8),
        ...            seg_labels=("lung_tumor",), class_labels={"lung_tumor": 1})
        >>> out = without_label([s], "lung_tumor")[0]
        >>> int(out.label_map.max()), out.seg_labels, out.class_labels
        (0, (), {})
    """
    label = LabelRegistry().get(name)
    out = []
    for s in samples:
        label_map = None if s.label_map is None else np.where(np.asarray(s.label_map) == label.id, 0, s.label_map)
        keep = [i for i, b in enumerate(s.box_labels) if b != label.name]
        boxes = None if s.boxes is None else np.asarray(s.boxes).reshape(-1, 6)[keep]
        out.append(replace(s, label_map=None if label_map is None else label_map.astype(np.asarray(s.label_map).dtype),
                           seg_labels=tuple(n for n in s.seg_labels if n != label.name), boxes=boxes,
                           box_labels=[s.box_labels[i] for i in keep],
                           det_labels=tuple(n for n in s.det_labels if n != label.name),
                           class_labels=None if s.class_labels is None else
                           {k: v for k, v in s.class_labels.items() if k != label.name}))
    return out


def shows_label(sample: Sample, name: str) -> bool:
    """Whether a case annotates label ``name`` as present: in its mask, a box, or its image-level label.

    Example:
        >>> s = Sample(torch.zeros(3, 4, 4), np.eye(4), "voc", "p", boxes=np.zeros((1, 6)), box_labels=["platelet"])
        >>> shows_label(s, "platelet"), shows_label(s, "red_blood_cell")
        (True, False)
    """
    label = LabelRegistry().get(name)
    if sample.label_map is not None and bool((np.asarray(sample.label_map) == label.id).any()):
        return True
    return label.name in sample.box_labels or bool((sample.class_labels or {}).get(label.name))


def _annotates_anything(samples: list[Sample]) -> bool:
    return any(s.seg_labels or s.det_labels or s.class_labels for s in samples)


def build_sources(data: Path, config: TrainConfig, holdout: Holdout | None = None, all_splits: bool = False,
                  leave_out: str | None = None, teachers: dict[str, TeacherScores] | None = None,
                  drop_showing: bool = False) -> tuple[list[Source], Source | None, dict[str, Any]]:
    """Grid items of every dataset's training cases, as the config's mix wants them.

    ``leave_out`` names a label whose annotations every dataset loses (:func:`without_label`);
    a dataset left with nothing annotated does not train. With ``drop_showing``, the cases that
    show it go altogether (:func:`shows_label`): what teaching that label replays, since a case
    that shows it unannotated teaches that it is background (the platelets of the blood smears
    that replay the red and white cells). ``teachers`` (by dataset, from
    :func:`trainers.distillation.read_teachers`) give the items they score soft classification
    targets (:func:`trainers.distillation.with_teacher_scores`).

    Returns:
        The labelled sources, the self-supervised source (None: no unlabelled images) and, per
        dataset, ``{"split": description, "held_out": samples or None}``
        (:func:`split_cases`).
    """
    sources, plan = [], {}
    brats_train: list[Sample] = []
    for name, spec in DATASETS.items():
        if name not in config.mix:
            continue
        if not (data / spec.folder).exists():
            logger.warning("no %s data at %s: training without it", name, data / spec.folder)
            continue
        train, held, split = split_cases(data, name, holdout, all_splits)
        if leave_out is not None:
            if drop_showing:
                train = [s for s in train if not shows_label(s, leave_out)]
            train = without_label(train, leave_out)
            if not _annotates_anything(train):
                logger.info("%s annotates nothing but %s: training without it", name, leave_out)
                continue
        plan[name] = {"split": split, "held_out": held}
        if name == "brats":
            brats_train = train
        sources.append(make_source(name, train, config.mix[name]))
        if teachers and name in teachers:
            sources[-1].items = with_teacher_scores(sources[-1].items, teachers[name])
    if holdout is not None and holdout.dataset not in plan:
        raise ValueError(f"hold-out: {data} holds no {holdout.dataset} data to hold cases out of")
    unlabelled = None
    if "unlabelled" in config.mix:
        samples = []
        for rel in UNLABELLED:
            if (data / rel).exists():
                img = load_image(data / rel)
                samples.append(Sample(img, image_affine(img), "unlabelled", rel,
                                      modalities=modalities_from_name(rel, int(img.shape[0]))))
        # the labelled volumes' images count as unlabelled too (reconstruction needs no label);
        # only the training cases': a held-out case stays unseen
        samples += images_only(brats_train)
        if samples:
            unlabelled = make_source("unlabelled", samples, config.mix["unlabelled"])
    return sources, unlabelled, plan


def pretrain(
    data: str | Path,
    model_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    evaluate_after: bool = True,
    model: UniMed | None = None,
    device: str = "cpu",
    resume: bool = False,
    state_path: str | Path | None = None,
    holdout: Holdout | None = None,
    all_splits: bool = False,
    leave_out: str | None = None,
    teachers: str | Path | None = None,
) -> dict[str, Any]:
    """Train on ``data`` (a folder laid out like ``../shared/data``), publish, write the model card.

    Args:
        data: the data folder.
        model_dir: where the checkpoint is published and the model card written.
        config: the recipe (default: :func:`default_config`).
        progress: show a progress bar.
        evaluate_after: measure every dataset's validation split into the card.
        model: the network to train (default: a fresh :func:`unimed_small`).
        device: ``cpu``, ``cuda`` or ``cuda:N``; under ``torchrun`` with a GPU, each process
            takes the GPU of its ``LOCAL_RANK``.
        resume: continue the run saved at ``state_path`` (its config must be ``config``, but for
            ``max_minutes``: the whole run's budget, every part counted).
        state_path: where the run's state is saved every ``config.checkpoint_minutes``, at the
            end and on SIGINT/SIGTERM (default ``MODEL_DIR/pretrain_state.pt``; under
            ``torchrun``, rank N > 0 keeps its own ``pretrain_state.rankN.pt`` beside it).
        holdout: cases of one dataset kept out of training (from its training and validation
            splits) and scored instead of its validation split: one fold of a cross-validation
            of the whole recipe.
        all_splits: train every dataset on its training and validation splits (the shipped
            model after the recipe's figures were measured with held-out runs); there is no
            validation split left to score, so the card has no validation figures.
        leave_out: a label the run never sees: the network's label space lacks it and every
            dataset loses its annotations (:func:`without_label`), so that ``teach`` can then
            measure learning it as a new label (leave-one-label-out).
        teachers: a folder of teacher files (:mod:`trainers.distillation`): single-task
            specialists' scores that the classification targets of the items they score blend
            in (knowledge distillation).

    Returns:
        The model card as a dict (empty on the processes other than rank 0).

    Raises:
        ValueError: an unknown device, a folder that holds none of the datasets, a saved run
            that has another config or has already finished, a held-out case the data does not
            hold, ``holdout`` with ``all_splits``, or an unknown ``leave_out`` label.
        FileNotFoundError: ``resume`` without a saved state.
        TrainingInterrupted: SIGINT or SIGTERM stopped training (after the state was saved).
    """
    data, model_dir = Path(data), Path(model_dir)
    config = config or default_config()
    if holdout is not None and all_splits:
        raise ValueError("hold out cases or train on every split, not both")
    target = check_device(device)
    distributed = init_distributed(target)
    if distributed and target.type == "cuda":
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    rank = torch.distributed.get_rank() if distributed else 0
    state_path = rank_state_path(Path(state_path) if state_path else model_dir / STATE_FILE, rank)
    state = load_state(state_path) if resume else None
    labels = LabelRegistry().names
    if leave_out is not None:
        leave_out = LabelRegistry().get(leave_out).name  # an unknown label: UnknownLabelError, a ValueError
        labels = [n for n in labels if n != leave_out]
    cases = {"hold_out": [holdout.dataset, list(holdout.cases)] if holdout else None, "all_splits": all_splits}
    if leave_out is not None:
        cases["leave_out"] = leave_out
    taught = read_teachers(teachers) if teachers is not None else None
    if taught:
        cases["teachers"] = {name: str(t.path) for name, t in taught.items()}
    if state is not None:  # refused before the data is read
        check_same_run(state, config)
        if state.get("cases", {"hold_out": None, "all_splits": False}) != cases:
            raise ValueError(f"the run saved at {state_path} trained on other cases ({state.get('cases')}): resume it "
                             "with the same --hold-out / --all-splits / --leave-out-label / --teachers")
        if state["step_count"] >= config.steps:
            raise ValueError(f"the run saved at {state_path} has finished its {state['step_count']} steps: "
                             "nothing to resume")
        spent = state["elapsed_seconds"] / 60
        if config.max_minutes is not None and spent >= config.max_minutes:
            raise ValueError(f"the run saved at {state_path} has spent {spent:.1f} minutes, its whole budget of "
                             f"{config.max_minutes}: give a larger one (--minutes) to continue")
    seed_everything(config.seed)
    sources, unlabelled, plan = build_sources(data, config, holdout, all_splits, leave_out, taught)
    if not sources:
        raise ValueError(f"{data} holds none of the datasets {', '.join(s.folder for s in DATASETS.values())}")
    model = (model or unimed_small(labels=tuple(labels))).to(target)
    if leave_out is not None and leave_out in model.registry:
        raise ValueError(f"leave_out: the given network's label space has {leave_out!r}")
    trainer = JointTrainer(model, sources, config, unlabelled)
    parts: list[dict[str, Any]] = []
    if state is not None:
        trainer.load_state_dict(state)
        parts = list(state["parts"])
        logger.info("resuming %s at step %d/%d, %.1f of %s minutes spent", state_path, trainer.step_count, config.steps,
                    trainer.elapsed_seconds / 60, config.max_minutes)
    part = _Part(trainer, target)
    history = _train_saving(trainer, lambda: {**trainer.state_dict(), "parts": parts + [part.record()], "cases": cases},
                            state_path, progress)
    parts.append(part.record())
    agree = replicas_agree(model)
    if not is_main_process():
        return {}
    card: dict[str, Any] = {
        "data": {s.name: {"samples": len(s.items), "split": plan[s.name]["split"], "tasks": list(s.tasks)}
                 for s in sources},
        "unlabelled_samples": len(unlabelled.items) if unlabelled else 0,
        "steps": trainer.step_count,
        "train_minutes": round(sum(p["minutes"] for p in parts), 2),
        "parts": parts,
        "devices": sorted({p["device"] for p in parts}),
        "final_losses": history[-1].losses if history else {},
        "machine": part.machine,
        "config": config.to_dict(),
        "device": str(target),
        "command": f"python main.py pretrain --data {data}" + (" --all-splits" if all_splits else "") + (
            f" --hold-out {holdout.dataset}:{','.join(holdout.cases)}" if holdout else "") + (
            f" --leave-out-label {leave_out}" if leave_out else "") + (
            f" --teachers {teachers}" if teachers is not None else ""),
        "processes": torch.distributed.get_world_size() if distributed else 1,
        "replicas_agree": agree,
        "state": str(state_path),
    }
    if taught:
        card["teachers"] = {name: {"teacher": t.teacher, "split": t.split, "file": str(t.path),
                                   "items_scored": sum(it.teacher_scores is not None for s in sources if s.name == name
                                                       for it in s.items)}
                            for name, t in taught.items()}
    version = ModelStore(model_dir).publish(model, {"kind": "pretrain", "steps": trainer.step_count})
    card["version"] = version.number
    if evaluate_after and not all_splits:
        held = {name: p["held_out"] for name, p in plan.items() if p["held_out"] is not None}
        card["validation"] = validate(model, data, progress=progress, held_out=held, only=set(plan),
                                      leave_out=leave_out)
    write_model_card(model_dir, card)
    return card


class _Part:
    """One part of a run (from its start or a resume to its stop): when, how far, where."""

    def __init__(self, trainer: JointTrainer, device: torch.device):
        self.trainer, self.device = trainer, device
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.first_step, self.seconds_before = trainer.step_count, trainer.elapsed_seconds
        self.machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": str(torch.__version__)}
        if device.type == "cuda":
            self.machine["gpu"] = torch.cuda.get_device_name(device)

    def record(self) -> dict[str, Any]:
        """``{started, minutes, steps, device, machine}`` of the part so far."""
        return {"started": self.started, "minutes": round((self.trainer.elapsed_seconds - self.seconds_before) / 60, 2),
                "steps": self.trainer.step_count - self.first_step, "device": str(self.device), "machine": self.machine}


def _train_saving(trainer: JointTrainer, state: Callable[[], dict[str, Any]], path: Path,
                  progress: bool) -> list[StepReport]:
    """``trainer.train()``, saving ``state()`` to ``path`` every ``checkpoint_minutes``, at the end,
    and, when SIGINT or SIGTERM stops training after its step, before raising
    :class:`TrainingInterrupted`. An interrupt that cuts a step off halfway (a second Ctrl-C)
    leaves the last saved state in place."""
    every = trainer.config.checkpoint_minutes * 60
    last = time.perf_counter()

    def on_step(report: StepReport) -> bool:
        nonlocal last
        if time.perf_counter() - last >= every:
            save_state(state(), path)
            last = time.perf_counter()
        return interrupts.requested

    with deferred_interrupts() as interrupts:
        try:
            history = trainer.train(callback=on_step, progress=progress)
        except KeyboardInterrupt:
            if not trainer.torn:
                save_state(state(), path)
            raise
        save_state(state(), path)
    if interrupts.signum is not None:
        raise TrainingInterrupted(interrupts.signum, trainer.step_count, path)
    return history


def validate(model: UniMed, data: Path, progress: bool = False,
             held_out: dict[str, list[Sample]] | None = None, only: set[str] | None = None,
             leave_out: str | None = None) -> dict[str, Any]:
    """The validation split of every dataset the folder holds (of ``only``'s, when given),
    through the served inference path; for a dataset in ``held_out``, its held-out cases instead.
    A label left out of the run (``leave_out``) is taken out of the cases first
    (:func:`without_label`): the network cannot be asked for it."""
    from unimed.evaluation import evaluate, evaluate_samples, score_samples
    from unimed.predictor import Predictor

    predictor = Predictor(model)
    out = {}
    for name, spec in DATASETS.items():
        if not (data / spec.folder).exists() or (only is not None and name not in only):
            continue  # trained without it (build_sources said so)
        if held_out and name in held_out:
            cases = without_label(held_out[name], leave_out) if leave_out else held_out[name]
            result = {"dataset": spec.kind, "split": f"{HELD_OUT}: " + ", ".join(s.name for s in cases),
                      "n": len(cases), "metrics": evaluate_samples(spec.kind, cases, predictor, progress=progress),
                      "command": f"python main.py pretrain --data {data} --hold-out {name}:"
                                 + ",".join(s.name for s in cases)}
        elif leave_out is None:
            result = evaluate(spec.kind, data / spec.folder, predictor, split=spec.val_split, progress=progress)
            result["command"] = (f"python main.py evaluate --dataset {spec.kind} --data {data / spec.folder} "
                                 f"--split {spec.val_split}")
        else:
            cases = [s for s in without_label(spec.read(data / spec.folder, spec.val_split), leave_out)
                     if spec.annotated(s)]
            result = {"dataset": spec.kind, "split": spec.val_split,
                      **score_samples(spec.kind, cases, predictor, progress),
                      "command": f"python main.py evaluate --dataset {spec.kind} --data {data / spec.folder} "
                                 f"--split {spec.val_split} (without {leave_out})"}
        out[name] = result
        logger.info("validation %s: %s", name, result["metrics"])
    return out
