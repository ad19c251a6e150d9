"""A large JPEG is decoded coarsely first (Predictor's ``coarse_decode``, on by default): the
answers match decoding every pixel, boxes are in the photo's own pixels, and the photo is decoded
again, as finely as needed, only when a face or the detector needs it."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import faceage.inference.predictor as predictor_module
from conftest import real_data_dir
from faceage.inference.predictor import Predictor
from faceage.preprocess import open_image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chips() -> list[Image.Image]:
    files = sorted(real_data_dir().glob("3[0-9]_*.chip.jpg"))[::97][:4]
    assert len(files) == 4
    return [Image.open(f).convert("RGB") for f in files]


@pytest.fixture(scope="module")
def predictors():
    return Predictor(), Predictor(coarse_decode=False)


def photo_jpeg(size, faces, chips, orientation: int | None = None) -> bytes:
    """A JPEG of ``size`` px with UTKFace chips pasted at (x, y, side); a smooth random background."""
    w, h = size
    rng = np.random.default_rng(0)
    small = rng.integers(60, 200, (6, 8, 3), dtype=np.uint8)
    canvas = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    for (x, y, side), chip in zip(faces, chips):
        face = chip.resize((side, side), Image.LANCZOS)
        # orientation 6 shows the stored pixels turned a quarter clockwise: store the face turned back
        canvas.paste(face.transpose(Image.ROTATE_90) if orientation == 6 else face, (x, y))
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    canvas.save(buf, "JPEG", quality=92, exif=exif)
    return buf.getvalue()


@pytest.fixture
def decodes(monkeypatch):
    """The sizes the predictor decoded the photo to, in order."""
    sizes = []
    real = predictor_module.to_rgb_image

    def spy(image, *args, **kw):
        out = real(image, *args, **kw)
        sizes.append(out.size)
        return out
    monkeypatch.setattr(predictor_module, "to_rgb_image", spy)
    return sizes


def assert_same_answers(coarse, full, face_px: float):
    assert len(coarse) == len(full) >= 1
    for a, b in zip(coarse, full):
        assert np.abs(np.array(a.box) - np.array(b.box)).max() <= 0.02 * face_px, (a.box, b.box)
        assert abs(a.age - b.age) <= 1.0, (a.age, b.age)
        assert a.gender == b.gender and abs(a.gender_prob - b.gender_prob) <= 0.05


def test_big_faces_in_a_big_jpeg_never_need_every_pixel(chips, predictors, decodes):
    data = photo_jpeg((4000, 3000), [(300, 900, 900), (2000, 800, 1000)], chips)
    coarse = predictors[0].analyze(data)
    assert decodes == [(2000, 1500)]                 # 1/2 scale: the coarsest at least 1280 px
    full = predictors[1].analyze(data)
    assert decodes[1:] == [(4000, 3000)]
    assert_same_answers(coarse, full, face_px=500)
    assert coarse[0].box[2] > 1000                   # in the photo's pixels, not the copy's


def test_a_face_coarser_than_its_crop_is_cropped_from_a_finer_decode(chips, predictors, decodes, monkeypatch):
    # A 5120 px photo is first decoded at 1/4 (1280 px). Its ~600 px face is final for the detector
    # and fine enough there for a 160 px crop; pretending crops need twice the pixels makes the
    # 1/4 copy too coarse, so the face must come from the next finer decode (1/2), not every pixel.
    data = photo_jpeg((5120, 3840), [(2000, 1400, 1000)], chips)
    real = predictor_module.photo_px_per_crop_px
    monkeypatch.setattr(predictor_module, "photo_px_per_crop_px", lambda marks, size: real(marks, size) / 2)
    coarse = predictors[0].analyze(data)
    assert decodes == [(1280, 960), (2560, 1920)]
    assert_same_answers(coarse, predictors[1].analyze(data), face_px=600)


def test_small_faces_send_the_detector_to_the_full_photo(chips, predictors, decodes):
    # ~90 px faces in a 4000 px photo are ~15 px on the first 640 px copy: the detector looks finer
    data = photo_jpeg((4000, 3000), [(1000, 1000, 150), (2500, 1500, 160)], chips)
    coarse = predictors[0].analyze(data)
    assert decodes == [(2000, 1500), (4000, 3000)]
    full = predictors[1].analyze(data)
    assert [(f.age, f.box) for f in coarse] == [(f.age, f.box) for f in full]     # the same path from there
    assert len(coarse) == 2


def test_an_exif_rotated_jpeg_is_answered_in_its_displayed_pixels(chips, predictors, decodes):
    # Orientation 6: stored 4000x3000, displayed 3000x4000 (turned a quarter clockwise).
    data = photo_jpeg((4000, 3000), [(2000, 800, 1000)], chips, orientation=6)
    coarse = predictors[0].analyze(data)
    assert decodes == [(1500, 2000)]
    full = predictors[1].analyze(data)
    assert decodes[1:] == [(3000, 4000)]
    assert_same_answers(coarse, full, face_px=550)


def test_photos_asked_for_are_decoded_in_full(chips, predictors, decodes, tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(photo_jpeg((4000, 3000), [(2000, 800, 1000)], chips))
    (result,) = predictors[0].analyze_many([path], return_images=True)
    assert result.image.size == (4000, 3000) and decodes == [(4000, 3000)] and len(result.faces) == 1
    (result,) = predictors[0].analyze_many([Path(path)])           # no image kept: coarse
    assert decodes[1:] == [(2000, 1500)] and len(result.faces) == 1


def test_open_image_at_least_reduces_only_jpegs_and_records_the_size(tmp_path):
    big = Image.new("RGB", (4000, 3000), (90, 120, 150))
    big.save(tmp_path / "a.jpg", quality=90)
    big.save(tmp_path / "a.png")
    for at_least, expected in ((1280, (2000, 1500)), (640, (1000, 750)), (400, (500, 375)), (2500, (4000, 3000))):
        img = open_image(tmp_path / "a.jpg", at_least=at_least)
        assert img.size == expected
        assert img.info.get("faceage_original_size") == ((4000, 3000) if expected != (4000, 3000) else None)
    png = open_image(tmp_path / "a.png", at_least=640)
    assert png.size == (4000, 3000) and "faceage_original_size" not in png.info


def test_a_custom_detector_gets_the_photo_itself(chips, decodes):
    class Nobody:                                     # any object with detect(): no first_look
        def detect(self, image):
            return []
    data = photo_jpeg((4000, 3000), [(2000, 800, 1000)], chips)
    assert Predictor(detector=Nobody()).analyze(data) == [] and decodes == [(4000, 3000)]


def test_serve_reads_a_large_upload_coarsely_and_answers_in_its_own_pixels(chips, predictors, decodes):
    from fastapi.testclient import TestClient

    from faceage.serve.app import create_app
    from faceage.serve.settings import ServeSettings
    data = photo_jpeg((4000, 3000), [(300, 900, 900), (2000, 800, 1000)], chips)
    with TestClient(create_app(ServeSettings(), predictors[0])) as c:
        decodes.clear()                                  # the server's warm-up decodes a blank image
        r = c.post("/v1/analyze", files=[("files", ("big.jpg", data, "image/jpeg"))])
    assert r.status_code == 200, r.text
    assert decodes == [(2000, 1500)]                     # the coarse first look was final
    body = r.json()
    image = body["images"][0]
    assert (image["width"], image["height"]) == (4000, 3000)
    assert body["timing_ms"]["decode"] > 0 and body["timing_ms"]["faces"] > 0
    full = predictors[1].analyze(data)
    assert len(image["faces"]) == len(full) == 2
    for answer, expected in zip(image["faces"], full):
        assert np.abs(np.array(answer["box"]) - np.array(expected.box)).max() <= 0.02 * 500
        assert abs(answer["age"] - expected.age) <= 1.0 and answer["gender"] == expected.gender


@pytest.mark.parametrize("coarse", [True, False])
def test_a_photo_reduced_to_fit_a_pixel_limit_is_answered_in_its_own_pixels(chips, predictors, decodes, coarse):
    data = photo_jpeg((4000, 3000), [(2000, 800, 1000)], chips)
    timing = {}
    size, faces = predictors[0 if coarse else 1].analyze_photo(data, max_pixels=3_000_000, reduce_to_fit=True,
                                                               timing=timing)
    assert decodes == [(2000, 1500)]                     # 1/2 scale fits 3 MP; every pixel (12 MP) does not
    assert size == (4000, 3000) and timing["decode"] > 0 and timing["faces"] > 0
    assert_same_answers(faces, predictors[1].analyze(data), face_px=550)


def test_a_callers_pil_image_is_the_photo_and_stays_open(chips, predictors):
    """A PIL image given to the predictor is answered in its own pixels, whatever its ``info``
    says (Pillow copies ``info``, and so faceage's record of a reduced decode, through crops and
    resizes), and the caller can still use it afterwards."""
    photo = Image.open(io.BytesIO(photo_jpeg((1600, 1200), [(600, 300, 500)], chips))).convert("RGB")
    plain = predictors[1].analyze(photo.copy())
    tagged = photo.copy()
    tagged.info["faceage_original_size"] = (3200, 2400)         # as if it were a half-scale decode
    size, faces = predictors[0].analyze_photo(tagged)
    assert size == (1600, 1200) and len(faces) == len(plain) == 1
    assert np.abs(np.array(faces[0].box) - np.array(plain[0].box)).max() < 1e-6
    assert np.asarray(tagged).shape == (1200, 1600, 3)            # not closed by analyze_photo
