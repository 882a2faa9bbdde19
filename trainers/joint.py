"""One-stage joint training: every step mixes datasets and tasks, supervised and unsupervised.

Each step draws a batch from every source due that step, runs the backbone once per batch, and
decodes it once per task the source trains (segmentation, detection, classification prompts
over the same features: tasks compose). Unlabelled images feed masked-image reconstruction in
the same step (or, with ``ssl_loss="consistency"`` or ``"mean_teacher"``, teach a harder view
of themselves through confident pseudo-labels). All losses are summed into one AdamW update.

A run can stop and continue: :meth:`JointTrainer.state_dict` holds everything the next step
depends on (weights, optimiser, step, random states, time spent), and
:meth:`JointTrainer.load_state_dict` continues from it bit-identically on the same device.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from trainers.config import TrainConfig
from trainers.data import GridItem, Source, View, collate, modality_batch
from trainers.run_state import STATE_FORMAT, check_same_run, comparable_config, global_rng_state, set_global_rng_state
from trainers.simulated_clicks import click_loss
from trainers.ssl import PseudoLabelConsistency, make_ssl
from unimed.networks.unimednet import UniMed
from unimed.tasks import TASKS, Task

__all__ = ["JointTrainer", "StepReport", "seed_everything", "check_device", "init_distributed", "is_main_process",
           "replicas_agree"]

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch device.

    Raises:
        ValueError: any other name, or a GPU torch does not see.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
    """
    if device != "cpu":
        kind, _, index = device.partition(":")
        n = torch.cuda.device_count()
        if kind != "cuda" or not (index == "" or index.isdigit()) or int(index or 0) >= n:
            raise ValueError(f"device {device!r}: use 'cpu', or 'cuda'/'cuda:N' for one of the GPUs torch sees ({n})")
    return torch.device(device)


