"""The segments a viewer names when it saves a label, checked against the served label space.

3D Slicer and OHIF save a label map whose values are their own segment numbers, and send with
it (``PUT /datastore/label``, ``params``) a ``label_info`` list of ``{"name", "idx", "color"}``:
the segment's name, its value in the file, its colour (RGB, 0..255 or 0..1). Here:

- a segment named as a label of the served checkpoint (name or alias) stands for that label;
- a segment with a new name is a new label, pending until training teaches it
  (:func:`pending_labels`); the file is kept as it was sent;
- a value of the file with no segment is a label id of the served checkpoint, as a file saved
  without ``label_info`` holds.

What the server cannot use is refused with a :class:`~lib.datastore.errors.DatastoreRequestError`
naming why: a malformed ``label_info`` (400), a name that is no label name, two segments of one
value or one label, a known label that is not a segmentation label, a value that is neither a
named segment nor a label id (422). The saved label's info keeps the segments present in the
file (:meth:`Segment.to_info`), so training reads every value as what the annotator named it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from lib.datastore.errors import DatastoreRequestError
from lib.datastore.names import shown
from unimed.label_growth import canonical_name
from unimed.labels import LabelRegistry, UnknownLabelError
from unimed.task_names import Task

__all__ = ["SEGMENTS_KEY", "Segment", "PendingLabel", "parse_label_info", "segments_present", "saved_segments",
           "value_lut", "pending_labels", "label_case_counts"]

#: the label info key under which a saved label keeps its segments
SEGMENTS_KEY = "segments"


@dataclass(frozen=True)
class Segment:
    """One segment of a saved label map.

    Attributes:
        value: its value in the saved file.
        name: the label it stands for, as the registry spells names (snake_case).
        display: the name the annotator gave it.
        color: its RGB colour, or None when the viewer sent none.
        new: whether the served checkpoint lacks the label (it waits to be taught).
    """

    value: int
    name: str
    display: str
    color: tuple[int, int, int] | None = None
    new: bool = False

    def to_info(self) -> dict[str, Any]:
        """As the datastore's label info keeps it (plain JSON)."""
        return {"value": self.value, "name": self.name, "display": self.display,
                "color": None if self.color is None else list(self.color), "new": self.new}

    @classmethod
    def from_info(cls, d: dict[str, Any]) -> "Segment":
        color = d.get("color")
        return cls(int(d["value"]), str(d["name"]), str(d.get("display") or d["name"]),
                   None if color is None else tuple(int(c) for c in color), bool(d.get("new")))


def _color(value: Any, where: str) -> tuple[int, int, int] | None:
    """An RGB colour from 3 values in 0..255, or in 0..1 as Slicer gives them."""
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) < 3
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in value[:3])):
        raise DatastoreRequestError(400, f"{where}: 'color' must be 3 numbers (RGB), got {shown(value)}")
    rgb = [float(c) for c in value[:3]]
    if all(0 <= c <= 1 for c in rgb) and not all(c == int(c) for c in rgb):
        rgb = [c * 255 for c in rgb]
    if not all(0 <= c <= 255 for c in rgb):
        raise DatastoreRequestError(400, f"{where}: 'color' values must be in 0..255 (or all in 0..1), got {value!r}")
    return tuple(int(round(c)) for c in rgb)


def parse_label_info(entries: Any, registry: LabelRegistry) -> list[Segment]:
    """The segments a viewer's ``label_info`` names.

    Args:
        entries: the ``label_info`` param: a list of ``{"name", "idx", "color"}`` objects
            (``idx``: the segment's value in the file, 1..255), or None (no segments named).
        registry: the served checkpoint's label space.

    Raises:
        DatastoreRequestError: 400 not a list of objects, or an entry without a name or with an
            ``idx`` that is not a whole number in 1..255, or a bad colour; 422 a name that is no
            label name, one value named twice, or two segments of one label.

    Example:
        >>> segs = parse_label_info([{"name": "Oedema", "idx": 1}, {"name": "Spinal cord", "idx": 2}], LabelRegistry())
        >>> [(s.value, s.name, s.new) for s in segs]
        [(1, 'edema', False), (2, 'spinal_cord', True)]
    """
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DatastoreRequestError(400, "params 'label_info' must be a list of segments "
                                         f'{{"name", "idx", "color"}}, got {shown(entries)}')
    segments: list[Segment] = []
    for i, entry in enumerate(entries):
        where = f"label_info[{i}]"
        name, idx = entry.get("name"), entry.get("idx")
        if not isinstance(name, str) or not name.strip():
            raise DatastoreRequestError(400, f"{where} has no segment 'name'")
        if isinstance(idx, bool) or not isinstance(idx, (int, float)) or idx != int(idx) or not 1 <= idx <= 255:
            raise DatastoreRequestError(400, f"{where} ({shown(name)}): 'idx', the segment's value in the label "
                                             f"file, must be a whole number in 1..255, got {shown(idx)}")
        color = _color(entry.get("color"), where)
        if name in registry:
            label = registry.get(name)
            segments.append(Segment(int(idx), label.name, name.strip(), color or label.color))
            continue
        try:
            key = canonical_name(name)
        except ValueError as exc:
            raise DatastoreRequestError(422, f"segment {shown(name)} cannot become a label: {exc}") from None
        segments.append(Segment(int(idx), key, name.strip(), color, new=True))
    for what, counts in (("value", Counter(s.value for s in segments)), ("label", Counter(s.name for s in segments))):
        twice = [k for k, n in counts.items() if n > 1]
        if twice:
            raise DatastoreRequestError(422, f"label_info names two segments of one {what} ({twice[0]!r}); each "
                                             "segment needs a value and a label of its own")
    return segments


