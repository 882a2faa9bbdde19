"""TaskConfig of the UniMed app: one network behind five infer models."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import strtobool

from lib.activelearning.scoring import UncertaintyScoring
from lib.activelearning.strategies import UncertaintyStrategy
from lib.infers.interactive import UniMedInteractiveTask
from lib.infers.unimed import UniMedInferTask
from lib.trainers.unimed import UniMedTrainTask
from unimed.boundary_refinement import BoundaryRefinement
from unimed.large_images import DEFAULT_MAX_VOXELS
from unimed.service import ModelService
from unimed.tasks import Task
from unimed.transforms import MAX_GRID_SIZE_3D, parse_grid_spacing

logger = logging.getLogger(__name__)


def parse_switch(value: str, name: str) -> bool:
    """A conf switch as MONAI Label reads one (``true``/``false``, ``1``/``0``, ``yes``/``no``, ...).

    Raises:
        ValueError: anything else; the message starts with ``name``.
    """
    try:
        return strtobool(value.strip())
    except ValueError:
        raise ValueError(f"{name} must be true or false, got {value!r}") from None


class UniMedTaskConfig(TaskConfig):
    """Builds the shared :class:`ModelService` and the models ``unimed``, ``unimed_seg``,
    ``unimed_det``, ``unimed_cls`` and ``unimed_interactive`` (clicks and a box, type ``deepedit``).

    Conf keys (``--conf KEY VALUE``): ``model_path`` (default ``<app>/model/unimed.pt``; training
    publishes there and keeps numbered versions in ``versions/`` beside it),
    ``grid_spacing_3d`` (voxel size in mm of a volume's model grid, default
    :data:`unimed.transforms.GRID_SPACING_3D`; ``none`` fits the longest side to ``max_size_3d``),
    ``max_size_3d`` (the longest side a volume's grid may have, for memory, default
    :data:`unimed.transforms.MAX_GRID_SIZE_3D`; larger fields of view are coarsened to fit, grids
    wider than the window are tiled), ``boundary_refinement`` (``true``, the default: a click
    answer's boundary follows the image's own appearance at its resolution where that separates
    the object, :mod:`unimed.boundary_refinement`; ``false`` keeps the network's), ``al_labels``
    (comma-separated segmentation labels whose output entropy ranks images; default all),
    ``max_voxels`` (largest image an infer request may send, voxels times channels, checked from
    the header before the pixels are read; default :data:`unimed.large_images.DEFAULT_MAX_VOXELS`),
    ``replay_data`` (what teaching a new label replays so the old ones keep their figures:
    ``auto``, the default, is ``$UNIMED_REPLAY_DATA`` or the shared data beside the project when
    present; a folder in the shared data layout; ``none``: the served model's own answers).
    """

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.path = conf.get("model_path", os.path.join(model_dir, "unimed.pt"))
        self.model_dir = os.path.dirname(os.path.abspath(self.path))  # versions live beside the published file
        refine = parse_switch(conf.get("boundary_refinement", "true"), "conf boundary_refinement")
        self.service = ModelService(self.path, max_size_3d=int(conf.get("max_size_3d", MAX_GRID_SIZE_3D)),
                                    spacing_3d=parse_grid_spacing(conf.get("grid_spacing_3d"), "conf grid_spacing_3d"),
                                    boundary_refinement=BoundaryRefinement() if refine else None)
        self.al_labels = [n.strip() for n in conf.get("al_labels", "").split(",") if n.strip()] or None
        self.max_voxels = int(conf.get("max_voxels", DEFAULT_MAX_VOXELS))
        if self.max_voxels <= 0:
            raise ValueError(f"conf max_voxels must be positive, got {self.max_voxels}")
        replay = conf.get("replay_data", "auto")
        self.replay_data = None if replay.strip().lower() in ("", "none") else replay
        if self.replay_data not in (None, "auto") and not os.path.isdir(self.replay_data):
            raise ValueError(f"conf replay_data {replay!r}: no such folder (auto, none, or a folder laid out "
                             "like ../shared/data)")

    def infer(self) -> dict[str, InferTask]:
        return {
            self.name: UniMedInferTask(self.service, None, "UniMed: any task, chosen by params {'task', 'labels'}",
                                       max_voxels=self.max_voxels),
            **{f"{self.name}_{task.token}": UniMedInferTask(self.service, task, f"UniMed {task.value}",
                                                            max_voxels=self.max_voxels) for task in Task},
            f"{self.name}_interactive": UniMedInteractiveTask(
                self.service, "UniMed from clicks: foreground/background points (and a box) on a structure, or on any "
                "object with no label", max_voxels=self.max_voxels),
        }

    def trainer(self) -> Optional[TrainTask]:
        return UniMedTrainTask(self.model_dir, self.path, self.replay_data)

    def strategy(self) -> dict[str, Strategy]:
        return {
            "uncertainty": UncertaintyStrategy(pick="most"),
            "uncertainty_sampled": UncertaintyStrategy(pick="sampled"),
            "diversity": UncertaintyStrategy(pick="diverse"),
        }

    def scoring_method(self) -> dict[str, ScoringMethod]:
        return {f"{self.name}_uncertainty": UncertaintyScoring(self.service, labels=self.al_labels)}
