"""OHIF, as the monailabel wheel serves it at /ohif/, in headless Debian Chromium driven through
chromedriver's W3C WebDriver HTTP API: study list, a study in the MONAI Label mode, UniMed
segmentation run from the MONAI Label panel and drawn over the image. Screenshots are kept in
``runtime/artifacts/`` (or ``$UNIMED_ARTIFACTS``)."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from unimed.labels import LabelRegistry
from unimed.task_names import Task

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
#: headless, no GPU, nothing fetched from the internet, a fresh profile (added per session)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-unsafe-swiftshader", "--window-size=1600,1000"]


class Browser:
    """A Chromium session through chromedriver's WebDriver endpoints (enough for this test)."""

    def __init__(self, driver_url: str, profile: Path):
        caps = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]}}
        r = requests.post(f"{driver_url}/session", json={"capabilities": {"alwaysMatch": caps}}, timeout=120).json()
        if "sessionId" not in r.get("value", {}):
            raise RuntimeError(f"chromedriver could not start Chromium: {r}")
        self.base = f"{driver_url}/session/{r['value']['sessionId']}"

    def _call(self, method: str, path: str, body: dict | None = None):
        value = requests.request(method, self.base + path, json=body, timeout=120).json()["value"]
        if isinstance(value, dict) and "error" in value:
            raise RuntimeError(f"WebDriver {path}: {value['error']}: {value.get('message', '')[:300]}")
        return value

    def open(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def set_cookie(self, name: str, value: str) -> None:
        self._call("POST", "/cookie", {"cookie": {"name": name, "value": value}})

    def find(self, xpath: str) -> list[str]:
        return [next(iter(e.values())) for e in self._call("POST", "/elements", {"using": "xpath", "value": xpath})]

    def wait_for(self, xpath: str, timeout: float) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = self.find(xpath)
            if found:
                return found[0]
            time.sleep(1)
        raise AssertionError(f"nothing matched {xpath} within {timeout:.0f} s; page text:\n{self.text()[:1500]}")

    def click(self, element: str, attempts: int = 15) -> None:
        """Click like a user; while the element is covered or not yet interactable (a panel still
        laying out, a notice fading), wait a second and try again, up to ``attempts`` times."""
        for attempt in range(attempts):
            try:
                self._call("POST", f"/element/{element}/click", {})
                return
            except RuntimeError as exc:
                if not ("click intercepted" in str(exc) or "not interactable" in str(exc)) or attempt == attempts - 1:
                    raise
            time.sleep(1)

    def text(self) -> str:
        return self._call("POST", "/execute/sync", {"script": "return document.body.innerText", "args": []})

    def screenshot(self, path: Path) -> np.ndarray:
        from PIL import Image

        png = base64.b64decode(self._call("GET", "/screenshot"))
        path.write_bytes(png)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def close(self) -> None:
        try:
            self._call("DELETE", "")
        except (RuntimeError, requests.RequestException):
            pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory, port_factory):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    port = port_factory()
    driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            requests.get(url + "/status", timeout=2)
            break
        except requests.RequestException:
            if time.time() > deadline:
                driver.kill()
                pytest.fail("chromedriver did not start")
            time.sleep(0.5)
    session = Browser(url, tmp_path_factory.mktemp("chromium-profile"))
    yield session
    session.close()
    driver.terminate()
    driver.wait(10)


