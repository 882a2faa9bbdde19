"""The users of the embedded login: names, roles and bcrypt password hashes in one JSON file.

The file is written atomically with mode 0600 and never holds a password, only its bcrypt hash.
Roles are the project's four: ``admin``, ``reviewer``, ``annotator`` and ``user``; each includes
the ones after it (see :data:`ROLE_INCLUDES`).

Example:
    >>> import tempfile, pathlib
    >>> store = UserStore(pathlib.Path(tempfile.mkdtemp()) / "users.json")
    >>> store.add("alice", "annotator", "correct horse battery")
    >>> store.verify("alice", "correct horse battery")
    'annotator'
    >>> store.verify("alice", "wrong") is None
    True
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from pathlib import Path

import bcrypt

__all__ = ["ROLES", "ROLE_INCLUDES", "UserStore"]

#: the roles, most powerful first
ROLES = ("admin", "reviewer", "annotator", "user")
#: what each role may also do: an admin reviews, annotates and uses; a reviewer annotates ...
ROLE_INCLUDES = {role: ROLES[i:] for i, role in enumerate(ROLES)}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_MIN_PASSWORD = 8
_MAX_PASSWORD_BYTES = 72  # bcrypt reads no further
_ROUNDS = 12  # bcrypt's work factor: about 0.25 s a check on one free core


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> bytes:
    """Checked against when the user is unknown, so that a wrong name takes as long as a wrong password."""
    return bcrypt.hashpw(b"unimed-no-such-user", bcrypt.gensalt(rounds=_ROUNDS))


class UserStore:
    """Users in a JSON file ``{"users": {name: {"role": ..., "password_hash": ...}}}``.

    Args:
        path: the file; it need not exist until the first :meth:`add`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def users(self) -> dict[str, str]:
        """Name -> role of every user (empty when the file does not exist)."""
        return {name: entry["role"] for name, entry in self._read().items()}

    def add(self, name: str, role: str, password: str) -> None:
        """Add a user, or replace the role and password of an existing one.

        Raises:
            ValueError: the name is not 1-64 letters, digits or ``._@-``; the role is not one of
                :data:`ROLES`; the password is shorter than 8 characters or longer than 72 bytes.
        """
        if not _NAME.match(name):
            raise ValueError(f"user name {name!r}: 1-64 letters, digits or '._@-', starting with a letter or digit")
        if role not in ROLES:
            raise ValueError(f"role {role!r}: must be one of {', '.join(ROLES)}")
        secret = password.encode("utf-8")
        if len(password) < _MIN_PASSWORD or len(secret) > _MAX_PASSWORD_BYTES:
            raise ValueError(f"the password must have at least {_MIN_PASSWORD} characters and at most "
                             f"{_MAX_PASSWORD_BYTES} bytes, got {len(password)} characters")
        users = self._read()
        users[name] = {"role": role, "password_hash": bcrypt.hashpw(secret, bcrypt.gensalt(rounds=_ROUNDS)).decode()}
        self._write(users)

    def remove(self, name: str) -> None:
        """Remove a user.

        Raises:
            ValueError: no such user.
        """
        users = self._read()
        if name not in users:
            raise ValueError(f"no user {name!r} in {self.path}")
        del users[name]
        self._write(users)

    def verify(self, name: str, password: str) -> str | None:
        """The user's role if ``password`` is theirs, else None."""
        entry = self._read().get(name)
        secret = password.encode("utf-8")[:_MAX_PASSWORD_BYTES]
        if entry is None:
            bcrypt.checkpw(secret, _dummy_hash())
            return None
        return entry["role"] if bcrypt.checkpw(secret, entry["password_hash"].encode()) else None

    def _read(self) -> dict[str, dict[str, str]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            users = data["users"]
            if not all(isinstance(e, dict) and e.get("role") in ROLES and "password_hash" in e for e in users.values()):
                raise ValueError("an entry without a known role or a password hash")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{self.path} is not a users file: {exc}") from exc
        return users

    def _write(self, users: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"users": users}, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
