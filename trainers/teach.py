"""Teaching a network a new label from a few annotated images (``python main.py teach``).

:func:`teach` grows the label space by one token (:func:`unimed.label_growth.add_label`),
starts the token from the annotated examples (:func:`unimed.label_growth.fit_label_token`),
then fine-tunes the whole network with :class:`~trainers.joint.JointTrainer` on the new
label's masks (segmentation, detection from each mask's box and, when asked and some masks are
empty, classification: does the image show it), or on its boxes where a detection dataset
annotates it so (detection), with replay, so that the old labels keep their figures:

- with ``replay_data`` (a folder in the shared data layout), the pretraining data's sources
  (:func:`trainers.pretrain.build_sources`) train alongside, less the cases that show the
  label taught if it is one of theirs (they show it unannotated): the default wherever that data is
  present (:func:`default_replay_data`: ``$UNIMED_REPLAY_DATA``, else ``../shared/data`` beside
  the project);
- without it, the base network's own answers on the same images are the old labels' targets
  (pseudo-labels): its segmentation of every old segmentation label and its detections of
  every old detection label join the new structure's mask and box in each training item.
  This keeps less: measured on version 2, teaching "brain" from one FLAIR volume for 10 minutes
  dropped the whole-tumour Dice on the four shared BraTS cases from 0.82 to 0.02 with
  pseudo-labels, and kept it (0.84) with the shared data replayed.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from trainers.config import MixEntry, TrainConfig
from trainers.data import GridItem, Source
from trainers.joint import JointTrainer, StepReport, seed_everything
from trainers.pretrain import DATASETS, build_sources, default_config, make_source
from unimed.datasets.datastore import read_structure
from unimed.datasets.sample import Sample
from unimed.label_growth import add_label, canonical_name, fit_label_token
from unimed.labels import Label, LabelRegistry
from unimed.metrics import mask_box
from unimed.networks.unimednet import UniMed
from unimed.predictor import Predictor
from unimed.task_names import Task

__all__ = ["DEFAULT_TASKS", "SHARED_DATA", "REPLAY_ENV", "TEACH_VOXELS", "TEACH_MAX_BATCH", "VOLUME_REPLAY_EVERY",
           "TEACH_CONTRAST", "default_contrast", "default_replay_data", "teach_config", "teach_batch_size",
           "with_pseudo_labels", "structure_on_grid", "teach", "teach_samples"]

logger = logging.getLogger(__name__)

#: the shared data folder beside the project (``../shared/data``): what pretraining learnt from
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: the environment variable that names the replay data (empty or ``none``: replay pseudo-labels)
REPLAY_ENV = "UNIMED_REPLAY_DATA"

#: what teach learns unless told: the structure's segmentation and its box. Masks teach
#: classification too (whether an image shows the structure) when some of them are empty:
#: images that do not show it
DEFAULT_TASKS = (Task.SEGMENTATION, Task.DETECTION)

#: images (of one grid shape) the new token starts from
TOKEN_ITEMS = 4

#: model-grid voxels of the new label in each fine-tuning step: one item of a 3D volume or a
#: large 2D image, up to :data:`TEACH_MAX_BATCH` augmented items of small 2D patches, so that a
#: step's share of the new label does not shrink to one 48x48 patch beside a full replay batch
TEACH_VOXELS = 2**17

#: the most items of the new label in one step
TEACH_MAX_BATCH = 16

#: a replayed dataset of 3D volumes joins this many times less often than in pretraining: its
#: volumes cost most of a step, and halving them bought the new label 40 % more steps while the
#: old labels held (lung tumour taught from 5 cases in 4 minutes, lr 3e-4: Dice 0.50 -> 0.54;
#: BraTS wt -0.035 -> -0.014 and BCCD map50 -0.020 -> -0.007 against the base). 2D datasets,
#: cheap per step, keep their pretraining share: halving them too cost BCCD 0.06
VOLUME_REPLAY_EVERY = 2

#: the probability that a volume of the new label is shown in a random contrast
#: (:func:`trainers.data.random_contrast`): a structure taught from one MR sequence is then
#: found on the others of the same subject. Half the draws keep the taught contrast
TEACH_CONTRAST = 0.5


def default_replay_data() -> Path | None:
    """The folder teaching replays the old labels from unless told: ``$UNIMED_REPLAY_DATA``
    (empty or ``none``: no folder, the base network's pseudo-labels), else :data:`SHARED_DATA`
    when it holds any shared dataset, else None.

    Raises:
        ValueError: ``$UNIMED_REPLAY_DATA`` names a folder that does not exist.

    Example:
        >>> os.environ[REPLAY_ENV] = "none"; default_replay_data() is None
        True
        >>> del os.environ[REPLAY_ENV]
    """
    named = os.environ.get(REPLAY_ENV)
    if named is not None:
        if named.strip().lower() in ("", "none"):
            return None
        if not Path(named).is_dir():
            raise ValueError(f"${REPLAY_ENV}={named}: no such folder (unset it, or 'none' to replay pseudo-labels)")
        return Path(named)
    if any((SHARED_DATA / spec.folder).is_dir() for spec in DATASETS.values()):
        return SHARED_DATA
    return None


def default_contrast(items: Sequence[GridItem]) -> float:
    """How often teaching shows the new label's items in a random contrast unless told:
    :data:`TEACH_CONTRAST` for volumes (3D) that are not all CT, 0 otherwise. An MR structure
    is asked for on other sequences than the one it was taught on; a CT's intensities are
    Hounsfield units, the same on every scanner, and 2D images (patches, microscopy) have no
    other sequence.

    Example:
        >>> vol = GridItem(torch.zeros(1, 8, 8, 8), None, (), None, [], (), None, "d", "n")
        >>> default_contrast([vol]), default_contrast([replace(vol, modalities=("ct",))])
        (0.5, 0.0)
    """
    volumes = [it for it in items if it.image.shape[-1] > 1]
    if not volumes or all(it.modalities and set(it.modalities) == {"ct"} for it in volumes):
        return 0.0
    return TEACH_CONTRAST


def teach_config(steps: int = 300, minutes: float | None = 10.0, tasks: Sequence[Task] = DEFAULT_TASKS,
                 seed: int = 0) -> TrainConfig:
    """The fine-tuning recipe: 0.3 of pretraining's learning rate, a short warm-up; the new
    label's batch size is set from its items (:func:`teach_batch_size`) once they are on the grid.

    Example:
        >>> teach_config(steps=20).mix["teach"].tasks
        ('segmentation', 'detection')
    """
    return TrainConfig(steps=steps, max_minutes=minutes, lr=3e-4, warmup_steps=min(10, max(1, steps // 10)),
                       seed=seed, mix={"teach": MixEntry(tuple(t.value for t in tasks), batch_size=1)}, log_every=1)


def teach_batch_size(shapes: Sequence[Sequence[int]]) -> int:
    """Items of the new label per fine-tuning step, given their images' shapes on the model grid
    (``(C, gx, gy, gz)``): as many as fit :data:`TEACH_VOXELS` voxels (by the largest), at least 1
    and at most :data:`TEACH_MAX_BATCH`. Fewer annotated items than that are drawn again, each
    draw augmented on its own.

    Raises:
        ValueError: no shapes.

    Example:
        >>> teach_batch_size([(1, 48, 48, 1)])  # a 2D patch
        16
        >>> teach_batch_size([(4, 128, 128, 80)])  # a 3D volume
        1
    """
    if not shapes:
        raise ValueError("teach_batch_size needs the shape of at least one item")
    voxels = max(int(np.prod(shape[1:])) for shape in shapes)
    return int(min(TEACH_MAX_BATCH, max(1, TEACH_VOXELS // voxels)))


def with_pseudo_labels(sample: Sample, label: Label, base: Predictor, tasks: Sequence[Task]) -> Sample:
    """``sample`` (its ``label_map`` marks the new structure) with the base network's answers
    for the old labels added as targets: the structure wins where both claim a voxel.

    Every old label of a task is listed as annotated (``seg_labels`` / ``det_labels``), so the
    base network's "absent" is replayed too. Detection gets the structure's box (none where the
    image does not show it), classification whether it shows it.
    """
    structure, shows = _structure(sample, label)
    out = replace(sample)
    registry = base.model.registry
    image = sample.meta_image()
    if Task.SEGMENTATION in tasks:
        old = [lab for lab in registry.for_task(Task.SEGMENTATION)]
        label_map = np.asarray(base.predict(image, Task.SEGMENTATION, old).label_map()).astype(np.uint8)
        label_map[structure] = label.id
        out.label_map = label_map
        out.seg_labels = tuple(lab.name for lab in old) + (label.name,)
    else:
        out.seg_labels = () if sample.label_map is None else (label.name,)  # boxes teach no segmentation
    if Task.DETECTION in tasks:
        out.boxes, out.box_labels, out.det_labels = _detection_targets(sample, structure, label, base)
    return _with_presence(out, shows, label, tasks)


def _structure(sample: Sample, label: Label) -> tuple[np.ndarray, bool]:
    """A sample's mask of the new structure (all False for a sample annotated by boxes) and
    whether the sample shows it (a nonempty mask, or a box)."""
    if sample.label_map is None:
        return np.zeros(sample.spatial_shape, bool), len(sample.box_labels) > 0
    structure = np.asarray(sample.label_map) == label.id
    return structure, bool(structure.any())


def _detection_targets(sample: Sample, structure: np.ndarray, label: Label,
                       base: Predictor | None) -> tuple[np.ndarray, list[str], tuple[str, ...]]:
    """The detection targets of a sample of the new label: its boxes (a sample without a mask)
    or its mask's box and, with ``base`` (the network before the label space grew), the base
    network's detections of every old detection label, all of them listed as annotated."""
    old = [] if base is None else list(base.model.registry.for_task(Task.DETECTION))
    boxes: list[np.ndarray] = []
    names: list[str] = []
    if old:
        ann = base.predict(sample.meta_image(), Task.DETECTION, old).annotation
        boxes, names = [np.asarray(b, np.float64) for b in ann.boxes], list(ann.labels)
    if sample.label_map is None:
        boxes += [np.asarray(b, np.float64) for b in np.asarray(sample.boxes).reshape(-1, 6)]
        names += list(sample.box_labels)
    elif structure.any():
        boxes.append(mask_box(structure))
        names.append(label.name)
    return (np.stack(boxes) if boxes else np.zeros((0, 6)), names,
            tuple(lab.name for lab in old) + (label.name,))


def _with_presence(sample: Sample, shows: bool, label: Label, tasks: Sequence[Task]) -> Sample:
    """``sample`` with whether it shows the structure as its image-level label (classification)."""
    if Task.CLASSIFICATION in tasks:
        sample.class_labels = {label.name: int(shows)}
    else:
        sample.class_labels = None
    return sample


def _structure_only(sample: Sample, label: Label, tasks: Sequence[Task]) -> Sample:
    """``sample`` with the new structure as its only target (replay comes from other data): its
    mask and, for detection, the mask's box; or (a sample without a mask) its boxes."""
    structure, shows = _structure(sample, label)
    out = replace(sample, seg_labels=(label.name,) if Task.SEGMENTATION in tasks else ())
    if Task.DETECTION in tasks:
        out.boxes, out.box_labels, out.det_labels = _detection_targets(sample, structure, label, None)
    elif sample.label_map is None:
        out.det_labels = ()
    return _with_presence(out, shows, label, tasks)


def structure_on_grid(item: GridItem, label: Label) -> torch.Tensor:
    """Where ``item`` shows ``label`` on its grid, as a boolean ``(gx, gy, gz)`` tensor: its mask,
    or (an item without one) the voxels inside its boxes of the label.

    Example:
        >>> lab = Label(12, "dot", "Dot", frozenset({Task.DETECTION}), (0, 0, 0))
        >>> it = GridItem(torch.zeros(1, 4, 4, 1), None, (), torch.tensor([[0.5, 0, 0, 1, 0.5, 1]]), ["dot"], ("dot",),
        ...               None, "d", "n")
        >>> structure_on_grid(it, lab)[..., 0].int().tolist()
        [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    """
    if item.label_map is not None:
        return item.label_map == label.id
    shape = tuple(item.image.shape[1:])
    out = torch.zeros(shape, dtype=torch.bool)
    for box, name in zip(item.boxes if item.boxes is not None else [], item.box_labels):
        if name != label.name:
            continue
        lo = [min(n - 1, int(np.floor(float(box[a]) * n))) for a, n in enumerate(shape)]
        hi = [max(lo[a] + 1, int(np.ceil(float(box[a + 3]) * n))) for a, n in enumerate(shape)]
        out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return out


def _largest_shape_group(items: Sequence[GridItem]) -> list[GridItem]:
    groups: dict[tuple, list[GridItem]] = {}
    for it in items:
        groups.setdefault(tuple(it.image.shape), []).append(it)
    return max(groups.values(), key=len)


def teach(model: UniMed, name: str, folder: str | Path, **options: Any) -> dict[str, Any]:
    """Teach ``model`` (in place) the structure that ``folder``'s masks mark, as label ``name``.

    Reads the folder (:func:`unimed.datasets.datastore.read_structure`), then
    :func:`teach_samples`.

    Args:
        model: the base network; its label space grows by ``name``.
        name: the new label's name.
        folder: images at the top, masks (nonzero = the structure) under ``labels/final/``.
        options: :func:`teach_samples`'s keyword arguments (tasks, steps, minutes, ...).

    Raises:
        ValueError: as :func:`teach_samples`.
        DatasetError: the folder is missing, has no mask, or a mask is empty or mismatched.

    Example:
        >>> teach(model, "spinal_cord", "my_cases", steps=100, minutes=5)  # doctest: +SKIP
    """
    key = _new_label_name(model, name)
    classify = Task.CLASSIFICATION in {Task.parse(t) for t in options.get("tasks", DEFAULT_TASKS)}
    return teach_samples(model, key, read_structure(folder, key, model.registry.next_id(), allow_empty=classify),
                         **options)


def _new_label_name(model: UniMed, name: str) -> str:
    key = canonical_name(name)
    if key in model.registry:
        raise ValueError(f"label {key!r} already exists in the checkpoint (as {model.registry.get(key).name!r}); "
                         "choose another name")
    return key


def teach_samples(
    model: UniMed,
    name: str,
    samples: Sequence[Sample],
    *,
    tasks: Sequence[Task | str] = DEFAULT_TASKS,
    steps: int = 300,
    minutes: float | None = 10.0,
    replay_data: str | Path | None = None,
    token_steps: int = 30,
    seed: int = 0,
    contrast: float | None = None,
    progress: bool = True,
    display: str | None = None,
    color: Sequence[int] | None = None,
    callback: Callable[[StepReport], bool | None] | None = None,
) -> dict[str, Any]:
    """Teach ``model`` (in place) the structure that ``samples`` mark, as label ``name``.

    What ``main.py teach`` and the app's ``POST /train`` both run: grow the label space
    (:func:`~unimed.label_growth.add_label`), start the token from the examples
    (:func:`~unimed.label_growth.fit_label_token`), fine-tune with replay.

    Args:
        model: the base network; its label space grows by ``name``.
        name: the new label's name.
        samples: images whose ``label_map`` is ``model.registry.next_id()`` on the structure
            and 0 elsewhere (:func:`~unimed.datasets.datastore.read_structure` reads them); or,
            for a structure annotated by boxes (it then learns detection and classification,
            not segmentation), images without a ``label_map`` whose ``boxes`` are the
            structure's, ``box_labels`` naming it.
        tasks: what the label is taught and can be asked for: segmentation and detection by
            default; classification needs samples that do not show the structure (an empty
            mask) besides those that do.
        steps: fine-tuning steps (the run may stop earlier at ``minutes``); 0: the token's
            start only, no fine-tuning, so that every old label's output stays bit-identical.
        minutes: wall-clock budget of the whole run (pseudo-labels, the token's start and the
            fine-tuning, which gets what is left); None for no limit.
        replay_data: a shared-data-layout folder whose datasets replay the old labels (the
            taught label's own annotations there, if it is one of theirs, are left out);
            ``"auto"``: :func:`default_replay_data`; None: the base network's own answers on
            the samples' images do.
        token_steps: steps that start the new token from the examples (:func:`fit_label_token`).
        seed: seeds Python, NumPy and torch.
        contrast: the probability that an item of the new label is shown in a random contrast
            (:func:`trainers.data.random_contrast`); None: :func:`default_contrast` (0.5 for MR
            and other non-CT volumes, 0 for CT and 2D images).
        progress: show a progress bar.
        display: the label's name in viewers (default: from ``name``).
        color: its RGB colour (default: a hue of its own).
        callback: called with each fine-tuning step's report (as :meth:`JointTrainer.train`).

    Returns:
        A report: the label, samples, the new label's batch size, how often each replayed
        dataset joins a step, steps, minutes, the first and last losses, the replay.

    Raises:
        ValueError: the label exists, no samples, no or unknown tasks, classification without
            samples both with and without the structure, ``steps < 0``, ``contrast`` outside [0, 1],
            masks mixed with boxes, or segmentation asked of boxes.

    Example:
        >>> teach_samples(model, "spinal_cord", samples, steps=50, color=(255, 200, 0))  # doctest: +SKIP
    """
    task_list = tuple(dict.fromkeys(Task.parse(t) for t in tasks))
    if not task_list:
        raise ValueError("teach needs at least one task (segmentation, detection)")
    if steps < 0:
        raise ValueError(f"steps must be >= 0 (0: the token's start only), got {steps}")
    if contrast is not None and not 0.0 <= contrast <= 1.0:
        raise ValueError(f"contrast must be a probability in [0, 1], got {contrast}")
    key = _new_label_name(model, name)
    if not samples:
        raise ValueError(f"label {key!r} needs at least one annotated image to be taught from")
    value = model.registry.next_id()
    boxed = [s.label_map is None for s in samples]
    if any(boxed) and not all(boxed):
        raise ValueError("samples must all be masks or all be boxes of the structure, not a mix")
    if all(boxed):
        stray = [s.name for s in samples if s.boxes is None or set(s.box_labels) - {key}]
        if stray:
            raise ValueError(f"samples {stray}: a sample without a mask must hold boxes of {key!r} only")
        if Task.SEGMENTATION in task_list:
            raise ValueError(f"boxes teach detection (and classification), not segmentation: teach {key!r} with "
                             "tasks=('detection',) or from masks")
        shows = [len(s.box_labels) > 0 for s in samples]
    else:
        stray = [s.name for s in samples if not set(np.unique(s.label_map).tolist()) <= {0, value}]
        if stray:
            raise ValueError(f"samples {stray} must mark the structure with value {value} (the new label's id) and "
                             "nothing else")
        shows = [bool(np.asarray(s.label_map).any()) for s in samples]
    if not any(shows):
        raise ValueError(f"label {key!r}: no sample shows the structure (every mask or box list is empty)")
    if Task.CLASSIFICATION in task_list and all(shows):
        raise ValueError(f"teaching {key!r} classification needs images that do not show it too (an empty mask "
                         "under labels/final/), besides those that do")
    seed_everything(seed)
    start = time.time()
    config = teach_config(max(steps, 1), minutes, task_list, seed)
    replay_sources: list[Source] = []
    if isinstance(replay_data, str) and replay_data == "auto":
        replay_data = default_replay_data()
    if steps == 0:  # the token's start alone: nothing to replay
        replay_data = None
    elif replay_data is not None:
        replay = default_config()
        del replay.mix["unlabelled"]  # teaching replays labels: no self-supervised source to build
        # a label of the shared data taught anew (leave-one-label-out) must not be replayed, nor
        # the cases that show it unannotated (they would teach that it is background)
        known = key if key in LabelRegistry() else None
        replay_sources = build_sources(Path(replay_data), replay, leave_out=known, drop_showing=True)[0]
        if not replay_sources:
            raise ValueError(f"replay data {replay_data} holds none of the shared datasets")
        for src in replay_sources:  # volumes replay half as often (VOLUME_REPLAY_EVERY)
            if src.items[0].image.shape[-1] > 1:
                src.every *= VOLUME_REPLAY_EVERY
        config.mix.update({src.name: replace(replay.mix[src.name], every=src.every) for src in replay_sources})
    base = None if replay_data is not None or steps == 0 else Predictor(copy.deepcopy(model).eval())
    label = add_label(model, key, task_list, display=display, color=color)
    logger.info("label %s: id %d, class index %d, token %d; %d annotated images", label.name, label.id,
                model.registry.class_index(label), model.vocab.label_token(label), len(samples))
    if base is not None:
        samples = [with_pseudo_labels(s, label, base, task_list) for s in samples]
    else:
        samples = [_structure_only(s, label, task_list) for s in samples]
    source = make_source("teach", samples, config.mix["teach"])
    source.batch_size = teach_batch_size([it.image.shape for it in source.items])
    source.contrast = default_contrast(source.items) if contrast is None else contrast
    config.mix["teach"] = replace(config.mix["teach"], batch_size=source.batch_size)

    token_losses: list[float] = []
    shown = [it for it in source.items if bool(structure_on_grid(it, label).any())]
    if shown:
        group = _largest_shape_group(shown)[:TOKEN_ITEMS]
        images = torch.stack([it.image for it in group])
        masks = torch.stack([structure_on_grid(it, label) for it in group]).float()
        modalities = torch.stack([model.modality_ids(it.modalities, images.shape[1]) for it in group])
        token_losses = fit_label_token(model, label, images, masks, modalities=modalities, steps=token_steps)
        logger.info("token start: loss %.4f -> %.4f in %d steps", token_losses[0], token_losses[-1], token_steps)
    else:
        logger.warning("the structure vanishes on the model grid of every image: the token starts from the mean "
                       "label token")
    if minutes is not None:  # the budget covers the whole run, the preparation too
        config.max_minutes = max(0.05, minutes - (time.time() - start) / 60)
    history: list[StepReport] = []
    done = 0
    if steps > 0:
        trainer = JointTrainer(model, [source, *replay_sources], config)
        history = trainer.train(callback=callback, progress=progress)
        done = trainer.step_count
    if steps == 0:
        replay = "none: the token's start only, every old output unchanged"
    else:
        replay = "pseudo-labels of the base network" if replay_data is None else f"shared data at {replay_data}"
    return {
        "label": {"name": label.name, "id": label.id, "class_index": model.registry.class_index(label),
                  "tasks": [t.value for t in task_list]},
        "samples": len(samples),
        "batch_size": source.batch_size,
        "contrast": source.contrast,
        "replay_every": {src.name: src.every for src in replay_sources},
        "token_loss": [token_losses[0], token_losses[-1]] if token_losses else None,
        "steps": done,
        "first_loss": history[0].loss if history else None,
        "last_loss": history[-1].loss if history else None,
        "minutes": round((time.time() - start) / 60, 2),
        "replay": replay,
    }
