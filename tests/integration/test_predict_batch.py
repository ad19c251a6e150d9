"""The Python API for real batches: one result per input whatever breaks, streaming over
generators, typed errors, BGR arrays, aligned crops, face crops without detection, video
frames and HEIC photos - with the shipped model and the real detector on real UTKFace faces."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import faceage, real_data_dir
from faceage.inference.align import align_face
from faceage.inference.predictor import Predictor
from faceage.preprocess import (CorruptImageError, ImageDecodeError, ImageNotFoundError, IsAFolderError,
                                NotAnImageError)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def predictor():
    return Predictor()


def chips(pattern: str, n: int) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted(real_data_dir().glob(pattern))[:n]]


@pytest.fixture(scope="module")
def group():
    """Three different real people side by side: a child, a 30-year-old, a 70-year-old."""
    canvas = Image.new("RGB", (900, 360), (120, 125, 118))
    for x, chip in zip((40, 340, 640), [chips("8_*", 1)[0], chips("30_1_*", 1)[0], chips("70_0_*", 1)[0]]):
        canvas.paste(chip, (x, 80))
    return canvas


@pytest.fixture()
def files(tmp_path, group):
    group.save(tmp_path / "group.jpg", quality=95)
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "group.jpg").read_bytes()[:3000])
    (tmp_path / "folder").mkdir()
    return tmp_path


def test_a_broken_file_in_a_batch_loses_nothing(predictor, files, group):
    inputs = [files / "group.jpg", files / "notes.jpg", files / "missing.jpg", files / "cut.jpg",
              files / "folder", np.asarray(group), 42]
    results = predictor.analyze_many(inputs)
    assert [r.index for r in results] == list(range(len(inputs)))        # one result per input, in order
    assert [len(r.faces) for r in results] == [3, 0, 0, 0, 0, 3, 0]
    assert [r.error_type for r in results] == [None, "NotAnImageError", "ImageNotFoundError", "CorruptImageError",
                                               "IsAFolderError", None, "TypeError"]
    assert results[2].error == "file not found" and results[4].error == "is a folder"
    assert results[0].path.endswith("group.jpg") and results[5].path is None
    assert [r.ok for r in results] == [True, False, False, False, False, True, False]


def test_single_photo_errors_say_what_is_wrong_and_can_be_caught(predictor, files):
    cases = [(files / "missing.jpg", ImageNotFoundError, FileNotFoundError, "file not found"),
             (files / "folder", IsAFolderError, IsADirectoryError, "is a folder"),
             (files / "notes.jpg", NotAnImageError, ImageDecodeError, "not an image"),
             (files / "cut.jpg", CorruptImageError, ImageDecodeError, "corrupt or truncated")]
    for path, specific, general, words in cases:
        with pytest.raises(specific) as err:
            predictor.analyze(path)
        assert isinstance(err.value, general) and words in str(err.value)


def test_faces_are_numbered_in_reading_order(predictor, group):
    faces = predictor.analyze(group)
    assert [f.number for f in faces] == [1, 2, 3]
    assert [f.box[0] for f in faces] == sorted(f.box[0] for f in faces)
    assert faces[0].age < 20 < faces[1].age < 50 < faces[2].age    # the child, the 30-, the 70-year-old
    assert len(predictor.iter_analyze([group]).__next__().faces) == 3


@pytest.fixture(scope="module")
def sized_group():
    """The same three people at three sizes: the child small, the 30-year-old largest."""
    canvas = Image.new("RGB", (900, 360), (120, 125, 118))
    people = [chips("8_*", 1)[0], chips("30_1_*", 1)[0], chips("70_0_*", 1)[0]]
    for x, side, chip in zip((40, 300, 640), (120, 240, 180), people):
        canvas.paste(chip.resize((side, side), Image.LANCZOS), (x, 60))
    return canvas


def test_max_faces_keeps_the_largest_and_min_face_size_drops_the_small(sized_group, tmp_path):
    everyone = Predictor().analyze(sized_group)
    widths = [f.box[2] - f.box[0] for f in everyone]
    assert len(everyone) == 3 and widths[0] < widths[2] < widths[1]
    (largest,) = Predictor(max_num_faces=1).analyze(sized_group)
    assert largest.box == everyone[1].box and 20 < largest.age < 50
    two = Predictor(max_num_faces=2).analyze(sized_group)
    assert [f.box for f in two] == [everyone[1].box, everyone[2].box] and [f.number for f in two] == [1, 2]
    cut = (widths[0] + widths[2]) / 2                # between the child's face and the next smallest
    assert [f.box for f in Predictor(min_face_size=int(cut)).analyze(sized_group)] == [everyone[1].box, everyone[2].box]
    sized_group.save(tmp_path / "group.jpg", quality=95)
    out = faceage("predict", str(tmp_path / "group.jpg"), "--max-faces", "1", "--json", "--no-progress")
    assert out.returncode == 0, out.stderr
    (photo,) = json.loads(out.stdout)
    assert len(photo["faces"]) == 1 and 20 < photo["faces"][0]["age"] < 50


def test_iter_analyze_streams_a_generator_in_bounded_batches(predictor, files):
    pulled = []

    def paths():
        for i in range(12):
            pulled.append(i)
            yield files / ("group.jpg" if i % 3 else "notes.jpg")

    stream = predictor.iter_analyze(paths(), photos_per_batch=4)
    first = next(stream)
    assert len(pulled) == 4            # the first answer came before the 5th path was even read
    rest = list(stream)
    assert len(pulled) == 12 and [r.index for r in [first, *rest]] == list(range(12))
    assert [bool(r.error) for r in [first, *rest]] == [i % 3 == 0 for i in range(12)]


def test_bgr_arrays_from_opencv(predictor, group):
    rgb = np.asarray(group)
    as_rgb = [f.to_dict() for f in predictor.analyze(rgb)]
    assert [f.to_dict() for f in predictor.analyze(np.ascontiguousarray(rgb[:, :, ::-1]), channels="bgr")] == as_rgb
    # The same BGR pixels read as RGB are a different photo: the channel order matters.
    assert [f.to_dict() for f in predictor.analyze(np.ascontiguousarray(rgb[:, :, ::-1]))] != as_rgb
    with pytest.raises(ValueError, match="channels"):
        predictor.analyze(rgb, channels="gbr")


def test_aligned_crops_and_both_gender_probabilities(predictor, group):
    faces = predictor.analyze(group, return_crops=True)
    for f in faces:
        # f.landmarks are rounded to 0.1 px, so the re-made crop differs by sub-pixel resampling only
        expected = np.asarray(align_face(group, np.array(f.landmarks), predictor.pre.size))
        assert f.crop.shape == (predictor.pre.size, predictor.pre.size, 3) and np.abs(f.crop.astype(int) - expected).mean() < 1.0
        assert abs(sum(f.gender_probs.values()) - 1) < 1e-3 and f.gender_probs[f.gender] == f.gender_prob
        assert "crop" not in f.to_dict()
    assert all(f.crop is None for f in predictor.analyze(group))


def test_face_crops_need_no_detection():
    """UTKFace's chips are already aligned crops: with detection skipped every one gets an age."""
    paths = sorted(real_data_dir().glob("*.chip.jpg"))[::600][:30]
    skip = Predictor(detector="skip").analyze_many(paths)
    assert all(len(r.faces) == 1 and r.faces[0].score is None for r in skip)
    ages = np.array([float(p.name.split("_")[0]) for p in paths])
    assert np.mean(np.abs(ages - [r.faces[0].age for r in skip])) < 8


def test_video_frames_every_half_second(predictor, group, tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.mp4"
    bgr = np.ascontiguousarray(np.asarray(group)[:, :, ::-1])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (group.width, group.height))
    for i in range(25):                 # 2.5 s at 10 fps: the group for 1.2 s, then an empty wall
        writer.write(bgr if i < 12 else np.full_like(bgr, 120))
    writer.release()
    results = list(predictor.iter_video(path, every=0.5))
    assert [r.time for r in results] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert [len(r.faces) for r in results] == [3, 3, 3, 0, 0]
    assert results[3].note == "no face found" and results[0].to_dict()["time"] == 0.0


def test_heic_phone_photos_are_read(predictor, group, tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    group.save(tmp_path / "phone.heic", quality=90)
    assert len(predictor.analyze(tmp_path / "phone.heic")) == 3
