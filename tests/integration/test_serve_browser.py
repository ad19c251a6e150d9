"""The page in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`)
driven by Selenium uploads photos to a live server and must show numbered face boxes that
match the table's rows, fit any screen from 320 px up, and work with every other host blocked.
Screenshots are kept in $FACEAGE_TEST_ARTIFACTS (default: test-artifacts/)."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("FACEAGE_TEST_ARTIFACTS", REPO / "test-artifacts"))
PACKAGES = ["chromium", "chromium-driver"]
# Every host name but the test server's address fails to resolve: a page that needs a CDN, a
# web font or any other outside file shows it (blank docs, missing styles) instead of working
# here and failing on a machine without internet.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


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


# Runs before each page's own scripts: notes every request its Content-Security-Policy stopped.
RECORD_CSP_BLOCKS = """
window.cspBlocked = [];
document.addEventListener("securitypolicyviolation", (e) => window.cspBlocked.push(e.blockedURI));
"""

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
def downloads(tmp_path) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


@pytest.fixture
def browser(tmp_path, downloads):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium, driver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1300", OFFLINE):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    b = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    b.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    b.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_CSP_BLOCKS})
    yield b
    b.quit()


@pytest.fixture
def live_server(shared_predictor):
    from faceage.serve.app import create_app
    from faceage.serve.settings import ServeSettings
    from serving import LiveServer
    with LiveServer(create_app(ServeSettings(), shared_predictor)) as server:
        yield server


def viewport(browser, width: int, height: int = 900) -> None:
    """The page's viewport in CSS px, exactly (a headless window has a minimum width)."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


def no_horizontal_overflow(browser) -> bool:
    return browser.execute_script("const e = document.documentElement; return e.scrollWidth <= e.clientWidth")


def only_this_server(browser, url: str) -> list[str]:
    """Every resource the page asked for elsewhere than ``url`` (should be none). Chromium lists
    requests that the page's Content-Security-Policy blocked too; those never left the browser."""
    names = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    blocked = set(browser.execute_script("return window.cspBlocked || []"))
    return [n for n in names if not n.startswith((url, "data:", "blob:")) and n not in blocked]


def wait_for_file(folder: Path, name: str, timeout: float = 20) -> Path:
    path, deadline = folder / name, time.monotonic() + timeout
    while not path.is_file():                      # Chromium writes NAME.crdownload, then renames it
        assert time.monotonic() < deadline, f"{name} was not downloaded: {list(folder.iterdir())}"
        time.sleep(0.1)
    return path


@pytest.fixture(scope="module")
def group_photo(real_subset, tmp_path_factory) -> Path:
    """Five real UTKFace faces, one from each age decade 20-60, 150 px each, side by side with
    gaps on a plain 1400x500 background: a made-up group photo."""
    files = sorted(real_subset.iterdir())

    def age(p: Path) -> int:
        return int(p.name.split("_")[0])

    chips = [next(p for p in files if decade <= age(p) < decade + 10) for decade in (20, 30, 40, 50, 60)]
    photo = Image.new("RGB", (1400, 500), (200, 205, 210))
    for i, chip in enumerate(chips):
        photo.paste(Image.open(chip).convert("RGB").resize((150, 150)), (100 + 250 * i, 175))
    path = tmp_path_factory.mktemp("group") / "group.png"
    photo.save(path)
    return path


def test_uploading_a_photo_shows_its_numbered_box_and_table_row(browser, live_server, astronaut_png):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(live_server.url + "/")
    WebDriverWait(browser, 20).until(EC.text_to_be_present_in_element((By.ID, "model"), "UTKFace"))
    browser.find_element(By.ID, "files").send_keys(str(astronaut_png))
    badge = WebDriverWait(browser, 60).until(EC.visibility_of_element_located((By.CSS_SELECTOR, ".frame .badge")))
    assert badge.text == "1"
    box = browser.find_element(By.CSS_SELECTOR, ".frame .box")
    # "Face 1: age (low–high), gender NN%" on hover
    title = box.get_attribute("title")
    assert title.startswith("Face 1: ") and any(g in title for g in (", male ", ", female ")) and "–" in title
    rows = browser.find_elements(By.CSS_SELECTOR, "#faces tbody tr")
    assert len(rows) == 1
    cells = [td.text for td in rows[0].find_elements(By.TAG_NAME, "td")]
    assert cells[:2] == ["astronaut.png", "1"]
    img = browser.find_element(By.CSS_SELECTOR, ".frame img")
    # the box sits on the face: inside the photo, in its upper half (the astronaut's head)
    assert img.rect["x"] <= box.rect["x"] and box.rect["y"] + box.rect["height"] <= img.rect["y"] + img.rect["height"] / 2
    assert "1 face" in browser.find_element(By.TAG_NAME, "figcaption").text
    assert browser.find_element(By.ID, "status").text == "1 of 1 photo analysed."
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "serve-page.png"))

    # paste and drop go through the same path: a synthetic faceless image made in the page
    for event in ("paste", "drop"):
        browser.execute_script(MAKE_IMAGE_EVENT, event)
        WebDriverWait(browser, 30).until(
            EC.text_to_be_present_in_element((By.CSS_SELECTOR, "figure:last-child figcaption"), f"{event}ed.png: no face found"))
    assert browser.find_element(By.ID, "status").text == "3 of 3 photos analysed."
    assert only_this_server(browser, live_server.url) == []


