"""What the server writes into error messages and logs: no server paths, no control characters.

A client must not learn where the server keeps its files, and an id with a newline must not
forge a log line.
"""

from __future__ import annotations

import logging
import re

__all__ = ["escape_control", "scrub_paths", "EscapeControlCharacters", "install_log_escaping"]

# an absolute POSIX path of two or more parts, not the path of a URL (no ':' or '/' before it)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^/\s'\"]+/)+([^/\s'\",;:)\]]*)")


def escape_control(text: str) -> str:
    r"""``text`` with every non-printable character written as its escape.

    Example:
        >>> escape_control("id\nFAKE LOG LINE")
        'id\\nFAKE LOG LINE'
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def scrub_paths(text: str) -> str:
    """``text`` with every absolute server path cut to its last part (a file name says enough).

    Example:
        >>> scrub_paths("cannot read /srv/data/store/.uploads/upload-1.nii.gz: bad gzip")
        'cannot read upload-1.nii.gz: bad gzip'
        >>> scrub_paths("see http://host/a/b")
        'see http://host/a/b'
    """
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "<folder>", text)


class EscapeControlCharacters(logging.Filter):
    """A handler filter that escapes control characters in the formatted message (tracebacks,
    formatted separately, keep their lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_control(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


def add_to_every_handler(filter_type: type[logging.Filter]) -> int:
    """Put one ``filter_type()`` on every handler of the root logger and of the loggers created
    so far (MONAI Label's and uvicorn's); returns how many handlers got it now. A handler that
    has one already gets none, so calling it again after more loggers appear is safe."""
    loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    count = 0
    for lg in loggers:
        for handler in lg.handlers:
            if not any(isinstance(f, filter_type) for f in handler.filters):
                handler.addFilter(filter_type())
                count += 1
    return count


def install_log_escaping() -> int:
    """Add :class:`EscapeControlCharacters` to every handler (:func:`add_to_every_handler`)."""
    return add_to_every_handler(EscapeControlCharacters)