def init_distributed(device: torch.device | None = None) -> bool:
    """Join the process group when started by ``torchrun``: nccl when training on GPUs, else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group("nccl" if device is not None and device.type == "cuda" else "gloo")
    return True


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def replicas_agree(model: torch.nn.Module) -> bool:
    """Whether every rank holds bit-identical weights (True outside torchrun)."""
    if not dist.is_initialized():
        return True
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], g) for g in gathered)


@dataclass
class StepReport:
    """What one step did: its number, the loss terms, and the time spent and expected."""

    step: int
    total_steps: int
    losses: dict[str, float]
    seconds: float
    eta_seconds: float
    samples: int = 0
    sources: list[str] = field(default_factory=list)

    @property
    def loss(self) -> float:
        return sum(self.losses.values())


class JointTrainer:
    """Trains a :class:`UniMed` on several sources at once.

    Args:
        model: the network (trained in place).
        sources: labelled sources; their names must be keys of ``config.mix`` or they use
            their own settings.
        config: the run's configuration.
        unlabelled: the source of unlabelled images for the self-supervised loss, or None.
        ssl: the unsupervised loss module (kept between runs for fine-tuning: the
            reconstruction head has weights); if None, a new one of ``config.ssl_loss``, whose
            consistency prompts the segmentation labels of the labelled sources.

    Raises:
        ValueError: an unknown task or ``ssl_loss``, or consistency without a segmentation
            source to take its labels from.
    """

    def __init__(
        self,
        model: UniMed,
        sources: Sequence[Source],
        config: TrainConfig,
        unlabelled: Source | None = None,
        ssl: torch.nn.Module | None = None,
    ):
        self.model, self.sources, self.config, self.unlabelled = model, list(sources), config, unlabelled
        for src in self.sources:
            for task in src.tasks:
                Task.parse(task)
        if ssl is None:
            seg_labels = sorted({name for src in self.sources if Task.SEGMENTATION in map(Task.parse, src.tasks)
                                 for it in src.items for name in it.seg_labels})
            ssl = make_ssl(config.ssl_loss, mask_dim=model.config.mask_dim, labels=seg_labels, block=config.ssl_block,
                           ratio=config.ssl_mask_ratio, threshold=config.ssl_threshold)
        self.ssl = ssl
        self.ssl.to(self.device)
        self.params = list(model.parameters()) + list(self.ssl.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        # under torchrun every rank draws its own batches; rank 0's weights are everyone's start
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        if self.world > 1:
            for p in self.params:
                dist.broadcast(p.data, src=0)
        self.rng = random.Random(config.seed + rank)
        self.generator = torch.Generator().manual_seed(config.seed + rank)
        self.step_count = 0
        self.elapsed_seconds = 0.0  # training time of every part of the run so far
        self._torn = False  # a step was cut off halfway: weights and random states disagree

    @property
    def torn(self) -> bool:
        """Whether a step was cut off halfway, so that the weights and the random states belong
        to different steps (:meth:`state_dict` refuses then)."""
        return self._torn

    @property
    def device(self) -> torch.device:
        """Where the model's weights are: batches and targets are moved there."""
        return next(self.model.parameters()).device

    # -- schedule ------------------------------------------------------------------------------
    def lr_at(self, step: int, time_fraction: float = 0.0) -> float:
        """Linear warm-up, then cosine decay to 5% of ``lr``.

        The decay follows whichever budget binds first: the share of ``steps`` done, or
        ``time_fraction``, the share of ``max_minutes`` spent; so a run that its time budget
        stops (a slower or busier machine) still ends at the bottom of the schedule.
        """
        cfg = self.config
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        progress = max((step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps), time_fraction)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    # -- losses --------------------------------------------------------------------------------
    def batch_losses(self, items: list[GridItem], tasks: Sequence[str], view: View | None,
                     clicks: bool = False) -> dict[str, torch.Tensor]:
        """Losses of one batch of one source: one backbone pass, one decode per task whose
        ground truth every item carries; with ``clicks``, a segmentation batch also trains with
        simulated clicks (:func:`trainers.simulated_clicks.click_loss`)."""
        feats = self.model.encode(collate(items, view).to(self.device), modality_batch(self.model, items, view))
        losses: dict[str, torch.Tensor] = {}
        for spec in (TASKS[Task.parse(task)] for task in tasks):
            if spec.has_targets(items):
                losses.update(spec.loss(self.model, feats, items, self.config.loss))
                if clicks and spec.task == Task.SEGMENTATION and self.model.config.clicks:
                    losses.update(click_loss(self.model, feats, items, self.rng, self.config.loss))
        return losses

    def _backward(self, loss: torch.Tensor) -> None:
        """Add one source's gradient to the step's; with ``grad_balance="source_clip"`` the
        source's gradient is first clipped to norm ``grad_clip`` on its own, so that a source
        with large gradients (detection heat maps) cannot drown one with small ones
        (classification), as a clip of the summed gradient would."""
        if self.config.grad_balance == "none":
            loss.backward()
            return
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        norm = torch.sqrt(sum(g.float().pow(2).sum() for g in grads if g is not None))
        scale = float(min(1.0, self.config.grad_clip / (float(norm) + 1e-6)))
        for p, g in zip(self.params, grads):
            if g is None:
                continue
            if p.grad is None:
                p.grad = g * scale
            else:
                p.grad.add_(g, alpha=scale)

    # -- the loop ------------------------------------------------------------------------------
    def step(self, time_fraction: float = 0.0) -> StepReport:
        """One optimiser step over every source due now; ``time_fraction`` as in :meth:`lr_at`."""
        t0 = time.perf_counter()
        self._torn = True
        self.model.train()
        self.ssl.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step_count, time_fraction)
        self.optimizer.zero_grad(set_to_none=True)
        report: dict[str, float] = {}
        used, n = [], 0
        for src in self.sources:
            if self.step_count % src.every:
                continue
            items, view = src.batch(self.rng, self.config.augment)
            losses = self.batch_losses(items, src.tasks, view, clicks=src.clicks > 0 and self.rng.random() < src.clicks)
            if losses:
                self._backward(sum(losses.values()))
            for k, v in losses.items():
                report[f"{src.name}/{k}"] = float(v.detach())
            used.append(src.name)
            n += len(items)
        if self.unlabelled is not None and self.step_count % self.unlabelled.every == 0:
            items, view = self.unlabelled.batch(self.rng, self.config.augment)
            images = collate(items, view).to(self.device)
            loss = self.config.loss.ssl * self.ssl(self.model, images, self.generator,
                                                   modalities=modality_batch(self.model, items, view))
            self._backward(loss)
            report["unlabelled/ssl"] = float(loss.detach())
            used.append(self.unlabelled.name)
            n += len(items)
        if self.world > 1:  # data parallel: average the gradients of all ranks
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= self.world
        if self.config.grad_balance == "none":
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()
        self.step_count += 1
        self._torn = False
        return StepReport(self.step_count, self.config.steps, report, time.perf_counter() - t0, 0.0, n, used)

    def _agree_to_stop(self, stop: bool) -> bool:
        """Under torchrun, every rank stops when any rank wants to (else the others would hang)."""
        if self.world == 1:
            return stop
        flag = torch.tensor([1.0 if stop else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def train(self, callback: Callable[[StepReport], bool | None] | None = None, progress: bool = False) -> list[StepReport]:
        """Run until ``config.steps`` or ``config.max_minutes``; ``callback`` may return True to stop.

        The time budget and the schedule count the time of every part of the run: a run resumed
        from :meth:`load_state_dict` continues both where it stopped. Every ``log_every`` steps a
        line with the mean losses goes to the log.
        """
        from tqdm import tqdm

        cfg = self.config
        budget = math.inf if cfg.max_minutes is None else cfg.max_minutes * 60
        history: list[StepReport] = []
        if self._agree_to_stop(self.elapsed_seconds >= budget):
            logger.warning("the run has spent its time budget (%s min) already: no step taken", cfg.max_minutes)
            return history
        before, start = self.elapsed_seconds, time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=self.step_count, desc="train", unit="step",
                   disable=not (progress and is_main_process()), dynamic_ncols=True)
        try:
            while self.step_count < cfg.steps:
                rep = self.step(0.0 if cfg.max_minutes is None else self.elapsed_seconds / budget)
                part = time.perf_counter() - start
                self.elapsed_seconds = before + part
                rep.eta_seconds = min(part / len(history + [rep]) * (cfg.steps - self.step_count),
                                      max(0.0, budget - self.elapsed_seconds))
                history.append(rep)
                bar.update(1)
                bar.set_postfix(loss=f"{rep.loss:.3f}")
                if is_main_process() and (self.step_count % cfg.log_every == 0 or self.step_count == cfg.steps):
                    recent = history[-cfg.log_every:]
                    keys = sorted({k for r in recent for k in r.losses})
                    means = {k: np.mean([r.losses[k] for r in recent if k in r.losses]) for k in keys}
                    logger.info("step %d/%d loss %.4f (%s) %.1fs/step eta %.0fs", self.step_count, cfg.steps,
                                np.mean([r.loss for r in recent]), ", ".join(f"{k} {v:.3f}" for k, v in means.items()),
                                np.mean([r.seconds for r in recent]), rep.eta_seconds)
                asked = bool(callback is not None and callback(rep))
                out_of_time = self.elapsed_seconds > budget
                if self._agree_to_stop(asked or out_of_time):
                    why = "on request" if asked else f"at its time budget ({cfg.max_minutes} min)"
                    logger.info("training stopped %s at step %d", why, self.step_count)
                    break
        finally:
            bar.close()
            self.model.eval()
        return history

    # -- the run's state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the next step depends on: the config it was made for, the weights of the
        network, the unsupervised loss (and a mean teacher's average), the optimiser, the step, the time spent, and the trainer's and the process's random
        states. Tensors are the live ones, as in ``torch.nn.Module.state_dict``: save it
        (:func:`trainers.run_state.save_state`) before training on.

        Raises:
            RuntimeError: a step was cut off halfway (an exception inside :meth:`step`), so the
                weights and the random states belong to different steps.

        Example:
            >>> from unimed.networks.unimednet import unimed_tiny
            >>> state = JointTrainer(unimed_tiny(), [], TrainConfig(steps=1)).state_dict()
            >>> state["step_count"], sorted(state["rng"])
            (0, ['generator', 'global', 'trainer'])
        """
        if self._torn:
            raise RuntimeError(f"step {self.step_count + 1} was cut off halfway: its state is torn, "
                               "keep the last saved one")
        teacher = self.ssl.teacher_state() if isinstance(self.ssl, PseudoLabelConsistency) else None
        return {
            "format": STATE_FORMAT,
            "config": comparable_config(self.config),
            "world": self.world,
            "step_count": self.step_count,
            "elapsed_seconds": self.elapsed_seconds,
            "model": self.model.state_dict(),
            "ssl": self.ssl.state_dict(),
            "ssl_teacher": teacher,
            "optimizer": self.optimizer.state_dict(),
            "rng": {"trainer": self.rng.getstate(), "generator": self.generator.get_state(),
                    "global": global_rng_state()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (tensors may be on any device: they are moved to this
        trainer's). The config may differ only in
        :data:`trainers.run_state.RESUMABLE_CHANGES` (a new time budget, say).

        Raises:
            ValueError: a config that differs in anything that changes the run (each difference
                named), another number of processes, or weights that do not fit the network.
        """
        check_same_run(state, self.config)
        if state["world"] != self.world:
            raise ValueError(f"the saved run had {state['world']} processes, this one {self.world}: resume with as many")
        try:
            self.model.load_state_dict(state["model"])
            self.ssl.load_state_dict(state["ssl"])
        except RuntimeError as exc:  # torch's message lists the missing, unexpected and misshapen keys
            raise ValueError(f"the saved weights do not fit this trainer's modules: {exc}") from exc
        if isinstance(self.ssl, PseudoLabelConsistency):
            self.ssl.load_teacher_state(self.model, state["ssl_teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count, self.elapsed_seconds = int(state["step_count"]), float(state["elapsed_seconds"])
        self.rng.setstate(state["rng"]["trainer"])
        self.generator.set_state(state["rng"]["generator"])
        set_global_rng_state(state["rng"]["global"])
        self._torn = False
