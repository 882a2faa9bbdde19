"""MONAI Label infer tasks: one class, four models, one network.

``unimed`` takes the task from the request's params (``{"task": "detection", "labels":
["edema"]}``); ``unimed_seg``, ``unimed_det`` and ``unimed_cls`` fix it, so that the stock
Slicer and OHIF plugins, which list models by type, show each of them. All share one
:class:`unimed.service.ModelService`, so switching task on an image costs only the decoder.

Outputs follow MONAI Label's writers: a NIfTI label map with the image's shape and affine
for segmentation; ``{"box", "label", "score"}`` JSON in world coordinates plus a Slicer ROI
markup file for detection; ``{"prediction": [{"idx", "label", "score"}]}`` for classification.
With ``{"output": "dicom_seg"}`` a segmentation of an image that came from DICOM (a series
folder, or a DICOMweb datastore's series) is written as a DICOM SEG of that series instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.detection import create_slicer_detection_json

from unimed.labels import Label, parse_labels
from unimed.large_images import DEFAULT_MAX_VOXELS, check_voxel_limit
from unimed.predictor import Prediction
from unimed.service import ModelService
from unimed.tasks import TASKS, Task
from unimed.modalities import modalities_from_name, parse_modalities, tag_modalities
from unimed.transforms import load_image
from unimed.writers import OutputError, check_label_extension, write_dicom_seg, write_label_map

__all__ = ["UniMedInferTask", "InferRequestError", "ResolvedRequest", "OUTPUTS", "image_cache_key"]

#: values of the ``output`` param: the default label image, or a DICOM SEG
OUTPUTS = ("image", "dicom_seg")

#: the request key under which :meth:`UniMedInferTask.validate` leaves its :class:`ResolvedRequest`
RESOLVED_KEY = "unimed_resolved"

logger = logging.getLogger(__name__)


class InferRequestError(ValueError):
    """A request whose params are malformed (the message says which and why)."""


@dataclass(frozen=True)
class ResolvedRequest:
    """A request's task and labels, parsed and checked once at the edge."""

    task: Task
    labels: list[Label]
    modalities: tuple[str, ...] | None = None  # None: from the file name, else unknown


class _LoadImage:
    """Pre-transform: read ``data["image"]`` (a path) into a channel-first MetaTensor, after
    checking the voxel count its header states against ``max_voxels``."""

    def __init__(self, max_voxels: int = DEFAULT_MAX_VOXELS):
        self.max_voxels = max_voxels

    def __call__(self, data: dict) -> dict:
        path = data["image"]
        data["image_path"] = path
        check_voxel_limit(path, self.max_voxels)
        data["image"] = load_image(path, keep_dtype=True)  # a CT stays int16: half the memory of float32
        return data


