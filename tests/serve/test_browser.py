"""The web page in a real headless Chromium (Selenium) against `pz serve` started as a
subprocess: upload real images through the file input, read the predictions table and
gallery, download the CSV, check the store map and samples, and save a screenshot to
`test-artifacts/serve.png`. Chromium and chromedriver must be installed (CI's `.ci/run`
installs them); without them this test fails rather than skips."""

from __future__ import annotations

import csv
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from planktonzilla.images import probe

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
LINEAGES = [
    {"kingdom": "Animalia", "phylum": "Arthropoda", "class": "Copepoda", "name": "Copepoda",
     "rank": "class", "root_class": "living"},
    {"kingdom": "Animalia", "phylum": "Chaetognatha", "name": "Chaetognatha", "rank": "phylum",
     "root_class": "living"},
    {"name": "detritus", "rank": None, "root_class": "detritus"},
]  # fmt: skip
CLASSES = [lin["name"] for lin in LINEAGES]
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,2400",
)


def _browser_binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail(
            "the browser test needs Chromium and chromedriver on PATH (Debian: apt-get install "
            f"chromium chromium-driver; .ci/run installs them). Found chromium={chromium}, "
            f"chromedriver={driver}"
        )
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, shared_data):
    """`pz serve` on a tiny random-weight model and a small located store."""
    import torch

    from planktonzilla.models import build_model, save_model
    from planktonzilla.readers.folder import read_folder
    from planktonzilla.records import Record
    from planktonzilla.store import ObjectStore

    base = tmp_path_factory.mktemp("browser")
    torch.manual_seed(0)
    config = {"kind": "supervised", "backbone": "vit_tiny", "image_size": 32}
    model = save_model(
        build_model({**config, "classes": CLASSES, "class_lineages": LINEAGES}), base / "model"
    )
    tree = base / "images"
    for name in ("copepod_calanoid", "chaetognath_other"):
        (tree / name).mkdir(parents=True)
        for path in sorted((shared_data / "isiis_ndsb" / name).iterdir())[:4]:
            shutil.copy(path, tree / name / path.name)

    def located(records):
        for i, record in enumerate(records):
            if isinstance(record, Record):
                record.lat, record.lon = (43.7 - i % 2, 7.3 + i % 2)  # Villefranche, Ligurian Sea
            yield record

    assert ObjectStore(base / "store").ingest(located(read_folder(tree)), source="isiis").ok

    port = _free_port()
    pz = Path(sys.executable).with_name("pz")
    command = [str(pz)] if pz.exists() else [sys.executable, "-c", "from planktonzilla.cli "
                                             "import app; app()"]  # fmt: skip
    log = open(base / "serve.log", "w")  # noqa: SIM115 - closed below, after the server
    process = subprocess.Popen(
        [*command, "serve", str(model), "--store", str(base / "store"), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"pz serve exited: {(base / 'serve.log').read_text()}")
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "pz serve did not start within 120 s"
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def browser(tmp_path):
    chromium, chromedriver = _browser_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = Options()
    options.binary_location = chromium
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "download.directory_upgrade": True,
            "safebrowsing.enabled": False,
        },
    )
    # an explicit driver path: Selenium Manager never tries to download one
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        driver.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        driver.downloads = downloads
        yield driver
    finally:
        driver.quit()


def _wait(condition, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def test_upload_predict_download_and_browse(served, browser, shared_data, tmp_path):
    from selenium.webdriver.common.by import By

    images = [
        *sorted((shared_data / "isiis_ndsb" / "copepod_calanoid").iterdir())[10:13],
        sorted((shared_data / "flowcam_protist" / "classes" / "Protist").iterdir())[0],
        sorted((shared_data / "flowcam_vliz" / "Tripos").iterdir())[0],
    ]
    not_an_image = tmp_path / "cruise-notes.txt"
    not_an_image.write_text("net tow at station 40\n")

    browser.get(served)
    _wait(lambda: "classes" in browser.find_element(By.ID, "model-info").text, what="model")
    chooser = browser.find_element(By.ID, "file-input")
    chooser.send_keys("\n".join(str(p) for p in [*images, not_an_image]))

    def table_rows():
        return browser.find_elements(By.CSS_SELECTOR, "#results-table tbody tr")

    _wait(lambda: len(table_rows()) == len(images), what="the predictions table")
    rows = table_rows()
    assert [r.find_element(By.CSS_SELECTOR, "td.file").text for r in rows] == [
        p.name for p in images
    ]
    labels = [r.get_attribute("data-label") for r in rows]
    assert set(labels) <= set(CLASSES)
    assert [r.find_element(By.CSS_SELECTOR, "td.label").text for r in rows] == labels
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gallery .card")) == len(images)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gallery .card .bar")) == len(images) * 3
    errors = browser.find_elements(By.CSS_SELECTOR, "#errors li")
    assert len(errors) == 1 and "cruise-notes.txt" in errors[0].text
    assert "unsupported_format" in errors[0].text
    # thumbnails really decoded in the browser
    widths = browser.execute_script(
        "return [...document.querySelectorAll('#results-table img')].map(i => i.naturalWidth)"
    )
    assert len(widths) == len(images) and all(w > 0 for w in widths)

    browser.find_element(By.ID, "download-csv").click()
    done = _wait(
        lambda: [p for p in browser.downloads.glob("*.csv") if not p.name.endswith(".crdownload")],
        what="the CSV download",
    )
    with open(done[0], newline="") as fh:
        downloaded = list(csv.DictReader(fh))
    assert len(downloaded) == len(images) + 1  # the refused file is a row with its error
    assert {"object_id", "img_file_name", "label", "probability", "top3_label", "error"} <= set(
        downloaded[0]
    )
    assert [r["img_file_name"] for r in downloaded[: len(images)]] == [p.name for p in images]
    assert [r["label"] for r in downloaded[: len(images)]] == labels
    assert downloaded[-1]["error"].startswith("unsupported_format")

    # the store: tables, the inline SVG map (two positions), and sample images per class
    _wait(lambda: browser.find_element(By.ID, "store").is_displayed(), what="the store view")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#map svg circle")) == 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "#sources-table tbody tr")) == 1
    loaded = _wait(
        lambda: browser.execute_script(
            "const imgs = [...document.querySelectorAll('#samples img')];"
            "return imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0)"
            " ? imgs.length : 0"
        ),
        what="sample images",
    )
    assert loaded == 8  # 2 classes x 4 images

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve.png"
    shot.unlink(missing_ok=True)
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    info = probe(data)
    assert info.format == "png" and info.width >= 800 and info.height >= 600
