"""``unimed_interactive``: segmentation from clicks and a box, served as a DeepEdit model.

The model's type is ``deepedit`` (:attr:`InferType.DEEPEDIT`): 3D Slicer's MONAI Label module
and OHIF's MONAI Label panel show their click tools (SmartEdit's foreground and background
points, OHIF's "Point Prompts") for ``deepgrow``, ``deepedit`` and ``vista3d`` models only, and a
``deepedit`` model is the one for which both send a click list per named label, the shape of a
request for a known structure. Its labels are the segmentation labels plus ``background`` (0),
the segment whose clicks the plugins send as background clicks. The request formats are read
by :func:`lib.infers.click_request.parse_click_request`.

The same published checkpoint serves it, through the shared
:class:`unimed.service.ModelService`; its backbone features are cached per image (path and
modification time), so each further click costs one decode.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.infers.click_request import ClickRequest, ClickRequestError, parse_click_request
from lib.infers.unimed import RESOLVED_KEY, InferRequestError, ResolvedRequest, UniMedInferTask, image_cache_key
from unimed.clicks import ClickPrompt, PointError
from unimed.large_images import DEFAULT_MAX_VOXELS
from unimed.predictor import CLICKED_OBJECT, Prediction
from unimed.service import ModelService
from unimed.tasks import Task

__all__ = ["UniMedInteractiveTask", "ClicksUnsupportedError", "CLICKS_KEY"]

#: the request key under which :meth:`UniMedInteractiveTask.validate` leaves its :class:`ClickRequest`
CLICKS_KEY = "unimed_clicks"


class ClicksUnsupportedError(ValueError):
    """The served checkpoint was built without click prompts."""


class UniMedInteractiveTask(UniMedInferTask):
    """Segments the structures that a request's clicks and box point at.

    Args:
        service: the served model.
        description: shown in the viewers' model lists.
        max_voxels: largest image taken (voxels times channels).
    """

    def __init__(self, service: ModelService, description: str, max_voxels: int = DEFAULT_MAX_VOXELS):
        super().__init__(service, Task.SEGMENTATION, description, max_voxels=max_voxels)
        self.type = InferType.DEEPEDIT
        self._config = {}  # the plugins send a model's config back as params: nothing to send

    @property
    def labels(self) -> dict[str, int]:
        """The served checkpoint's segmentation labels, and ``background`` (0): the segment whose
        clicks the plugins send as background clicks."""
        return {"background": 0, **super().labels}

    @labels.setter
    def labels(self, value: Any) -> None:
        """MONAI Label's constructor sets the labels; the served checkpoint decides them instead."""

    def __call__(self, request: dict, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """MONAI Label's infer, with ``label_names`` of a class-agnostic answer naming what its
        value 1 is (MONAI Label sets every label of the model there, in which 1 is another label)."""
        label, result = super().__call__(request, *args, **kwargs)
        if result.get("asked_labels") == [CLICKED_OBJECT.name]:
            result["label_names"] = {"background": 0, CLICKED_OBJECT.name: CLICKED_OBJECT.id}
        return label, result

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["task"] = "segmentation from clicks and a box"
        info["clicks"] = self.takes_clicks()
        info["boundary_refinement"] = self.service.predictor().boundary_refinement is not None
        return info

    def takes_clicks(self) -> bool:
        """Whether the served checkpoint was trained with click prompts."""
        return self.service.model.click_encoder is not None

    def validate(self, request: dict) -> ResolvedRequest:
        """Check a request's params before the image is read: the output, the clicks' format,
        and that the served checkpoint takes clicks.

        Raises:
            ClicksUnsupportedError: the checkpoint has no click prompts.
            InferRequestError, UnknownLabelError: the params name the problem.
        """
        if not self.takes_clicks():
            version = self.service.info().get("version")
            raise ClicksUnsupportedError(
                f"the served checkpoint (version {version}) was not trained for clicks (its config has clicks off): "
                "serve a checkpoint trained with click prompts to use this model")
        try:
            clicks = parse_click_request(request, self.service.model.registry)
        except ClickRequestError as exc:
            raise InferRequestError(str(exc)) from exc
        resolved = super().validate({**request, "labels": None, "task": Task.SEGMENTATION.value})
        labels = [t.label for t in clicks.targets if t.label is not None]
        request[RESOLVED_KEY] = resolved = dataclasses.replace(resolved, labels=labels)
        request[CLICKS_KEY] = clicks
        return resolved

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cpu") -> dict[str, Any]:
        if CLICKS_KEY not in data:
            self.validate(data)
        clicks: ClickRequest = data[CLICKS_KEY]
        key = image_cache_key(data["image_path"])
        image = self.tagged_image(data)
        shape = tuple(int(n) for n in image.shape[1:])
        box = None
        if clicks.box is not None:  # its first and last voxel, each as a point of this image
            half = len(clicks.box) // 2
            box = [v for corner in _on_image(shape, [clicks.box[:half], clicks.box[half:]]) for v in corner]
        predictor = self.service.predictor()
        answers = []
        for target in clicks.targets:
            try:
                prompt = ClickPrompt.from_voxels(shape, _on_image(shape, target.foreground),
                                                 _on_image(shape, target.background), box)
            except PointError as exc:
                raise InferRequestError(str(exc)) from exc
            answers.append(predictor.predict_clicks(image, prompt, target.label, key=key))
        data["prediction"] = _painted(answers)
        data["image"] = None
        return data


def _on_image(shape: tuple[int, ...], points: Sequence[Sequence[float]]) -> list[Sequence[float]]:
    """Points of a 2D image as it takes them: a viewer's ``[i, j, 0]`` (slice 0 of a one-slice
    volume) as ``[i, j]``; anything else as it is, for :meth:`ClickPrompt.from_voxels` to check.

    Example:
        >>> _on_image((48, 48), [(3, 4, 0), (5, 6)])
        [(3, 4), (5, 6)]
    """
    return [p[:2] if len(shape) == 2 and len(p) == 3 and p[2] == 0 else p for p in points]


def _painted(answers: list[Prediction]) -> Prediction:
    """One prediction of several structures' answers, each painted over the ones before it."""
    if len(answers) == 1:
        return answers[0]
    first = answers[0]
    label_map = np.zeros_like(first.label_map())
    scores: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for pred in answers:
        lm = pred.label_map()
        label_map[lm != 0] = lm[lm != 0]
        scores.update(pred.annotation.scores or {})
        for k, v in pred.seconds.items():
            seconds[k] = seconds.get(k, 0.0) + v
    annotation = dataclasses.replace(first.annotation, label_map=label_map, scores=scores)
    labels = [lab for pred in answers for lab in pred.labels]
    return Prediction(task=first.task, labels=labels, annotation=annotation, spec=first.spec, seconds=seconds)