def test_group_photo_numbers_errors_order_downloads_and_narrow_screens(browser, live_server, group_photo,
                                                                       astronaut_png, downloads, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a photo")
    browser.get(live_server.url + "/")
    # three files at once: the cards and the table must keep this order
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in (group_photo, broken, astronaut_png)))
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 90).until(lambda b: status.text.endswith("."))
    assert status.text == "2 of 3 photos analysed, 1 failed."

    cards = browser.find_elements(By.CSS_SELECTOR, "#photos figure")
    captions = [c.find_element(By.TAG_NAME, "figcaption").text for c in cards]
    assert [c.split(":")[0] for c in captions] == ["group.png", "broken.jpg", "astronaut.png"]
    assert captions[0].startswith("group.png: 5 faces")

    # the failed photo: its error once, in red, and no image (so no broken-image icon)
    failed = cards[1]
    assert "failed" in failed.get_attribute("class")
    assert failed.text == "broken.jpg: not an image"
    assert failed.find_elements(By.TAG_NAME, "img") == []
    assert browser.execute_script(
        "return [...document.images].every((i) => i.hidden || (i.complete && i.naturalWidth > 0))")

    # five numbered boxes, 1 to 5 from left to right, each badge inside the photo
    group = cards[0]
    img = group.find_element(By.TAG_NAME, "img")
    boxes = group.find_elements(By.CSS_SELECTOR, ".box")
    badges = group.find_elements(By.CSS_SELECTOR, ".badge")
    assert [b.text for b in badges] == ["1", "2", "3", "4", "5"]
    assert [b.get_attribute("data-number") for b in boxes] == ["1", "2", "3", "4", "5"]
    lefts = [b.rect["x"] for b in boxes]
    assert lefts == sorted(lefts), "faces are numbered in reading order, left to right"

    # the table: the group's five rows with the same numbers, then the astronaut's one
    rows = browser.find_elements(By.CSS_SELECTOR, "#faces tbody tr")
    cells = [[td.get_attribute("textContent") for td in r.find_elements(By.TAG_NAME, "td")] for r in rows]
    assert [(c[0], c[1]) for c in cells] == [("group.png", str(n)) for n in range(1, 6)] + [("astronaut.png", "1")]
    for box, row in zip(boxes, cells):                  # the same face behind the same number
        age = box.get_attribute("title").split(": ", 1)[1].split(" ")[0]
        assert int(age) == int(float(row[2]) + 0.5)      # rounded as JavaScript does

    def badges_inside_photo() -> None:
        frame = img.rect
        for b in badges:
            r = b.rect
            assert frame["x"] - 0.5 <= r["x"] and r["x"] + r["width"] <= frame["x"] + frame["width"] + 0.5
            assert frame["y"] - 0.5 <= r["y"] and r["y"] + r["height"] <= frame["y"] + frame["height"] + 0.5
            assert r["height"] >= 16                      # readable however small the photo is shown

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width in (320, 390, 1280):
        viewport(browser, width)
        assert no_horizontal_overflow(browser), f"the page scrolls sideways at {width} px"
        badges_inside_photo()
        assert browser.save_screenshot(str(ARTIFACTS / f"serve-group-{width}px.png"))

    # downloads, made in the page from the API's answers
    browser.find_element(By.ID, "download-csv").click()
    table = list(csv.DictReader(io.StringIO(wait_for_file(downloads, "faceage-results.csv").read_text("utf-8"))))
    assert [(r["photo"], r["face"]) for r in table] == \
        [("group.png", str(n)) for n in range(1, 6)] + [("broken.jpg", ""), ("astronaut.png", "1")]
    assert table[5]["note"] == "not an image"
    assert [float(r["age"]) for r in table[:5]] == [float(c[2]) for c in cells[:5]]
    browser.find_element(By.ID, "download-json").click()
    answer = json.loads(wait_for_file(downloads, "faceage-results.json").read_text("utf-8"))
    assert [i["filename"] for i in answer["images"]] == ["group.png", "broken.jpg", "astronaut.png"]
    assert [f["number"] for f in answer["images"][0]["faces"]] == [1, 2, 3, 4, 5]
    assert answer["images"][1] == {"filename": "broken.jpg", "error": "not an image"}

    # "Clear results" empties the page
    browser.find_element(By.ID, "clear").click()
    assert browser.find_elements(By.CSS_SELECTOR, "#photos figure, #faces tbody tr") == []
    assert not browser.find_element(By.ID, "table-section").is_displayed()
    assert not browser.find_element(By.ID, "clear").is_displayed()
    assert only_this_server(browser, live_server.url) == []


def test_api_docs_render_with_every_other_host_blocked(browser, live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(live_server.url + "/docs")
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock")) >= 3)
    paths = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock-summary-path")]
    assert {"/v1/analyze", "/v1/model", "/healthz"} <= set(paths)
    assert only_this_server(browser, live_server.url) == []

    browser.get(live_server.url + "/redoc")
    WebDriverWait(browser, 30).until(lambda b: "/v1/analyze" in b.find_element(By.TAG_NAME, "body").get_attribute("textContent"))
    assert only_this_server(browser, live_server.url) == []


def test_page_works_by_keyboard_and_fits_a_phone(browser, live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    viewport(browser, 390, 844)                        # a phone's viewport
    browser.get(live_server.url + "/")
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)                           # the first Tab reaches the photo chooser
    assert browser.execute_script("return document.activeElement.id") == "files"
    assert no_horizontal_overflow(browser)
    button = browser.find_element(By.CSS_SELECTOR, "label.button")
    assert button.rect["width"] <= 390 and button.is_displayed()
