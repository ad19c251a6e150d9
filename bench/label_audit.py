"""Which gender labels are probably wrong? Out-of-fold probes on frozen face features.

BENCHMARKS §11m found at least 17 plainly wrong gender labels among the test faces that every model
misreads, and the training faces are labelled the same way. Label smoothing (§11r) only softens a
wrong label; this script finds them, so a run can leave them out ("confident learning", Northcutt,
Jiang & Chuang 2021: flag a label that a model which never saw it gives a low probability).

The frozen FaceRes features of a face and its mirror image (160 px) carry adults' gender almost as
well as a fine-tuned model (§11l: a linear probe reads 97.6% from age 13 up), and a probe never sees
the face it scores:
* training-split faces are scored out of fold (k logistic regressions, each fitted on the other folds);
* validation and test faces by one probe fitted on every training face (they are only reported).

A face from --min-age up whose own label gets a probability under --threshold is a suspect. Children
are not audited: the probe reads their gender at about 70%, so a low probability says little there.

    PYTHONPATH=src .venv/bin/python bench/label_audit.py runs/hm/faceres-deep.json --out DIR

Writes DIR/suspects.csv (key, split, age, label, probability of the label), DIR/split-clean.csv (the
split file without the suspect *training* faces; validation and test are left as they are, so runs
on it are scored against the same labels as every other run), DIR/suspects_train.jpg (a contact
sheet of the most confident training suspects) and prints how the suspects compare with §11m's
by-eye review of the test faces (bench/results/issue9/gender-errors/reviewed_13plus.csv).
"""
from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

import numpy as np

from face_backbone_probe import faces, features, gender_probe
from faceage.data.readers import UTK_NAME
from faceage.data.split import load_split, save_split
from faceage.models.faceres import load_faceres
from faceage.training.fit import default_data_path
from gender_errors import contact_sheet

REVIEW = Path("bench/results/issue9/gender-errors/reviewed_13plus.csv")


def face_features(net, data: Path, keys: list[str], size: int, chunk: int = 500) -> np.ndarray:
    """Frozen features of each face and its mirror image, decoded a chunk at a time (bounded memory)."""
    parts = [features(net, faces(data, keys[i:i + chunk], size)[0], mirror=True) for i in range(0, len(keys), chunk)]
    return np.concatenate(parts)


def out_of_fold(x: np.ndarray, y: np.ndarray, folds: int, c: float, seed: int = 0) -> np.ndarray:
    """P(female) for every row, each from a probe fitted on the other folds."""
    fold = np.random.default_rng(seed).permutation(len(x)) % folds
    p = np.empty(len(x))
    for k in range(folds):
        held = fold == k
        p[held] = gender_probe(x[~held], y[~held], x[held], c)
    return p


def review_overlap(suspect_keys: set[str]) -> str:
    """How §11m's by-eye verdicts on the 24 most confident shared test mistakes meet the suspects."""
    if not REVIEW.is_file():
        return f"({REVIEW} not found: no comparison with the by-eye review)"
    rows = [r for r in csv.DictReader(line for line in REVIEW.open() if not line.startswith("#"))]
    verdicts = Counter(r["by_eye"] for r in rows)
    flagged = Counter(r["by_eye"] for r in rows if any(k.endswith(r["file"]) for k in suspect_keys))
    return "by-eye review of the test faces: " + ", ".join(
        f"{verdict}: {flagged[verdict]} of {n} flagged" for verdict, n in verdicts.most_common())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("graph", type=Path, help="a TF.js FaceRes model.json (faceres-deep.json)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path(default_data_path()))
    ap.add_argument("--split", default="bench/utkface_split.csv")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--c", type=float, default=0.01, help="the probe's inverse L2 strength (as face_backbone_probe)")
    ap.add_argument("--min-age", type=int, default=13, help="youngest age audited")
    ap.add_argument("--threshold", type=float, default=0.05, help="a label with a lower probability is suspect")
    ap.add_argument("--sheet", type=int, default=64, help="training suspects on the contact sheet")
    a = ap.parse_args()

    split = load_split(a.split)
    keys = {part: sorted(k for k, s in split.items() if s == part and UTK_NAME.match(k)) for part in ("train", "val", "test")}
    labels = {part: np.array([[int(v) for v in UTK_NAME.match(k).group(1, 2)] for k in ks]) for part, ks in keys.items()}
    net = load_faceres(a.graph).eval()
    x = {part: face_features(net, a.data, ks, a.size) for part, ks in keys.items()}
    mu, sd = x["train"].mean(0), x["train"].std(0) + 1e-6
    x = {part: (f - mu) / sd for part, f in x.items()}

    female = {"train": out_of_fold(x["train"], labels["train"][:, 1], a.folds, a.c)}
    for part in ("val", "test"):
        female[part] = gender_probe(x["train"], labels["train"][:, 1], x[part], a.c)

    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{a.graph.name}, {a.size} px, frozen; out-of-fold ({a.folds} folds) on train, fitted on train for val/test; "
          f"suspect: age >= {a.min_age} and P(own label) < {a.threshold}")
    for part in ("train", "val", "test"):
        age, gender = labels[part][:, 0], labels[part][:, 1]
        p_label = np.where(gender == 1, female[part], 1 - female[part])
        adult = age >= a.min_age
        suspect = adult & (p_label < a.threshold)
        print(f"  {part:5}: {len(age):5d} faces; probe gender {(p_label > 0.5).mean():.2%} (from {a.min_age}: "
              f"{(p_label[adult] > 0.5).mean():.2%}); suspects {suspect.sum()} "
              f"({suspect.sum() / adult.sum():.2%} of faces from {a.min_age})")
        rows += [{"key": keys[part][i], "split": part, "age": int(age[i]), "gender": int(gender[i]),
                  "p_label": round(float(p_label[i]), 4)} for i in np.flatnonzero(suspect)]
    rows.sort(key=lambda r: (r["split"], r["p_label"]))
    with (a.out / "suspects.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["key", "split", "age", "gender", "p_label"])
        writer.writeheader()
        writer.writerows(rows)
    print(review_overlap({r["key"] for r in rows if r["split"] == "test"}))

    dropped = {r["key"] for r in rows if r["split"] == "train"}
    save_split({k: s for k, s in split.items() if k not in dropped}, a.out / "split-clean.csv")
    train_rows = [r for r in rows if r["split"] == "train"][:a.sheet]
    contact_sheet([{**r, "path": str(a.data / r["key"]), "mean_female": r["p_label"] if r["gender"] else 1 - r["p_label"]}
                   for r in train_rows], a.out / "suspects_train.jpg")
    print(f"wrote {a.out / 'suspects.csv'} ({len(rows)} faces), {a.out / 'split-clean.csv'} "
          f"(train {sum(s == 'train' for s in split.values()) - len(dropped)}, {len(dropped)} training faces left out) "
          f"and a sheet of {len(train_rows)}")


if __name__ == "__main__":
    main()
