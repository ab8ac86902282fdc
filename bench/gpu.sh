#!/usr/bin/env bash
# The GPU benches in one call (< 10 minutes on one H100/H200): training step, prediction and
# loader, each JSON written to OUT_DIR (default $OUT, else ./bench-gpu), plus the machine's
# description and the anchor figures they compare with (../shared/bench/h200_anchor.json).
#
#   bench/gpu.sh [OUT_DIR]            # on a lent GPU machine, from the repository root
#   bench/gpu.sh OUT_DIR --smoke      # CPU, tiny sizes: checks the script runs (a minute)
#
# Goals: training loop >= 0.95 of the bare model (train_step.json "ratio"), prediction >= 0.80
# (predict.json "ratio_csv" / "ratio_parquet"), the loader never what the GPU waits for
# (loader.json images/s per worker count vs the training step's images/s).
# Images: ../shared/data/isiis_ndsb when present, else a synthetic folder made here.
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-bench-gpu}}
SMOKE=${2:-}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

DATA=../shared/data/isiis_ndsb
if [ ! -d "$DATA" ]; then
  DATA="$OUT_DIR/.images"
  $PY - "$DATA" <<'EOF'
import sys
from pathlib import Path
from planktonzilla.synthetic import INSTRUMENTS, synthetic_records
root = Path(sys.argv[1])
for name in INSTRUMENTS:
    for r in synthetic_records(name, per_class=60):
        path = root / Path(r.origin).parent.name / f"{name}-{Path(r.origin).stem}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(r.image_bytes())
EOF
fi

if [ "$SMOKE" = "--smoke" ]; then
  TRAIN=(--device cpu --backbone vit_tiny_patch16_224 --image-size 32 --batch-size 16 --steps 2 --warmup 1 --workers 1 --per-class 8)
  PREDICT=(--device cpu --backbone vit_tiny --image-size 32 --batch 32 --images 64 --repeats 1 --no-cli)
  LOADER=(--limit 256 --batch 64 --workers 0,1 --repeats 1)
  LIMIT=300
else
  TRAIN=(--device cuda --backbone vit_base_patch16_224 --image-size 224 --batch-size 256 --bf16 --steps 30 --warmup 5 --workers 12 --per-class 120)
  PREDICT=(--device cuda --backbone vit_base --image-size 224 --batch 512 --dtype bf16 --images 8000 --repeats 3)
  LOADER=(--limit 8192 --batch 256 --workers 0,4,8,12 --repeats 1)
  LIMIT=170  # seconds per bench: three benches + start-up stay under 10 minutes
fi

run() {  # name, command…: stdout JSON to OUT_DIR/name.json, stderr to name.err
  local name=$1; shift
  local t0=$SECONDS
  if timeout "$LIMIT" "$@" >"$OUT_DIR/$name.json" 2>"$OUT_DIR/$name.err"; then
    echo "$name: ok in $((SECONDS - t0)) s"
  else
    echo "$name: FAILED (rc $?, $((SECONDS - t0)) s): tail of $OUT_DIR/$name.err"
    tail -5 "$OUT_DIR/$name.err"
  fi
}

$PY - "$OUT_DIR/machine.json" <<'EOF'
import json, os, platform, sys
import torch
info = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "cpus": os.cpu_count(),
        "python": platform.python_version()}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
    info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
anchor = "../shared/bench/h200_anchor.json"
if os.path.exists(anchor):
    info["anchor"] = json.load(open(anchor))
json.dump(info, open(sys.argv[1], "w"), indent=1)
EOF
run train_step "$PY" bench/train_step.py "${TRAIN[@]}"
run predict "$PY" bench/predict.py --data "$DATA" "${PREDICT[@]}"
run loader "$PY" bench/loader.py --data "$DATA" "${LOADER[@]}"
ls -l "$OUT_DIR"
