"""Which image ids, label tags and file suffixes the local datastore accepts.

An id or a tag becomes a file or folder name inside the datastore, so it must be one plain
name: not empty, at most :data:`MAX_NAME_LENGTH` characters, printable (no newline or other
control character), no path separator, not starting with ``.`` (no ``.``, ``..`` or hidden
file) and no ``..`` anywhere.
"""

from __future__ import annotations

import re

from lib.datastore.errors import DatastoreRequestError

__all__ = ["MAX_NAME_LENGTH", "name_problem", "check_name", "is_safe_suffix", "shown"]

#: longest image id or label tag (a file name with its suffix stays well under the usual 255 bytes)
MAX_NAME_LENGTH = 128

_SUFFIX = re.compile(r"^(\.[A-Za-z0-9]{1,8}){1,2}$")


def shown(value: object, limit: int = 40) -> str:
    """``value`` quoted for a message or a log line: control characters escaped, cut at ``limit``.

    Example:
        >>> shown("a\\nb")
        "'a\\\\nb'"
    """
    text = str(value)
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def name_problem(value: object, what: str = "image id") -> str | None:
    """What makes ``value`` unusable as an id or tag, or None when it is fine.

    Example:
        >>> name_problem("case_01") is None
        True
        >>> name_problem("../etc")
        "image id '../etc' holds a path separator ('/' or '\\\\')"
    """
    if not isinstance(value, str) or not value:
        return f"{what} is empty"
    if len(value) > MAX_NAME_LENGTH:
        return f"{what} {shown(value)} is {len(value)} characters long; at most {MAX_NAME_LENGTH} are allowed"
    if not value.isprintable():
        return f"{what} {shown(value)} holds a control character (newline, tab, ...)"
    if "/" in value or "\\" in value:
        return f"{what} {shown(value)} holds a path separator ('/' or '\\')"
    if value.startswith("."):
        return f"{what} {shown(value)} starts with '.'"
    if ".." in value:
        return f"{what} {shown(value)} holds '..'"
    return None


def check_name(value: object, what: str = "image id") -> str:
    """``value`` when it is a safe id or tag (see the module).

    Raises:
        DatastoreRequestError: 400 naming the problem.

    Example:
        >>> check_name("brats_pat0001_flair")
        'brats_pat0001_flair'
    """
    problem = name_problem(value, what)
    if problem:
        raise DatastoreRequestError(400, problem)
    return value  # type: ignore[return-value]


def is_safe_suffix(suffix: str) -> bool:
    """A file suffix of one or two plain parts such as ``.nii.gz`` or ``.png``.

    Example:
        >>> is_safe_suffix(".nii.gz"), is_safe_suffix("/../x")
        (True, False)
    """
    return bool(_SUFFIX.match(suffix))