def segments_present(values: np.ndarray, segments: Sequence[Segment], registry: LabelRegistry) -> list[Segment]:
    """The segments of the nonzero values in a label map: a named segment, else the label of
    that id (a file saved without ``label_info`` holds label ids).

    Raises:
        DatastoreRequestError: 422 a value that is neither a named segment nor a label id, or a
            known label that is not a segmentation label; the message names the value or label.

    Example:
        >>> segs = parse_label_info([{"name": "spinal cord", "idx": 1}], LabelRegistry())
        >>> [s.name for s in segments_present(np.array([0, 1, 2]), segs, LabelRegistry())]
        ['spinal_cord', 'edema']
    """
    named = {s.value: s for s in segments}
    present = [int(v) for v in np.unique(np.asarray(values)) if v != 0]
    out = []
    for value in present:
        segment = named.get(value)
        if segment is None:
            try:
                label = registry.by_id(value)
            except UnknownLabelError:
                known = ", ".join(f"{lab.id} {lab.name}" for lab in registry)
                raise DatastoreRequestError(
                    422, f"label value {value} is not a registry label id of the served model (0 background, {known}) "
                         "and no segment of params 'label_info' names it; name the segment") from None
            segment = Segment(value, label.name, label.display, label.color)
        if not segment.new and Task.SEGMENTATION not in registry.get(segment.name).tasks:
            tasks = ", ".join(sorted(t.value for t in registry.get(segment.name).tasks))
            raise DatastoreRequestError(422, f"segment {shown(segment.display)} (value {value}) is label "
                                             f"{segment.name!r}, a {tasks} label: a saved mask holds segmentation "
                                             "labels only")
        out.append(segment)
    return out


def saved_segments(info: dict[str, Any], registry: LabelRegistry) -> list[Segment]:
    """The segments a saved label's info keeps; a label saved before segments were kept (or
    with no ``label_info``) has its values as label ids: those of ``info["labels"]``."""
    if SEGMENTS_KEY in info:
        return [Segment.from_info(d) for d in info[SEGMENTS_KEY]]
    out = []
    for name in info.get("labels", ()):
        if name in registry:
            label = registry.get(name)
            out.append(Segment(label.id, label.name, label.display, label.color))
    return out


def value_lut(segments: Iterable[Segment], registry: LabelRegistry) -> np.ndarray:
    """A lookup table from the file's values to ``registry``'s label ids; a value without a
    segment maps to itself (a label id), a segment whose label the registry lacks to 0.

    Example:
        >>> segs = parse_label_info([{"name": "edema", "idx": 1}], LabelRegistry())
        >>> value_lut(segs, LabelRegistry())[[0, 1, 4]].tolist()
        [0, 2, 4]
    """
    lut = np.arange(256, dtype=np.int64)
    for s in segments:
        lut[s.value] = registry.get(s.name).id if s.name in registry else 0
    return lut


@dataclass(frozen=True)
class PendingLabel:
    """A new label named in the datastore that the served checkpoint does not have yet.

    Attributes:
        name: its label name.
        display: the name the annotator gave it.
        color: its colour (None: the server picks one).
        cases: ``(image id, value in that image's final label file)`` of each case marking it.
    """

    name: str
    display: str
    color: tuple[int, int, int] | None
    cases: tuple[tuple[str, int], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "display": self.display, "color": None if self.color is None else list(self.color),
                "cases": len(self.cases)}


def _final_segments(datastore: Datastore, registry: LabelRegistry) -> Iterable[tuple[str, list[Segment]]]:
    tag = DefaultLabelTag.FINAL.value
    for image_id in sorted(datastore.get_labeled_images(tag)):
        yield image_id, saved_segments(datastore.get_label_info(image_id, tag) or {}, registry)


def pending_labels(datastore: Datastore, registry: LabelRegistry) -> list[PendingLabel]:
    """The new labels the datastore's final labels mark and ``registry`` lacks, in name order."""
    found: dict[str, list[tuple[str, Segment]]] = {}
    for image_id, segments in _final_segments(datastore, registry):
        for s in segments:
            if s.name not in registry:
                found.setdefault(s.name, []).append((image_id, s))
    out = []
    for name, cases in sorted(found.items()):
        first = cases[0][1]
        color = next((s.color for _, s in cases if s.color is not None), None)
        out.append(PendingLabel(name, first.display, color, tuple((image_id, s.value) for image_id, s in cases)))
    return out


def label_case_counts(datastore: Datastore, registry: LabelRegistry) -> dict[str, int]:
    """How many final labels of the datastore mark each label (taught or pending)."""
    counts: Counter[str] = Counter()
    for _, segments in _final_segments(datastore, registry):
        counts.update({s.name for s in segments})
    return dict(counts)
