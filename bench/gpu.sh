#!/usr/bin/env bash
# bench/gpu.sh: ViT-B/16 inference and training throughput on one GPU (H100/H200), pipeline vs plain HF.
#
# Usage, from the repository root:  OUT=/path/to/results bash bench/gpu.sh
# Needs python3 with torch (CUDA), transformers, numpy, pandas, scikit-learn, opencv; nothing is downloaded.
# train_data_path.py also needs scikit-image (the photographs its gold-like Parquet is cut from).
# Writes $OUT/gpu.log and one JSON per run: infer_eager, train_eager, infer_compile, train_compile,
# data_path (the training job's data path against the model-only loop, 3 epochs), data_path_host (the same
# with the training set kept on the host: batches gathered a step ahead into pinned memory) and data_path_e10
# (as data_path over 10 epochs: the job decodes once, so its fixed costs weigh less over a longer run), and
# kernel_probe (bench/kernel_probe.py: the remaining kernel fixes one at a time; its FP8 variants need torchao, bench/README.md),
# and, only when RUNS names it, train_float8 (train_compile with the pipeline's SWAN_TRAINING_PRECISION=float8; torchao too).
# RUNS (default: the first eight, in this order) picks runs by name, e.g. RUNS="data_path data_path_host".
# Each run has a time limit (eager 90 s, compiled 120 s / 170 s, data path 150 s / 200 s). The first four took about
# 6 minutes on an H100, the three data-path runs 3.5 minutes and the probe about 2.5 (without FP8) on an H200; all eight may not fit one 10-minute device call: split them with RUNS.
# a run that fails or hits its limit is reported and the script goes on.

set -uo pipefail
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
export PYTHONUNBUFFERED=1
set -x

nvidia-smi -L
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit,driver_version --format=csv
nproc
python3 -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__, "|", torch.cuda.get_device_name(0))'

RUNS=${RUNS:-"infer_eager train_eager infer_compile train_compile data_path data_path_host data_path_e10 kernel_probe"}

bench() {  # bench NAME LIMIT_S SCRIPT ARGS...
    local name=$1 limit=$2 script=$3
    shift 3
    [[ " $RUNS " == *" $name "* ]] || return 0
    timeout --kill-after=10 "$limit" python3 "bench/$script" --model vit-b16 --device cuda --json "$OUT/$name.json" "$@" \
        || echo "[gpu.sh] $name: failed or over its ${limit}s limit (rc=$?)"
}

bench infer_eager   90  infer_throughput.py --batch-size 1024 --warmup 3 --steps 20
bench train_eager   90  train_throughput.py --batch-size 256  --warmup 3 --steps 20
bench infer_compile 120 infer_throughput.py --batch-size 1024 --warmup 3 --steps 20 --compile
bench train_compile 170 train_throughput.py --batch-size 256  --warmup 3 --steps 20 --compile
bench train_float8  170 train_throughput.py --batch-size 256  --warmup 3 --steps 20 --compile --training-precision float8
bench data_path      150 train_data_path.py --batch-size 256 --images 8192 --epochs 3 --decode-rounds 1
bench data_path_host 150 train_data_path.py --batch-size 256 --images 8192 --epochs 3 --decode-rounds 1 --host-batches
bench data_path_e10  200 train_data_path.py --batch-size 256 --images 8192 --epochs 10 --decode-rounds 1
if [[ " $RUNS " == *" kernel_probe "* ]]; then  # its own options: the variants' rates, ratios and score differences
    timeout --kill-after=10 330 python3 bench/kernel_probe.py --model vit-b16 --device cuda --json "$OUT/kernel_probe.json" \
        || echo "[gpu.sh] kernel_probe: failed or over its 330s limit (rc=$?)"
fi

set +x
python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

goals = {"train": 4500, "infer": 13500}
print(f"{'run':<14} {'loop':<9} {'img/s':>9} {'TFLOP/s':>8} {'goal':>6} {'peak GiB':>8}  device")
for name in ("infer_eager", "train_eager", "infer_compile", "train_compile", "train_float8"):
    path = Path(sys.argv[1]) / f"{name}.json"
    if not path.is_file():
        if name != "train_float8":  # run only when RUNS names it
            print(f"{name:<14} (no result)")
        continue
    r = json.loads(path.read_text())
    for loop in ("pipeline", "baseline"):
        m = r[loop]
        print(f"{name:<14} {loop:<9} {m['images_per_s']:>9.0f} {m['tflop_per_s']:>8.1f} {goals[r['benchmark']]:>6} {m.get('peak_gpu_mem_gib', 0):>8.1f}  {r['device_name']}")
    print(f"{'':<14} ratio pipeline/baseline {r['ratio_pipeline_to_baseline']:.3f}")
for name in ("data_path", "data_path_host", "data_path_e10"):
    path = Path(sys.argv[1]) / f"{name}.json"
    if not path.is_file():
        print(f"{name:<14} (no result)")
        continue
    r = json.loads(path.read_text())
    job, only = r["job"], r["model_only"]
    print(
        f"{name:<14} job {job['images_per_s']:.0f} img/s, model-only {only['images_per_s']:.0f} img/s: "
        f"ratio {r['ratio_job_to_model_only']:.3f} (goal >= 0.8); decode {job['decode_s']:.1f}s on {r['decode_threads']} threads"
    )
EOF
