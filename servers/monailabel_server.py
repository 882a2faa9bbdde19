"""A MONAI Label server with the UniMed app in a subprocess, for tests and benchmarks.

Example:
    >>> with ServerProcess(app_dir="apps/unimed", studies="runtime/datastore") as server:  # doctest: +SKIP
    ...     MONAILabelClient(server.url).info()["name"]
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from servers.child_process import terminate, wait_until_ready

__all__ = ["ServerProcess", "ServerStartError", "free_port"]


class ServerStartError(RuntimeError):
    """The server exited or did not answer in time; the message ends with its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``monailabel start_server`` for ``app_dir`` on ``studies``, on a free loopback port.

    Args:
        app_dir: the MONAI Label app folder.
        studies: the datastore folder (the server writes labels into it: pass a copy) or a DICOMweb URL.
        model_path: checkpoint the app serves (its ``model_path`` conf); the app's default when None.
        host: interface to listen on.
        port: the port; a free one when None.
        timeout: seconds to wait for ``/info/`` to answer.
        log_path: where the server's output goes; a temporary file when None.
        conf: more ``--conf KEY VALUE`` pairs for the app.
        env: more environment variables for the server.
    """

    def __init__(self, *, app_dir: str | Path, studies: str | Path, model_path: str | Path | None = None,
                 host: str = "127.0.0.1", port: int | None = None, timeout: float = 180.0,
                 log_path: str | Path | None = None, conf: dict[str, str] | None = None,
                 env: dict[str, str] | None = None):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.app_dir = Path(app_dir)
        # a DICOMweb URL stays a string: Path would fold its '//'
        self.studies = studies if isinstance(studies, str) and "://" in studies else Path(studies)
        self.model_path = None if model_path is None else Path(model_path)
        self.host, self.port, self.timeout = host, port or free_port(host), timeout
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="unimed-server-", suffix=".log")[1])
        self.conf, self.env = dict(conf or {}), dict(env or {})
        self.proc: subprocess.Popen | None = None
        self._log: IO[str] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def start(self) -> "ServerProcess":
        """Start the server and wait until it answers.

        Raises:
            ServerStartError: it exited or did not answer within ``timeout``.
        """
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(self.app_dir),
               "--studies", str(self.studies), "--host", self.host, "--port", str(self.port)]
        if self.model_path is not None:
            cmd += ["--conf", "model_path", str(self.model_path)]
        for key, value in self.conf.items():
            cmd += ["--conf", key, str(value)]
        self._log = open(self.log_path, "w")
        env = dict(os.environ, MONAI_LABEL_TRACKING_ENABLED="false", **self.env)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        if not wait_until_ready(lambda: _answers(self.url + "/info/"), self.proc, self.timeout, interval=1.0):
            self.stop()
            raise ServerStartError(f"server at {self.url} did not start:\n{self.log_tail()}")
        return self

    def stop(self) -> None:
        """Terminate the server (kill it after 20 s)."""
        if self.proc is not None:
            terminate(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _answers(url: str) -> None:
    """Raise ``OSError`` unless ``url`` answers HTTP at all (a 401 of a server with login counts)."""
    try:
        urllib.request.urlopen(url, timeout=5).close()
    except urllib.error.HTTPError:
        pass
