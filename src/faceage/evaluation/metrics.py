"""Evaluation metrics over decoded prediction records (NumPy; independent of the head used)."""
from __future__ import annotations

import numpy as np

from ..labels import AGE_BANDS, GENDERS, RACES, age_to_bin


def _age_block(true: np.ndarray, pred: np.ndarray) -> dict:
    err = np.abs(pred - true)
    return {"n": int(len(true)), "mae": float(err.mean()), "rmse": float(np.sqrt(((pred - true) ** 2).mean())),
            "cs5": float((err <= 5).mean())}


def age_metrics(true: np.ndarray, pred: np.ndarray, gender: np.ndarray | None = None, race: np.ndarray | None = None) -> dict:
    m = _age_block(true, pred)
    m["per_age_band"] = {name: _age_block(true[sel], pred[sel]) for name, lo, hi in AGE_BANDS
                         if (sel := (true >= lo) & (true <= hi)).any()}
    if race is not None and (race >= 0).any():
        m["per_race"] = {RACES[r]: _age_block(true[race == r], pred[race == r]) for r in range(len(RACES)) if (race == r).any()}
    if gender is not None and (gender >= 0).any():
        m["per_gender"] = {GENDERS[g]: _age_block(true[gender == g], pred[gender == g]) for g in (0, 1) if (gender == g).any()}
    return m


def confusion_matrix(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (true, pred), 1)
    return cm


def bin_metrics(true_age: np.ndarray, pred_bin: np.ndarray, edges) -> dict:
    true_bin = np.array([age_to_bin(a, edges) for a in true_age])
    cm = confusion_matrix(true_bin, pred_bin, len(edges))
    return {"bin_accuracy": float((true_bin == pred_bin).mean()),
            "bin_one_off_accuracy": float((np.abs(true_bin - pred_bin) <= 1).mean()),
            "bin_confusion": cm.tolist()}


def gender_metrics(true: np.ndarray, prob_female: np.ndarray) -> dict:
    pred = (prob_female >= 0.5).astype(int)
    tp = int(((pred == 1) & (true == 1)).sum())
    fp = int(((pred == 1) & (true == 0)).sum())
    fn = int(((pred == 0) & (true == 1)).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    conf = np.maximum(prob_female, 1 - prob_female)
    return {"gender_accuracy": float((pred == true).mean()), "gender_f1": float(f1), "gender_n": int(len(true)),
            "gender_mean_confidence": float(conf.mean()),
            "gender_calibration_error": gender_calibration_error(prob_female, true)}


def gender_calibration_error(prob_female: np.ndarray, gender: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error of the gender answer: confidence against accuracy in ``n_bins``
    equal-width confidence bins (0.5-1), weighted by the faces in each (Guo et al. 2017)."""
    conf = np.maximum(prob_female, 1 - prob_female)
    right = (prob_female >= 0.5) == (gender == 1)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    return float(sum(abs(conf[which == b].mean() - right[which == b].mean()) * (which == b).mean()
                     for b in range(n_bins) if (which == b).any()))


def class_metrics(true: np.ndarray, pred: np.ndarray, names: list[str], prefix: str) -> dict:
    k = max(len(names), int(max(true.max(), pred.max())) + 1)
    return {f"{prefix}accuracy": float((true == pred).mean()),
            f"{prefix}confusion": confusion_matrix(true, pred, k).tolist()}
