"""The app's local datastore: MONAI Label's ``LocalDatastore`` made path-safe and crash-safe.

MONAI Label joins ids and tags into paths unchecked and rewrites ``datastore_v2.json`` in
place; :class:`UniMedLocalDatastore` keeps its layout and API and adds:

- Only safe ids and tags (:mod:`lib.datastore.names`) and known image suffixes are taken; a
  bad one is refused with a 4xx naming the problem. Every file it creates, replaces or
  deletes is a plain name in a folder that resolves inside the datastore; a symlink is
  replaced or unlinked, never followed.
- Images, labels and the JSON are written atomically (:mod:`lib.datastore.files`); the JSON's
  previous good version is kept as ``datastore_v2.json.bak``. At start an empty or corrupt
  JSON is restored from that backup, or put aside and rebuilt from the files; leftovers of
  interrupted writes and uploads are deleted.
- An uploaded image must be readable, a label must fit its image
  (:mod:`lib.datastore.label_check`); a refused label leaves the saved one untouched.
- Entries whose id, tag or suffix is unsafe (in an old JSON or among the files) are ignored
  with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.datastore import DefaultLabelTag

from lib.datastore.errors import DatastoreRequestError
from lib.datastore.files import private_upload, remove_leftovers, temp_prefix, write_atomically
from lib.datastore.label_check import check_image, check_label
from lib.datastore.names import check_name, is_safe_suffix, name_problem, shown
from lib.datastore.segments import SEGMENTS_KEY, parse_label_info
from unimed.labels import LabelRegistry
from unimed.transforms import IMAGE_SUFFIXES

__all__ = ["UniMedLocalDatastore", "recover_config", "BACKUP_SUFFIX"]

logger = logging.getLogger(__name__)

#: the last good JSON sits next to it under this suffix
BACKUP_SUFFIX = ".bak"
CONFIG_NAME = "datastore_v2.json"


def _parses(path: Path) -> bool:
    try:
        LocalDatastoreModel.model_validate_json(path.read_bytes())
    except (OSError, ValueError):
        return False
    return True


def recover_config(config: str | Path) -> str:
    """Make the datastore JSON readable before MONAI Label loads it (it refuses to start on a bad
    one): a good file is kept; an empty or corrupt one is replaced by its backup when that is
    good, else moved aside (``.corrupt-<time>``) so that the datastore is rebuilt from its files.

    Returns:
        ``"ok"``, ``"absent"``, ``"restored"`` or ``"rebuilt"``.

    Example:
        >>> recover_config("/nowhere/datastore_v2.json")
        'absent'
    """
    config = Path(config)
    if not config.exists():
        return "absent"
    if _parses(config):
        return "ok"
    backup = config.with_name(config.name + BACKUP_SUFFIX)
    if backup.is_file() and _parses(backup):
        write_atomically(config, backup)
        logger.warning("%s was empty or corrupt; restored its last good version (labels saved since are "
                       "picked up from their files)", config.name)
        return "restored"
    aside = config.with_name(f"{config.name}.corrupt-{int(time.time())}")
    os.replace(config, aside)
    logger.warning("%s was empty or corrupt and has no good backup; kept it as %s and rebuilt the datastore "
                   "from its files", config.name, aside.name)
    return "rebuilt"


def _entry_problem(name: str, ext: str, what: str = "image id") -> str | None:
    """What makes a datastore entry (an id or tag with its file suffix) unsafe, or None."""
    return name_problem(name, what) or (None if is_safe_suffix(ext) else f"suffix {shown(ext)}")


class UniMedLocalDatastore(LocalDatastore):
    """A folder of images with their labels in ``labels/<tag>/``, as MONAI Label's, but safe.

    Args:
        datastore_path: the datastore folder.
        extensions: image file patterns; default every suffix of
            :data:`unimed.transforms.IMAGE_SUFFIXES`.
        auto_reload: watch the folder for files added or removed by hand.
        registry: returns the served checkpoint's label space, which a label's values must be
            ids of unless the viewer names them as segments (default: the default labels).

    Example:
        >>> store = UniMedLocalDatastore("sample_datastore_copy")  # doctest: +SKIP
        >>> store.save_label("../x", "label.nii.gz", "final", {})  # doctest: +SKIP
        Traceback (most recent call last):
        lib.datastore.errors.DatastoreRequestError: 400: image id '../x' holds a path separator ('/' or '\\')
    """

    def __init__(self, datastore_path: str | Path, extensions: Sequence[str] | None = None, auto_reload: bool = True,
                 registry: Callable[[], LabelRegistry] | None = None):
        root = Path(datastore_path).resolve()
        root.mkdir(parents=True, exist_ok=True)
        self._root = root
        self._registry = registry or LabelRegistry
        self._warned: set[str] = set()
        remove_leftovers(root, [root] + self._label_folders(root))
        recover_config(root / CONFIG_NAME)
        super().__init__(str(root), extensions=list(extensions or [f"*{s}" for s in IMAGE_SUFFIXES]),
                         auto_reload=auto_reload)
        if getattr(self, "_handler", None) is not None:
            # an atomic write is a rename: MONAI Label's watcher only follows created, deleted and modified files
            self._handler.on_moved = self._on_moved_event

    def _on_moved_event(self, event) -> None:
        """A file renamed into place: the JSON written by another process (training, scoring) is
        reloaded, an image or label triggers a refresh."""
        if os.fsdecode(event.dest_path) == self._datastore_config_path:
            self._init_from_datastore_file()
        else:
            self._on_any_event(event)

    @staticmethod
    def _label_folders(root: Path) -> list[Path]:
        labels = root / "labels"
        return [labels] + [p for p in labels.iterdir() if p.is_dir() and not p.is_symlink()] if labels.is_dir() else []

    # -- paths -----------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The datastore folder (resolved)."""
        return self._root

    def _suffixes(self) -> list[str]:
        return [e.replace("*", "") for e in self._extensions]

    def _inside(self, folder: str | Path) -> Path:
        """``folder`` when it resolves inside the datastore (any symlink on the way followed)."""
        real = Path(os.path.realpath(folder))
        if real != self._root and self._root not in real.parents:
            raise DatastoreRequestError(400, "the request resolves to a folder outside the datastore; refused")
        return Path(folder)

    def _image_entry(self, image_id: str, ext: str) -> Path:
        return self._inside(self._datastore.image_path()) / self._filename(check_name(image_id), ext)

    def _label_entry(self, image_id: str, tag: str, ext: str) -> Path:
        check_name(tag, "label tag")
        return self._inside(self._datastore.label_path(tag)) / self._filename(check_name(image_id), ext)

    def _upload_suffix(self, filename: str | None, what: str) -> str:
        """The image suffix of an uploaded file name (``.nii.gz`` when it has no name)."""
        if not filename:
            return ".nii.gz"
        name = os.path.basename(filename.replace("\\", "/")).lower()
        for suffix in sorted(self._suffixes(), key=len, reverse=True):
            if name.endswith(suffix.lower()):
                return suffix.lower()
        raise DatastoreRequestError(415, f"{what} {shown(os.path.basename(filename))} has no image suffix this "
                                         f"datastore takes ({', '.join(self._suffixes())})")

    @contextlib.contextmanager
    def upload(self, stream: BinaryIO, filename: str | None, what: str = "the uploaded file") -> Iterator[Path]:
        """An upload as a private temporary file inside the datastore, deleted on exit (success
        or failure); its suffix is the uploaded name's image suffix.

        Raises:
            DatastoreRequestError: 415 for a name without a known image suffix.
        """
        with private_upload(self._root, stream, self._upload_suffix(filename, what)) as path:
            yield path

    # -- the JSON --------------------------------------------------------------------------------
    def _update_datastore_file(self, lock: bool = True) -> None:
        with FileLock(self._lock_file) if lock else contextlib.nullcontext():
            config = Path(self._datastore_config_path)
            data = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str).encode()
            if config.is_file():  # the current file is good (atomic writes, checked at start): keep it as the backup
                backup = config.with_name(config.name + BACKUP_SUFFIX)
                link = config.with_name(f"{temp_prefix()}backup")
                with contextlib.suppress(FileNotFoundError):
                    link.unlink()
                try:
                    os.link(config, link)
                    os.replace(link, backup)
                except OSError:  # a file system without hard links: a copy
                    write_atomically(backup, config)
            write_atomically(config, data)
            self._config_ts = os.stat(config).st_mtime

    def _init_from_datastore_file(self, throw_exception: bool = False) -> None:
        super()._init_from_datastore_file(throw_exception)
        for image_id, obj in list(self._datastore.objects.items()):
            problem = _entry_problem(image_id, obj.image.ext)
            if problem:
                self._warn_once(image_id, f"ignoring datastore entry: {problem}")
                del self._datastore.objects[image_id]
                continue
            for tag, label in list(obj.labels.items()):
                problem = _entry_problem(tag, label.ext, "label tag")
                if problem:
                    self._warn_once(f"{image_id}\0{tag}", f"ignoring a label of {shown(image_id)}: {problem}")
                    del obj.labels[tag]

    def _list_files(self, path, patterns) -> dict[str, str]:
        files = super()._list_files(path, patterns)
        safe = {}
        for name, file in files.items():
            image_id, ext = self._to_id(name)
            problem = _entry_problem(image_id, ext, "file name")
            if problem:
                self._warn_once(name, f"ignoring a file of the datastore: {problem}")
            else:
                safe[name] = file
        return safe

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    # -- images ----------------------------------------------------------------------------------
    def _known_image(self, image_id: str) -> ImageLabelModel:
        obj = self._datastore.objects.get(check_name(image_id))
        if obj is None:
            raise DatastoreRequestError(404, f"no image {shown(image_id)} in the datastore")
        return obj

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Copy a readable image into the datastore under ``image_id`` (default: its file name's
        stem), replacing the image of that id; returns the id.

        Raises:
            DatastoreRequestError: 400 bad id, 415 unknown suffix, 422 unreadable image.
        """
        stem, _ = self._to_id(os.path.basename(image_filename))
        ext = self._upload_suffix(os.path.basename(image_filename), "the image")
        image_id = check_name(image_id if image_id else stem)
        check_image(image_filename)
        dest = self._image_entry(image_id, ext)
        with FileLock(self._lock_file):
            old = self._datastore.objects.get(image_id)
            write_atomically(dest, image_filename)
            if old is not None and old.image.ext != ext:
                self._image_entry(image_id, old.image.ext).unlink(missing_ok=True)
            info = dict(image_info or {}, ts=int(time.time()), name=dest.name)
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext),
                                                                 labels=old.labels if old else {})
            self._update_datastore_file(lock=False)
        logger.info("added image %s", shown(image_id, 200))
        return image_id

    def remove_image(self, image_id: str) -> None:
        """Delete an image and its labels (the entries, never what a symlink points to).

        Raises:
            DatastoreRequestError: 400 bad id, 404 unknown image.
        """
        obj = self._known_image(image_id)
        with FileLock(self._lock_file):
            for tag, label in obj.labels.items():
                self._label_entry(image_id, tag, label.ext).unlink(missing_ok=True)
            self._image_entry(image_id, obj.image.ext).unlink(missing_ok=True)
            self._datastore.objects.pop(image_id, None)
            self._update_datastore_file(lock=False)
        logger.info("removed image %s and its labels", shown(image_id, 200))

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        self._known_image(image_id)
        super().update_image_info(image_id, info)

    # -- labels ----------------------------------------------------------------------------------
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Keep a label that fits its image as ``labels/<tag>/<image id><suffix>``; returns the
        label id (the image id). A refused label leaves the saved one as it was.

        The file is kept as sent; its info records the segments present (``segments``: value,
        label name, display name, colour, whether the label is new to the served model; see
        :mod:`lib.datastore.segments`), read from ``label_info["label_info"]`` (the viewer's).

        Raises:
            DatastoreRequestError: 400 bad id or tag, 404 unknown image, 415 unknown suffix,
                422 a label that does not fit its image (:func:`~lib.datastore.label_check.check_label`),
                400 or 422 segments the server cannot use (:mod:`lib.datastore.segments`).
        """
        tag = check_name(label_tag or DefaultLabelTag.FINAL.value, "label tag")
        obj = self._known_image(image_id)
        ext = self._upload_suffix(os.path.basename(label_filename), "the label")
        registry = self._registry()
        named = parse_label_info((label_info or {}).get("label_info"), registry)
        segments = check_label(label_filename, self._image_entry(image_id, obj.image.ext), registry, named)
        names = [s.name for s in segments]
        dest = self._label_entry(image_id, tag, ext)
        with FileLock(self._lock_file):
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._inside(dest.parent)
            old = obj.labels.get(tag)
            write_atomically(dest, label_filename)
            if old is not None and old.ext != ext:
                self._label_entry(image_id, tag, old.ext).unlink(missing_ok=True)
            info = dict(label_info or {}, ts=int(time.time()), name=dest.name, labels=names)
            info[SEGMENTS_KEY] = [s.to_info() for s in segments]
            obj.labels[tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)
        logger.info("saved the %s label of %s (%s)", tag, shown(image_id, 200), ", ".join(names) or "background only")
        for s in segments:
            if s.new:
                logger.info("label %s (value %d) is new to the served model: training will teach it", s.name, s.value)
        return image_id

    def _known_label(self, label_id: str, tag: str) -> DataModel:
        obj = self._known_image(label_id)
        label = obj.labels.get(check_name(tag, "label tag"))
        if label is None:
            raise DatastoreRequestError(404, f"image {shown(label_id)} has no {shown(tag)} label")
        return label

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Delete a label (the entry, never what a symlink points to).

        Raises:
            DatastoreRequestError: 400 bad id or tag, 404 no such label.
        """
        label = self._known_label(label_id, label_tag)
        with FileLock(self._lock_file):
            self._label_entry(label_id, label_tag, label.ext).unlink(missing_ok=True)
            self._datastore.objects[label_id].labels.pop(label_tag, None)
            self._update_datastore_file(lock=False)
        logger.info("removed the %s label of %s", label_tag, shown(label_id, 200))

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        self._known_label(label_id, label_tag)
        super().update_label_info(label_id, label_tag, info)
