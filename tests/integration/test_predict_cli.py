"""`faceage predict` output as pipelines and people read it: JSON Lines streamed per photo, one
face-number convention in every format, annotated copies that mirror the input folders and
keep the photo's format, videos and HEIC in a folder; `faceage evaluate` on the shipped model."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import faceage, real_data_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def album(tmp_path_factory):
    """Two folders each holding a pic.jpg (2 and 1 faces), a PNG with no face, a broken file,
    a HEIC phone photo and a short video."""
    root = tmp_path_factory.mktemp("album")
    chips = [Image.open(p).convert("RGB") for p in sorted(real_data_dir().glob("3[0-9]_*"))[:3]]
    (root / "a").mkdir()
    (root / "b").mkdir()
    two = Image.new("RGB", (700, 330), (120, 125, 118))
    two.paste(chips[0], (420, 60))
    two.paste(chips[1], (60, 60))
    two.save(root / "a" / "pic.jpg", quality=95)
    one = Image.new("RGB", (400, 330), (90, 100, 110))
    one.paste(chips[2], (100, 60))
    one.save(root / "b" / "pic.jpg", quality=95)
    Image.new("RGB", (300, 200), (200, 200, 200)).save(root / "b" / "wall.png")
    (root / "b" / "broken.jpg").write_bytes((root / "a" / "pic.jpg").read_bytes()[:1500])
    try:
        import pillow_heif
        pillow_heif.register_heif_opener()
        one.save(root / "b" / "phone.heic")
    except ImportError:
        pass
    import cv2
    writer = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, two.size)
    for _ in range(11):                    # 2.2 s
        writer.write(np.ascontiguousarray(np.asarray(two)[:, :, ::-1]))
    writer.release()
    return root


def test_jsonl_one_line_per_photo_and_per_video_frame(album):
    r = faceage("predict", album, "--jsonl", "--every", "1s")
    assert r.returncode == 1 and "Traceback" not in r.stderr      # one broken file: exit 1, the rest done
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    by = {(row["path"].replace(str(album) + "/", ""), row.get("time")): row for row in rows}
    assert len(by["a/pic.jpg", None]["faces"]) == 2 and len(by["b/pic.jpg", None]["faces"]) == 1
    assert len(by["b/phone.heic", None]["faces"]) == 1
    assert by["b/wall.png", None]["note"] == "no face found"
    assert by["b/broken.jpg", None]["error"] == "corrupt or truncated image"
    assert [t for p, t in by if p == "clip.mp4"] == [0.0, 1.0, 2.0]
    assert all(len(by["clip.mp4", t]["faces"]) == 2 for t in (0.0, 1.0, 2.0))


def test_jsonl_streams_each_photo_as_it_finishes_with_the_documented_fields(tmp_path):
    """README: `predict holiday/ --jsonl` gives "one JSON line per photo, streamed" a group at a time, and for
    every face its number, box, 5 landmarks, detection score, age with a 90% interval, age bin,
    gender with its probability, both probabilities and a low_quality flag. Lines are read as they
    come. The photos go through the model 16 at a time (`--batch` 32 // 2), so the 16 photos with a
    face must all be out while the 17th, a big photo without a face (the detector's slow, fine
    search), is still being worked on, not at exit."""
    import subprocess
    import sys
    import time
    chips = sorted(real_data_dir().glob("*.chip.jpg"))[::1000][:16]
    photos = []
    for i, p in enumerate(chips):
        photo = Image.new("RGB", (1000, 800), (100 + i, 110, 120))
        photo.paste(Image.open(p).convert("RGB"), (300 + 20 * i, 250))
        photos.append(tmp_path / f"photo{i:02d}.jpg")
        photo.save(photos[-1], quality=92)
    slow = tmp_path / "wall.png"
    Image.new("RGB", (6000, 4000), (180, 170, 160)).save(slow)
    proc = subprocess.Popen([sys.executable, "-m", "faceage", "predict", *photos, slow, "--jsonl"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    arrivals = []
    try:
        for line in proc.stdout:
            arrivals.append((time.monotonic(), line))
        end = time.monotonic()
        err = proc.stderr.read()
    finally:
        proc.wait(timeout=300)
    assert proc.returncode == 0, err
    assert len(arrivals) == len(photos) + 1, [line for _, line in arrivals]       # one line per photo, no other
    rows = [json.loads(line) for _, line in arrivals]                              # each line is JSON on its own
    assert [row["path"] for row in rows] == [str(p) for p in photos + [slow]]
    assert rows[-1]["faces"] == [] and rows[-1]["note"] == "no face found" and rows[-1]["error"] is None
    lag = end - arrivals[len(photos) - 1][0]
    assert lag > 1.0, f"the first photos' lines came {lag:.2f} s before the end: they were not streamed"
    for row in rows[:-1]:
        assert set(row) >= {"path", "faces", "error", "note"} and row["error"] is None and row["note"] is None
        assert len(row["faces"]) == 1, row
        f = row["faces"][0]
        assert f["number"] == 1 and len(f["box"]) == 4 and np.array(f["landmarks"]).shape == (5, 2)
        assert 0 < f["score"] <= 1 and f["age_low"] <= f["age"] <= f["age_high"] and f["age_bin"]
        assert f["gender"] in ("female", "male") and set(f["gender_probs"]) == {"female", "male"}
        assert f["gender_prob"] == pytest.approx(f["gender_probs"][f["gender"]]) and f["gender_prob"] >= 0.5
        assert sum(f["gender_probs"].values()) == pytest.approx(1) and f["low_quality"] is False


def test_one_face_numbering_in_table_csv_and_json(album):
    pic = album / "a" / "pic.jpg"
    text = faceage("predict", pic).stdout
    assert "face 1:" in text and "face 2:" in text and "face 0" not in text
    r = faceage("predict", pic, album / "b" / "wall.png", "--csv")
    assert "photos" in r.stderr and "2/2" in r.stderr                      # the progress bar counts photos
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    faces = [r for r in rows if r["face"]]
    assert [r["face"] for r in faces] == ["1", "2"]
    assert float(faces[0]["x1"]) < float(faces[1]["x1"])                    # reading order: left to right
    assert [r["note"] for r in rows if not r["face"]] == ["no face found"]
    js = json.loads(faceage("predict", pic, "--json").stdout)[0]["faces"]
    assert [f["number"] for f in js] == [1, 2] and [f["age"] for f in js] == [float(r["age"]) for r in faces]


def test_annotate_mirrors_folders_and_keeps_the_format(album, tmp_path):
    out = tmp_path / "annotated"
    r = faceage("predict", album, "--annotate", out, "--no-progress", "--every", "2s")
    assert r.returncode == 1 and "photos" not in r.stderr                  # --no-progress: no bar
    a, b = out / "a" / "pic.annotated.jpg", out / "b" / "pic.annotated.jpg"
    assert a.is_file() and b.is_file() and a.read_bytes() != b.read_bytes()   # no overwrite
    assert Image.open(a).format == "JPEG" and (out / "b" / "wall.annotated.png").is_file()
    assert Image.open(a).size == Image.open(album / "a" / "pic.jpg").size
    assert len(list(out.glob("clip_*.annotated.png"))) == 2            # video frames at 0 s and 2 s


def test_bad_options_are_clear_errors(album):
    for args, words in [(["--every", "soon"], "not a time interval"), (["--det-thresh", "1.5"], "det_thresh"),
                        (["--det-size", "8"], "det_size")]:
        r = faceage("predict", album / "a" / "pic.jpg", *args)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr


def test_no_detect_takes_each_crop_whole(tmp_path):
    chips = sorted(real_data_dir().glob("*.chip.jpg"))[::900][:20]
    for p in chips:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    rows = [json.loads(line) for line in faceage("predict", tmp_path, "--jsonl", "--no-detect").stdout.splitlines()]
    assert len(rows) == 20 and all(len(r["faces"]) == 1 for r in rows)


def test_evaluate_defaults_to_the_shipped_model_and_warns_about_its_training_images(tmp_path):
    """The shipped model was trained on every development image; its sidecar says which."""
    from faceage.data.split import load_split
    split = load_split("bench/utkface_split.csv")
    names = [k for k, v in sorted(split.items()) if v == "train"][:6] + [k for k, v in sorted(split.items()) if v == "test"][:4]
    for name in names:
        (tmp_path / name).write_bytes((real_data_dir() / name).read_bytes())
    r = faceage("evaluate", "--data", tmp_path, "--split", "all")
    assert r.returncode == 0, r.stderr
    assert "default.onnx" in r.stderr and "10 of the 10 images" in r.stderr and "WARNING" in r.stdout
    # Its own split has no test part: a clear error, not an empty report.
    empty = faceage("evaluate", "--data", tmp_path)
    assert empty.returncode == 2 and "test split" in empty.stderr and "is empty" in empty.stderr
    # Another split file chooses the images; the warning still follows the model's own split.
    other = faceage("evaluate", "--data", tmp_path, "--split-file", "bench/utkface_split.csv")
    assert "on 4 images" in other.stdout and "4 of the 4 images" in other.stderr


def test_a_model_that_kept_a_test_split_is_scored_on_it_without_warning(tmp_path):
    """A model whose split held images out: `evaluate` scores those and warns about nothing."""
    import json
    from faceage.data.split import encode_split, load_split
    from faceage.inference.predictor import DEFAULT_MODEL
    split = load_split("bench/utkface_split.csv")
    model = tmp_path / "model.onnx"
    model.symlink_to(DEFAULT_MODEL)
    meta = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    meta["split"] = encode_split(split)
    (tmp_path / "model.json").write_text(json.dumps(meta))
    data = tmp_path / "data"
    data.mkdir()
    for name in [k for k, v in sorted(split.items()) if v == "test"][:3] + [k for k, v in sorted(split.items()) if v == "train"][:2]:
        (data / name).write_bytes((real_data_dir() / name).read_bytes())
    r = faceage("evaluate", "--model", model, "--data", data)
    assert r.returncode == 0 and "on 3 images" in r.stdout and "warning" not in r.stderr.lower()


def test_the_table_says_no_face_and_a_missing_file_is_one_error_line(album):
    r = faceage("predict", album / "b" / "wall.png", album / "b" / "missing.jpg", album / "a" / "pic.jpg", "--no-progress")
    assert r.returncode == 1 and "Traceback" not in r.stderr        # the missing file fails, the rest are done
    lines = r.stdout.splitlines()
    assert [line for line in lines if "wall.png" in line] == [f"{album / 'b' / 'wall.png'}: no face found"]
    assert [line for line in lines if "missing.jpg" in line] == [f"{album / 'b' / 'missing.jpg'}: ERROR file not found"]
    assert "face 2:" in r.stdout


def test_make_demo_prints_the_table_and_writes_the_annotated_photo(tmp_path):
    """README: `make demo` needs no dataset and no network, prints the table and writes
    runs/demo-photo/astronaut.annotated.png. The Makefile's own recipe, run in an empty folder with
    this interpreter's environment (``-o``: the installed environment is taken as it is)."""
    import shutil
    import subprocess
    import sys

    from conftest import REPO
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    pytest.importorskip("skimage.data", reason="scikit-image (the 'demo' extra, which make installs) provides the photo")
    env = {**os.environ, "FACEAGE_DATA": str(tmp_path / "no-dataset")}      # no dataset needed
    r = subprocess.run([make, "-f", REPO / "Makefile", "-o", ".venv/.installed", f"BIN={Path(sys.executable).parent}", "demo"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "runs/demo-photo/astronaut.png  face 1: age" in r.stdout and "box [" in r.stdout
    original = Image.open(tmp_path / "runs/demo-photo/astronaut.png").convert("RGB")
    annotated = Image.open(tmp_path / "runs/demo-photo/astronaut.annotated.png").convert("RGB")
    assert annotated.size == original.size
    changed = np.any(np.asarray(annotated) != np.asarray(original), axis=2)
    assert 0 < changed.mean() < 0.2                  # the box and its label drawn, the photo kept
