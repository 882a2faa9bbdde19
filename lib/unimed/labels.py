"""The shared label space: one registry of named labels used by every dataset and task.

Every dataset maps its own label values onto these entries, so that one network with one
class head serves them all. A label's ``id`` is the value it takes in a segmentation label
map written by the app; it never changes once published (checkpoints depend on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from unimed.task_names import Task

__all__ = ["Code", "Label", "LabelRegistry", "UnknownLabelError", "DEFAULT_LABELS", "parse_labels", "label_to_dict",
           "label_from_dict", "registry_from_config"]


class UnknownLabelError(ValueError):
    """A label name that the registry does not hold."""


@dataclass(frozen=True)
class Code:
    """A coded concept as DICOM writes it (code value, coding scheme designator, code meaning).

    SNOMED CT (``SCT``) concepts are the ones DICOM PS3.16 lists for segmentations (CID 7150
    "Segmentation Property Categories", CID 7151 "Segmentation Property Types", CID 4 "Anatomic
    Regions"), spelled as in pydicom's copy of that dictionary (``pydicom.sr.codedict.codes``;
    a test checks every SCT code here against it). Concepts DICOM has no code for use the
    private scheme ``99UNIMED`` (PS3.16 section 8.2: private designators start with "99").
    """

    value: str
    scheme: str
    meaning: str


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


def _local(value: str, meaning: str) -> Code:
    return Code(value, "99UNIMED", meaning)


#: DICOM SEG property categories (CID 7150)
ABNORMAL = _sct("49755003", "Morphologically Abnormal Structure")
TISSUE = _sct("85756007", "Tissue")
NEOPLASM = _sct("108369006", "Neoplasm")


@dataclass(frozen=True)
class Label:
    """One entry of the shared label space.

    Attributes:
        id: value of this label in a segmentation label map (1..255, 0 is background).
        name: canonical snake_case name, used in requests and in ``/info``.
        display: human-readable name shown in viewers.
        tasks: tasks this label can be asked for.
        color: RGB colour for viewers and DICOM SEG.
        aliases: other spellings accepted in requests (case-insensitive).
        category: DICOM SEG segmented property category (CID 7150).
        type: DICOM SEG segmented property type (CID 7151 and its sub-groups).
        region: anatomic region, where the type alone does not say it.
    """

    id: int
    name: str
    display: str
    tasks: frozenset[Task]
    color: tuple[int, int, int]
    aliases: tuple[str, ...] = field(default=())
    category: Code = ABNORMAL
    type: Code = NEOPLASM
    region: Code | None = None


def _label(id: int, name: str, display: str, tasks: Iterable[Task], color, aliases=(), **codes: Code | None) -> Label:
    return Label(id, name, display, frozenset(tasks), tuple(color), tuple(aliases), **codes)


SEG, DET, CLS = Task.SEGMENTATION, Task.DETECTION, Task.CLASSIFICATION

# BraTS sub-region ids 1..4 equal the BraTS label values, so BraTS labels map onto themselves.
DEFAULT_LABELS: tuple[Label, ...] = (
    _label(1, "necrosis", "Necrosis", (SEG,), (255, 0, 0), ("necrotic_core", "ncr"), type=_sct("6574001", "Necrosis")),
    _label(2, "edema", "Edema", (SEG, DET), (0, 255, 0), ("oedema", "peritumoral_edema", "ed"),
           type=_sct("79654002", "Edema")),
    _label(3, "non_enhancing_tumor", "Non-enhancing tumour", (SEG,), (0, 0, 255), ("non_enhancing_tumour", "net"),
           region=_sct("12738006", "Brain")),
    _label(4, "enhancing_tumor", "Enhancing tumour", (SEG, DET), (255, 255, 0), ("enhancing_tumour", "et"),
           region=_sct("12738006", "Brain")),
    _label(5, "brain_tumor", "Brain tumour", (DET, CLS), (255, 128, 0), ("brain_tumour", "whole_tumor", "tumor"),
           region=_sct("12738006", "Brain")),
    _label(6, "lung_tumor", "Lung tumour", (SEG, DET, CLS), (200, 0, 200), ("lung_tumour", "lung_nodule"),
           region=_sct("39607008", "Lung")),
    _label(7, "red_blood_cell", "Red blood cell", (DET,), (220, 60, 60), ("rbc",), category=TISSUE,
           type=_local("RBC", "Red blood cell")),
    _label(8, "white_blood_cell", "White blood cell", (DET,), (60, 60, 220), ("wbc",), category=TISSUE,
           type=_local("WBC", "White blood cell")),
    _label(9, "platelet", "Platelet", (DET,), (60, 200, 60), ("platelets",), category=TISSUE,
           type=_local("PLT", "Platelet")),
    _label(10, "adrenal_hyperplasia", "Adrenal hyperplasia", (CLS,), (128, 0, 128), ("hyperplasia",),
           type=_sct("76197007", "Hyperplasia"), region=_sct("23451007", "Adrenal gland")),
    _label(11, "adrenal_normal", "Normal adrenal gland", (CLS,), (0, 128, 128), ("normal_adrenal",), category=TISSUE,
           type=_sct("23451007", "Adrenal gland")),
)


def label_to_dict(label: Label) -> dict[str, Any]:
    """A label as plain data (str, int, lists), as a checkpoint stores it (``torch.load`` with
    ``weights_only=True`` reads it back).

    Example:
        >>> label_to_dict(DEFAULT_LABELS[1])["tasks"]
        ['detection', 'segmentation']
        >>> label_from_dict(label_to_dict(DEFAULT_LABELS[1])) == DEFAULT_LABELS[1]
        True
    """
    def code(c: Code | None) -> list[str] | None:
        return None if c is None else [c.value, c.scheme, c.meaning]

    return {"id": label.id, "name": label.name, "display": label.display,
            "tasks": sorted(task.value for task in label.tasks), "color": list(label.color),
            "aliases": list(label.aliases), "category": code(label.category), "type": code(label.type),
            "region": code(label.region)}


def label_from_dict(d: dict[str, Any]) -> Label:
    """The :class:`Label` that :func:`label_to_dict` wrote.

    Raises:
        ValueError: a field is missing or malformed (the message names it).
    """
    try:
        codes = {k: None if d.get(k) is None else Code(*map(str, d[k])) for k in ("category", "type", "region")}
        codes = {k: v for k, v in codes.items() if v is not None or k == "region"}
        color = tuple(int(c) for c in d["color"])
        if len(color) != 3:
            raise ValueError(f"color must have 3 components, got {len(color)}")
        return Label(int(d["id"]), str(d["name"]), str(d["display"]), frozenset(Task.parse(t) for t in d["tasks"]),
                     color, tuple(str(a) for a in d.get("aliases", ())), **codes)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed label definition {d!r}: {exc}") from exc


def registry_from_config(names: Sequence[str], definitions: Sequence[dict[str, Any]] = ()) -> "LabelRegistry":
    """The label space a network config describes.

    Args:
        names: the labels in class-index order.
        definitions: the labels' :func:`label_to_dict` forms in the same order; empty means
            each name is a :data:`DEFAULT_LABELS` entry (checkpoints written before the label
            space could grow, or a network trained on part of the default space).

    Raises:
        ValueError: the definitions' names differ from ``names``, or an empty ``definitions``
            names a label :data:`DEFAULT_LABELS` lacks.

    Example:
        >>> registry_from_config(["edema", "platelet"]).class_index("platelet")
        2
    """
    if definitions:
        labels = [label_from_dict(d) for d in definitions]
        if [lab.name for lab in labels] != list(names):
            raise ValueError(f"label definitions {[lab.name for lab in labels]} differ from the label names {list(names)}")
        return LabelRegistry(labels)
    defaults = {lab.name: lab for lab in DEFAULT_LABELS}
    missing = [name for name in names if name not in defaults]
    if missing:
        raise ValueError(f"labels {missing} are not default labels and the config carries no definition of them")
    return LabelRegistry([defaults[name] for name in names])


def _key(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


class LabelRegistry:
    """An ordered set of :class:`Label` with lookup by name, alias or id.

    The position of a label in the registry is its class index in the network's semantic
    output (index 0 is reserved for "no object"), so ``class_index(label) == position + 1``.

    Args:
        labels: the entries; ids and names (and aliases) must be unique.

    Example:
        >>> reg = LabelRegistry()
        >>> reg.get("Oedema").name
        'edema'
        >>> [lab.name for lab in reg.for_task(Task.CLASSIFICATION)][:2]
        ['brain_tumor', 'lung_tumor']
    """

    def __init__(self, labels: Sequence[Label] = DEFAULT_LABELS) -> None:
        self._labels = tuple(labels)
        self._by_key: dict[str, Label] = {}
        ids = set()
        for lab in self._labels:
            if not 1 <= lab.id <= 255:
                raise ValueError(f"label id must be in 1..255, got {lab.id} for {lab.name!r}")
            if lab.id in ids:
                raise ValueError(f"duplicate label id {lab.id}")
            ids.add(lab.id)
            for key in (lab.name, *lab.aliases):
                k = _key(key)
                if k in self._by_key:
                    raise ValueError(f"label name or alias {key!r} is used twice")
                self._by_key[k] = lab
        self._by_id = {lab.id: lab for lab in self._labels}
        self._index = {lab.name: i + 1 for i, lab in enumerate(self._labels)}

    def __len__(self) -> int:
        return len(self._labels)

    def __iter__(self):
        return iter(self._labels)

    @property
    def names(self) -> list[str]:
        return [lab.name for lab in self._labels]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._by_key

    def next_id(self) -> int:
        """The label-map value a new label gets: one more than the largest id in use.

        Raises:
            ValueError: the ids are used up to 255.
        """
        value = max((lab.id for lab in self._labels), default=0) + 1
        if value > 255:
            raise ValueError("the label space is full: label ids go up to 255")
        return value

    def get(self, name: str) -> Label:
        """Look a label up by name or alias (case and separator insensitive).

        Raises:
            UnknownLabelError: no label has that name; the message lists the known names.
        """
        lab = self._by_key.get(_key(str(name)))
        if lab is None:
            raise UnknownLabelError(f"unknown label {name!r}; known labels: {', '.join(self.names)}")
        return lab

    def by_id(self, label_id: int) -> Label:
        """The label whose label-map value is ``label_id``."""
        try:
            return self._by_id[int(label_id)]
        except KeyError:
            raise UnknownLabelError(f"no label has id {label_id}") from None

    def class_index(self, label: Label | str) -> int:
        """Index of ``label`` in the network's class logits (1-based; 0 is "no object")."""
        name = label.name if isinstance(label, Label) else self.get(label).name
        return self._index[name]

    def from_class_index(self, index: int) -> Label:
        if not 1 <= index <= len(self._labels):
            raise UnknownLabelError(f"class index {index} is outside 1..{len(self._labels)}")
        return self._labels[index - 1]

    def for_task(self, task: Task) -> list[Label]:
        """Labels that can be asked for with ``task``, in registry order."""
        return [lab for lab in self._labels if task in lab.tasks]

    def resolve(self, names: Iterable[str] | None, task: Task) -> list[Label]:
        """Turn a request's label names into labels valid for ``task``.

        ``None`` or an empty list means every label of the task.

        Raises:
            UnknownLabelError: a name is unknown, or the label cannot be asked for with ``task``.
        """
        if not names:
            return self.for_task(task)
        out: list[Label] = []
        for name in names:
            lab = self.get(name)
            if task not in lab.tasks:
                valid = ", ".join(x.name for x in self.for_task(task))
                raise UnknownLabelError(f"label {lab.name!r} is not available for {task.value}; valid: {valid}")
            if lab not in out:
                out.append(lab)
        return out


def parse_labels(value: Any) -> list[str] | None:
    """Read a request's ``labels`` param: a list of names, a comma-separated string, or nothing.

    Raises:
        UnknownLabelError: the value is neither (the message shows it).

    Example:
        >>> parse_labels("edema, rbc")
        ['edema', 'rbc']
    """
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UnknownLabelError(f"'labels' must be a list of label names or a comma-separated string, got {value!r}")