@pytest.fixture(scope="module")
def artifacts(repo) -> Path:
    out = Path(os.environ.get("UNIMED_ARTIFACTS", repo / "runtime" / "artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _coloured_pixels(rgb: np.ndarray) -> int:
    """Strongly coloured pixels inside the viewports (the image itself is grey)."""
    h, w, _ = rgb.shape
    view = rgb[int(0.12 * h):int(0.88 * h), int(0.2 * w):int(0.8 * w)].astype(int)
    return int(((view.max(axis=2) - view.min(axis=2)) > 60).sum())


def test_ohif_runs_unimed_segmentation_from_the_monai_label_panel(browser, pacs_server, pacs, artifacts):
    url = pacs_server["url"]
    browser.open(f"{url}/ohif/")
    # the OHIF MONAI Label panel reads its server from this cookie (default: port 8000 of the page's host)
    browser.set_cookie("MONAILABEL_SERVER_URL", f"{url}/")
    row = browser.wait_for("//*[contains(text(),'brats_pat0001_flair')]", 120)
    if "CT" in pacs["series"]:
        browser.wait_for("//*[contains(text(),'totalseg_ct')]", 30)
    browser.screenshot(artifacts / "ohif_study_list.png")
    browser.click(row)
    browser.click(browser.wait_for("//button[normalize-space(.)='MONAI Label']", 30))
    for notice in browser.find("//button[contains(., 'Confirm and Hide')]"):
        browser.click(notice)
    browser.click(browser.wait_for("//button[@class='actionButton']", 120))  # connect to the server
    browser.click(browser.wait_for("//*[contains(text(),'Auto-Segmentation')]", 120))
    time.sleep(5)  # let the viewports finish loading the series
    before = _coloured_pixels(browser.screenshot(artifacts / "ohif_before_segmentation.png"))
    browser.click(browser.wait_for("//*[contains(text(),'Auto-Segmentation')]/following::button[normalize-space(.)='Run'][1]", 30))
    browser.wait_for("//*[not(self::script)][contains(text(),'Running Segmentation - Successful') or contains(text(),'Failed')]", 300)
    assert "Failed" not in browser.text()
    time.sleep(5)  # the label map is drawn asynchronously
    for notice in browser.find("//button[contains(., 'Confirm and Hide')]"):
        browser.click(notice)
    after = _coloured_pixels(browser.screenshot(artifacts / "ohif_unimed_segmentation.png"))
    assert after > before + 300, f"no segmentation drawn over the image ({before} -> {after} coloured pixels)"
    segments = [line.strip() for line in browser.text().splitlines()]
    assert any(name in segments for name in ("necrosis", "edema", "non_enhancing_tumor", "enhancing_tumor")), segments


@pytest.fixture(scope="module")
def pacs_click_server(pacs, tmp_path_factory, start_server, clicking_checkpoint):
    """The UniMed server on the Orthanc of ``pacs``, serving conftest's hand-set click model (its
    answer is there near foreground clicks: the test checks the panel's plumbing, not accuracy)."""
    work = tmp_path_factory.mktemp("pacs_click_server")
    with start_server(pacs["orthanc"].dicomweb, work, checkpoint=clicking_checkpoint,
                      env={"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(work / "cache")}) as srv:
        yield srv


def _open_in_monai_label_mode(browser: Browser, url: str, artifacts: Path) -> None:
    """The BraTS MR study in OHIF's MONAI Label mode, its panel connected to the server at ``url``."""
    browser.open(f"{url}/ohif/")
    # the OHIF MONAI Label panel reads its server from this cookie (default: port 8000 of the page's host);
    # cookies are shared by every port of a host, and an earlier test's server may have left one behind
    browser._call("DELETE", "/cookie")
    browser.set_cookie("MONAILABEL_SERVER_URL", f"{url}/")
    browser.click(browser.wait_for("//*[contains(text(),'brats_pat0001_flair')]", 120))
    browser.click(browser.wait_for("//button[normalize-space(.)='MONAI Label']", 30))
    for notice in browser.find("//button[contains(., 'Confirm and Hide')]"):
        browser.click(notice)
    connected = "//label[normalize-space(.)='Point Prompts']"
    for _ in range(3):  # the panel may still be mounting when first asked to connect
        browser.click(browser.wait_for("//button[@class='actionButton']", 120))  # connect to the server
        deadline = time.time() + 30
        while time.time() < deadline and not browser.find(connected):
            time.sleep(1)
        if browser.find(connected):
            return
    browser.screenshot(artifacts / "ohif_panel_not_connected.png")
    raise AssertionError(f"the MONAI Label panel did not connect to {url}; page text:\n{browser.text()[:3000]}")


def test_ohif_point_prompts_run_unimed_interactive_from_clicks_on_the_canvas(browser, pacs_click_server, artifacts):
    """The panel's Point Prompts tab (its click tool for deepgrow, deepedit and vista3d models):
    pick a label, click on the image, run; the panel sends its deepedit request (one click list
    per label) and draws the answer."""
    url = pacs_click_server["url"]
    _open_in_monai_label_mode(browser, url, artifacts)
    browser.click(browser.wait_for("//label[normalize-space(.)='Point Prompts']", 30))  # activates the probe tool
    browser.click(browser.wait_for("//tr[@class='clickable-row']/td[normalize-space(.)='edema']", 30))
    time.sleep(5)  # let the viewports finish loading the series
    before = _coloured_pixels(browser.screenshot(artifacts / "ohif_before_clicks.png"))
    canvas = browser.wait_for("//div[contains(@class,'viewport-element')]//canvas", 60)
    rect = browser._call("GET", f"/element/{canvas}/rect")
    x, y = int(rect["x"] + rect["width"] / 2), int(rect["y"] + rect["height"] / 2)  # the brain, mid-slice
    browser._call("POST", "/actions", {"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
                                                    "actions": [{"type": "pointerMove", "origin": "viewport", "x": x, "y": y},
                                                                {"type": "pointerDown", "button": 0},
                                                                {"type": "pointerUp", "button": 0}]}]})
    time.sleep(1)
    browser.click(browser.wait_for("//*[contains(text(),'Point Prompts')]/following::button[normalize-space(.)='Run'][1]", 30))
    browser.wait_for("//*[not(self::script)][contains(text(),'Point Prompts - Successful') or "
                     "contains(text(),'Failed to Run Inference for Point Prompts')]", 300)
    assert "Failed" not in browser.text()
    time.sleep(5)  # the label map is drawn asynchronously
    for notice in browser.find("//button[contains(., 'Confirm and Hide')]"):
        browser.click(notice)
    browser.click(browser.wait_for("//a[normalize-space(.)='Clear Points']", 30))  # the click's marker shares the colour
    time.sleep(2)
    after = _coloured_pixels(browser.screenshot(artifacts / "ohif_unimed_clicks.png"))
    assert after > before + 300, f"no segment drawn around the click ({before} -> {after} coloured pixels; canvas {rect})"
    # the panel's deepedit format: a click list under a label's name (edema was picked; the panel
    # may still hold the label it had selected while its list re-renders, so any segmentation label)
    names = "|".join(lab.name for lab in LabelRegistry().for_task(Task.SEGMENTATION))
    click_list = re.compile(rf"'({names})': \[\[")
    deadline, log = time.time() + 20, ""
    while time.time() < deadline and not click_list.search(log):  # the server's log is written asynchronously
        log = Path(pacs_click_server["log"]).read_text()
        time.sleep(1)
    assert click_list.search(log) and "unimed_interactive" in log, log[-2000:]


@pytest.fixture(scope="module")
def local_server(tmp_path_factory, start_sample_server):
    with start_sample_server(tmp_path_factory) as srv:
        yield srv


def test_results_page_shows_what_ohif_cannot(browser, local_server, artifacts):
    """Detection boxes (drawn on a 2D picture) and classification scores, at /unimed/."""
    image = "bccd_BloodImage_00000"
    browser.open(f"{local_server['url']}/unimed/")
    browser.wait_for(f"//select[@id='image']/option[@value='{image}']", 60)
    browser._call("POST", "/execute/sync", {"script": f"document.getElementById('image').value = '{image}'", "args": []})
    browser.click(browser.find("//button[@id='detect']")[0])
    browser.wait_for("//div[@id='result']/p[contains(text(),'boxes (centre')] | //div[@id='status'][contains(text(),'failed')]", 300)
    _, expected = local_server["client"].infer("unimed_det", image, {})
    rows = browser.find("//table[@id='result-table']//tr[td]")
    assert len(rows) == len(expected["box"])
    time.sleep(1)
    shot = browser.screenshot(artifacts / "results_page_detection.png")
    assert (not expected["box"]) or browser.find("//canvas[@id='canvas' and not(@hidden)]")
    browser.click(browser.find("//button[@id='classify']")[0])
    browser.wait_for("//table[@id='result-table']//td[text()='adrenal_normal'] | //div[@id='status'][contains(text(),'failed')]", 300)
    assert "failed" not in browser.text(), browser.text()[:800]
    labels = [line.split("\t")[0] for line in browser.text().splitlines() if "\t" in line]
    assert {"brain_tumor", "lung_tumor", "adrenal_hyperplasia", "adrenal_normal"} <= set(labels), browser.text()[:1500]
    assert shot.shape[2] == 3
