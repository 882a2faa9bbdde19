"""The clicks and box of an interactive infer request, read from its params.

Two click formats reach the server, both in voxel indices of the image as stored in its file:

- DeepGrow's (and any script's): ``{"foreground": [[i, j, k], ...], "background": [...]}``,
  the structure named by ``label`` (or a one-name ``labels``), or, with no name, whatever the
  foreground clicks point at (class-agnostic: the clicked object).
- DeepEdit's, as 3D Slicer's and OHIF's MONAI Label plugins send it for a ``deepedit`` model:
  one click list per label, under the label's own name (``{"edema": [[...]], "background":
  [...]}``), and in Slicer's case ``label``, the segment being edited. Every label with clicks
  is segmented; a click placed on one label is also a background click for the others (the
  structures are disjoint), and the clicks of the ``background`` segment are background for all.

An optional ``box`` (``[i0, j0, k0, i1, j1, k1]``, first and last voxel; or 3D Slicer's ``roi``,
``[i0, i1, j0, j1, k0, k1]``) joins either format.
Only the format is checked here (before the image is read); whether the points fit the image
is checked by :meth:`unimed.clicks.ClickPrompt.from_voxels` once its shape is known.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from unimed.labels import Label, LabelRegistry, UnknownLabelError, parse_labels
from unimed.predictor import CLICKED_OBJECT
from unimed.tasks import Task

__all__ = ["ClickTarget", "ClickRequest", "ClickRequestError", "parse_click_request"]

#: params keys that are never a label's click list
RESERVED_KEYS = frozenset({"foreground", "background", "label", "labels", "box", "task", "output", "modalities",
                           "result_extension", "result_dtype", "result_compress", "roi", "slice", "reset_state"})


class ClickRequestError(ValueError):
    """A click request whose params are malformed (the message names the key and the problem)."""


@dataclass(frozen=True)
class ClickTarget:
    """One structure to segment and the clicks that point at it.

    Attributes:
        label: the registry label, or None for the clicked object (class-agnostic).
        foreground: voxel indices of clicks on the structure.
        background: voxel indices of clicks off it.
    """

    label: Label | None
    foreground: tuple[tuple[float, ...], ...] = ()
    background: tuple[tuple[float, ...], ...] = ()


@dataclass(frozen=True)
class ClickRequest:
    """The structures a request segments, in painting order (a later one wins a shared voxel),
    and its box (voxel indices of the first and last voxel) or None."""

    targets: tuple[ClickTarget, ...]
    box: tuple[float, ...] | None = None


def _points(value: Any, key: str) -> tuple[tuple[float, ...], ...]:
    """A click list: a list of points, each a list of 2 or 3 numbers.

    Example:
        >>> _points([[1, 2, 3]], "foreground")
        ((1, 2, 3),)
        >>> _points([[1, "a", 3]], "background")
        Traceback (most recent call last):
        ...
        lib.infers.click_request.ClickRequestError: 'background' point 0 must be a list of 2 or 3 numbers (voxel indices), got [1, 'a', 3]
    """
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ClickRequestError(f"{key!r} must be a list of points [[i, j, k], ...] (voxel indices), "
                                f"got {type(value).__name__}")
    out = []
    for n, point in enumerate(value):
        ok = (isinstance(point, (list, tuple)) and len(point) in (2, 3)
              and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in point))
        if not ok:
            raise ClickRequestError(f"{key!r} point {n} must be a list of 2 or 3 numbers (voxel indices), got {point!r}")
        out.append(tuple(point))
    return tuple(out)


def _box(params: dict[str, Any]) -> tuple[float, ...] | None:
    """``box`` (``[i0, j0, k0, i1, j1, k1]``), else 3D Slicer's ROI (``roi``: ``[i0, i1, j0, j1, k0,
    k1]``, its corners per axis) in the same order; None when neither is given.

    Example:
        >>> _box({"roi": [10, 20, 30, 40, 5, 6]})
        (10, 30, 5, 20, 40, 6)
    """
    key = "box" if params.get("box") not in (None, []) else "roi"
    value = params.get(key)
    if value is None or value == []:
        return None
    if not (isinstance(value, (list, tuple)) and len(value) in (4, 6)
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)):
        form = "[i0, j0, k0, i1, j1, k1]" if key == "box" else "[i0, i1, j0, j1, k0, k1]"
        raise ClickRequestError(f"{key!r} must be {form} (voxel indices of the first and last voxel), got {value!r}")
    return tuple(value) if key == "box" else tuple(value[0::2]) + tuple(value[1::2])


def _named(params: dict[str, Any], registry: LabelRegistry) -> tuple[bool, Label | None]:
    """Whether ``label`` or ``labels`` names a structure, and which (None: the clicked object)."""
    label = params.get("label")
    if label is not None and not isinstance(label, str):
        raise ClickRequestError(f"'label' must be one label name, got {label!r}")
    names = [label] if label else (parse_labels(params.get("labels")) or [])
    if len(names) > 1:
        raise ClickRequestError(f"clicks segment one structure at a time: name one label, got {names}")
    if not names:
        return False, None
    return True, None if names[0] == CLICKED_OBJECT.name else _segmentation_label(registry, names[0])


def _segmentation_label(registry: LabelRegistry, name: str) -> Label:
    lab = registry.get(name)
    if Task.SEGMENTATION not in lab.tasks:
        raise UnknownLabelError(f"label {lab.name!r} cannot be segmented; segmentation labels: "
                                f"{', '.join(x.name for x in registry.for_task(Task.SEGMENTATION))}")
    return lab


def _per_label(params: dict[str, Any], registry: LabelRegistry) -> dict[Label | None, tuple]:
    """DeepEdit's click lists: every params key that names a segmentation label (or the clicked
    object), with its points; other keys are left to the rest of the request."""
    out: dict[Label | None, tuple] = {}
    for key, value in params.items():
        if not isinstance(key, str) or key in RESERVED_KEYS:
            continue
        if key == CLICKED_OBJECT.name:
            out[None] = _points(value, key)
            continue
        try:
            lab = registry.get(key)
        except UnknownLabelError:
            continue
        if Task.SEGMENTATION in lab.tasks:
            out[lab] = _points(value, key)
    return out


def parse_click_request(params: dict[str, Any], registry: LabelRegistry) -> ClickRequest:
    """Read a request's clicks and box in either format (see the module's docstring).

    Raises:
        ClickRequestError: a malformed point, box or label param, no click and no box, or a
            class-agnostic request without a foreground click or box.
        UnknownLabelError: a named label that is unknown or cannot be segmented.

    Example:
        >>> reg = LabelRegistry()
        >>> req = parse_click_request({"label": "edema", "edema": [[5, 6, 7]], "necrosis": [], "background": [[1, 1, 1]]}, reg)
        >>> [(t.label.name, t.foreground, t.background) for t in req.targets]
        [('edema', ((5, 6, 7),), ((1, 1, 1),))]
        >>> parse_click_request({"foreground": [[2, 3, 4]]}, reg).targets[0].label is None
        True
    """
    box = _box(params)
    background = _points(params.get("background"), "background")
    is_named, named = _named(params, registry)
    if "foreground" in params:
        targets = [ClickTarget(named, _points(params["foreground"], "foreground"), background)]
    else:
        lists = _per_label(params, registry)
        chosen = [lab for lab, pts in lists.items() if pts and not (is_named and lab == named)]
        if is_named or not chosen:
            chosen.append(named)  # the edited segment is painted last; alone, a box or background clicks
        targets = []
        for lab in chosen:
            others = tuple(p for other, pts in lists.items() if other != lab for p in pts)
            targets.append(ClickTarget(lab, lists.get(lab, ()), background + others))
    if any(t.label is None for t in targets) and len(targets) > 1:
        raise ClickRequestError("the clicked object (no label) is segmented alone: do not combine it with named labels")
    for t in targets:
        if not t.foreground and not t.background and box is None:
            what = f"label {t.label.name!r}" if t.label else "the request"
            raise ClickRequestError(f"no click and no box for {what}: give foreground or background clicks "
                                    "(voxel indices) or a 'box'")
        if t.label is None and not t.foreground and box is None:
            raise ClickRequestError("with no label the clicks segment the clicked object: give at least one "
                                    "foreground click or a 'box' (or name a label)")
    return ClickRequest(tuple(targets), box)
