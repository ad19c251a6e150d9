"""Shared fixtures: an isolated decode cache, synthetic face folders, and the real UTKFace subset.

Real data comes from $FACEAGE_DATA (default ../shared/datasets/utkface/UTKFace). Outside CI a
missing dataset skips the integration tests with a reason; with CI=true it fails them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "datasets" / "utkface" / "UTKFace"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decode cache, so cache state never leaks between tests."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("FACEAGE_CACHE", str(cache))
    return cache


def face_image(seed: int, size: int = 48) -> Image.Image:
    """A deterministic RGB image with some structure (not a real face; unit tests only)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    arr[size // 4: 3 * size // 4, size // 4: 3 * size // 4] //= 2
    return Image.fromarray(arr)


def write_utk(folder: Path, age: int, gender: int, race: int, seed: int, stamp: str | None = None) -> Path:
    stamp = stamp or f"2017011{seed:010d}"[:17]
    p = folder / f"{age}_{gender}_{race}_{stamp}.jpg.chip.jpg"
    face_image(seed).save(p, "JPEG")
    return p


@pytest.fixture
def synthetic_utk(tmp_path) -> Path:
    """60 valid synthetic UTKFace-named images spread over ages and genders."""
    folder = tmp_path / "utk"
    folder.mkdir()
    for i in range(60):
        write_utk(folder, age=(i * 7) % 90 + 1, gender=i % 2, race=i % 5, seed=i)
    return folder


def real_data_dir() -> Path:
    path = Path(os.environ.get("FACEAGE_DATA", DEFAULT_DATA))
    if not path.is_dir() or not any(path.iterdir()):
        msg = f"UTKFace not found at {path} (set FACEAGE_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " - in CI the real dataset is required")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def real_subset(tmp_path_factory) -> Path:
    """~300 real UTKFace images (every 60th file, deterministic), copied into a temp folder."""
    src = real_data_dir()
    files = sorted(p for p in src.iterdir() if p.name.endswith(".chip.jpg"))[::60][:320]
    dest = tmp_path_factory.mktemp("utk_real")
    for p in files:
        shutil.copy(p, dest / p.name)
    return dest


@pytest.fixture(scope="session")
def astronaut_png(tmp_path_factory) -> Path:
    """scikit-image's public-domain 'astronaut' photo (one face), as a PNG file."""
    data = pytest.importorskip("skimage.data", reason="scikit-image (the 'demo' extra) provides the sample photo")
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.fixture(scope="session")
def shared_predictor():
    """The shipped default model with the real detector, loaded once for the serving tests."""
    from faceage.inference.predictor import Predictor
    return Predictor()


def faceage(*args, env=None, **kw) -> subprocess.CompletedProcess:
    """``python -m faceage ARGS`` in a subprocess, as a user runs it: text output captured."""
    return subprocess.run([sys.executable, "-m", "faceage", *map(str, args)], capture_output=True, text=True,
                          env=env or os.environ.copy(), **kw)

