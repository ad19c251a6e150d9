"""Plots: learning curves and evaluation figures (matplotlib, Agg backend, no display)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..atomic import atomic_write_bytes  # noqa: E402


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def best_epoch(rows: list[dict], monitor: str = "val_loss", mode: str = "min") -> int | None:
    vals = [(r["epoch"], r[monitor]) for r in rows if monitor in r and np.isfinite(r[monitor])]
    if not vals:
        return None
    return (min if mode == "min" else max)(vals, key=lambda t: t[1])[0]


def learning_curves(rows: list[dict], out_dir: Path, monitor: str = "val_loss", mode: str = "min") -> list[Path]:
    """One PNG per training quantity with a validation twin: train vs val, best epoch marked."""
    out_dir = Path(out_dir)
    if not rows:
        return []
    best = best_epoch(rows, monitor, mode)
    names = [k for k in rows[-1] if f"val_{k}" in rows[-1]]
    paths = []
    for name in names:
        fig, ax = plt.subplots(figsize=(6, 4))
        ep = [r["epoch"] for r in rows]
        ax.plot(ep, [r.get(name, np.nan) for r in rows], "o-", label=f"train {name}", ms=3)
        ax.plot(ep, [r.get(f"val_{name}", np.nan) for r in rows], "o-", label=f"val {name}", ms=3)
        if best is not None:
            ax.axvline(best, color="grey", ls="--", lw=1, label=f"best epoch {best} ({monitor})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(f"{name}: train vs validation")
        ax.legend()
        ax.grid(alpha=0.3)
        p = out_dir / f"{name}.png"
        save_figure(fig, p)
        paths.append(p)
    return paths


def predicted_vs_true(true: np.ndarray, pred: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, pred, s=4, alpha=0.4)
    hi = max(float(np.max(true)), float(np.max(pred)), 1.0)
    ax.plot([0, hi], [0, hi], "k--", lw=1)
    ax.set_xlabel("true age")
    ax.set_ylabel("predicted age")
    ax.set_title("Predicted vs true age")
    save_figure(fig, path)


def error_by_age(true: np.ndarray, pred: np.ndarray, path: Path) -> None:
    decades = (true // 10).astype(int)
    xs = sorted(set(decades.tolist()))
    mae = [np.mean(np.abs(pred[decades == d] - true[decades == d])) for d in xs]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([f"{d * 10}s" for d in xs], mae)
    ax.set_xlabel("true age (decade)")
    ax.set_ylabel("MAE (years)")
    ax.set_title("Age error by true age")
    save_figure(fig, path)


def confusion(matrix: np.ndarray, names: list[str], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(names), 1 + 0.6 * len(names)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    save_figure(fig, path)
