"""Splits are deterministic and stratified; the cache is reused and invalidated correctly;
augmentation keeps shapes and ranges."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from conftest import face_image, write_utk
from faceage.config import AugmentConfig
from faceage.data import cache as cache_mod
from faceage.data.augment import BatchAugment
from faceage.data.cache import ImageCache
from faceage.data.manifest import Sample, SkipReport
from faceage.data.readers import read_dataset
from faceage.data.split import apply_split, load_split, make_split, save_split, stratified_subset
from faceage.errors import DataError
from faceage.preprocess import PreprocessSpec


def _samples(n=400):
    return [Sample(f"/x/{i}", f"k{i:04d}", f"d{i}", age=float(i % 90), gender=i % 2) for i in range(n)]


def test_split_is_deterministic_and_stratified(tmp_path):
    s = _samples()
    a, b = make_split(s, (0.7, 0.15, 0.15), seed=7), make_split(list(reversed(s)), (0.7, 0.15, 0.15), seed=7)
    assert a == b                                  # independent of input order
    assert a != make_split(s, (0.7, 0.15, 0.15), seed=8)
    counts = Counter(a.values())
    assert abs(counts["train"] - 280) <= 10 and abs(counts["test"] - 60) <= 10
    # Every age decade is represented in the test split.
    test_decades = {int(x.age // 10) for x in s if a[x.key] == "test"}
    assert test_decades == set(range(9))
    save_split(a, tmp_path / "split.csv")
    assert load_split(tmp_path / "split.csv") == a
    parts, unassigned = apply_split(s + [Sample("/y", "new", "dn", age=3.0)], a)
    assert unassigned == 1 and sum(len(v) for v in parts.values()) == len(s)


def test_subset_is_stratified_and_not_all_train():
    s = _samples()
    sub = stratified_subset(s, 100, seed=42)
    assert len(sub) == 100 and sub == stratified_subset(s, 100, seed=42)
    parts = Counter(make_split(s, seed=42)[x.key] for x in sub)
    assert parts["val"] > 0 and parts["test"] > 0


def test_bad_split_file(tmp_path):
    (tmp_path / "s.csv").write_text("key,split\na,holdout\n")
    with pytest.raises(DataError, match="unknown split name"):
        load_split(tmp_path / "s.csv")
    with pytest.raises(DataError, match="not found"):
        load_split(tmp_path / "nope.csv")


def test_cache_reuse_and_invalidation(tmp_path, monkeypatch):
    folder = tmp_path / "d"
    folder.mkdir()
    paths = [write_utk(folder, 20 + i, 0, 0, seed=i) for i in range(5)]
    calls = []
    real = cache_mod.load_sample
    monkeypatch.setattr(cache_mod, "load_sample", lambda s, spec: calls.append(s.path) or real(s, spec))
    spec = PreprocessSpec(size=24, channels=3)
    manifest, _ = read_dataset(folder)
    ImageCache(spec, tmp_path / "c").build(manifest.samples, SkipReport())
    assert len(calls) == 5
    # A new cache object (a new run) decodes nothing.
    c2 = ImageCache(spec, tmp_path / "c")
    assert c2.build(manifest.samples, SkipReport()) and len(calls) == 5
    arr = c2.gather([manifest.samples[0].digest])
    assert arr.shape == (1, 24, 24, 3) and arr.dtype.name == "uint8"
    # Changed bytes -> only that file is decoded again.
    face_image(999).save(paths[0], "JPEG")
    manifest, _ = read_dataset(folder)
    ImageCache(spec, tmp_path / "c").build(manifest.samples, SkipReport())
    assert len(calls) == 6
    # Another spec (grayscale) -> a separate cache, everything decoded once.
    ImageCache(PreprocessSpec(size=24, channels=1), tmp_path / "c").build(manifest.samples, SkipReport())
    assert len(calls) == 11
    assert not list((tmp_path / "c").rglob("*.tmp"))


def test_cache_ignores_incomplete_chunk(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    write_utk(folder, 30, 1, 1, seed=1)
    manifest, _ = read_dataset(folder)
    spec = PreprocessSpec(size=16)
    c = ImageCache(spec, tmp_path / "c")
    c.build(manifest.samples, SkipReport())
    data = next((tmp_path / "c").rglob("*.u8"))
    data.write_bytes(data.read_bytes()[:10])       # simulate a torn write
    c2 = ImageCache(spec, tmp_path / "c")
    assert manifest.samples[0].digest not in c2
    assert c2.build(manifest.samples, SkipReport()) == manifest.samples


def test_augment_shapes_ranges_and_identity():
    x = torch.rand(8, 3, 32, 32)
    off = BatchAugment(AugmentConfig(flip=0, rotation=0, zoom=0, shift=0, brightness=0, contrast=0))
    assert not off.active and torch.equal(off(x), x)
    full = BatchAugment(AugmentConfig(flip=0.5, rotation=20, zoom=0.2, shift=0.1, brightness=0.3, contrast=0.3))
    y = full(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(y, x)
    flip = BatchAugment(AugmentConfig(flip=1.0))
    assert torch.allclose(flip(x), x.flip(-1), atol=1e-5)      # p=1: an exact mirror image
    g = torch.rand(4, 1, 16, 16)
    assert full(g).shape == g.shape                           # grayscale too


def test_blur_and_downscale_remove_fine_detail_only():
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    stripes = ((x + y) % 2).expand(4, 3, 64, 64).clone()            # the finest possible detail
    smooth = (x / 63).expand(4, 3, 64, 64).clone()                   # a ramp: no fine detail
    g = torch.Generator().manual_seed(0)
    for cfg in (AugmentConfig(flip=0, blur=1.0), AugmentConfig(flip=0, downscale=1.0)):
        aug = BatchAugment(cfg)
        assert aug.active
        out = aug(stripes.clone(), generator=g)
        assert out.std() < 0.6 * stripes.std()                      # stripes are mostly averaged away
        assert abs(out.mean() - stripes.mean()) < 0.02               # brightness kept
        ramp = aug(smooth.clone(), generator=g)
        assert (ramp - smooth)[..., 8:-8, 8:-8].abs().max() < 0.03   # smooth content unchanged
    none = BatchAugment(AugmentConfig(flip=0, blur=1e-9, downscale=1e-9))
    assert torch.equal(none(stripes.clone(), generator=g), stripes)  # probability ~0: untouched


def test_jpeg_recompression_matches_libjpeg_and_is_seeded():
    from io import BytesIO
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    smooth = torch.rand(2, 3, 8, 8)
    x = torch.nn.functional.interpolate(smooth, size=(48, 48), mode="bilinear", align_corners=False)
    aug = BatchAugment(AugmentConfig(flip=0, jpeg=1.0))
    assert aug.active
    out = aug(x.clone(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, aug(x.clone(), generator=torch.Generator().manual_seed(1)))   # seeded
    assert 0 < (out - x).abs().mean() < 0.05                         # blocks and ringing, not a new image
    # What Pillow's encoder gives at the drawn quality.
    quality = 20 + int(71 * torch.rand(2, generator=torch.Generator().manual_seed(1))[0])
    img = Image.fromarray((x[0] * 255).round().byte().permute(1, 2, 0).numpy())
    buf = BytesIO()
    img.save(buf, "JPEG", quality=quality)
    ref = torch.from_numpy(np.array(Image.open(buf))).permute(2, 0, 1).float() / 255
    assert (out[0] - ref).abs().mean() < 0.01
    gray = aug(x[:, :1].clone(), generator=g)
    assert gray.shape == (2, 1, 48, 48)
    assert torch.equal(BatchAugment(AugmentConfig(flip=0, jpeg=1e-9))(x.clone(), generator=g), x)

def test_age_balanced_sampling_is_seeded_and_favours_rare_ages():
    from faceage.data.datamodule import EpochShuffle, age_balance_weights
    ages = [25.0] * 900 + [85.0] * 100
    w = age_balance_weights(ages, power=1.0)
    assert torch.allclose(w[:900].sum(), w[900:].sum())              # power 1: each band equally
    s = EpochShuffle(len(ages), seed=3, weights=w)
    first = list(s)
    assert list(s) == first                                          # same epoch, same draws (resume)
    s.set_epoch(1)
    assert list(s) != first
    old = sum(1 for i in first if i >= 900) / len(first)
    assert 0.4 < old < 0.6                                           # 10% of the data, ~half the draws
    assert torch.equal(age_balance_weights(ages, power=0.0), torch.ones(1000))


def test_train_plus_val_rows_are_in_both_parts(tmp_path):
    from faceage.data.manifest import Sample
    from faceage.data.split import apply_split, load_split
    p = tmp_path / "split.csv"
    p.write_text("key,split\na,train+val\nb,train\nc,test\n")
    samples = [Sample(path=str(tmp_path / k), key=k, digest=k, age=30, gender=0, race=0) for k in "abc"]
    parts, unassigned = apply_split(samples, load_split(p))
    assert [s.key for s in parts["train"]] == ["a", "b"] and [s.key for s in parts["val"]] == ["a"]
    assert [s.key for s in parts["test"]] == ["c"] and unassigned == 0
