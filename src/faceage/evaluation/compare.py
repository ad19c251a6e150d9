"""``faceage compare``: runs side by side (markdown, HTML, CSV) plus overlaid learning curves."""
from __future__ import annotations

import csv
import html
import io
import json
import math
from pathlib import Path

from ..atomic import atomic_write_text
from ..config import load_run_config
from ..errors import DataError
from .diagnose import diagnose
from .histories import load_history

COLUMNS = ["run", "model", "input", "params", "trainable", "frozen", "layers", "tasks", "optimizer", "lr", "batch", "augmentation",
           "early stopping", "stop epoch", "best epoch", "ms/step", "train time", "test MAE", "test CS@5", "gender acc",
           "bin acc", "verdict", "val fluctuation"]


def _model_stats(cfg) -> tuple[int, int, int]:
    from ..models.registry import build_model, count_parameters, resolve
    spec = resolve(cfg.model.name, **{k: v for k, v in vars(cfg.model).items() if k not in ("name", "pretrained")})
    spec.pretrained = None      # counting layers never needs weights
    net = build_model(spec)
    total, trainable = count_parameters(net)
    layers = sum(1 for m in net.modules() if not list(m.children()) and any(True for _ in m.parameters(recurse=False)))
    return total, trainable, layers


def run_row(run: Path) -> dict:
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise DataError(f"{run} is not a faceage run directory (no config.yaml)")
    cfg = load_run_config(run)
    rows, _ = load_history(run)
    info, metrics = _json_or_empty(run / "run.json"), _json_or_empty(run / "metrics.json")
    d = diagnose(rows)
    total, trainable, layers = _model_stats(cfg)
    from ..models.registry import resolve
    spec = resolve(cfg.model.name, **{k: v for k, v in vars(cfg.model).items() if k != "name"})
    a = cfg.augment
    aug = ", ".join(f"{k} {getattr(a, k):g}" for k in ("flip", "rotation", "zoom", "shift", "brightness", "contrast", "blur", "downscale", "jpeg")
                    if getattr(a, k) > 0) or "none"
    if cfg.data.age_balance > 0:
        aug += f"; age-balanced sampling {cfg.data.age_balance:g}"
    if cfg.distill.targets:
        aug += f"; teachers' soft targets {Path(cfg.distill.targets).name} (weight {cfg.distill.weight:g})"
    es = cfg.train.early_stopping
    n_train = info.get("n_images", {}).get("train")
    steps = math.ceil(n_train / cfg.data.batch_size) if n_train else None
    secs = [r.get("seconds", math.nan) for r in rows]
    ms_step = 1000 * (sum(secs) / len(secs)) / steps if steps else math.nan
    return {
        "run": run.name, "model": spec.name, "input": f"{spec.input_size}x{spec.input_size}x{spec.channels}",
        "params": total, "trainable": trainable, "frozen": total - trainable, "layers": layers,
        "tasks": ", ".join(f"{t} {w:g}" for t, w in spec.tasks.items()),          # the heads and their loss weights
        "optimizer": cfg.optim.name + (f", weight EMA {cfg.train.ema_decay:g}" if cfg.train.ema_decay > 0 else ""),
        "lr": f"{cfg.optim.lr:g}" + (f" (backbone x{cfg.optim.backbone_lr_scale:g})" if cfg.optim.backbone_lr_scale != 1 else ""),
        "batch": cfg.data.batch_size, "augmentation": aug,
        "early stopping": f"patience {es.patience}, min_delta {es.min_delta:g}" if es.enabled else "off",
        "stop epoch": rows[-1]["epoch"], "best epoch": d.best_epoch, "ms/step": ms_step,
        "train time": info.get("train_seconds", sum(secs)),
        "test MAE": metrics.get("mae"), "test CS@5": metrics.get("cs5"), "gender acc": metrics.get("gender_accuracy"),
        "bin acc": metrics.get("bin_accuracy"), "verdict": d.verdict + (f" ({', '.join(d.qualifiers)})" if d.qualifiers else ""),
        "val fluctuation": d.evidence["val_fluctuation"], "_history": rows, "_monitor": d.monitor,
    }


def _fmt(key: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if key in ("params", "trainable", "frozen"):
        return f"{v:,}"
    if key in ("test CS@5", "gender acc", "bin acc", "val fluctuation"):
        return f"{v:.1%}"
    if key == "test MAE":
        return f"{v:.2f}"
    if key == "ms/step":
        return f"{v:.0f}"
    if key == "train time":
        return f"{v:.0f}s"
    return str(v)


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(c, r[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def overlaid_curves(rows: list[dict], path: Path) -> None:
    from .plots import plt, save_figure
    metric = next((m for m in ("mae", "bin_acc", "acc", "gender_acc") if all(f"val_{m}" in r["_history"][0] for r in rows)), None)
    panels = [("loss", "loss")] + ([(metric, metric)] if metric else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for i, r in enumerate(rows):
            h = r["_history"]
            color = f"C{i % 10}"
            ep = [x["epoch"] for x in h]
            ax.plot(ep, [x.get(f"val_{key}", math.nan) for x in h], "-", color=color, label=f"{r['run']} (val)")
            ax.plot(ep, [x.get(key, math.nan) for x in h], ":", color=color, alpha=0.7)
        if key == "loss" and all(x.get(k, 1) > 0 for r in rows for x in r["_history"] for k in ("loss", "val_loss")):
            ax.set_yscale("log")        # one variant's first epochs must not flatten everyone else's curves
        ax.set_title(f"{title}: validation (solid) and training (dotted)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def compare(runs: list[str | Path], out: str | Path | None = None) -> tuple[list[dict], str]:
    rows = [run_row(Path(r)) for r in runs]
    md = markdown(rows)
    if out:
        out = Path(out)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r[c] for c in COLUMNS])
        atomic_write_text(out / "compare.csv", buf.getvalue())
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c, r[c]))}</td>" for c in COLUMNS) + "</tr>" for r in rows)
        head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
        atomic_write_text(out / "compare.html", "<!doctype html><meta charset='utf-8'><title>faceage compare</title>"
                          "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px 8px}"
                          "table{border-collapse:collapse}</style>"
                          f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>"
                          "<p><img src='curves.png' alt='overlaid learning curves'></p>")
        overlaid_curves(rows, out / "curves.png")
    return rows, md


def _json_or_empty(path: Path) -> dict:
    """A run's summary file, or {} when absent; a damaged one is a one-line DataError."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}): re-run or remove it") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} should hold a JSON object")
    return data
