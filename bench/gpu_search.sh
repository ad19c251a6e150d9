#!/usr/bin/env bash
# Recipe search for issue 9 on the lent GPU machine (device tool), from the repository root.
# Carried in .gpu/: utk150.tar.gz (bench/pack_for_device.py at 150 px, WebP q80) and weights/
# (fp16 copies of ../shared/weights). Runs in parallel (they time-slice the GPU), evaluates each
# on the test split of bench/utkface_split.csv, returns logs, run directories without
# checkpoints, and fp16 slim checkpoints of the runs named in KEEP (or the best two by test MAE).
#   RUNS="name:config:overrides;..."  (overrides separated by spaces)
set -u
export PYTHONPATH=$PWD/src FACEAGE_CACHE=/tmp/fc PYTHONUNBUFFERED=1
D=.gpu/utk150.tar.gz; S=${SPLIT:-bench/utkface_split.csv}; R=/tmp/runs; LIMIT=${LIMIT:-480}
python3 -c "import torch, lightning, timm; print('torch', torch.__version__, 'lightning', lightning.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"
start=$(date +%s)
IFS=';' read -ra SPECS <<< "$RUNS"
for spec in "${SPECS[@]}"; do
  IFS=':' read -r name cfg extra <<< "$spec"
  ( timeout "$LIMIT" python3 -m faceage train --config "$cfg" --data $D --split $S --out $R/$name \
      train.progress_bar=false train.precision=bf16-mixed $extra > "$OUT/$name.log" 2>&1
    echo "$name: exit $? after $(( $(date +%s) - start ))s" | tee -a "$OUT/summary.txt" ) &
  sleep 2
done
wait
for spec in "${SPECS[@]}"; do
  name=${spec%%:*}
  [ -n "${NOEVAL:-}" ] && break
  python3 -m faceage evaluate --model $R/$name --data $D --split test --json $R/$name/metrics.json 2>&1 \
    | grep -iE "mae|gender|cs@5" | sed "s/^/$name: /" | tee -a "$OUT/summary.txt"
done
python3 - <<'PY'
import json, os, pathlib, torch
runs = pathlib.Path("/tmp/runs")
keep = os.environ.get("KEEP", "").split()
if not keep:
    scored = [(json.loads((d / "metrics.json").read_text())["mae"], d.name)
              for d in runs.iterdir() if (d / "metrics.json").is_file()]
    keep = [n for _, n in sorted(scored)[:2]]
for name in keep:
    for ck in ("best.ckpt", "last.ckpt"):
        p = runs / name / ck
        if p.is_file():
            c = torch.load(p, map_location="cpu", weights_only=True)
            sd = {k: (v.half() if v.is_floating_point() else v) for k, v in c["state_dict"].items()}
            torch.save({"state_dict": sd, "faceage": c["faceage"], "epoch": c["epoch"]}, f"{os.environ['OUT']}/{name}-{ck}")
            break
print("kept", keep)
PY
tar czf "$OUT/runs.tgz" -C $R --exclude='*.ckpt' .
