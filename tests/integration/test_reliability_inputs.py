"""Issue 11: bad input of every kind gets one clear answer, and memory stays bounded whatever
comes in. Every file is generated here; the server tests run a real `faceage serve` process."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import faceage, face_image, write_utk
from serving import png_bytes, serve_process
from faceage.data.readers import read_dataset, verify_images
from faceage.errors import ConfigError, DataError
from faceage.inference.inputs import to_rgb_image
from faceage.preprocess import (EmptyImageError, ImageDecodeError, ImageTooLargeError, NotAFileError, PreprocessSpec,
                                UnsupportedArrayError, check_image, decoded_size, frame, load_image, open_image)

pytestmark = pytest.mark.integration

FAST = {"timeout": 120}


def run_cli(*args, env=None):
    return faceage(*args, env=env, **FAST)


# ---- NumPy arrays: what can mean one thing is read, the rest is refused saying what is expected ----
@pytest.mark.parametrize("name, arr, first_pixel", [
    ("float in 0-1", np.full((6, 8, 3), 0.5), (128, 128, 128)),
    ("float in 0-255", np.full((6, 8, 3), 200.4, np.float32), (200, 200, 200)),
    ("int64 in 0-255", np.full((6, 8, 3), 7, np.int64), (7, 7, 7)),
    ("uint16", np.full((6, 8, 3), 65535, np.uint16), (255, 255, 255)),
    ("H x W x 1", np.full((6, 8, 1), 9, np.uint8), (9, 9, 9)),
    ("channels first", np.stack([np.full((6, 8), v, np.uint8) for v in (1, 2, 3)]), (1, 2, 3)),
    ("RGBA", np.dstack([np.zeros((6, 8, 3), np.uint8), np.zeros((6, 8), np.uint8)]), (255, 255, 255)),
])
def test_arrays_that_mean_one_thing_are_read(name, arr, first_pixel):
    img = to_rgb_image(arr)
    assert img.mode == "RGB" and img.size == (8, 6), name
    assert img.getpixel((0, 0)) == first_pixel, name


@pytest.mark.parametrize("name, arr, says", [
    ("1-D", np.zeros(30, np.uint8), "1 dimension"),
    ("4-D batch", np.zeros((1, 6, 8, 3), np.uint8), "4 dimension"),
    ("bool mask", np.zeros((6, 8), bool), "mask"),
    ("2 channels", np.zeros((6, 8, 2), np.uint8), "2 channels"),
    ("5 channels", np.zeros((6, 8, 5), np.uint8), "5 channels"),
    ("0 x 0", np.zeros((0, 0, 3), np.uint8), "no pixels"),
    ("NaN", np.full((6, 8), np.nan), "NaN"),
    ("normalized floats", np.full((6, 8, 3), -1.5), "outside"),
    ("int beyond 255", np.full((6, 8), 300, np.int32), "outside 0-255"),
    ("object", np.array([[None, None]]), "dtype object"),
])
def test_other_arrays_are_refused_with_what_is_expected(name, arr, says):
    with pytest.raises(UnsupportedArrayError) as err:
        to_rgb_image(arr)
    assert isinstance(err.value, ValueError) and isinstance(err.value, ImageDecodeError), name
    assert says in str(err.value), (name, str(err.value))


def test_a_zero_size_image_is_an_image_error_not_a_division_by_zero():
    with pytest.raises(EmptyImageError, match="0x0"):
        to_rgb_image(Image.new("RGB", (0, 0)))


def test_a_batch_with_refused_arrays_keeps_going(shared_predictor):
    good = np.asarray(face_image(1, 64))
    results = shared_predictor.analyze_many([np.zeros(5, np.uint8), good, np.zeros((4, 4), bool), Image.new("RGB", (0, 0))])
    assert [r.error_type for r in results] == ["UnsupportedArrayError", None, "UnsupportedArrayError", "EmptyImageError"]


# ---- colour modes: every mode Pillow opens converts, or the same check refuses it everywhere ----
@pytest.mark.parametrize("mode, fmt", [("LAB", "TIFF"), ("CMYK", "TIFF"), ("YCbCr", "TIFF"), ("I;16", "PNG"),
                                       ("I", "TIFF"), ("F", "TIFF"), ("LA", "PNG"), ("PA", "TIFF"), ("1", "PNG"),
                                       ("P", "GIF"), ("RGBA", "WEBP")])
def test_every_mode_decodes_for_training_inspection_and_prediction(tmp_path, mode, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.new(mode, (40, 30)).save(path, fmt)
    check_image(path)                                         # what `data inspect` runs
    for channels in (1, 3):                                   # what the training cache runs
        assert load_image(path, PreprocessSpec(size=16, channels=channels)).shape == (16, 16, channels)
    assert to_rgb_image(path).mode == "RGB"                   # what predict runs
    assert frame(Image.new("La", (8, 8)), PreprocessSpec(size=4, channels=1)).mode == "L"   # Pillow lacks La -> L


def test_a_lab_tiff_in_a_training_folder_is_cached_not_fatal(tmp_path):
    from faceage.data.cache import ImageCache
    folder = tmp_path / "utk"
    folder.mkdir()
    for i in range(3):
        write_utk(folder, 20 + i, i % 2, 0, seed=i)
    Image.new("LAB", (48, 48), (50, 10, 10)).save(folder / "33_0_0_20170111000000077.jpg.chip.jpg", "TIFF")
    manifest, report = read_dataset(folder)
    verify_images(manifest, report)
    assert len(manifest.samples) == 4 and not report
    usable = ImageCache(PreprocessSpec(size=16, channels=1), tmp_path / "cache").build(manifest.samples, report)
    assert len(usable) == 4 and not report


# ---- one pixel limit, from the header, everywhere; enough digits to see why ----
def test_pixel_limit_applies_by_default_and_says_why(tmp_path, monkeypatch):
    data = png_bytes(Image.new("1", (8660, 5774)))           # 50,002,840 px: just over 50 MP
    with pytest.raises(ImageTooLargeError) as err:
        open_image(data)
    assert "8660x5774 = 50,002,840 pixels (50.003 MP); the limit is 50,000,000 (50 MP)" in str(err.value)
    assert "FACEAGE_MAX_MEGAPIXELS" in str(err.value)
    big = png_bytes(Image.new("1", (10000, 9500)))           # 95 MP: Pillow alone only warned
    with pytest.raises(ImageTooLargeError, match="95.000 MP"):
        open_image(big)
    monkeypatch.setenv("FACEAGE_MAX_MEGAPIXELS", "100")
    assert decoded_size(big) == (10000, 9500)
    monkeypatch.setenv("FACEAGE_MAX_MEGAPIXELS", "0")            # no faceage limit: Pillow's guard (89 MP) alone
    assert decoded_size(data) == (8660, 5774)
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        decoded_size(big)
    monkeypatch.setenv("FACEAGE_MAX_MEGAPIXELS", "lots")
    with pytest.raises(ConfigError, match="FACEAGE_MAX_MEGAPIXELS"):
        open_image(data)


def test_inspect_and_training_decode_a_jpeg_over_the_limit_smaller(tmp_path):
    """README: `data inspect` and training decode a JPEG over the pixel limit at a reduced scale
    instead of refusing it (a PNG has no reduced decode: refused, below)."""
    folder = tmp_path / "utk"
    folder.mkdir()
    for i in range(2):
        write_utk(folder, 30 + i, i % 2, 0, seed=i)
    big = folder / "40_0_0_20170111000000001.jpg.chip.jpg"
    Image.new("RGB", (9000, 6000), (120, 110, 100)).save(big, "JPEG", quality=90)      # 54 MP: over 50
    r = run_cli("data", "inspect", folder)
    assert r.returncode == 0 and "3 usable images" in r.stdout, r.stdout + r.stderr
    assert load_image(big, PreprocessSpec(size=64, channels=3)).shape == (64, 64, 3)   # what training reads


def test_predict_and_inspect_refuse_a_big_image_from_its_header(tmp_path):
    folder = tmp_path / "utk"
    folder.mkdir()
    for i in range(2):
        write_utk(folder, 30 + i, i % 2, 0, seed=i)
    Image.new("1", (10000, 9000)).save(folder / "40_0_0_20170111000000001.jpg.chip.jpg", "PNG")   # 90 MP
    r = run_cli("data", "inspect", folder)
    assert r.returncode == 0 and "2 usable images" in r.stdout and "image too large: 1" in r.stdout, r.stdout + r.stderr
    (tmp_path / "p").mkdir()
    Image.new("1", (10000, 9000)).save(tmp_path / "p" / "big.png")
    t = time.perf_counter()
    r = run_cli("predict", tmp_path / "p" / "big.png", "--json", "--no-progress")
    assert r.returncode == 1 and "image too large: 10000x9000 = 90,000,000 pixels" in r.stdout, r.stdout + r.stderr
    assert time.perf_counter() - t < 60


# ---- files that are not files, huge files, bombs ----
def test_devices_and_fifos_are_refused_in_one_line(tmp_path):
    fifo = tmp_path / "history.csv"
    os.mkfifo(fifo)
    for source in ("/dev/zero", fifo):
        with pytest.raises(NotAFileError):
            open_image(source)
        with pytest.raises(DataError, match="not a regular file"):
            read_dataset(source)
    for args in (("diagnose", "/dev/zero"), ("diagnose", fifo), ("data", "inspect", fifo)):
        r = run_cli(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a regular file" in r.stderr, (args, r.stderr)


def test_a_big_file_is_hashed_in_chunks(tmp_path):
    small, big = tmp_path / "small.jpg.chip.jpg", tmp_path / "25_0_0_20170111000000001.jpg.chip.jpg"
    small.write_bytes(b"x")
    with open(big, "wb") as fh:                    # sparse: costs no disk
        fh.truncate(512 * 2**20)

    def peak_rss_kb(path: Path) -> int:           # the whole process: imports included
        code = ("import resource; from pathlib import Path; from faceage.data.readers import file_digest; "
                f"file_digest(Path({str(path)!r})); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return int(r.stdout)

    grew = peak_rss_kb(big) - peak_rss_kb(small)
    assert grew < 32 * 1024, f"hashing a 512 MB file took {grew // 1024} MB more than hashing 1 byte"


def test_archive_bombs_are_refused_before_unpacking(tmp_path, monkeypatch):
    from faceage.data import readers
    bomb = tmp_path / "UTKFace.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("UTKFace/20_0_0_20170111000000001.jpg.chip.jpg", b"\0" * (100 * 2**20))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(DataError, match=r"ratio [\d,]+:1, the limit is 100:1"):
        read_dataset(bomb, cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache" / "archives").rglob("*.chip.jpg"))       # nothing was written
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(6):
            zf.writestr(f"UTKFace/{20 + i}_0_0_2017011100000000{i}.jpg.chip.jpg", png_bytes(face_image(i)))
    monkeypatch.setattr(readers, "MAX_ARCHIVE_FILES", 5)
    with pytest.raises(DataError, match="more than 5 files"):
        read_dataset(many, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(readers, "MAX_ARCHIVE_FILES", 100)
    monkeypatch.setattr(readers, "MAX_ARCHIVE_BYTES", 1000)
    with pytest.raises(DataError, match="over the limit of"):
        read_dataset(many, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_an_archive_that_does_not_fit_on_the_cache_disk_is_refused(tmp_path, monkeypatch, synthetic_utk, suffix):
    """README: archives are unpacked only if they "fit on the cache's disk; otherwise one message names
    the limit". The disk is made to look nearly full; the archive must be refused before anything is
    written, with the sizes and what to do, and nothing (not even a half-unpacked folder) left behind."""
    import shutil
    import tarfile
    from collections import namedtuple
    archive = tmp_path / f"UTKFace{suffix}"
    files = sorted(synthetic_utk.iterdir())[:6]
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for p in files:
                zf.write(p, f"UTKFace/{p.name}")
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for p in files:
                tf.add(p, f"UTKFace/{p.name}")
    cache = tmp_path / "cache"
    real_usage, asked = shutil.disk_usage, []
    usage = namedtuple("usage", "total used free")

    def nearly_full(path):
        asked.append(Path(path))
        if cache in Path(path).parents or Path(path) == cache:
            return usage(10**12, 10**12 - 1000, 1000)        # 1 kB free on the cache's disk
        return real_usage(path)

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)
    with pytest.raises(DataError, match=r"would unpack to [\d.]+ MB in .*, which has 0\.0 MB free; "
                                        r"free some space or set FACEAGE_CACHE to a larger disk") as err:
        read_dataset(archive, cache_dir=cache)
    assert str(archive) in str(err.value) and "\n" not in str(err.value)     # one message, naming the archive
    assert any(cache in p.parents for p in asked), "the free space of the cache's disk was never asked"
    assert not [p for p in (cache / "archives").iterdir()], "a refused archive left files in the cache"
    monkeypatch.setattr(shutil, "disk_usage", real_usage)               # with room, the same archive unpacks
    manifest, _ = read_dataset(archive, cache_dir=cache)
    assert len(manifest.samples) == 6


# ---- archives, CSVs and duplicates as people make them ----
def test_macos_zip_with_a_readme_is_still_utkface(tmp_path, synthetic_utk):
    archive = tmp_path / "UTKFace.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(synthetic_utk.iterdir()):
            zf.write(p, f"UTKFace/{p.name}")
            zf.writestr(f"__MACOSX/UTKFace/._{p.name}", b"\x00\x05\x16\x07 resource fork")
        zf.writestr("README.txt", "UTKFace, aligned and cropped")
        zf.writestr("UTKFace/.DS_Store", b"finder")
    manifest, report = read_dataset(archive, cache_dir=tmp_path / "cache")
    assert manifest.kind == "utkface" and len(manifest.samples) == 60 and not report
    assert all(s.age is not None for s in manifest.samples)


@pytest.mark.parametrize("encoding, sep", [("utf-8-sig", ","), ("utf-8-sig", ";"), ("utf-16", "\t")])
def test_spreadsheet_csvs_are_read(tmp_path, encoding, sep):
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        face_image(i).save(tmp_path / "imgs" / f"f{i}.png")
    text = sep.join(["path", "age", "gender"]) + "\r\n" + "\r\n".join(
        sep.join([f"imgs/f{i}.png", str(30 + i), str(i)]) for i in range(2)) + "\r\n"
    (tmp_path / "m.csv").write_bytes(text.encode(encoding))
    manifest, report = read_dataset(tmp_path / "m.csv")
    assert [(s.key, s.age, s.gender) for s in manifest.samples] == [("imgs/f0.png", 30.0, 0), ("imgs/f1.png", 31.0, 1)]


def test_identical_files_with_different_labels_are_reported(tmp_path):
    folder = tmp_path / "utk"
    folder.mkdir()
    kept = write_utk(folder, 25, 0, 1, seed=3)
    (folder / "61_1_2_20170111000000009.jpg.chip.jpg").write_bytes(kept.read_bytes())
    write_utk(folder, 40, 1, 0, seed=4)
    manifest, report = read_dataset(folder)
    assert len(manifest.samples) == 2
    ((path, detail),) = report.by_reason["duplicate file with different labels"]
    assert path.endswith("61_1_2_20170111000000009.jpg.chip.jpg")
    assert f"same bytes as {kept.name}, which is kept: age 25, gender 0, race 1 there, age 61, gender 1, race 2" in detail


# ---- the server: a real process, 2 workers, RSS measured with psutil ----
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")              # a clean HOME: onnxruntime must write nothing there
    env = dict(os.environ, HOME=str(home))
    env.pop("ORT_DISABLE_TELEMETRY", None)
    with serve_process("--workers", "2", "--upload-timeout", "3", env=env) as (proc, url, port):
        yield proc, url, port, home


def test_memory_stays_bounded_under_pixel_bombs(server):
    import httpx
    import psutil
    proc, url, _, _ = server
    ps = psutil.Process(proc.pid)
    peak = [ps.memory_info().rss]
    done = threading.Event()

    def sample():
        while not done.wait(0.01):
            peak[0] = max(peak[0], ps.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    bomb = png_bytes(Image.new("1", (7000, 7000)))       # 6 KB that decodes to 49 MP
    assert len(bomb) < 10_000
    try:
        for _ in range(2):                               # the request, twice: 16 x 49 MP in 96 KB
            r = httpx.post(url + "/v1/analyze", files=[("files", (f"{i}.png", bomb, "image/png")) for i in range(16)],
                           timeout=120)
            assert r.status_code == 413 and r.headers["content-type"] == "application/json"
            assert "784,000,000 pixels (784.0 MP) together; the limit is 200,000,000 (200 MP)" in r.json()["error"]
        # Two 49 MP images at once, one per worker: they are decoded one after the other (the
        # pixel budget), each worker's memory given back before the other decodes.
        def heavy(i):
            return httpx.post(url + "/v1/analyze", files=[("files", (f"{i}.png", bomb, "image/png"))], timeout=300)
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(heavy, range(2)))
        assert [a.status_code for a in answers] == [200, 200]
        assert all(img["width"] == 7000 and img["faces"] == [] for a in answers for img in a.json()["images"])
    finally:
        done.set()
        sampler.join()
    after = ps.memory_info().rss
    print(f"\nserver RSS: peak {peak[0] / 2**20:.0f} MB, after {after / 2**20:.0f} MB")
    assert peak[0] < 2**30


def test_a_jpeg_over_the_limit_is_decoded_smaller_and_answered_in_its_own_pixels(shared_predictor):
    from fastapi.testclient import TestClient

    from faceage.inference.detector import Detection
    from faceage.inference.predictor import Predictor
    from faceage.serve.app import create_app
    from faceage.serve.settings import ServeSettings
    seen = []

    class FixedDetector:                     # one face, where the decoded (half-size) image has it
        def detect(self, image):
            seen.append(image.size)
            marks = np.array([[130, 250], [170, 250], [150, 280], [135, 310], [165, 310]], float)
            return [Detection(np.array([100.0, 200, 200, 340]), marks, 0.99)]

    stub = Predictor.__new__(Predictor)
    stub.__dict__.update(shared_predictor.__dict__, detector=FixedDetector())
    buf = io.BytesIO()
    Image.new("RGB", (9000, 6000), (120, 110, 100)).save(buf, "JPEG", quality=90)   # 54 MP: over 50
    with TestClient(create_app(ServeSettings(), stub)) as c:
        r = c.post("/v1/analyze", files=[("files", ("big.jpg", buf.getvalue(), "image/jpeg"))])
    assert r.status_code == 200, r.text
    assert seen == [(4500, 3000)]            # decoded at 1/2 by libjpeg: 13.5 MP, never 54
    image = r.json()["images"][0]
    assert (image["width"], image["height"]) == (9000, 6000)
    (face,) = image["faces"]
    assert face["box"] == [200.0, 400.0, 400.0, 680.0] and face["landmarks"][0] == [260.0, 500.0]


def test_slow_upload_gets_408_json(server):
    _, _, port, _ = server
    body = b"--b0undary\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n" + b"z" * 2000
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /v1/analyze HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b0undary\r\n"
                  b"Content-Length: %d\r\n\r\n" % (len(body) + 100))
        t = time.monotonic()
        answer = b""
        s.settimeout(0.5)
        for i in range(0, len(body), 25):                # 50 B/s
            try:
                s.sendall(body[i:i + 25])
                answer += s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if answer:
                break
        s.settimeout(10)
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            more = s.recv(65536)
            if not more:
                break
            answer += more
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"content-type: application/json" in answer.lower() and b'{"error":"the upload did not arrive within 3 s' in answer
    assert time.monotonic() - t < 15


def test_a_boundary_over_256_characters_is_a_json_422(server):
    import httpx
    _, url, _, _ = server
    boundary = "b" * 300
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\nx\r\n"
            f"--{boundary}--\r\n").encode()
    r = httpx.post(url + "/v1/analyze", content=body,
                   headers={"content-type": f"multipart/form-data; boundary={boundary}"}, timeout=30)
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    assert "boundary is 300 characters long" in r.json()["error"]


def test_onnxruntime_writes_nothing_in_home(server):
    _, _, _, home = server
    assert not (home / ".cache" / "Microsoft").exists(), sorted(map(str, home.rglob("*")))


def test_uploads_held_at_once_are_bounded(shared_predictor):
    from fastapi.testclient import TestClient

    from faceage.serve.app import create_app
    from faceage.serve.settings import ServeSettings
    blob = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)))
    assert len(blob) > 2**20
    with TestClient(create_app(ServeSettings(max_pending_mb=2, max_file_mb=2), shared_predictor)) as c:
        r = c.post("/v1/analyze", files=[("files", (f"{i}.png", blob, "image/png")) for i in range(2)])
        assert r.status_code == 503 and r.headers["retry-after"] and "uploads in progress" in r.json()["error"]
        r = c.post("/v1/analyze", files=[("files", ("0.png", blob, "image/png"))])
        assert r.status_code == 200                 # the budget was given back
