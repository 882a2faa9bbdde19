"""The MONAI Label train task: joint fine-tuning on the datastore, published as a new version.

``POST /train/unimed`` runs this in MONAI Label's background process: final labels of the
datastore give the supervised losses, still-unlabelled images the self-supervised one. Each
step logs ``epoch e/E step s/S loss ... eta``, which ``GET /train/`` shows. The run starts
from the published model (fine-tuning, not from scratch) and publishes a new numbered version
atomically; infer serves it on its next request.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from lib.safe_text import escape_control, scrub_paths
from trainers.config import MixEntry, TrainConfig
from trainers.data import Source, to_grid_item
from trainers.joint import JointTrainer, StepReport, seed_everything
from trainers.train_request import TrainRequest
from unimed.checkpoint import CheckpointError, load_checkpoint
from unimed.datasets.datastore import read_label
from unimed.datasets.errors import DatasetError
from unimed.datasets.sample import Sample
from unimed.labels import LabelRegistry
from unimed.modalities import modalities_from_name
from unimed.model_store import ModelStore
from unimed.networks.unimednet import unimed_small
from unimed.transforms import ImageLoadError, image_affine, load_image

__all__ = ["UniMedTrainTask", "datastore_samples"]

logger = logging.getLogger(__name__)


def datastore_samples(datastore: Datastore, skipped: list[dict[str, str]] | None = None) -> tuple[list[Sample], list[Sample]]:
    """``(labelled, unlabelled)`` samples of a MONAI Label datastore (final labels only).

    An image that cannot be read, or whose label cannot be used, is left out with a warning in
    the log; when ``skipped`` is a list, ``{"image", "reason"}`` is appended to it (the run
    reports them). One bad file never stops training on the others.
    """
    registry = LabelRegistry()
    labelled, unlabelled = [], []

    def skip(image: str, exc: Exception) -> None:
        reason = scrub_paths(str(exc))
        logger.warning("skipping image %s: %s", escape_control(image), escape_control(reason))
        if skipped is not None:
            skipped.append({"image": image, "reason": reason})

    for item in datastore.datalist():
        name = Path(item["image"]).name
        try:
            image = load_image(item["image"])
            label_map, names = read_label(Path(item["label"]), tuple(image.shape[1:]), registry)
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


class UniMedTrainTask(TrainTask):
    """Fine-tune the served UniMed on the datastore and publish the result.

    Args:
        model_dir: the app's model folder (published file and numbered versions).
        published: the published checkpoint's path.

    Request params (``POST /train/unimed`` body): those of :class:`~trainers.train_request.TrainRequest`.
    """

    def __init__(self, model_dir: str | Path, published: str | Path):
        super().__init__("Joint fine-tuning of UniMed on the datastore: final labels + unlabelled images")
        self.store = ModelStore(model_dir, Path(published).name)
        self.stats_file = Path(model_dir) / "train_stats.json"

    def config(self) -> dict[str, Any]:
        return TrainRequest().to_dict()

    def stats(self) -> dict[str, Any]:
        if self.stats_file.exists():
            return json.loads(self.stats_file.read_text())
        return {}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        params = TrainRequest.parse(request)  # MONAI Label's own keys (model, ...) pass by
        epochs = params.max_epochs
        seed_everything(params.seed)
        labels_until = time.time()  # labels saved from now on are new to the version this run publishes
        skipped: list[dict[str, str]] = []
        labelled, unlabelled = datastore_samples(datastore, skipped)
        if not labelled:
            why = f" ({len(skipped)} image(s) skipped: see the log)" if skipped else ""
            raise ValueError(f"the datastore has no usable final labels to train on{why}; save a label first")
        try:
            model, meta = load_checkpoint(self.store.published)
            start_from = meta.get("version")
        except CheckpointError:
            model, start_from = unimed_small(), None
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
            terms = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in rep.losses.items())
            logger.info("epoch %d/%d step %d/%d loss %.4f (%s) eta %.0fs", epoch, epochs, rep.step, steps, rep.loss,
                        terms, rep.eta_seconds)

        history = trainer.train(callback=report)
        version = self.store.publish(model, {
            "kind": "datastore fine-tuning", "from_version": start_from, "steps": trainer.step_count,
            "labelled": [s.name for s in labelled], "unlabelled": len(unlabelled), "labels_until": labels_until,
        })
        stats = {
            "version": version.number, "steps": trainer.step_count, "epochs": epochs,
            "seconds": round(time.time() - t0, 1), "final_loss": history[-1].loss if history else None,
            "labelled": len(labelled), "unlabelled": len(unlabelled), "trained_at": version.meta["trained_at"],
            "skipped": skipped,
        }
        self.stats_file.write_text(json.dumps(stats, indent=2))
        logger.info("published model version %d", version.number)
        return stats
