"""The MONAI Label train task: joint fine-tuning on the datastore, published as a new version.

``POST /train/unimed`` runs this in MONAI Label's background process: final labels of the
datastore give the supervised losses, still-unlabelled images the self-supervised one. Each
step logs ``epoch e/E step s/S loss ... eta``, which ``GET /train/`` shows. The run starts
from the published model (fine-tuning, not from scratch) and publishes a new numbered version
atomically; infer serves it on its next request.

When final labels mark segments the served model does not know (new labels named in the
viewer, :func:`lib.datastore.segments.pending_labels`), the run teaches them instead, by the
path of ``main.py teach`` (:func:`trainers.teach.teach_samples`: a new label token started
from the cases, fine-tuning with replay of the shared data, or of the model's own answers), logging ``teach NAME step
s/S loss ... eta``; the published checkpoint's meta ``taught_labels`` lists each taught label's
cases. The next run fine-tunes as above.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from lib.datastore.segments import SEGMENTS_KEY, PendingLabel, Segment, pending_labels, value_lut
from lib.safe_text import escape_control, scrub_paths
from trainers.config import MixEntry, TrainConfig
from trainers.data import Source, to_grid_item
from trainers.joint import JointTrainer, StepReport, seed_everything
from trainers.teach import teach_samples
from trainers.train_request import TrainRequest
from unimed.checkpoint import CheckpointError, load_checkpoint
from unimed.datasets.datastore import check_label_map, image_stem
from unimed.datasets.errors import DatasetError
from unimed.datasets.sample import Sample
from unimed.labels import LabelRegistry
from unimed.modalities import modalities_from_name
from unimed.model_store import TAUGHT_KEY, ModelStore, ModelVersion
from unimed.networks.unimednet import UniMed, unimed_small
from unimed.transforms import ImageLoadError, image_affine, load_image

__all__ = ["UniMedTrainTask", "datastore_samples", "structure_samples"]

logger = logging.getLogger(__name__)


def _skipper(skipped: list[dict[str, str]] | None) -> Callable[[str, Exception], None]:
    def skip(image: str, exc: Exception) -> None:
        reason = scrub_paths(str(exc))
        logger.warning("skipping image %s: %s", escape_control(image), escape_control(reason))
        if skipped is not None:
            skipped.append({"image": image, "reason": reason})

    return skip


def _final_label(datastore: Datastore, image_id: str, path: str | None = None) -> tuple[np.ndarray, list[Segment]]:
    """An image's final label file's values (one channel, as saved) and its segments."""
    info = datastore.get_label_info(image_id, DefaultLabelTag.FINAL.value) or {}
    path = path or datastore.get_label_uri(image_id, DefaultLabelTag.FINAL.value)
    try:
        label = load_image(path)
    except ImageLoadError as exc:
        raise DatasetError(f"its final label cannot be read: {exc}") from None
    if label.shape[0] != 1:
        raise DatasetError(f"a label map must have one channel, got {label.shape[0]}")
    return np.asarray(label[0].detach().cpu().numpy()), [Segment.from_info(d) for d in info.get(SEGMENTS_KEY, ())]


def datastore_samples(datastore: Datastore, skipped: list[dict[str, str]] | None = None,
                      registry: LabelRegistry | None = None) -> tuple[list[Sample], list[Sample]]:
    """``(labelled, unlabelled)`` samples of a MONAI Label datastore (final labels only), with
    label maps of ``registry``'s ids (default: the default labels'): a value the viewer named as a segment is that segment's
    label (:func:`~lib.datastore.segments.value_lut`; one the registry lacks counts as
    background), any other value must be a label id.

    An image that cannot be read, or whose label cannot be used, is left out with a warning in
    the log; when ``skipped`` is a list, ``{"image", "reason"}`` is appended to it (the run
    reports them). One bad file never stops training on the others.
    """
    registry = registry or LabelRegistry()
    labelled, unlabelled = [], []
    skip = _skipper(skipped)
    for item in datastore.datalist():
        name = Path(item["image"]).name
        try:
            image = load_image(item["image"])
            values, segments = _final_label(datastore, image_stem(name), item["label"])
            mapped = value_lut(segments, registry)[np.clip(np.rint(values), 0, 255).astype(np.int64)]
            label_map, names = check_label_map(mapped, tuple(image.shape[1:]), registry)
        except (ImageLoadError, DatasetError) as exc:
            skip(name, exc)
            continue
        labelled.append(Sample(image, image_affine(image), "datastore", name, label_map=label_map, seg_labels=names,
                               modalities=modalities_from_name(name, int(image.shape[0]))))
    for image_id in datastore.get_unlabeled_images(DefaultLabelTag.FINAL):
        try:
            image = load_image(datastore.get_image_uri(image_id))
        except ImageLoadError as exc:
            skip(image_id, exc)
            continue
        unlabelled.append(Sample(image, image_affine(image), "datastore", image_id,
                                 modalities=modalities_from_name(datastore.get_image_uri(image_id),
                                                                 int(image.shape[0]))))
    return labelled, unlabelled


def structure_samples(datastore: Datastore, pending: PendingLabel, label_id: int,
                      skipped: list[dict[str, str]] | None = None) -> list[Sample]:
    """The cases of a pending new label as :func:`trainers.teach.teach_samples` takes them:
    ``label_id`` where the case's final label holds the segment's value, 0 elsewhere. A case
    that cannot be read, or where the segment is empty, is left out (and reported in ``skipped``)."""
    samples = []
    skip = _skipper(skipped)
    for image_id, value in pending.cases:
        path = datastore.get_image_uri(image_id)
        try:
            image = load_image(path)
            values, _ = _final_label(datastore, image_id)
            if values.shape != tuple(image.shape[1:]):
                raise DatasetError(f"label shape {values.shape} differs from the image's {tuple(image.shape[1:])}")
            structure = values == value
            if not structure.any():
                raise DatasetError(f"segment {pending.name!r} (value {value}) is empty in its final label")
        except (ImageLoadError, DatasetError) as exc:
            skip(Path(path).name, exc)
            continue
        samples.append(Sample(image, image_affine(image), "datastore", image_id,
                              label_map=structure.astype(np.uint8) * np.uint8(label_id), seg_labels=(pending.name,),
                              modalities=modalities_from_name(Path(path).name, int(image.shape[0]))))
    return samples


class UniMedTrainTask(TrainTask):
    """Fine-tune the served UniMed on the datastore and publish the result.

    Args:
        model_dir: the app's model folder (published file and numbered versions).
        published: the published checkpoint's path.
        replay_data: what teaching a new label replays so the old ones stay
            (:func:`trainers.teach.teach_samples`): ``"auto"`` (the shared data when present),
            a shared-data-layout folder, or None (the served model's own answers).

    Request params (``POST /train/unimed`` body): those of :class:`~trainers.train_request.TrainRequest`.
    """

    def __init__(self, model_dir: str | Path, published: str | Path, replay_data: str | Path | None = "auto"):
        super().__init__("Joint fine-tuning of UniMed on the datastore: final labels + unlabelled images")
        self.store = ModelStore(model_dir, Path(published).name)
        self.replay_data = replay_data
        self.stats_file = Path(model_dir) / "train_stats.json"

    def config(self) -> dict[str, Any]:
        return TrainRequest().to_dict()

    def stats(self) -> dict[str, Any]:
        if self.stats_file.exists():
            return json.loads(self.stats_file.read_text())
        return {}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        params = TrainRequest.parse(request)  # MONAI Label's own keys (model, ...) pass by
        seed_everything(params.seed)
        labels_until = time.time()  # labels saved from now on are new to the version this run publishes
        try:
            model, meta = load_checkpoint(self.store.published)
        except CheckpointError:
            model, meta = unimed_small(), {}
        pending = pending_labels(datastore, model.registry)
        if pending:
            return self.teach(model, meta, pending, params, datastore, labels_until)
        return self.fine_tune(model, meta, params, datastore, labels_until)

    def fine_tune(self, model: UniMed, meta: dict[str, Any], params: TrainRequest, datastore: Datastore,
                  labels_until: float) -> dict[str, Any]:
        """Joint fine-tuning on the datastore's final labels and unlabelled images."""
        epochs = params.max_epochs
        start_from = meta.get("version")
        skipped: list[dict[str, str]] = []
        labelled, unlabelled = datastore_samples(datastore, skipped, model.registry)
        if not labelled:
            why = f" ({len(skipped)} image(s) skipped: see the log)" if skipped else ""
            raise ValueError(f"the datastore has no usable final labels to train on{why}; save a label first")
        steps = epochs * len(labelled)
        config = TrainConfig(steps=steps, max_minutes=params.max_minutes, lr=params.lr, warmup_steps=0, log_every=1,
                             ssl_loss=params.ssl_loss,
                             mix={"datastore": MixEntry(("segmentation",)), "unlabelled": MixEntry((), every=2)})
        labelled_src = Source("datastore", [to_grid_item(s) for s in labelled], ("segmentation",))
        unlabelled_src = Source("unlabelled", [to_grid_item(s) for s in unlabelled], (), every=2) if unlabelled else None
        trainer = JointTrainer(model, [labelled_src], config, unlabelled_src)
        logger.info("training on %d labelled and %d unlabelled images (%d skipped), %d epochs, from version %s",
                    len(labelled), len(unlabelled), len(skipped), epochs, start_from)
        t0 = time.time()

        def report(rep: StepReport) -> None:
            epoch = math.ceil(rep.step / len(labelled))
            logger.info("epoch %d/%d step %d/%d loss %.4f (%s) eta %.0fs", epoch, epochs, rep.step, steps, rep.loss,
                        _terms(rep), rep.eta_seconds)

        history = trainer.train(callback=report)
        version = self.store.publish(model, {
            "kind": "datastore fine-tuning", "from_version": start_from, "steps": trainer.step_count,
            "labelled": [s.name for s in labelled], "unlabelled": len(unlabelled), "labels_until": labels_until,
            TAUGHT_KEY: meta.get(TAUGHT_KEY, {}),
        })
        return self._finish(version, t0, {
            "steps": trainer.step_count, "epochs": epochs, "final_loss": history[-1].loss if history else None,
            "labelled": len(labelled), "unlabelled": len(unlabelled), "skipped": skipped})

    def teach(self, model: UniMed, meta: dict[str, Any], pending: list[PendingLabel], params: TrainRequest,
              datastore: Datastore, labels_until: float) -> dict[str, Any]:
        """Teach the datastore's new labels one after another with :func:`trainers.teach.teach_samples`
        (the path of ``main.py teach``), each in an equal share of ``max_minutes``."""
        start_from = meta.get("version")
        taught = dict(meta.get(TAUGHT_KEY, {}))
        skipped: list[dict[str, str]] = []
        reports = []
        t0 = time.time()
        for i, label in enumerate(pending):
            samples = structure_samples(datastore, label, model.registry.next_id(), skipped)
            if not samples:
                logger.warning("label %s: none of its %d case(s) can be used; not taught", label.name, len(label.cases))
                continue
            steps = params.teach_steps
            logger.info("teaching new label %s (%d/%d) from %d case(s), %d steps, from version %s", label.name, i + 1,
                        len(pending), len(samples), steps, start_from)

            def report(rep: StepReport, name: str = label.name) -> None:
                logger.info("teach %s step %d/%d loss %.4f (%s) eta %.0fs", name, rep.step, rep.total_steps, rep.loss,
                            _terms(rep), rep.eta_seconds)

            minutes = max(0.05, (params.max_minutes - (time.time() - t0) / 60) / (len(pending) - i))
            result = teach_samples(model, label.name, samples, steps=steps, minutes=minutes,
                                   token_steps=params.token_steps, seed=params.seed, progress=False,
                                   replay_data=self.replay_data,
                                   display=label.display, color=label.color,
                                   callback=report)
            reports.append(result)
            taught[label.name] = {"cases": [s.name for s in samples], "steps": result["steps"]}
        if not reports:
            raise ValueError(f"no case of the new label(s) {', '.join(p.name for p in pending)} can be used "
                             f"({len(skipped)} skipped: see the log)")
        version = self.store.publish(model, {
            "kind": "taught new labels from the datastore", "from_version": start_from, "labels_until": labels_until,
            "steps": sum(r["steps"] for r in reports), TAUGHT_KEY: taught, "taught": reports,
        })
        return self._finish(version, t0, {
            "steps": version.meta["steps"], "taught": [r["label"]["name"] for r in reports],
            "final_loss": reports[-1]["last_loss"], "skipped": skipped})

    def _finish(self, version: ModelVersion, t0: float, stats: dict[str, Any]) -> dict[str, Any]:
        stats = {"version": version.number, "seconds": round(time.time() - t0, 1),
                 "trained_at": version.meta["trained_at"], **stats}
        self.stats_file.write_text(json.dumps(stats, indent=2))
        logger.info("published model version %d", version.number)
        return stats


def _terms(rep: StepReport) -> str:
    return ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in rep.losses.items())
