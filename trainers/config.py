"""Everything a training run is configured by: one dataclass, saved in the model card."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from unimed.loss_weights import LossWeights

__all__ = ["MixEntry", "TrainConfig"]


@dataclass
class MixEntry:
    """How one data source takes part in each step.

    Attributes:
        tasks: the tasks trained on this source's samples (from one backbone pass).
        batch_size: samples per step.
        every: the source joins every ``every``-th step (1: every step).
        channel_dropout: probability that a multi-channel batch keeps a random subset of its channels.
        modality_dropout: probability that a batch's modalities read as unknown.
        augment_intensity: intensity and resolution augmentation besides flips.
        clicks: probability that a segmentation batch also trains with simulated clicks
            (:func:`trainers.simulated_clicks.click_loss`).
    """

    tasks: tuple[str, ...]
    batch_size: int = 1
    every: int = 1
    channel_dropout: float = 0.0
    modality_dropout: float = 0.0
    augment_intensity: bool = True
    clicks: float = 0.0


@dataclass
class TrainConfig:
    """A joint training run.

    Attributes:
        steps: optimiser steps (the run may stop earlier at ``max_minutes``).
        max_minutes: wall-clock budget; None for no limit.
        lr, weight_decay, warmup_steps, grad_clip: AdamW with linear warm-up, cosine decay.
        grad_balance: ``source_clip`` clips each source's gradient to ``grad_clip`` on its own
            before they are summed (no source drowns another); ``none`` clips the sum.
        seed: seeds Python, NumPy and torch.
        loss: weights of every loss term.
        mix: per source name, its tasks, batch size and frequency. The source ``unlabelled``
            feeds the self-supervised loss.
        ssl_loss: the unsupervised loss (:data:`trainers.ssl.SSL_LOSSES`): ``reconstruction``
            (masked-image reconstruction), ``consistency`` (confident pseudo-labels of one
            view teach a harder view; it prompts the labelled sources' segmentation labels) or
            ``mean_teacher`` (the same, the pseudo-labels from an average of the weights).
        ssl_mask_ratio, ssl_block: masked-image reconstruction: the share of hidden blocks and
            the block side in grid voxels.
        ssl_threshold: consistency: the teacher confidence a voxel needs to teach.
        augment: random flips and intensity jitter.
        log_every: steps between log lines.
        checkpoint_minutes: minutes between saves of the run's state (``pretrain``), from which
            ``pretrain --resume`` continues.
    """

    steps: int = 1000
    max_minutes: float | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    grad_clip: float = 1.0
    grad_balance: str = "source_clip"
    seed: int = 0
    loss: LossWeights = field(default_factory=LossWeights)
    mix: dict[str, MixEntry] = field(default_factory=dict)
    ssl_loss: str = "reconstruction"
    ssl_mask_ratio: float = 0.5
    ssl_block: int = 16
    ssl_threshold: float = 0.9
    augment: bool = True
    log_every: int = 10
    checkpoint_minutes: float = 5.0

    def to_dict(self) -> dict:
        return asdict(self)
