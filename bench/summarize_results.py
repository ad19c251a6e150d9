"""Print the accuracy table of BENCHMARKS.md from saved run directories.

    .venv/bin/python bench/summarize_results.py bench/results/gpu-run1/utk-custom-128 ...

Reads each run's run.json (or history.json), metrics.json and config.yaml; prints markdown.
"""
import json
import sys
from pathlib import Path

import yaml


def load(run: Path) -> dict:
    hist = json.loads((run / "history.json").read_text())
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    metrics_file = run / "metrics.json"
    m = json.loads(metrics_file.read_text())
    monitor = cfg["train"]["monitor"]
    best = min(hist, key=lambda r: r[monitor]) if cfg["train"]["monitor_mode"] == "min" else max(hist, key=lambda r: r[monitor])
    return {"run": run, "model": cfg["model"]["name"], "epochs": len(hist), "max": cfg["train"]["epochs"],
            "best": best["epoch"], "secs": sum(r["seconds"] for r in hist), "m": m,
            "complete": bool(info), "s_per_epoch": sum(r["seconds"] for r in hist) / len(hist)}


def pct(x):
    return f"{x:.1%}" if x is not None else "-"


print("| run | model | epochs run / max | best epoch | train time | s/epoch | test n | MAE | RMSE | CS@5 | gender acc | bin acc | bin one-off |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for arg in sys.argv[1:]:
    r = load(Path(arg))
    m = r["m"]
    note = "" if r["complete"] else " (cut by time limit)"
    print(f"| `{arg}` | {r['model']} | {r['epochs']} / {r['max']}{note} | {r['best']} | {r['secs'] / 60:.1f} min | {r['s_per_epoch']:.1f} | "
          f"{m['n']} | {m['mae']:.2f} | {m['rmse']:.2f} | {pct(m['cs5'])} | {pct(m.get('gender_accuracy'))} | "
          f"{pct(m['bin_accuracy'])} | {pct(m['bin_one_off_accuracy'])} |")
