"""A one-machine login realm that speaks the part of Keycloak's protocol MONAI Label uses.

MONAI Label with ``MONAI_LABEL_AUTH_ENABLE=true`` reads three things from the realm at
``MONAI_LABEL_AUTH_REALM_URI``: the realm's ``public_key`` (``GET {realm}``), its
``token_endpoint`` (``GET {realm}/.well-known/openid-configuration``), and, through that endpoint,
tokens for a user name and password (``POST``, ``grant_type=password``). It then verifies each
request's bearer token (an RS256 JWT) with the public key and reads the user name and roles from
the claims its ``MONAI_LABEL_AUTH_TOKEN_*`` settings name.

:class:`LocalRealm` answers exactly these on 127.0.0.1 for the users of a
:class:`~servers.users.UserStore`, so that ``main.py serve --auth`` needs no other server; a
hospital's Keycloak takes its place by pointing ``MONAI_LABEL_AUTH_REALM_URI`` at it instead.
The RSA signing key is made at the first start and kept beside the users file, mode 0600.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> users = UserStore(folder / "users.json")
    >>> users.add("alice", "annotator", "correct horse battery")
    >>> with LocalRealm(users) as realm:
    ...     token = realm.issue("alice", "correct horse battery")
    >>> sorted(realm.claims(token)["realm_access"]["roles"])
    ['monailabel-annotator', 'monailabel-user']
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Mapping

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from servers.users import ROLE_INCLUDES, UserStore

__all__ = ["LocalRealm", "AUTH_SETTINGS_DEFAULTS"]

logger = logging.getLogger(__name__)

#: MONAI Label's own defaults of the settings the tokens must agree with (monailabel/config.py);
#: the environment overrides them as it does for MONAI Label
AUTH_SETTINGS_DEFAULTS = {
    "MONAI_LABEL_AUTH_TOKEN_USERNAME": "preferred_username",
    "MONAI_LABEL_AUTH_TOKEN_ROLES": "realm_access#roles",
    "MONAI_LABEL_AUTH_CLIENT_ID": "monailabel-app",
    "MONAI_LABEL_AUTH_ROLE_ADMIN": "monailabel-admin",
    "MONAI_LABEL_AUTH_ROLE_REVIEWER": "monailabel-reviewer",
    "MONAI_LABEL_AUTH_ROLE_ANNOTATOR": "monailabel-annotator",
    "MONAI_LABEL_AUTH_ROLE_USER": "monailabel-user",
}
REALM = "unimed"


class LocalRealm:
    """Serve tokens for the users of ``users`` on ``http://127.0.0.1:PORT/realms/unimed``.

    Args:
        users: the user store.
        key_path: the RSA private key (PEM); made with mode 0600 when absent. Default:
            ``signing_key.pem`` beside the users file.
        port: 0 for a free one.
        token_hours: how long a token is valid.
        env: where the ``MONAI_LABEL_AUTH_*`` settings are read (default ``os.environ``).
    """

    def __init__(self, users: UserStore, key_path: str | Path | None = None, port: int = 0,
                 token_hours: float = 12.0, env: Mapping[str, str] | None = None):
        if token_hours <= 0:
            raise ValueError(f"token_hours must be positive, got {token_hours}")
        self.users = users
        self.key_path = Path(key_path) if key_path else users.path.parent / "signing_key.pem"
        self.token_seconds = int(token_hours * 3600)
        env = os.environ if env is None else env
        self.settings = {k: env.get(k, v) for k, v in AUTH_SETTINGS_DEFAULTS.items()}
        self._key = _load_or_make_key(self.key_path)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._thread: threading.Thread | None = None

    @property
    def uri(self) -> str:
        """The realm URI for ``MONAI_LABEL_AUTH_REALM_URI``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/realms/{REALM}"

    def public_key(self) -> str:
        """The public key as Keycloak lists it: base64 DER, without the PEM lines."""
        der = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()

    def issue(self, username: str, password: str) -> str | None:
        """A signed access token for the user, or None for a wrong name or password."""
        role = self.users.verify(username, password)
        if role is None:
            return None
        role_names = {r: self.settings[f"MONAI_LABEL_AUTH_ROLE_{r.upper()}"] for r in ROLE_INCLUDES}
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.uri, "sub": username, "iat": now, "exp": now + self.token_seconds,
                                  "jti": uuid.uuid4().hex, "azp": self.settings["MONAI_LABEL_AUTH_CLIENT_ID"],
                                  self.settings["MONAI_LABEL_AUTH_TOKEN_USERNAME"]: username, "name": username}
        path = self.settings["MONAI_LABEL_AUTH_TOKEN_ROLES"].split("#")
        node = claims
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = [role_names[r] for r in ROLE_INCLUDES[role]]
        return jwt.encode(claims, self._key, algorithm="RS256")

    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of a token this realm issued (raises ``jwt.InvalidTokenError``)."""
        return jwt.decode(token, self._key.public_key(), algorithms=["RS256"], options={"verify_aud": False})

    def start(self) -> "LocalRealm":
        self._thread = threading.Thread(target=self._server.serve_forever, name="unimed-realm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "LocalRealm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _load_or_make_key(path: Path) -> rsa.RSAPrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} must hold an RSA private key")
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def _handler(realm: LocalRealm) -> type[BaseHTTPRequestHandler]:
    base = f"/realms/{REALM}"

    class RealmHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == base:
                self._json(200, {"realm": REALM, "public_key": realm.public_key(),
                                 "token-service": f"{realm.uri}/protocol/openid-connect"})
            elif self.path == f"{base}/.well-known/openid-configuration":
                self._json(200, {"issuer": realm.uri, "token_endpoint": f"{realm.uri}/protocol/openid-connect/token",
                                 "grant_types_supported": ["password"],
                                 "id_token_signing_alg_values_supported": ["RS256"]})
            else:
                self._json(404, {"error": "not_found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != f"{base}/protocol/openid-connect/token":
                self._json(404, {"error": "not_found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > 64 * 1024:
                self._json(413, {"error": "invalid_request"})
                return
            form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            field = {k: v[0] for k, v in form.items()}
            if field.get("grant_type") != "password":
                self._json(400, {"error": "unsupported_grant_type"})
                return
            token = realm.issue(field.get("username", ""), field.get("password", ""))
            if token is None:
                self._json(401, {"error": "invalid_grant", "error_description": "Invalid user credentials"})
                return
            self._json(200, {"access_token": token, "token_type": "Bearer", "expires_in": realm.token_seconds})

        def _json(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # no passwords or names in the log
            logger.debug("realm: %s %s", self.command, self.path.split("?")[0])

    return RealmHandler
