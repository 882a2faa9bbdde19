"""Inference with one UniMed network: image in, annotation in the image's own space out.

The expensive half of the network (backbone and pixel decoder) runs once per image, with
sliding windows when the model grid is larger than the window, and its features are cached;
each task then costs only the decomposed decoder and the composed decoder.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import numpy as np
import torch

from unimed.boundary_refinement import BoundaryRefinement, RefinementReport, refine_object_logit, standardised_channels
from unimed.clicks import ClickPrompt, click_tensors
from unimed.composer import ComposedDecoder
from unimed.labels import Label
from unimed.large_images import WHOLE_BYTES, full_logit_bytes
from unimed.modalities import image_modalities
from unimed.networks.click_prompt import appearance_map
from unimed.networks.unimednet import Features, UniMed
from unimed.tasks import Task
from unimed.tasks.segmentation import segmentation_tokens
from unimed.tokens import Annotation
from unimed.transforms import GRID_SPACING_3D, MAX_GRID_SIZE_3D, GridSpec, resize_to_image, to_model_grid, voxel_spacing

__all__ = ["Predictor", "Prediction", "CLICKED_OBJECT"]

#: what a class-agnostic click answer is labelled: value 1 of its label map
CLICKED_OBJECT = Label(1, "object", "Clicked object", frozenset({Task.SEGMENTATION}), (255, 255, 0))


@dataclass
class Prediction:
    """One task's answer for one image.

    Attributes:
        task: the task asked for.
        labels: the labels asked for (all of the task's when the request named none).
        annotation: the decoded annotation; a segmentation's label map has the image's shape,
            a detection's boxes are normalised to the image.
        spec: the image's geometry.
        seconds: time spent per stage.
        refinement: a click answer's boundary refinement (None: not refined).
    """

    task: Task
    labels: list[Label]
    annotation: Annotation
    spec: GridSpec
    seconds: dict[str, float] = field(default_factory=dict)
    refinement: RefinementReport | None = None

    def label_map(self) -> np.ndarray:
        """The segmentation as an array of the image's spatial shape (registry label ids)."""
        lm = np.asarray(self.annotation.label_map, dtype=np.uint8)
        return lm.reshape(self.spec.image_shape)

    def boxes_voxel(self) -> np.ndarray:
        """Boxes as ``[x0, y0, z0, x1, y1, z1]`` continuous voxel-index coordinates (voxel
        ``i`` spans ``i - 0.5 .. i + 0.5``)."""
        boxes = np.asarray(self.annotation.boxes, dtype=np.float64).reshape(-1, 6)
        size = np.array(self.spec.shape * 2, dtype=np.float64)
        return boxes * size - 0.5

    def boxes_world(self) -> np.ndarray:
        """Boxes as ``[cx, cy, cz, sx, sy, sz]`` in world millimetres, LPS (DICOM's and
        Slicer's frame), axis-aligned around the transformed voxel box."""
        out = []
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.spec.affine
        for b in self.boxes_voxel():
            corners = np.array([[x, y, z, 1.0] for x in b[[0, 3]] for y in b[[1, 4]] for z in b[[2, 5]]])
            world = (lps @ corners.T).T[:, :3]
            lo, hi = world.min(0), world.max(0)
            out.append(np.concatenate([(lo + hi) / 2, hi - lo]))
        return np.array(out).reshape(-1, 6)


class Predictor:
    """Runs a :class:`UniMed` on images of any size and maps answers back to the image.

    Args:
        model: the network (moved to eval mode).
        roi_size_3d: sliding-window size (per axis) on a volume's model grid; a larger grid is
            tiled. The default holds a default-sized grid whole.
        roi_size_2d: the same for a 2D image.
        overlap: sliding-window overlap; with the default 1/3 and windows of a multiple of 48,
            window origins fall on multiples of 16, where the memory levels align.
        max_size_3d: the longest side a volume's model grid may have (memory); below it, the grid
            has ``spacing_3d`` voxels and grids larger than the window are tiled.
        max_size_2d: longest side of a 2D image's model grid.
        spacing_3d: voxel size (mm) of a volume's model grid (:func:`unimed.transforms.grid_shape`);
            None fits the longest side to ``max_size_3d``.
        score_threshold: least class probability of a detection.
        cache_size: images whose features are kept for the next request.
        boundary_refinement: how a click answer's boundary follows the image's own appearance at
            its resolution (:mod:`unimed.boundary_refinement`); None keeps the network's.

    Example:
        >>> from unimed.networks.unimednet import unimed_tiny
        >>> pred = Predictor(unimed_tiny()).predict(torch.rand(1, 40, 30, 20), "segmentation", ["edema"])
        >>> pred.label_map().shape
        (40, 30, 20)
    """

    def __init__(
        self,
        model: UniMed,
        *,
        roi_size_3d: int = 144,
        roi_size_2d: int = 384,
        overlap: float = 1 / 3,
        max_size_3d: int = MAX_GRID_SIZE_3D,
        max_size_2d: int = 384,
        spacing_3d: float | None = GRID_SPACING_3D,
        score_threshold: float = 0.3,
        cache_size: int = 4,
        boundary_refinement: BoundaryRefinement | None = BoundaryRefinement(),
    ):
        for roi in (roi_size_3d, roi_size_2d):
            if roi % 16:
                raise ValueError(f"sliding-window sizes must be multiples of 16, got {roi}")
        self.model = model.eval()
        self.roi_size_3d, self.roi_size_2d = roi_size_3d, roi_size_2d
        self.overlap = overlap
        self.max_size_3d, self.max_size_2d = max_size_3d, max_size_2d
        self.spacing_3d = spacing_3d
        self.composer = ComposedDecoder(model.vocab, score_threshold=score_threshold)
        self.cache_size = cache_size
        self.boundary_refinement = boundary_refinement
        self._cache: OrderedDict[Hashable, tuple[Features, GridSpec]] = OrderedDict()
        self._channels: tuple[Hashable, np.ndarray] | None = None  # the last clicked image's, standardised

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def clear_cache(self) -> None:
        self._cache.clear()
        self._channels = None

    @torch.inference_mode()
    def features(self, image: torch.Tensor, key: Hashable | None = None) -> tuple[Features, GridSpec]:
        """Model-grid features of a channel-first image, from the cache when ``key`` was seen."""
        modalities = image_modalities(image)
        if key is not None:
            key = (key, modalities)
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        ids = self.model.modality_ids(modalities, int(image.shape[0]))
        grid, spec = to_model_grid(image, max_size_3d=self.max_size_3d, max_size_2d=self.max_size_2d,
                                   spacing_3d=self.spacing_3d)
        feats = self._encode(grid.unsqueeze(0).to(self.device), ids.unsqueeze(0).to(self.device))
        if key is not None and self.cache_size > 0:
            self._cache[key] = (feats, spec)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return feats, spec

    def _encode(self, x: torch.Tensor, modalities: torch.Tensor) -> Features:
        size = self.roi_size_2d if x.shape[-1] == 1 else self.roi_size_3d
        roi = tuple(min(size, n) for n in x.shape[2:])
        if roi == tuple(x.shape[2:]):
            return self.model.encode(x, modalities)
        from monai.inferers import sliding_window_inference

        def window(patch: torch.Tensor):
            f = self.model.encode(patch, modalities.expand(patch.shape[0], -1))
            emb = f.embedding[:, :, None, None, None].expand(-1, -1, *f.memory[0].shape[2:]).contiguous()
            return (f.pixel, *f.memory, f.dense, emb)

        pixel, m16, m8, dense, emb = sliding_window_inference(
            x, roi, sw_batch_size=1, predictor=window, overlap=self.overlap, mode="constant"
        )
        return Features(pixel=pixel, memory=[m16, m8], dense=dense, embedding=emb.mean(dim=(2, 3, 4)),
                        appearance=appearance_map(x, tuple(pixel.shape[2:])))

    def resolve(self, task: Task | str, labels: Sequence[str | Label] | None) -> tuple[Task, list[Label]]:
        """A request's task and labels as :class:`Task` and :class:`Label` objects.

        Values that are already resolved (a :class:`Task`; a list of :class:`Label`) pass as they
        are, so a caller that checked a request once (the infer task) is not parsed again.

        Raises:
            UnknownTaskError, UnknownLabelError: an unknown task or label.
        """
        task = Task.parse(task)
        if labels and all(isinstance(lab, Label) for lab in labels):
            return task, list(labels)
        return task, self.model.registry.resolve(list(labels) if labels else None, task)

    @torch.inference_mode()
    def predict(
        self,
        image: torch.Tensor,
        task: Task | str,
        labels: Sequence[str | Label] | None = None,
        *,
        key: Hashable | None = None,
    ) -> Prediction:
        """Answer one request for a channel-first image ``(C, X, Y[, Z])``.

        Args:
            image: the image; a MetaTensor's affine places boxes in the world.
            task: a :class:`Task`, or its name or alias (``segmentation`` or ``seg``, ...).
            labels: resolved :class:`Label` objects (used as given, see :meth:`resolve`), or label
                names or aliases; None or empty for every label of the task.
            key: cache key of the image (e.g. path and modification time).

        The image's channels are read as the modalities :func:`unimed.modalities.tag_modalities`
        put on it (unknown when untagged).

        Raises:
            UnknownTaskError, UnknownLabelError: the request names an unknown task or label.
        """
        task, resolved = self.resolve(task, labels)
        t0 = time.perf_counter()
        feats, spec = self.features(image, key)
        t1 = time.perf_counter()
        ids, pad = self.model.prompt([(task, resolved)])
        out = {k: v[0].cpu() for k, v in self.model.decode(feats, ids, pad).items()}  # composed on the CPU
        t2 = time.perf_counter()
        ann = self.composer.answer(task, out, resolved, spec)
        t3 = time.perf_counter()
        seconds = {"encode": t1 - t0, "decode": t2 - t1, "compose": t3 - t2}
        return Prediction(task=task, labels=resolved, annotation=ann, spec=spec, seconds=seconds)

    @torch.inference_mode()
    def predict_clicks(
        self,
        image: torch.Tensor,
        clicks: ClickPrompt,
        label: str | Label | None = None,
        *,
        key: Hashable | None = None,
    ) -> Prediction:
        """Segment the object that clicks and a box point at, in a channel-first image.

        The backbone's features come from the cache when ``key`` was seen, so each further click
        costs one decode.

        Args:
            image: the image, as for :meth:`predict`.
            clicks: the clicks and box, normalised to the image (:meth:`ClickPrompt.from_voxels`).
            label: the label the clicks refine; None for the clicked object, whatever it is
                (answered as :data:`CLICKED_OBJECT`, value 1).
            key: cache key of the image.

        Raises:
            UnknownLabelError: an unknown label, or one that is no segmentation label.
            ValueError: no click and no box, or, with no label, no foreground click or box.
        """
        if clicks.is_empty():
            raise ValueError("give at least one click or a box")
        _, resolved = self.resolve(Task.SEGMENTATION, [label] if label is not None else None)
        t0 = time.perf_counter()
        feats, spec = self.features(image, key)
        t1 = time.perf_counter()
        ids, pad = self.model.prompt([(Task.SEGMENTATION, resolved[:1])])
        if label is None:
            ids, pad = ids[:, :1], pad[:, :1]
        pts, kinds = click_tensors([clicks], self.device)
        out = {k: v[0].cpu() for k, v in self.model.decode(feats, ids, pad, clicks=(pts, kinds)).items()}
        t2 = time.perf_counter()
        ann, report = self._click_answer(image, clicks, out["mask_logits"], resolved[:1], spec, key)
        answered = resolved[:1]
        if label is None:  # the object's mask was composed under a stand-in label: give it its own value
            ann.label_map = (np.asarray(ann.label_map) != 0).astype(np.uint8) * CLICKED_OBJECT.id
            ann.scores = {CLICKED_OBJECT.name: s for s in (ann.scores or {}).values()}
            answered = [CLICKED_OBJECT]
        t3 = time.perf_counter()
        seconds = {"encode": t1 - t0, "decode": t2 - t1, "compose": t3 - t2}
        return Prediction(task=Task.SEGMENTATION, labels=answered, annotation=ann, spec=spec, seconds=seconds,
                          refinement=report)

    def _click_answer(self, image: torch.Tensor, clicks: ClickPrompt, mask_logits: torch.Tensor,
                      labels: list[Label], spec: GridSpec,
                      key: Hashable | None) -> tuple[Annotation, RefinementReport | None]:
        """The click answer at the image's resolution, its boundary refined when the predictor
        refines and the image's logits fit in memory whole (no refinement report otherwise). The
        last clicked image's standardised channels are kept under its ``key`` for its next click."""
        out = {"mask_logits": mask_logits}
        if self.boundary_refinement is None or full_logit_bytes(mask_logits, spec) > WHOLE_BYTES:
            return self.composer.answer(Task.SEGMENTATION, out, labels, spec), None
        full = resize_to_image(mask_logits, spec)
        logit = (full[1] - full[0]).numpy()
        shape3 = tuple(logit.shape) + (1,) * (3 - logit.ndim)
        kept = self._channels  # read once: another request may replace it meanwhile
        if key is not None and kept is not None and kept[0] == key:
            channels = kept[1]
        else:
            channels = standardised_channels(np.asarray(image.detach().cpu() if torch.is_tensor(image) else image))
            channels = channels.reshape(shape3 + (channels.shape[-1],))
            self._channels = (key, channels) if key is not None and self.cache_size > 0 else None
        foreground, background = clicks.voxels(shape3)
        spacing = voxel_spacing(spec.affine)
        refined, report = refine_object_logit(logit.reshape(shape3), channels, foreground, background,
                                              self.boundary_refinement, spacing=spacing)
        two = torch.stack([torch.zeros(shape3), torch.from_numpy(refined.astype(np.float32))]).reshape(full.shape)
        return self.composer.decode(segmentation_tokens(self.model.vocab, two, labels)), report
