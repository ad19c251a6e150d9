"""Photos -> faces with the shipped default model and the real detector, on real UTKFace faces
pasted into larger images, in every input format and mode people have."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import real_data_dir
from faceage.inference.detector import Detection
from faceage.inference.predictor import Predictor, analyze, to_rgb_image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def predictor():
    return Predictor()


@pytest.fixture(scope="module")
def photo():
    """A 30-year-old's real UTKFace chip, rotated 10 degrees, on a larger plain background."""
    chip_path = sorted(real_data_dir().glob("30_0_0_*.chip.jpg"))[0]
    chip = Image.open(chip_path).convert("RGB").rotate(10, expand=True, fillcolor=(110, 120, 130))
    canvas = Image.new("RGB", (640, 480), (110, 120, 130))
    canvas.paste(chip, (200, 120))
    return canvas


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("variant", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "gray", "RGBA", "palette", "CMYK", "16bit", "exif"])
def test_every_format_and_mode_finds_the_face(predictor, photo, variant):
    if variant in ("JPEG", "PNG", "WEBP", "BMP", "TIFF"):
        data = _encode(photo, variant)
    elif variant == "gray":
        data = _encode(photo.convert("L"), "PNG")
    elif variant == "RGBA":
        data = _encode(photo.convert("RGBA"), "PNG")
    elif variant == "palette":
        data = _encode(photo.convert("P", palette=Image.ADAPTIVE), "PNG")
    elif variant == "CMYK":
        data = _encode(photo.convert("CMYK"), "JPEG")
    elif variant == "16bit":
        arr = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
        img16 = Image.fromarray(arr)                       # uint16 -> mode "I;16"
        assert img16.mode.startswith("I;16")
        data = _encode(img16, "PNG")
    else:  # stored sideways with EXIF orientation 6 ("rotate 90 CW to display")
        exif = Image.Exif()
        exif[0x0112] = 6
        data = _encode(photo.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif)
    faces = predictor.analyze(data)
    assert len(faces) == 1, variant
    f = faces[0]
    assert 10 <= f.age <= 60 and f.age_low <= f.age <= f.age_high and f.gender in ("male", "female")
    assert 0.5 <= f.gender_prob <= 1 and not f.low_quality
    if variant == "exif":   # boxes are in the displayed (upright) orientation
        assert f.box[0] > 150 and f.box[2] < 520


def test_api_accepts_path_bytes_pil_and_numpy(predictor, photo, tmp_path):
    photo.save(tmp_path / "p.jpg", quality=95)
    # The same bytes give the same answer however they are passed; so do the same pixels.
    from_file = [analyze(x)[0].age for x in (tmp_path / "p.jpg", str(tmp_path / "p.jpg"), (tmp_path / "p.jpg").read_bytes())]
    from_pixels = [predictor.analyze(photo)[0].age, predictor.analyze(np.asarray(photo))[0].age]
    assert len(set(from_file)) == 1 and len(set(from_pixels)) == 1
    d = analyze(photo)[0].to_dict()
    assert set(d) == {"number", "box", "landmarks", "score", "age", "age_low", "age_high", "age_bin", "gender",
                      "gender_prob", "gender_probs", "low_quality"}


def test_several_faces_and_no_face(predictor, photo):
    two = Image.new("RGB", (1400, 600), (110, 120, 130))
    two.paste(photo, (0, 0))
    two.paste(photo, (720, 50))
    assert len(predictor.analyze(two)) == 2
    assert predictor.analyze(Image.new("RGB", (400, 300), (90, 90, 90))) == []


def test_small_face_is_flagged(predictor):
    f = predictor._face(1, Detection(np.array([0, 0, 20, 24.0]), np.zeros((5, 2)), 0.9),
                        {"age": np.float32(30), "age_bin": np.float32(2), "gender_prob": np.float32(0.2)}, None)
    assert f.low_quality and f.gender == "male" and abs(f.gender_prob - 0.8) < 1e-6
    assert f.gender_probs == {"female": 0.2, "male": 0.8}


def test_the_age_bin_is_the_bin_of_the_printed_age(predictor):
    """An age-bins model's expected age (52) and its most likely bin (71-80) can disagree; the
    answer names the bin holding the age it prints."""
    f = predictor._face(1, Detection(np.array([0, 0, 90, 90.0]), np.zeros((5, 2)), 0.9),
                        {"age": np.float32(52.4), "age_bin": np.float32(7), "gender_prob": np.float32(0.9)}, None)
    assert f.age == 52.4 and f.age_bin == "51-60"


def test_cli_predict_json_errors_and_exit_code(photo, tmp_path):
    photo.save(tmp_path / "face.jpg")
    Image.new("RGB", (200, 200), (80, 80, 80)).save(tmp_path / "empty.png")
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "face.jpg").read_bytes()[:2000])
    (tmp_path / "notes.jpg").write_text("not an image")
    r = subprocess.run([sys.executable, "-m", "faceage", "predict", str(tmp_path), "--json", "--annotate", str(tmp_path / "ann")],
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stderr                 # some files failed, the rest were processed
    out = {p["path"].split("/")[-1]: p for p in json.loads(r.stdout)}
    assert len(out["face.jpg"]["faces"]) == 1 and out["face.jpg"]["error"] is None
    assert out["empty.png"]["faces"] == [] and out["empty.png"]["error"] is None and out["empty.png"]["note"] == "no face found"
    assert out["zero.jpg"]["error"] == "empty file"
    assert out["truncated.jpg"]["error"] == "corrupt or truncated image"
    assert out["notes.jpg"]["error"] == "not an image"
    assert (tmp_path / "ann" / "face.annotated.jpg").is_file()      # a JPEG stays a JPEG
    assert "Traceback" not in r.stderr


def test_decompression_bomb_is_refused(tmp_path):
    Image.new("1", (15000, 15000)).save(tmp_path / "bomb.png")       # 225 megapixels, tiny file
    r = subprocess.run([sys.executable, "-m", "faceage", "predict", str(tmp_path / "bomb.png")], capture_output=True, text=True)
    assert r.returncode == 1 and "image too large" in r.stdout


def test_to_rgb_image_converts_every_mode():
    for mode in ("L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"):
        img = Image.new(mode, (8, 8))
        assert to_rgb_image(img).mode == "RGB", mode
    with pytest.raises(TypeError, match="unsupported image type"):
        to_rgb_image(12)
