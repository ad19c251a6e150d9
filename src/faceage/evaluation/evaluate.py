"""``faceage evaluate``: score a checkpoint on a split of its dataset or on any folder."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json
from ..data.cache import ImageCache
from ..data.manifest import Sample, SkipReport
from ..data.readers import read_dataset
from ..data.split import apply_split, decode_split, load_split, split_path, trained_on
from ..errors import DataError
from ..inference.runners import load_runner
from ..labels import RACES, bin_labels
from . import metrics as M
from . import plots


def predict_samples(runner, cache: ImageCache, samples: list[Sample], batch_size: int = 64) -> dict[str, np.ndarray]:
    """Run a model runner (torch or ONNX) over cached crops; returns the concatenated record."""
    parts: dict[str, list] = {}
    for i in range(0, len(samples), batch_size):
        record = runner.predict(cache.gather([s.digest for s in samples[i:i + batch_size]]))
        for k, v in record.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def select_samples(loaded, data: str, split: str | None, cache_dir=None,
                   split_file: str | None = None, y_is: str | None = None) -> tuple[list[Sample], SkipReport, str]:
    """Which images to score.

    With ``split`` train/val/test and a ``split.csv`` beside the checkpoint that names images
    of ``data`` (or the given ``split_file``), that part of the split. A folder the split does not know (not the training
    set) is scored whole, as is ``split`` = "all".
    """
    manifest, report = read_dataset(data, cache_dir, y_is=y_is)
    assignment, source = split_and_source(loaded, split_file)
    if split in (None, "all") or assignment is None:
        return manifest.samples, report, "all usable images"
    named = [s for s in manifest.samples if s.key in assignment]
    if not named:
        return manifest.samples, report, "all usable images (not the training dataset)"
    parts, _ = apply_split(named, assignment)
    if not parts[split]:
        raise DataError(f"the {split} split of {source} is empty: the model was trained on every image of {data} it "
                        f"names. Score another dataset, give --split-file, or use --split all (optimistic)")
    return parts[split], report, f"{split} split of {source}"


def model_split(loaded, split_file: str | None = None) -> dict[str, str] | None:
    """The model's train/val/test assignment: ``split_file``, else the ``split.csv`` beside the
    checkpoint, else the copy an exported model carries in its sidecar; None if none."""
    return split_and_source(loaded, split_file)[0]


def split_and_source(loaded, split_file: str | None = None) -> tuple[dict[str, str] | None, str]:
    """:func:`model_split` and where it came from, as reports name it."""
    if split_file is not None:                 # a split.csv, or a run directory holding one
        return load_split(split_file), str(split_path(split_file))
    beside = loaded.path.parent / "split.csv"
    if beside.is_file():
        return load_split(beside), str(beside)
    record = (getattr(loaded, "meta", None) or {}).get("split")
    return (decode_split(record) if record else None), f"{loaded.path.name}'s sidecar"


def evaluate(model: str, data: str, split: str | None = "test", json_path: str | None = None,
             plots_dir: str | None = None, cache_dir=None, quiet: bool = False, split_file: str | None = None,
             y_is: str | None = None) -> dict:
    loaded = load_runner(model)
    spec = loaded.spec
    samples, report, scope = select_samples(loaded, data, split, cache_dir, split_file, y_is)
    cache = ImageCache(loaded.preprocess, cache_dir)
    samples = cache.build(samples, report)
    if not samples:
        raise DataError(f"no usable image to evaluate in {data} ({scope})")
    assignment = model_split(loaded)          # the model's own split, whichever split file chose the images
    seen = trained_on(assignment, samples) if assignment else 0
    if seen and not quiet:
        print(f"warning: {seen} of the {len(samples)} images scored were used to train or select this model: "
              f"its scores on them are optimistic", file=sys.stderr)
    if not quiet:
        print(f"evaluating {loaded.path} ({type(loaded).__name__[:-6].lower()}) on {len(samples)} images ({scope})", file=sys.stderr)
    rec = predict_samples(loaded, cache, samples)
    age = np.array([s.age if s.age is not None else np.nan for s in samples], dtype=np.float64)
    gender = np.array([s.gender for s in samples])
    race = np.array([s.race for s in samples])
    out: dict = {"model": str(loaded.path), "model_name": spec.name, "data": str(data), "scope": scope,
                 "n": len(samples), "skipped": len(report), "trained_on": seen if assignment else None}
    plot_dir = Path(plots_dir) if plots_dir else (Path(json_path).parent / "eval_plots" if json_path else None)
    labelled = ~np.isnan(age)
    if "age" in rec and labelled.any():
        t, p = age[labelled], rec["age"][labelled].astype(np.float64)
        out.update(M.age_metrics(t, p, gender[labelled], race[labelled]))
        out.update(M.bin_metrics(t, rec["age_bin"][labelled].astype(int), spec.age_bins))
        out["age_bin_names"] = bin_labels(spec.age_bins)
        if "age_low" in rec:
            lo, hi = rec["age_low"][labelled], rec["age_high"][labelled]
            out["interval90_coverage"] = float(((t >= lo) & (t <= hi)).mean())
            out["interval90_mean_width"] = float((hi - lo).mean())
        if plot_dir:
            plots.predicted_vs_true(t, p, plot_dir / "predicted_vs_true.png")
            plots.error_by_age(t, p, plot_dir / "error_by_age.png")
            plots.confusion(np.array(out["bin_confusion"]), out["age_bin_names"], plot_dir / "age_bin_confusion.png",
                            "Age bins: confusion matrix")
    if "gender_prob" in rec and (gender >= 0).any():
        g = gender >= 0
        out.update(M.gender_metrics(gender[g], rec["gender_prob"][g]))
    if "race" in rec and (race >= 0).any():
        r = race >= 0
        out.update(M.class_metrics(race[r], rec["race"][r].astype(int), list(RACES), "race_"))
    if "label" in rec:
        lab = np.array([s.label for s in samples])
        names = loaded.meta.get("labels", {}).get("class_names", [])
        ok = lab >= 0
        if ok.any():
            out.update(M.class_metrics(lab[ok], rec["label"][ok].astype(int), names, ""))
    if json_path:
        atomic_write_json(json_path, out)
    return out


def format_report(m: dict) -> str:
    lines = [f"{m['model_name']} on {m['n']} images ({m['scope']})"]
    if m.get("trained_on"):
        lines.append(f"  WARNING: {m['trained_on']} of these images were used to train or select this model")
    if "mae" in m:
        lines.append(f"  age: MAE {m['mae']:.2f}  RMSE {m['rmse']:.2f}  CS@5 {m['cs5']:.1%}")
        if "interval90_coverage" in m:
            lines.append(f"  90% interval: coverage {m['interval90_coverage']:.1%}, mean width {m['interval90_mean_width']:.1f} years")
        lines.append("  MAE per age band: " + ", ".join(f"{k} {v['mae']:.2f} (n={v['n']})" for k, v in m["per_age_band"].items()))
        if "per_race" in m:
            lines.append("  MAE per race: " + ", ".join(f"{k} {v['mae']:.2f}" for k, v in m["per_race"].items()))
        if "per_gender" in m:
            lines.append("  MAE per gender: " + ", ".join(f"{k} {v['mae']:.2f}" for k, v in m["per_gender"].items()))
        lines.append(f"  age bins: accuracy {m['bin_accuracy']:.1%}, one-off {m['bin_one_off_accuracy']:.1%}")
    if "gender_accuracy" in m:
        lines.append(f"  gender: accuracy {m['gender_accuracy']:.1%}  F1 {m['gender_f1']:.3f}" +
                     (f"  mean confidence {m['gender_mean_confidence']:.1%}  calibration error "
                      f"{m['gender_calibration_error']:.1%}" if "gender_calibration_error" in m else ""))
    if "race_accuracy" in m:
        lines.append(f"  race: accuracy {m['race_accuracy']:.1%}")
    if "accuracy" in m:
        lines.append(f"  class: accuracy {m['accuracy']:.1%}")
    return "\n".join(lines)