class UniMedInferTask(BasicInferTask):
    """A MONAI Label infer task backed by the shared UniMed network.

    Args:
        service: the served model.
        task: the task this model answers; None for the generic model that reads it from
            the request's ``task`` param.
        description: shown in the viewers' model lists.
        max_voxels: largest image taken (voxels times channels); a larger one raises
            :class:`~unimed.large_images.VoxelLimitError` before its pixels are read.
    """

    def __init__(self, service: ModelService, task: Task | None, description: str,
                 max_voxels: int = DEFAULT_MAX_VOXELS):
        self.service = service
        self.task = task
        super().__init__(
            path=str(service.path),
            network=None,
            type=task.value if task else InferType.OTHERS,  # InferType's strings are the task names
            labels=None,  # :attr:`labels` reads the served checkpoint's
            dimension=3,
            description=description,
            config={"task": task.value if task else "segmentation", "labels": []},
        )
        self.max_voxels = max_voxels

    @property
    def labels(self) -> dict[str, int]:
        """The served checkpoint's labels of this model's task, name -> label id (taught labels
        too): what ``/info`` lists and every answer's ``label_names`` holds."""
        registry = self.service.model.registry
        return {lab.name: lab.id for lab in (registry.for_task(self.task) if self.task else registry)}

    @labels.setter
    def labels(self, value: Any) -> None:
        """MONAI Label's constructor sets the labels; the served checkpoint decides them instead."""

    def is_valid(self) -> bool:
        return True  # the service serves untrained weights when no checkpoint exists

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["task"] = self.task.value if self.task else "any (params: task)"
        info["model"] = self.service.info()
        return info

    def request_task(self, request: dict) -> Task:
        """The task of a request: fixed for a per-task model, from params for ``unimed``.

        Raises:
            InferRequestError, UnknownTaskError: the request asks for another task, or an unknown one.
        """
        asked = request.get("task")
        if self.task is None:
            return Task.parse(asked or "segmentation")
        if asked and Task.parse(asked) is not self.task:
            raise InferRequestError(f"model serves {self.task.value} only; use 'unimed' for task {asked!r}")
        return self.task

    def validate(self, request: dict) -> ResolvedRequest:
        """Check a request's params before any work, and resolve its task and labels once.

        The result is also left in ``request`` (under :data:`RESOLVED_KEY`), where
        :meth:`run_inferer` takes it instead of parsing the params again.

        Raises:
            InferRequestError, UnknownTaskError, UnknownLabelError: the params name the problem.
        """
        task = self.request_task(request)
        output = request.get("output") or "image"
        if output not in OUTPUTS:
            raise InferRequestError(f"'output' must be one of {', '.join(OUTPUTS)}, got {output!r}")
        writes_label_map = TASKS[task].output_file == "label_map"
        if output == "dicom_seg" and not writes_label_map:
            raise InferRequestError(f"output 'dicom_seg' is for segmentation; task {task.value!r} has no label image")
        if writes_label_map and output == "image":  # the only answer written with it
            try:
                check_label_extension(request.get("result_extension") or ".nii.gz")
            except OutputError as exc:
                raise InferRequestError(str(exc)) from exc
        labels = self.service.model.registry.resolve(parse_labels(request.get("labels")), task)
        try:
            modalities = parse_modalities(request.get("modalities"))
        except ValueError as exc:  # UnknownModalityError names the known ones
            raise InferRequestError(f"'modalities': {exc}") from exc
        request[RESOLVED_KEY] = resolved = ResolvedRequest(task, labels, modalities)
        return resolved

    # -- the BasicInferTask pipeline -------------------------------------------------------------
    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return [_LoadImage(self.max_voxels)]

    def run_invert_transforms(self, data: dict[str, Any], pre_transforms, names) -> dict[str, Any]:
        return data  # the prediction is already in the image's own space

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return []

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cpu") -> dict[str, Any]:
        resolved = data.get(RESOLVED_KEY) or self.validate(data)
        image = self.tagged_image(data)
        data["prediction"] = self.service.predictor().predict(image, resolved.task, resolved.labels,
                                                              key=image_cache_key(data["image_path"]))
        data["image"] = None  # the pixels are not needed past here: free them before the answer is written
        return data

    def tagged_image(self, data: dict[str, Any]) -> Any:
        """The loaded image, its channels tagged with the request's modalities (else the file
        name's, else unknown).

        Raises:
            InferRequestError: the request names another number of modalities than the image has channels.
        """
        resolved: ResolvedRequest = data[RESOLVED_KEY]
        path, image = data["image_path"], data["image"]
        channels = int(image.shape[0])
        if resolved.modalities is not None and len(resolved.modalities) != channels:
            raise InferRequestError(f"'modalities' names {len(resolved.modalities)} channels; the image has {channels}")
        modalities = resolved.modalities or (modalities_from_name(path, channels) if isinstance(path, str) else None)
        return tag_modalities(image, modalities)

    def run_detector(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cpu") -> dict[str, Any]:
        return self.run_inferer(data, convert_to_batch, device)

    def writer(self, data: dict[str, Any], extension=None, dtype=None) -> tuple[Any, Any]:
        pred: Prediction = data["prediction"]
        spec = TASKS[pred.task]
        # MONAI Label overwrites "label_names" with all of the model's labels; "asked_labels" are this answer's
        result = {"task": pred.task.value, "model_version": self.service.info().get("version"), "seconds": pred.seconds,
                  "asked_labels": [lab.name for lab in pred.labels]}
        try:
            if data.get("output") == "dicom_seg":  # validate allows it for label-map tasks only
                return write_dicom_seg(pred, data.get("image_path", "")), {**result, "output": "dicom_seg"}
            result.update(spec.result_fields(pred, self.service.model.registry))
            if spec.output_file == "label_map":
                return write_label_map(pred, data.get("result_extension") or ".nii.gz"), result
        except OutputError as exc:
            raise InferRequestError(str(exc)) from exc
        if spec.output_file == "roi_markup" and data.get("result_write_to_file", True):
            return write_roi_markup(result, data), result  # written even when empty: clients expect the file
        return None, result


def image_cache_key(path: Any) -> tuple[str, int] | None:
    """The predictor's feature-cache key of an image file: its path and modification time (a
    file replaced in place is encoded again); None for anything that is not a file path."""
    return (path, os.stat(path).st_mtime_ns) if isinstance(path, str) and os.path.exists(path) else None


def write_roi_markup(result: dict[str, Any], data: dict[str, Any]) -> str:
    """A Slicer ROI markup file of a detection answer's world boxes and labels (MONAI Label's writer)."""
    markup, _ = create_slicer_detection_json(
        {"box": result["box"], "label": result["label"], "image": str(data.get("image_path", "image"))}
    )
    return markup
