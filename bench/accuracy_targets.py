"""Issue 9's accuracy targets for one or more models, on the test split, in one run.

For each model: MAE, CS@5, gender accuracy (overall and per age band, with the mean confidence the answers
state and the calibration error), MAE 60+, mean signed error per age band, 90%
interval coverage, and mirror consistency (a face and its mirror image are the same person:
|age(x) - age(flip x)| median and 95th percentile, gender agreement). Each model is also scored
with flip test-time averaging (the mean of x and its mirror image) and, with ``--calibrate``,
with a monotone age calibration fitted on the validation split (the inverse of the mean
prediction per true-age band).

    .venv/bin/python bench/accuracy_targets.py MODEL [MODEL ...] [--split bench/utkface_split.csv]
        [--calibrate] [--ensemble] [--bootstrap N] [--json OUT]

``--ensemble`` also scores the mean of all the models' flip-averaged outputs (what distilling
them into one student could at best approach). ``--bootstrap N`` adds 95% intervals of the headline
numbers (flip-averaged) from N resamples of the test faces, and, with several models, of each
model's difference to the first on the same resamples (a paired comparison: is a gain more than
the luck of which faces are in the test split?).

MODEL: a run directory, .ckpt or .onnx. Images are the original UTKFace JPEGs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from faceage.data.readers import read_dataset
from faceage.data.split import load_split
from faceage.evaluation.metrics import gender_calibration_error
from faceage.inference.runners import load_runner
from faceage.preprocess import load_image
from faceage.training.fit import default_data_path

BANDS = [("0-2", 0, 3), ("3-12", 3, 13), ("13-19", 13, 20), ("20-39", 20, 40), ("40-59", 40, 60),
         ("60-79", 60, 80), ("80+", 80, 200)]
TARGETS = {"mae": ("<=", 4.40), "cs5": (">=", 0.68), "gender_acc": (">=", 0.95), "mae_60plus": ("<=", 7.0),
           "worst_signed_13plus": ("<=", 1.5), "coverage90_low": (">=", 0.88), "coverage90_high": ("<=", 0.92),
           "mirror_median": ("<=", 0.6), "mirror_p95": ("<=", 2.5), "mirror_gender_agree": (">=", 0.99)}


def split_samples(data, split_file: str, parts=("val", "test")) -> dict[str, list]:
    """The dataset's samples in each named part of a split file (bench/utkface_split.csv)."""
    manifest, _ = read_dataset(data)
    split = load_split(split_file)
    return {p: [s for s in manifest.samples if split.get(s.key) == p] for p in parts}


