"""Distillation on real UTKFace faces: ``faceage teach`` (teachers' soft targets), its resume
after a kill between teachers, and a student trained on them with ``distill.targets``."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from conftest import faceage
from faceage.config import load_config, load_run_config
from faceage.errors import ConfigError, DataError
from faceage.training.distill import SoftTargets, make_soft_targets, teacher_answers
from faceage.training.fit import train

TINY = ["model.name=mobilenetv3_small", "model.input_size=32", "train.epochs=1", "train.progress_bar=false",
        "data.batch_size=32"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, real_subset):
    """Two tiny teachers (different seeds) trained one epoch on the real subset."""
    root = tmp_path_factory.mktemp("teachers")
    runs = []
    for seed in (1, 2):
        cfg = load_config(None, TINY + [f"train.seed={seed}", f"data.cache_dir={root / 'cache'}"])
        train(cfg, root / f"t{seed}", data=str(real_subset), quiet=True)
        runs.append(root / f"t{seed}")
    return runs


def test_soft_targets_are_the_mean_of_the_teachers_flip_averaged_answers(tmp_path, teachers, real_subset):
    out = tmp_path / "targets.npz"
    summary = make_soft_targets([str(t) for t in teachers], str(real_subset), out, verbose=False)
    n_files = len(list(real_subset.iterdir()))
    assert summary["images"] == n_files and len(summary["teachers"]) == 2
    assert 0 < summary["mae_vs_labels"] < 60 and 0 <= summary["gender_agreement"] <= 1
    assert not out.with_name(out.name + ".parts").exists()           # working files removed at the end
    soft = SoftTargets.load(out)
    assert soft.age_dist.shape == (n_files, 101) and np.allclose(soft.age_dist.sum(1), 1, atol=1e-6)

    # Recompute one teacher's answers by hand: flip-averaged logits, then softmax.
    from faceage.data.cache import ImageCache
    from faceage.data.readers import read_dataset
    from faceage.inference.checkpoint import load_checkpoint
    manifest, _ = read_dataset(str(real_subset))
    digests = sorted(s.digest for s in manifest.samples)[:8]
    per_teacher = []
    for t in teachers:
        loaded = load_checkpoint(t)
        cache = ImageCache(loaded.preprocess)
        images = torch.from_numpy(cache.gather(digests))
        x = (images.permute(0, 3, 1, 2).float() / 255 - torch.tensor(loaded.preprocess.mean).view(1, -1, 1, 1)) \
            / torch.tensor(loaded.preprocess.std).view(1, -1, 1, 1)
        with torch.no_grad():
            a, b = loaded.net(x), loaded.net(x.flip(3))
        per_teacher.append(((a["age_dist"] + b["age_dist"]) / 2).softmax(1).numpy())
        # and a face and its mirror image get the same answer
        mirrored = teacher_answers(loaded, _Mirrored(cache), digests[:2])
        assert np.allclose(mirrored["age_dist"][0], mirrored["age_dist"][1], atol=1e-6)
    rows = [soft.index[d] for d in digests]
    assert np.allclose(soft.age_dist[rows], np.mean(per_teacher, axis=0), atol=2e-3)   # stored as float16


class _Mirrored:
    """A cache stand-in that serves the first image and its mirror image."""

    def __init__(self, cache):
        self.cache = cache

    def gather(self, digests):
        img = self.cache.gather(digests[:1])[0]
        return np.stack([img, img[:, ::-1]])


@pytest.mark.parametrize("kill_at", ["teacher_saved:1", "teacher_saved:2"])
def test_teach_killed_between_teachers_resumes_to_the_same_file(tmp_path, teachers, real_subset, kill_at):
    """Killed after the first teacher's answers are saved, and after the last one's (before the
    targets file is written): the resumed run reuses what was saved and writes the same file."""
    env = {**os.environ, "FACEAGE_TEST_KILL_AT": kill_at}
    ref, out = tmp_path / "ref.npz", tmp_path / "killed.npz"
    make_soft_targets([str(t) for t in teachers], str(real_subset), ref, verbose=False)
    args = ["teach", *teachers, "--data", real_subset]
    killed = faceage(*args, "--out", out, env=env)
    assert killed.returncode == -signal.SIGKILL and not out.exists()
    saved = int(kill_at[-1])
    assert len(list((tmp_path / "killed.npz.parts").glob("*.npz"))) == saved
    again = faceage(*args, "--out", out)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("answers already saved") == saved
    assert "soft targets for" in again.stdout and "MAE" in again.stdout
    with np.load(ref) as a, np.load(out) as b:
        assert list(a["digests"]) == list(b["digests"])
        assert np.array_equal(a["age_dist"], b["age_dist"]) and np.array_equal(a["gender_prob"], b["gender_prob"])


def test_student_learns_from_the_targets_and_is_validated_on_labels(tmp_path, teachers, real_subset):
    targets = tmp_path / "targets.npz"
    make_soft_targets([str(t) for t in teachers], str(real_subset), targets, verbose=False)
    runs = {}
    for w in (0.0, 1.0):
        cfg = load_config(None, TINY + ["train.seed=3", f"distill.targets={targets}", f"distill.weight={w}"])
        runs[w] = train(cfg, tmp_path / f"student{w}", data=str(real_subset), quiet=True)
    import json
    hist = {w: json.loads((tmp_path / f"student{w}" / "history.json").read_text())[0] for w in runs}
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["val_mae"]) for h in hist.values())
    assert hist[0.0]["loss"] != hist[1.0]["loss"]                    # the teachers' targets changed training
    saved = load_run_config(tmp_path / "student1.0")
    assert saved.distill.targets == str(targets.resolve()) and saved.distill.weight == 1.0
    from faceage.evaluation.compare import run_row
    assert "teachers' soft targets targets.npz (weight 1)" in run_row(tmp_path / "student1.0")["augmentation"]


def test_bad_targets_are_refused_before_training(tmp_path, teachers, real_subset, synthetic_utk):
    with pytest.raises(ConfigError, match="not found; make it with faceage teach"):
        train(load_config(None, TINY + [f"distill.targets={tmp_path / 'none.npz'}"]), tmp_path / "r1",
              data=str(real_subset), quiet=True)
    assert not (tmp_path / "r1").exists()
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="cannot read .* as faceage soft targets"):
        train(load_config(None, TINY + [f"distill.targets={junk}"]), tmp_path / "r2", data=str(real_subset), quiet=True)
    # Targets made for other images: the student's training images have none.
    other = tmp_path / "other.npz"
    make_soft_targets([str(teachers[0])], str(synthetic_utk), other, verbose=False)
    with pytest.raises(DataError, match="training images have no soft target"):
        train(load_config(None, TINY + [f"distill.targets={other}"]), tmp_path / "r3", data=str(real_subset), quiet=True)
    with pytest.raises(ConfigError, match="must be the teachers' share"):
        load_config(None, ["distill.weight=1.5"])


def test_teach_refuses_bad_teachers_in_one_line(tmp_path, teachers, real_subset, capsys):
    from faceage.errors import CheckpointError
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    for teacher, error, message in [(onnx, CheckpointError, "holds only decoded answers"),
                                    (tmp_path / "nope", CheckpointError, "model not found")]:
        with pytest.raises(error, match=message):
            make_soft_targets([str(teacher)], str(real_subset), tmp_path / "t.npz", verbose=False)
    with pytest.raises(ConfigError, match="give a name ending in .npz"):
        make_soft_targets([str(teachers[0])], str(real_subset), tmp_path / "t.txt", verbose=False)
    from faceage.cli import main
    assert main(["teach", str(teachers[0]), "--out", str(tmp_path / "t.npz"), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
    r = faceage("teach", onnx, "--data", real_subset, "--out", tmp_path / "t.npz")
    assert r.returncode != 0 and r.stderr.startswith("faceage: error:") and "Traceback" not in r.stderr, r.stderr
