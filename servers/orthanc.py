"""A local Orthanc PACS with DICOMweb, for the tests and for users trying the app with a PACS.

Uses Debian's ``orthanc`` and ``orthanc-dicomweb`` packages. Orthanc listens on loopback only,
keeps its database in a folder of your choosing and has no DICOM (C-STORE) port unless asked.

Example:
    >>> # with Orthanc(Path("runtime/orthanc"), port=8042) as pacs:
    >>> #     pacs.upload(files); print(pacs.dicomweb)   # http://127.0.0.1:8042/dicom-web
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from servers.child_process import terminate, wait_until_ready

__all__ = ["OrthancError", "Orthanc", "orthanc_binary", "dicomweb_plugin", "write_test_studies"]

logger = logging.getLogger(__name__)

#: where Debian's packages put the server and the DICOMweb plugin
DEBIAN_BINARY = "/usr/sbin/Orthanc"
DEBIAN_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")


class OrthancError(RuntimeError):
    """Orthanc is missing, did not start, or refused an instance."""


def orthanc_binary() -> str | None:
    """Path of the Orthanc server, or None when it is not installed."""
    found = shutil.which("Orthanc")
    return found or (DEBIAN_BINARY if Path(DEBIAN_BINARY).exists() else None)


def dicomweb_plugin() -> str | None:
    """Path of the DICOMweb plugin, or None when it is not installed."""
    return next((p for p in DEBIAN_PLUGINS if Path(p).exists()), None)


@dataclass
class Orthanc:
    """An Orthanc server in its own folder, started with ``start()`` (or ``with``).

    Args:
        root: folder for its configuration, database and log (created).
        port: HTTP port on 127.0.0.1 (REST API, DICOMweb at ``/dicom-web``).
        timeout: seconds to wait for it to answer after starting.
    """

    root: Path
    port: int = 8042
    timeout: float = 60.0
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root to give ``monailabel start_server --studies``."""
        return f"{self.url}/dicom-web"

    @property
    def log_file(self) -> Path:
        return Path(self.root) / "orthanc.log"

    def config(self) -> dict:
        """The configuration file's content."""
        plugin = dicomweb_plugin()
        if plugin is None:
            raise OrthancError("the Orthanc DICOMweb plugin is not installed (Debian: apt-get install orthanc-dicomweb)")
        db = str(Path(self.root).resolve() / "db")
        return {
            "Name": "UniMed test PACS",
            "StorageDirectory": db,
            "IndexDirectory": db,
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "HttpCompressionEnabled": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False,
                         "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        }

    def start(self) -> "Orthanc":
        """Write the configuration, start the server and wait until it answers.

        Raises:
            OrthancError: not installed, port taken, or no answer within ``timeout``.
        """
        binary = orthanc_binary()
        if binary is None:
            raise OrthancError("Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)")
        root = Path(self.root)
        root.mkdir(parents=True, exist_ok=True)
        cfg = root / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        log = open(self.log_file, "ab")
        self.process = subprocess.Popen([binary, str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=root)
        log.close()
        def probe() -> None:
            self.get("/system")
            urllib.request.urlopen(self.dicomweb + "/studies", timeout=5).read()

        if not wait_until_ready(probe, self.process, self.timeout):
            self.stop()
            raise OrthancError(f"Orthanc did not start on port {self.port}:\n"
                               f"{self.log_file.read_text(errors='replace')[-3000:]}")
        return self

    def stop(self) -> None:
        """Stop the server (its database stays in ``root``)."""
        if self.process is not None:
            terminate(self.process)
        self.process = None

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def get(self, path: str):
        """GET a REST resource, decoded from JSON."""
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def upload(self, files: Iterable[str | Path]) -> list[str]:
        """Store DICOM files; returns their Orthanc instance ids.

        Raises:
            OrthancError: Orthanc refused a file (the message names it).
        """
        ids = []
        for path in files:
            req = urllib.request.Request(self.url + "/instances", data=Path(path).read_bytes(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    ids.append(json.loads(r.read())["ID"])
            except urllib.error.HTTPError as exc:
                raise OrthancError(f"Orthanc refused {path}: HTTP {exc.code} {exc.read()[:300]!r}") from exc
        return ids

    def series(self) -> list[dict]:
        """Every series, with its main DICOM tags (``MainDicomTags``) and ``ParentStudy``."""
        return self.get("/series?expand")


def write_test_studies(out_dir: Path, *, brats: Path, ct_dicom: Path | None = None) -> dict[str, list[Path]]:
    """The studies the tests and the guide put in the PACS, as DICOM files.

    Args:
        out_dir: where to write them.
        brats: a BraTS NIfTI volume, written as an MR series by :func:`volume_to_series`.
        ct_dicom: an (anonymised) CT series folder, copied with identifiers filled in.

    Returns:
        ``{"MR": files, "CT": files}`` (CT only when ``ct_dicom`` is given).
    """
    import nibabel as nib

    from unimed.dicom.series import assign_missing_uids, volume_to_series

    img = nib.load(str(brats))
    name = Path(brats).name.split(".")[0]
    studies = {"MR": volume_to_series(np.asarray(img.dataobj, dtype=np.float32), img.affine, Path(out_dir) / "mr",
                                      patient_id=name, study_description=f"BraTS {name}",
                                      series_description="FLAIR")}
    if ct_dicom is not None:
        studies["CT"] = assign_missing_uids(ct_dicom, Path(out_dir) / "ct", patient_id="totalseg_ct",
                                            study_description="TotalSegmentator example CT")
    return studies
