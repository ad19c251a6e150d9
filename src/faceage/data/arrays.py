"""NumPy ``.npz`` datasets, as tutorials hold them (``x_train`` of shape (50000, 120, 120)).

Two layouts:

- ``images`` (N, H, W) or (N, H, W, C) plus label arrays named like a manifest's columns:
  ``age``, ``gender`` (0/1 or M/F/male/female), ``race``, ``label`` (class index), any subset;
- ``x`` with ``y`` (also ``x_train``/``y_train``, ``x_val``/``y_val``, ``x_test``/``y_test``, all
  read): ``y`` holds ages, class indices or one-hot rows. One-hot rows and fractional ages
  speak for themselves; whole numbers could be either, so ``y_is`` (``data.y_is``,
  ``data inspect --y-is``) must say which: ``age``, ``label`` or ``onehot``.

Optional ``class_names`` names the classes. Pixels: uint8, or what ``faceage predict`` accepts
for arrays (floats in 0-1 or 0-255, ...; :func:`faceage.inference.inputs.array_to_image`).
Rows become samples keyed ``images[17]``, ``x_train[3]``: stable keys for split files.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .manifest import Manifest, SkipReport
from .rows import rows_manifest

Y_IS = ("age", "label", "onehot")
LABEL_ARRAYS = ("age", "gender", "race", "label")
X_ARRAYS = ("x", "x_train", "x_val", "x_valid", "x_test")


def read_npz(path: Path, report: SkipReport, y_is: str | None = None) -> Manifest:
    if y_is is not None and y_is not in Y_IS:
        raise ConfigError(f"data.y_is must be one of {', '.join(Y_IS)}; got {y_is!r}")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a NumPy .npz archive ({exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds one array, not named arrays: save with np.savez({path.name!r}, images=..., "
                        "age=...) or np.savez(..., x=..., y=...)")
    with npz:
        try:
            arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: cannot read its arrays ({exc})") from None
    names = arrays.pop("class_names", None)
    if "images" in arrays:
        labels = {k: _column(arrays[k], k, path) for k in LABEL_ARRAYS if k in arrays}
        if not labels:
            raise DataError(f"{path}: 'images' has no label array beside it: add any of {', '.join(LABEL_ARRAYS)} "
                            f"(found {', '.join(sorted(arrays))})")
        groups = [("images", labels)]
    else:
        groups = [(x, _y_labels(arrays, x, "y" + x[1:], y_is, path)) for x in X_ARRAYS if x in arrays]
        if not groups:
            raise DataError(f"{path}: no image array: expected 'images' with label arrays ({', '.join(LABEL_ARRAYS)}) "
                            f"or 'x' with 'y'; found {', '.join(sorted(arrays)) or 'nothing'}")
    for x, labels in groups:
        _check_images(arrays[x], x, path)
        for k, v in labels.items():
            if len(v) != len(arrays[x]):
                raise DataError(f"{path}: '{x}' has {len(arrays[x])} images but its {k} labels number {len(v)}")
    where = path.resolve()
    rows = ((f"{x}[{i}]", f"{where}:{x}[{i}]", arrays[x][i], {k: v[i].item() for k, v in labels.items()})
            for x, labels in groups for i in range(len(arrays[x])))
    manifest = rows_manifest(where, "npz", rows, report)
    if any("label" in labels for _, labels in groups):
        onehot = [arrays["y" + x[1:]].shape[-1] for x, _ in groups if x != "images" and arrays["y" + x[1:]].ndim == 2]
        manifest.class_names = _class_names(names, max([0, *onehot]), manifest, path)
    return manifest


def _column(v: np.ndarray, name: str, path: Path) -> np.ndarray:
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 1:
        raise DataError(f"{path}: '{name}' has shape {v.shape}; a label array has one value per image, shape (N,)")
    return v


def _check_images(a: np.ndarray, name: str, path: Path) -> None:
    ok_shape = a.ndim == 3 or (a.ndim == 4 and (a.shape[3] in (1, 3, 4) or a.shape[1] in (1, 3, 4)))
    if not ok_shape:
        raise DataError(f"{path}: '{name}' has shape {a.shape}; expected images (N, H, W) gray or (N, H, W, C) "
                        "with C = 1, 3 or 4 channels")
    if a.dtype.kind not in "uif" or a.dtype == bool:
        raise DataError(f"{path}: '{name}' has dtype {a.dtype}; expected pixels: uint8, or floats in 0-1 or 0-255")
    if not len(a) or not a[0].size:
        raise DataError(f"{path}: '{name}' holds no image (shape {a.shape})")


def _y_labels(arrays: dict, x: str, y: str, y_is: str | None, path: Path) -> dict[str, np.ndarray]:
    """``y`` as label columns: {"age": ...} or {"label": ...}."""
    if y not in arrays:
        raise DataError(f"{path}: '{x}' has no '{y}' beside it (its labels)")
    v = arrays[y]
    if v.dtype.kind not in "uif":
        raise DataError(f"{path}: '{y}' has dtype {v.dtype}; expected numbers (ages, class indices or one-hot rows)")
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim not in (1, 2):
        raise DataError(f"{path}: '{y}' has shape {v.shape}; expected (N,) ages or class indices, or (N, K) one-hot rows")
    whole = bool(np.all(np.isfinite(v)) and np.all(v == np.round(v)))
    kind = y_is or ("onehot" if v.ndim == 2 else "age" if not whole else None)
    if kind is None:
        lo, hi = (v.min().item(), v.max().item()) if v.size else (0, 0)
        raise DataError(f"{path}: '{y}' holds whole numbers {lo:g}-{hi:g}: ages or class indices? Say which with "
                        "data.y_is=age or data.y_is=label (train), --y-is age|label (evaluate, data inspect)")
    if kind == "onehot":
        if v.ndim != 2:
            raise DataError(f"{path}: data.y_is=onehot but '{y}' has shape {v.shape}; one-hot rows are (N, K)")
        bad = np.flatnonzero(~(np.isin(v, (0, 1)).all(axis=1) & (v.sum(axis=1) == 1)))
        if len(bad):
            raise DataError(f"{path}: '{y}' row {bad[0]} is {np.round(v[bad[0]], 3).tolist()}: not one-hot (a single 1, "
                            "the rest 0); for class indices use data.y_is=label")
        return {"label": v.argmax(axis=1)}
    if v.ndim != 1 and kind == "age":     # also calibrate's case, which needs ages and has no data.y_is to set
        raise DataError(f"{path}: '{y}' has shape {v.shape}, but ages are one number a face, shape (N,); one-hot "
                        "rows (N, K) are class labels (data.y_is=onehot when training) and hold no ages")
    if v.ndim != 1:
        raise DataError(f"{path}: data.y_is={kind} but '{y}' has shape {v.shape} (one-hot rows? use data.y_is=onehot)")
    if kind == "label" and not (whole and (v >= 0).all()):
        raise DataError(f"{path}: data.y_is=label but '{y}' holds values that are not class indices 0, 1, 2, ...")
    return {kind: v.astype(np.int64) if kind == "label" else v.astype(np.float64)}


def _class_names(names, k: int, manifest: Manifest, path: Path) -> list[str]:
    """``class_names`` if given, else "0", "1", ...: as many as one-hot columns (``k``) or labels."""
    k = max(k, 1 + max((s.label for s in manifest.samples), default=-1))
    if names is None:
        return [str(i) for i in range(k)]
    names = [str(n) for n in np.asarray(names).ravel()]
    if len(names) < k:
        raise DataError(f"{path}: 'class_names' names {len(names)} classes but the labels go up to {k - 1}")
    return names
