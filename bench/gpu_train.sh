#!/usr/bin/env bash
# Runs on the lent GPU machine (device tool), from the repository root, with .gpu/ carried:
#   .gpu/utk128.tar.gz  the shared UTKFace re-encoded by bench/pack_for_device.py, tarred
#   .gpu/weights/  an fp16 copy of ../shared/weights/mobilenet_v2-b0353104.pth
# Trains the three benchmark recipes in parallel on the fixed split, evaluates each on its
# test split and leaves logs, run directories (without optimizer-laden checkpoints) and the
# best recipe's slim checkpoint in $OUT.
set -u
export PYTHONPATH=$PWD/src FACEAGE_CACHE=/tmp/fc PYTHONUNBUFFERED=1
D=.gpu/utk128.tar.gz; S=bench/utkface_split.csv; R=/tmp/runs; LIMIT=${LIMIT:-480}
python3 -c "import torch, lightning, timm; print('torch', torch.__version__, 'lightning', lightning.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
start=$(date +%s)
run() {  # name config extra-overrides...
  local name=$1 cfg=$2; shift 2
  timeout "$LIMIT" python3 -m faceage train --config "$cfg" --data $D --split $S --out $R/$name train.progress_bar=false "$@" \
    > "$OUT/$name.log" 2>&1
  echo "$name: exit $? after $(( $(date +%s) - start ))s" | tee -a "$OUT/summary.txt"
}
# RUNS picks which recipes to train; they run in parallel (they time-slice the one GPU).
RUNS=${RUNS:-"utk-custom-128 keras-regularized-120 mobilenetv2-dldl"}
for name in $RUNS; do
  case $name in
    mobilenetv2-dldl) run $name configs/$name.yaml model.pretrained=.gpu/weights/mobilenet_v2-fp16.pth train.precision=bf16-mixed & ;;
    *) run $name configs/$name.yaml & ;;
  esac
done
wait
for name in $RUNS; do
  python3 -m faceage evaluate --model $R/$name --data $D --split test --json $R/$name/metrics.json 2>&1 | tee -a "$OUT/summary.txt"
done
[[ " $RUNS " == *" mobilenetv2-dldl "* ]] && python3 - <<'PY'
import os, torch
c = torch.load("/tmp/runs/mobilenetv2-dldl/best.ckpt", map_location="cpu", weights_only=True)
torch.save({"state_dict": c["state_dict"], "faceage": c["faceage"], "epoch": c["epoch"]}, os.environ["OUT"] + "/mobilenetv2-dldl-best.ckpt")
PY
tar czf "$OUT/runs.tgz" -C $R --exclude='*.ckpt' .
