"""Training throughput (samples/s) of UniMed and the stock SegResNet on the same patches.

Both networks get the same BraTS patches (random crops of the training split, every channel)
and the same labels, one optimiser step per batch: UniMed through its own
:class:`trainers.joint.JointTrainer` step (segmentation prompts, its losses, AdamW) and the
SegResNet through the stock radiology trainer's loss and optimiser (Dice + CE, AdamW).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.timing import summarize

__all__ = ["TrainingBenchConfig", "brats_patches", "benchmark_training"]

logger = logging.getLogger(__name__)

BRATS_LABELS = ("necrosis", "edema", "non_enhancing_tumor", "enhancing_tumor")


@dataclass
class TrainingBenchConfig:
    """What :func:`benchmark_training` measures.

    Attributes:
        data: a BraTS folder (``read_brats``'s layout).
        patch_size: cubic patch side (a multiple of 16).
        batch_size: patches per step.
        steps: timed steps per model (after ``warmup_steps`` untimed ones).
        warmup_steps: untimed steps first.
        model: UniMed size, ``small`` (shipped) or ``tiny`` (tests).
        stock_init_filters: the stock SegResNet's first width (32 in the stock app).
        threads: torch threads (None: torch's default).
        seed: crop positions.
    """

    data: Path
    patch_size: int = 96
    batch_size: int = 2
    steps: int = 5
    warmup_steps: int = 1
    model: str = "small"
    stock_init_filters: int = 32
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.patch_size < 16 or self.patch_size % 16:
            raise ValueError(f"patch_size must be a positive multiple of 16, got {self.patch_size}")
        if self.batch_size < 1 or self.steps < 1 or self.warmup_steps < 0:
            raise ValueError(f"batch_size and steps must be >= 1 and warmup_steps >= 0, got "
                             f"{self.batch_size}, {self.steps}, {self.warmup_steps}")
        if self.model not in ("small", "tiny"):
            raise ValueError(f"model must be 'small' or 'tiny', got {self.model!r}")


def brats_patches(data: Path, size: int, count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` random ``size``^3 crops ``(image (C, s, s, s) float, labels (s, s, s) long)`` of
    the BraTS training split, half of them centred on tumour voxels.

    Raises:
        ValueError: a volume is smaller than ``size``.
    """
    from unimed.datasets import read_brats

    samples = [s for s in read_brats(data, split="train") if s.label_map is not None]
    if not samples:
        raise ValueError(f"{data}: no labelled BraTS training case")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        s = samples[i % len(samples)]
        shape = np.array(s.spatial_shape)
        if (shape < size).any():
            raise ValueError(f"{s.name}: shape {tuple(shape)} is smaller than the patch size {size}")
        labels = np.asarray(s.label_map)
        if i % 2 and labels.any():
            fg = np.argwhere(labels > 0)
            centre = fg[rng.integers(len(fg))]
        else:
            centre = np.array([rng.integers(size // 2, n - size // 2 + 1) for n in shape])
        lo = np.clip(centre - size // 2, 0, shape - size)
        sl = tuple(slice(a, a + size) for a in lo)
        image = torch.as_tensor(np.asarray(s.image)[(slice(None),) + sl], dtype=torch.float32)
        out.append((image.contiguous(), torch.as_tensor(labels[sl].astype(np.int64))))
    return out


def _time_steps(step, batches: list, warmup: int) -> list[float]:
    times = []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        step(batch)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def _grid_items(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> list:
    from trainers.data import GridItem

    return [GridItem(image=img, label_map=lab, seg_labels=BRATS_LABELS, boxes=None, box_labels=[], det_labels=(),
                     class_labels=None, dataset="brats", name=f"patch{i}") for i, (img, lab) in enumerate(batch)]


def _unimed_steps(config: TrainingBenchConfig, batches: list) -> list[float]:
    from trainers.config import TrainConfig
    from trainers.data import Source
    from trainers.joint import JointTrainer
    from unimed.networks.unimednet import unimed_small, unimed_tiny

    class InOrder(Source):
        """A source that hands out the benchmark's batches in order, unaugmented."""

        def batch(self, rng, augment_items=True):
            return queue.pop(0), None

    queue = [_grid_items(b) for b in batches]
    model = unimed_small() if config.model == "small" else unimed_tiny()
    source = InOrder("patches", [it for b in queue for it in b], ("segmentation",), batch_size=config.batch_size)
    trainer = JointTrainer(model, [source], TrainConfig(steps=len(batches), augment=False, warmup_steps=1))
    return _time_steps(lambda batch: trainer.step(), batches, config.warmup_steps)


def _segresnet_steps(config: TrainingBenchConfig, batches: list, channels: int) -> list[float]:
    from monai.losses import DiceCELoss

    from benchmarks.stock import StockSegmentation, StockSegmentationConfig

    net = StockSegmentation.build_network(StockSegmentationConfig(
        in_channels=channels, out_channels=len(BRATS_LABELS) + 1, init_filters=config.stock_init_filters))
    net.train()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-5)

    def step(batch):
        x = torch.stack([img for img, _ in batch])
        y = torch.stack([lab for _, lab in batch])[:, None]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()

    return _time_steps(step, batches, config.warmup_steps)


def benchmark_training(
    config: TrainingBenchConfig,
    progress: bool = False,
    patches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Time ``config.steps`` training steps of each network on the same batches of patches.

    Args:
        config: the settings.
        progress: print a line per model.
        patches: ``(image, labels)`` patches to use instead of crops of ``config.data`` (at least
            ``(steps + warmup_steps) * batch_size``).

    Returns:
        ``{"data", "patch_size", "patches", "batch_size", "steps", "warmup_steps", "models":
        {name: {"samples_per_second", "step_seconds"}}}``.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    n_batches = config.steps + config.warmup_steps
    if patches is None:
        patches = brats_patches(config.data, config.patch_size, n_batches * config.batch_size, config.seed)
    if len(patches) < n_batches * config.batch_size:
        raise ValueError(f"need {n_batches * config.batch_size} patches, got {len(patches)}")
    batches = [patches[i * config.batch_size:(i + 1) * config.batch_size] for i in range(n_batches)]
    channels = int(patches[0][0].shape[0])
    models: dict[str, Any] = {}
    for name, run in (("unimed", lambda: _unimed_steps(config, batches)),
                      ("segresnet_stock", lambda: _segresnet_steps(config, batches, channels))):
        if progress:
            print(f"training: {name}, {n_batches} steps of {config.batch_size} patches", flush=True)
        times = run()
        s = summarize(times)
        models[name] = {"samples_per_second": config.batch_size / s["median"], "step_seconds": s}
        logger.info("training %s: %.3f samples/s", name, models[name]["samples_per_second"])
    return {"data": str(config.data), "patch_size": config.patch_size, "patches": len(patches), "channels": channels,
            "batch_size": config.batch_size, "steps": config.steps, "warmup_steps": config.warmup_steps,
            "unimed_model": config.model, "models": models}
