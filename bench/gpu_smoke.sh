#!/usr/bin/env bash
# GPU smoke check (under 5 minutes on one modern GPU): the quick demo and one MPM-MU ablation variant on CUDA,
# their AUCs against the CPU reference in bench/results/gpu_smoke_cpu_reference.json (run first when absent),
# throughput written to bench/results/gpu_smoke.json. Exits non-zero when CUDA is missing or an AUC drifts.
#   bash bench/gpu_smoke.sh [--tolerance 0.03]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_smoke.sh: no CUDA device visible")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 300 "$PYTHON" bench/gpu_smoke.py "$@"
