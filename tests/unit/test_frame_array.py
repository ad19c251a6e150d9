"""preprocess.frame_array: an image decoded and altered in memory is prepared exactly as
load_image prepares the file (bench/degradation_check.py relies on it)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import face_image
from faceage.preprocess import PreprocessSpec, frame_array, load_image, open_image, to_rgb


@pytest.mark.parametrize("spec", [PreprocessSpec(size=150), PreprocessSpec(size=64, channels=1),
                                  PreprocessSpec(size=200)])
@pytest.mark.parametrize("name,mode,size", [("chip.jpg", "RGB", 200), ("wide.png", "RGB", (240, 200)),
                                            ("gray.jpg", "L", 200)])
def test_frame_array_matches_load_image(tmp_path, spec, name, mode, size):
    path = tmp_path / name
    img = face_image(3, 200).resize(size if isinstance(size, tuple) else (size, size))
    img.convert(mode).save(path)
    expected = load_image(path, spec)
    assert np.array_equal(frame_array(open_image(path), spec), expected)
    # The benchmark's route: decoded chip -> uint8 RGB array -> (altered) -> PIL -> model input.
    rgb = np.asarray(to_rgb(open_image(path)), dtype=np.uint8)
    out = frame_array(Image.fromarray(rgb), spec)
    assert out.dtype == np.uint8 and out.shape == (spec.size, spec.size, spec.channels)
    assert np.array_equal(out, expected)
