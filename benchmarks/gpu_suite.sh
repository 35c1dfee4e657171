#!/usr/bin/env bash
# The GPU benchmark suite (issue #21) in one command, ≤ 8 min on one GPU; everything lands in one folder:
#   bash benchmarks/gpu_suite.sh [OUTPUT_DIR] [extra gpu_suite.py arguments]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu_suite}"
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python3 -c "import torch, transformers, peft, accelerate, datasets; print(torch.__version__, transformers.__version__, peft.__version__)" \
  > "$out/versions.txt" 2>&1
python3 benchmarks/gpu_suite.py --output-dir "$out" "${@:2}" 2>&1 | tee "$out/gpu_suite.log"
