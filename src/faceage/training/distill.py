"""Distillation: teachers' answers as soft targets, so one fast student learns what several
slow models know together (Hinton et al. 2015).

``faceage teach`` runs each teacher (a checkpoint or run directory) once over every usable image
of a dataset, unaugmented and flip-averaged, and stores the mean of the teachers' age
distributions (101 years) and female probabilities, keyed by the image's content digest, so a
file works for any split of the same images. Training with ``distill.targets=FILE`` then mixes
them into the training losses: each image's age target becomes ``(1 - w) * label distribution +
w * teacher distribution`` and its gender target ``(1 - w) * label + w * teacher probability``,
with ``w = distill.weight``. Validation always scores against the true labels.

Teachers are run one at a time; each one's answers are saved (atomically) before the next
starts, so a killed ``teach`` resumes at the first teacher it has not finished.
"""
from __future__ import annotations

import hashlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_output
from ..errors import ConfigError, DataError
from .faults import kill_point

FORMAT = 1
DISTILLABLE_TASKS = ("age_dist", "gender")


def _teacher_id(path: Path) -> str:
    """Names a teacher's saved answers: the checkpoint's resolved path, size and mtime."""
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _load_teacher(model: str):
    from ..errors import CheckpointError
    from ..inference.checkpoint import load_checkpoint
    if Path(model).suffix.lower() == ".onnx":
        raise CheckpointError(f"{model}: a teacher must be a checkpoint or run directory; an exported .onnx model "
                              "holds only decoded answers, not the age distribution a student learns from")
    loaded = load_checkpoint(model)
    if "age_dist" not in loaded.spec.tasks:
        raise CheckpointError(f"{loaded.path}: a teacher needs the age_dist task (an age distribution); it has "
                              f"{', '.join(loaded.spec.tasks)}")
    return loaded


def teacher_answers(loaded, cache, digests: list[str], batch_size: int = 64, progress=None) -> dict[str, np.ndarray]:
    """One teacher's flip-averaged age distribution (N, 101) and female probability (N,) (NaN
    without a gender head), for cached images."""
    from ..inference.graph import cached_head_outputs
    plain, mirrored = cached_head_outputs(loaded.net, cache, digests, batch_size, progress)
    logits = (plain["age_dist"] + mirrored["age_dist"]) / 2            # as the graph's flip averaging
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    female = (1 / (1 + np.exp(-(plain["gender"] + mirrored["gender"])[:, 0] / 2)) if "gender" in plain
              else np.full(len(digests), np.nan, np.float32))
    return {"age_dist": (z / z.sum(axis=1, keepdims=True)).astype(np.float32), "gender_prob": female.astype(np.float32)}