def predict(runner, images: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    parts = [runner.predict(images[i:i + batch]) for i in range(0, len(images), batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def predict_with_mirror(runner, samples) -> tuple[dict, dict]:
    """The runner's answers for the samples' images and for their mirror images."""
    imgs = np.stack([load_image(s.path, runner.preprocess) for s in samples])
    return predict(runner, imgs), predict(runner, imgs[:, :, ::-1].copy())


def calibration(pred: np.ndarray, true: np.ndarray, band: int = 5):
    """Undo the pull toward the middle: fit the mean prediction per true-age band on the
    validation split (made monotone), then map a prediction back through that curve's inverse.
    (Mapping to E[true | prediction] instead would make the per-band bias worse.)"""
    centers, means = [], []
    for lo in range(0, int(true.max()) + 1, band):
        sel = (true >= lo) & (true < lo + band)
        if sel.sum() >= 10:
            centers.append(true[sel].mean())
            means.append(pred[sel].mean())
    means = np.maximum.accumulate(np.array(means)) + np.arange(len(means)) * 1e-6   # strictly increasing
    return lambda p: np.interp(p, means, np.array(centers))


def score(true_age, true_gender, out, out_flip, age=None) -> dict:
    age = out["age"] if age is None else age
    err = age - true_age
    r = {"n": int(len(true_age)), "mae": float(np.abs(err).mean()), "cs5": float((np.abs(err) <= 5).mean()),
         "gender_acc": float(((out["gender_prob"] >= 0.5) == (true_gender == 1)).mean())}
    old = true_age >= 60
    r["mae_60plus"] = float(np.abs(err[old]).mean())
    r["signed_error"] = {n: float(err[(true_age >= lo) & (true_age < hi)].mean()) for n, lo, hi in BANDS}
    r["mae_by_band"] = {n: float(np.abs(err[(true_age >= lo) & (true_age < hi)]).mean()) for n, lo, hi in BANDS}
    right = (out["gender_prob"] >= 0.5) == (true_gender == 1)
    confidence = np.maximum(out["gender_prob"], 1 - out["gender_prob"])       # how sure each answer says it is
    r["gender_by_band"] = {n: {"acc": float(right[(true_age >= lo) & (true_age < hi)].mean()),
                               "errors": int((~right[(true_age >= lo) & (true_age < hi)]).sum()),
                               "confidence": float(confidence[(true_age >= lo) & (true_age < hi)].mean())}
                           for n, lo, hi in BANDS}
    r["gender_calibration_error"] = gender_calibration_error(out["gender_prob"], true_gender)
    r["worst_signed_13plus"] = max(abs(r["signed_error"][n]) for n, lo, _ in BANDS if lo >= 13)
    shift = age - out["age"]                                     # calibration moves the interval too
    inside = (true_age >= out["age_low"] + shift) & (true_age <= out["age_high"] + shift)
    r["coverage90_low"] = r["coverage90_high"] = r["coverage90"] = float(inside.mean())
    gap = np.abs(out["age"] - out_flip["age"])
    r["mirror_median"], r["mirror_p95"] = float(np.median(gap)), float(np.percentile(gap, 95))
    r["mirror_gender_agree"] = float(((out["gender_prob"] >= 0.5) == (out_flip["gender_prob"] >= 0.5)).mean())
    r["pass"] = {k: (r[k] <= v if op == "<=" else r[k] >= v) for k, (op, v) in TARGETS.items()}
    return r


def flip_average(out, out_flip) -> dict:
    return {k: (out[k] + out_flip[k]) / 2 for k in ("age", "age_low", "age_high", "gender_prob")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default=default_data_path())
    ap.add_argument("--split", default="bench/utkface_split.csv")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--ensemble", action="store_true", help="also score the mean of all models (flip-averaged)")
    ap.add_argument("--bootstrap", type=int, default=0, metavar="N", help="95%% intervals from N resamples")
    ap.add_argument("--json")
    a = ap.parse_args()
    parts = split_samples(a.data, a.split)
    report, members = {}, []
    for model in a.models:
        runner = load_runner(model)
        rows = {}
        for part in ("val", "test") if a.calibrate else ("test",):
            out, out_flip = predict_with_mirror(runner, parts[part])
            rows[part] = (np.array([s.age for s in parts[part]], float), np.array([s.gender for s in parts[part]]),
                          out, out_flip)
        ta, tg, out, out_flip = rows["test"]
        tta, tta_flip = flip_average(out, out_flip), flip_average(out_flip, out)
        members.append((tta, tta_flip))
        variants = {"plain": score(ta, tg, out, out_flip), "flip-TTA": score(ta, tg, tta, tta_flip)}
        if a.calibrate:
            va, _, vout, vflip = rows["val"]
            for name, o, of, vo in (("calibrated", out, out_flip, vout["age"]),
                                    ("flip-TTA+calibrated", tta, tta_flip, (vout["age"] + vflip["age"]) / 2)):
                cal = calibration(vo, va)
                variants[name] = score(ta, tg, o, of, age=cal(o["age"]))
        report[model] = variants
        print_variants(model, variants)
    if a.ensemble and len(members) > 1:
        mean = [{k: np.mean([m[i][k] for m in members], axis=0) for k in members[0][0]} for i in (0, 1)]
        name = "ensemble(" + ", ".join(a.models) + ")"
        report[name] = {"flip-TTA": score(ta, tg, mean[0], mean[1])}
        print_variants(name, report[name])
        members.append(mean)
    if a.bootstrap:
        names = list(report)
        intervals = bootstrap(ta, tg, members, a.bootstrap)
        for name, (ci, diff) in zip(names, intervals):
            report[name]["bootstrap"] = {"interval95": ci, "difference_to_first95": diff}
            print_bootstrap(name, ci, diff, names[0])
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=1) + "\n")


HEADLINE = ("mae", "cs5", "gender_acc", "mae_60plus", "worst_signed_13plus")


def bootstrap(true_age, true_gender, members, n: int, seed: int = 0) -> list[tuple[dict, dict]]:
    """95% percentile intervals of each member's headline numbers, and of its difference to the
    first member, over n resamples (with replacement) of the faces, the same resamples for all."""
    rng = np.random.default_rng(seed)
    draws = np.empty((len(members), n, len(HEADLINE)))
    for j in range(n):
        idx = rng.integers(0, len(true_age), len(true_age))
        for m, (out, out_flip) in enumerate(members):
            r = score(true_age[idx], true_gender[idx], {k: v[idx] for k, v in out.items()},
                      {k: v[idx] for k, v in out_flip.items()})
            draws[m, j] = [r[k] for k in HEADLINE]
    interval = lambda d: {k: [float(v) for v in np.percentile(d[:, i], [2.5, 97.5])] for i, k in enumerate(HEADLINE)}
    return [(interval(draws[m]), interval(draws[m] - draws[0]) if m else {}) for m in range(len(members))]


def print_bootstrap(model: str, ci: dict, diff: dict, first: str) -> None:
    fmt = {"cs5": "{:.1%}", "gender_acc": "{:.2%}"}
    show = lambda k, v: " to ".join(fmt.get(k, "{:.3f}").format(x) for x in v)
    print(f"{model} [flip-TTA] 95% intervals: " + "  ".join(f"{k} {show(k, v)}" for k, v in ci.items()))
    if diff:
        print(f"    minus {first}: " + "  ".join(f"{k} {show(k, v)}" for k, v in diff.items()))


def print_variants(model: str, variants: dict) -> None:
    for name, r in variants.items():
        fails = [k for k, ok in r["pass"].items() if not ok]
        print(f"{model} [{name}] n={r['n']}: MAE {r['mae']:.3f}  CS@5 {r['cs5']:.1%}  gender {r['gender_acc']:.2%}  "
              f"MAE60+ {r['mae_60plus']:.2f}  cover90 {r['coverage90']:.1%}  mirror median {r['mirror_median']:.2f} "
              f"p95 {r['mirror_p95']:.2f} gender-agree {r['mirror_gender_agree']:.1%}")
        print("    signed error by band: " + "  ".join(f"{k} {v:+.2f}" for k, v in r["signed_error"].items()))
        print("    MAE by band:          " + "  ".join(f"{k} {v:.2f}" for k, v in r["mae_by_band"].items()))
        print("    gender by band:       " + "  ".join(f"{k} {v['acc']:.1%} ({v['errors']} wrong, says {v['confidence']:.0%})"
                                                      for k, v in r["gender_by_band"].items()) +
              f"; calibration error {r['gender_calibration_error']:.1%}")
        print(f"    targets missed: {', '.join(fails) if fails else 'none'}")


if __name__ == "__main__":
    main()
