"""Training the shipped checkpoint on every dataset of a shared data folder, then measuring it.

``python main.py pretrain --data ../shared/data`` runs :func:`pretrain`: it reads the training
splits, trains one UniMed jointly (fixed seed, a wall-clock budget), publishes the checkpoint
and writes a model card with the validation figures beside it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from trainers.config import MixEntry, TrainConfig
from trainers.data import Source, to_grid_item
from trainers.joint import JointTrainer, check_device, init_distributed, is_main_process, replicas_agree, seed_everything
from unimed.datasets import TrainingShare, shared_datasets
from unimed.datasets.sample import Sample
from unimed.modalities import modalities_from_name
from unimed.model_store import ModelStore
from unimed.networks.unimednet import UniMed, unimed_small
from unimed.transforms import image_affine, load_image

__all__ = ["DATASETS", "default_config", "mix_entry", "make_source", "images_only", "build_sources", "pretrain"]

logger = logging.getLogger(__name__)


#: kind -> spec of the datasets in the shared data layout (:func:`unimed.datasets.shared_datasets`)
DATASETS = shared_datasets()

#: unlabelled volumes of the shared folder (their label maps are a model's output, not experts')
UNLABELLED = ("totalseg_examples/example_ct_sm.nii.gz", "totalseg_examples/example_mr_sm.nii.gz")


def mix_entry(share: TrainingShare) -> MixEntry:
    """A dataset's :class:`~unimed.datasets.TrainingShare` as the trainer's :class:`MixEntry`.

    Example:
        >>> mix_entry(DATASETS["voc"].training)
        MixEntry(tasks=('detection',), batch_size=6, every=1, channel_dropout=0.0, modality_dropout=0.1)
    """
    return MixEntry(share.tasks, share.batch_size, share.every, share.channel_dropout, share.modality_dropout)


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
    return Source(name, items, mix.tasks, mix.batch_size, mix.every, mix.channel_dropout, mix.modality_dropout)


def images_only(samples: list[Sample]) -> list[Sample]:
    """The samples' images without their annotations, as the self-supervised source takes them
    (reconstruction needs no label)."""
    return [Sample(s.image, s.affine, "unlabelled", s.name, modalities=s.modalities) for s in samples]


def build_sources(data: Path, config: TrainConfig) -> tuple[list[Source], Source | None]:
    """Grid items of every dataset's training split, as the config's mix wants them."""
    sources = []
    for name, spec in DATASETS.items():
        if name not in config.mix:
            continue
        if not (data / spec.folder).exists():
            logger.warning("no %s data at %s: training without it", name, data / spec.folder)
            continue
        sources.append(make_source(name, spec.read(data / spec.folder, spec.train_split), config.mix[name]))
    unlabelled = None
    if "unlabelled" in config.mix:
        samples = []
        for rel in UNLABELLED:
            if (data / rel).exists():
                img = load_image(data / rel)
                samples.append(Sample(img, image_affine(img), "unlabelled", rel,
                                      modalities=modalities_from_name(rel, int(img.shape[0]))))
        # the labelled volumes' images count as unlabelled too: reconstruction needs no label
        brats = DATASETS["brats"]
        if (data / brats.folder).exists():
            samples += images_only(brats.read(data / brats.folder, brats.train_split))
        if samples:
            unlabelled = make_source("unlabelled", samples, config.mix["unlabelled"])
    return sources, unlabelled


def pretrain(
    data: str | Path,
    model_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    evaluate_after: bool = True,
    model: UniMed | None = None,
    device: str = "cpu",
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

    Returns:
        The model card as a dict (empty on the processes other than rank 0).

    Raises:
        ValueError: an unknown device, or a folder that holds none of the datasets.
    """
    data, model_dir = Path(data), Path(model_dir)
    config = config or default_config()
    target = check_device(device)
    distributed = init_distributed(target)
    if distributed and target.type == "cuda":
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    seed_everything(config.seed)
    start = time.time()
    sources, unlabelled = build_sources(data, config)
    if not sources:
        raise ValueError(f"{data} holds none of the datasets {', '.join(s.folder for s in DATASETS.values())}")
    model = (model or unimed_small()).to(target)
    trainer = JointTrainer(model, sources, config, unlabelled)
    history = trainer.train(progress=progress)
    train_seconds = time.time() - start
    agree = replicas_agree(model)
    if not is_main_process():
        return {}
    card: dict[str, Any] = {
        "data": {s.name: {"samples": len(s.items), "split": DATASETS[s.name].train_split, "tasks": list(s.tasks)}
                 for s in sources},
        "unlabelled_samples": len(unlabelled.items) if unlabelled else 0,
        "steps": trainer.step_count,
        "train_minutes": round(train_seconds / 60, 1),
        "final_losses": history[-1].losses if history else {},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "config": config.to_dict(),
        "device": str(target),
        "command": f"python main.py pretrain --data {data}",
        "processes": torch.distributed.get_world_size() if distributed else 1,
        "replicas_agree": agree,
    }
    version = ModelStore(model_dir).publish(model, {"kind": "pretrain", "steps": trainer.step_count})
    card["version"] = version.number
    if evaluate_after:
        card["validation"] = validate(model, data, progress=progress)
    write_model_card(model_dir, card)
    return card


def validate(model: UniMed, data: Path, progress: bool = False) -> dict[str, Any]:
    """Every dataset's validation split through the served inference path."""
    from unimed.evaluation import evaluate
    from unimed.predictor import Predictor

    predictor = Predictor(model)
    out = {}
    for name, spec in DATASETS.items():
        result = evaluate(spec.kind, data / spec.folder, predictor, split=spec.val_split, progress=progress)
        result["command"] = f"python main.py evaluate --dataset {spec.kind} --data {data / spec.folder} --split {spec.val_split}"
        out[name] = result
        logger.info("validation %s: %s", name, result["metrics"])
    return out


def write_model_card(model_dir: Path, card: dict[str, Any]) -> None:
    """``model_card.json`` and ``MODEL_CARD.md`` beside the checkpoint."""
    (model_dir / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
    lines = [
        "# UniMed shipped checkpoint",
        "",
        f"Version {card.get('version')}, trained by `{card['command']}` in {card['train_minutes']} minutes, "
        f"{card['steps']} steps, on {card['machine']['cpus']} CPU cores ({card['machine']['platform']}, "
        f"torch {card['machine']['torch']}).",
        "",
        "| source | split | samples | tasks |",
        "|---|---|---|---|",
    ]
    for name, d in card["data"].items():
        lines.append(f"| {name} | {d['split']} | {d['samples']} | {', '.join(d['tasks'])} |")
    lines.append(f"| unlabelled (self-supervised) | - | {card['unlabelled_samples']} | masked-image reconstruction |")
    if "validation" in card:
        lines += ["", "Validation figures (held-out splits; each row's command reproduces it):", "",
                  "| dataset | split | n | metrics | command |", "|---|---|---|---|---|"]
        for name, r in card["validation"].items():
            metrics = ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items() if isinstance(v, (int, float)))
            lines.append(f"| {name} | {r['split']} | {r['n']} | {metrics} | `{r['command']}` |")
    (model_dir / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
