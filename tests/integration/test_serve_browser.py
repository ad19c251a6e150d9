"""The page in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`)
driven by Selenium uploads a photo to a live server and must show the face's label and table
row. The screenshot is kept in $FACEAGE_TEST_ARTIFACTS (default: test-artifacts/)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("FACEAGE_TEST_ARTIFACTS", REPO / "test-artifacts"))
PACKAGES = ["chromium", "chromium-driver"]


def browser_paths() -> tuple[str, str]:
    """Chromium and ChromeDriver, installed from Debian when missing (in CI, or when
    FACEAGE_INSTALL_BROWSER=1); elsewhere a missing browser skips with the command to run."""
    def found():
        return shutil.which("chromium"), shutil.which("chromedriver")
    in_ci = os.environ.get("CI") == "true"
    if None in found() and (in_ci or os.environ.get("FACEAGE_INSTALL_BROWSER") == "1"):
        apt = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(apt, capture_output=True, env=env).returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env)
            subprocess.run(apt, capture_output=True, env=env)
    chromium, driver = found()
    if chromium is None or driver is None:
        msg = f"headless Chromium not installed (apt-get install {' '.join(PACKAGES)})"
        if in_ci:
            pytest.fail(msg + " - in CI the browser test is required")
        pytest.skip(msg)
    return chromium, driver


# Draws a plain 200x150 PNG in the page and delivers it as a clipboard paste or a drop.
MAKE_IMAGE_EVENT = """
const kind = arguments[0];
const canvas = document.createElement("canvas");
canvas.width = 200; canvas.height = 150;
const ctx = canvas.getContext("2d"); ctx.fillStyle = "#808080"; ctx.fillRect(0, 0, 200, 150);
canvas.toBlob((blob) => {
  const dt = new DataTransfer();
  dt.items.add(new File([blob], kind + "ed.png", {type: "image/png"}));
  if (kind === "paste") document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: dt, bubbles: true}));
  else document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
}, "image/png");
"""


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium, driver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1300"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    b = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    yield b
    b.quit()


def test_uploading_a_photo_shows_its_labels_and_table(browser, shared_predictor, astronaut_png):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from serving import LiveServer
    from faceage.serve.app import create_app
    from faceage.serve.settings import ServeSettings

    with LiveServer(create_app(ServeSettings(), shared_predictor)) as server:
        browser.get(server.url + "/")
        WebDriverWait(browser, 20).until(EC.text_to_be_present_in_element((By.ID, "model"), "UTKFace"))
        browser.find_element(By.ID, "files").send_keys(str(astronaut_png))
        label = WebDriverWait(browser, 60).until(EC.visibility_of_element_located((By.CSS_SELECTOR, ".frame .label")))
        # "age (low–high), gender NN%", drawn over the photo
        text = label.text
        assert any(g in text for g in (", male ", ", female ")) and "–" in text and text.endswith("%")
        rows = browser.find_elements(By.CSS_SELECTOR, "#faces tbody tr")
        assert len(rows) == 1 and rows[0].find_elements(By.TAG_NAME, "td")[0].text == "astronaut.png"
        box = browser.find_element(By.CSS_SELECTOR, ".frame .box")
        img = browser.find_element(By.CSS_SELECTOR, ".frame img")
        # the box sits on the face: inside the photo, in its upper half (the astronaut's head)
        assert img.rect["x"] <= box.rect["x"] and box.rect["y"] + box.rect["height"] <= img.rect["y"] + img.rect["height"] / 2
        assert "1 face" in browser.find_element(By.TAG_NAME, "figcaption").text
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "serve-page.png"))

        # paste and drop go through the same path: a synthetic faceless image made in the page
        for event in ("paste", "drop"):
            browser.execute_script(MAKE_IMAGE_EVENT, event)
            WebDriverWait(browser, 30).until(
                EC.text_to_be_present_in_element((By.TAG_NAME, "figcaption"), f"{event}ed.png: no face found"))

        # a file that is not an image gets its error on its card, and the page keeps working
        bad = astronaut_png.parent / "notes.png"
        bad.write_bytes(b"not really a png")
        browser.find_element(By.ID, "files").send_keys(str(bad))
        WebDriverWait(browser, 30).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "figcaption.error"), "not an image"))


def test_page_works_by_keyboard_and_fits_a_phone(browser, shared_predictor):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from faceage.serve.app import create_app
    from faceage.serve.settings import ServeSettings
    from serving import LiveServer

    with LiveServer(create_app(ServeSettings(), shared_predictor)) as server:
        browser.set_window_size(390, 844)                  # a phone's viewport
        browser.get(server.url + "/")
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.TAB)                           # the first Tab reaches the photo chooser
        assert browser.execute_script("return document.activeElement.id") == "files"
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        button = browser.find_element(By.CSS_SELECTOR, "label.button")
        assert button.rect["width"] <= 390 and button.is_displayed()