def make_soft_targets(teachers: list[str], data: str, out: str | Path, cache_dir=None, batch_size: int = 64,
                      verbose: bool = True) -> dict:
    """Run every teacher over every usable image of ``data``; write their mean answers to ``out``
    (``.npz``). Returns a summary (images, teachers, the targets' MAE against the labels)."""
    from ..data.cache import ImageCache
    from ..data.readers import read_dataset
    if not teachers:
        raise ConfigError("give at least one teacher (a checkpoint or run directory)")
    out = Path(out)
    if out.suffix != ".npz":
        raise ConfigError(f"{out}: soft targets are written as a .npz file; give a name ending in .npz")
    loaded = [_load_teacher(t) for t in teachers]          # every teacher checked before any work
    manifest, report = read_dataset(data, cache_dir)
    parts_dir = out.with_name(out.name + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    digests = sorted({s.digest for s in manifest.samples})
    answers = []
    for n, teacher in enumerate(loaded, 1):
        part = parts_dir / f"{_teacher_id(teacher.path)}.npz"
        if part.is_file():
            with np.load(part) as saved:
                if list(saved["digests"]) == digests:
                    if verbose:
                        print(f"teacher {n}/{len(loaded)} {teacher.path}: answers already saved", file=sys.stderr)
                    answers.append({k: saved[k] for k in ("age_dist", "gender_prob", "decoded")})
                    continue
        cache = ImageCache(teacher.preprocess, cache_dir)
        samples = cache.build(manifest.samples, report)
        decoded = {s.digest for s in samples}
        ok = [d for d in digests if d in decoded]

        def progress(done, total, n=n):
            if verbose and (done == total or done % 2048 < batch_size):
                print(f"teacher {n}/{len(loaded)} {teacher.path}: {done}/{total} images", file=sys.stderr, flush=True)
        got = teacher_answers(teacher, cache, ok, batch_size, progress)
        full = {"age_dist": np.full((len(digests), got["age_dist"].shape[1]), np.nan, np.float32),
                "gender_prob": np.full(len(digests), np.nan, np.float32),
                "decoded": np.isin(digests, ok)}
        full["age_dist"][full["decoded"]] = got["age_dist"]
        full["gender_prob"][full["decoded"]] = got["gender_prob"]
        with atomic_output(part) as fh:
            np.savez(fh, digests=np.array(digests), **full)
        answers.append(full)
        kill_point("teacher_saved", n)                     # tests: a kill between two teachers
    keep = np.logical_and.reduce([a["decoded"] for a in answers])
    age_dist = np.mean([a["age_dist"][keep] for a in answers], axis=0)
    gender_prob = np.nanmean(np.stack([a["gender_prob"][keep] for a in answers]), axis=0) \
        if any(not np.isnan(a["gender_prob"]).all() for a in answers) else np.full(int(keep.sum()), np.nan, np.float32)
    kept = np.array(digests)[keep]
    with atomic_output(out) as fh:
        np.savez(fh, format=FORMAT, digests=kept, age_dist=age_dist.astype(np.float16),
                 gender_prob=gender_prob.astype(np.float32), teachers=np.array([str(t.path) for t in loaded]))
    shutil.rmtree(parts_dir, ignore_errors=True)
    return _summary(out, manifest.samples, kept, age_dist, gender_prob, [str(t.path) for t in loaded])


def _summary(out: Path, samples, kept, age_dist, gender_prob, teachers: list[str]) -> dict:
    index = {d: i for i, d in enumerate(kept)}
    taught = [s for s in samples if s.digest in index]
    rows = [index[s.digest] for s in taught]
    age = np.array([s.age if s.age is not None else np.nan for s in taught], np.float64)
    expected = age_dist[rows] @ np.arange(age_dist.shape[1])
    labelled = ~np.isnan(age)
    summary = {"out": str(out), "images": len(kept), "teachers": teachers}
    if labelled.any():
        summary["mae_vs_labels"] = float(np.abs(expected[labelled] - age[labelled]).mean())
    g = np.array([s.gender for s in taught])
    p = gender_prob[rows]
    known = (g >= 0) & ~np.isnan(p)
    if known.any():
        summary["gender_agreement"] = float(((p[known] >= 0.5) == (g[known] == 1)).mean())
    return summary


@dataclass
class SoftTargets:
    """A ``faceage teach`` file, read for training."""
    path: Path
    index: dict[str, int]
    age_dist: np.ndarray        # (N, 101) float32, rows sum to 1
    gender_prob: np.ndarray     # (N,) float32, NaN: no teacher gender

    @classmethod
    def load(cls, path: str | Path) -> "SoftTargets":
        path = Path(path)            # training checks that it exists first (check_distill)
        try:
            with np.load(path) as f:
                if int(f["format"]) != FORMAT:
                    raise ConfigError(f"{path}: soft-target format {int(f['format'])}, this faceage reads {FORMAT}")
                digests, dist, female = list(f["digests"]), f["age_dist"].astype(np.float32), f["gender_prob"]
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - truncated, foreign or not a .npz at all
            raise ConfigError(f"config key 'distill.targets': cannot read {path} as faceage soft targets "
                              f"({exc.__class__.__name__}); make it again with faceage teach") from None
        dist /= dist.sum(axis=1, keepdims=True)             # stored as float16: renormalize
        return cls(path, {str(d): i for i, d in enumerate(digests)}, dist, female.astype(np.float32))

    def for_samples(self, samples) -> dict[str, np.ndarray]:
        """The targets of these samples, in their order; every sample must have one."""
        missing = [s for s in samples if s.digest not in self.index]
        if missing:
            raise DataError(f"{len(missing)} of the {len(samples)} training images have no soft target in {self.path} "
                            f"(first: {missing[0].path}); make the targets with faceage teach on the same dataset")
        rows = [self.index[s.digest] for s in samples]
        return {"teacher_age_dist": self.age_dist[rows], "teacher_gender_prob": self.gender_prob[rows]}


def check_distill(cfg, spec) -> None:
    """Before anything is written: the soft-target file exists (its path made absolute, so a
    resume from another folder finds it) and the student has a task its teachers can teach."""
    if not cfg.distill.targets:
        return
    path = Path(cfg.distill.targets).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"config key 'distill.targets': {path} not found; make it with faceage teach TEACHER ... "
                          f"--data DATA --out {path.name}")
    cfg.distill.targets = str(path)
    if not any(t in spec.tasks for t in DISTILLABLE_TASKS):
        raise ConfigError(f"distill.targets teaches {' and '.join(DISTILLABLE_TASKS)}, but model {spec.name} has "
                          f"only {', '.join(spec.tasks)}")
