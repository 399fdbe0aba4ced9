#!/usr/bin/env bash
# The GPU path, measured in one run on one GPU (planned to finish within 8
# minutes): the CUDA tests, training and prediction against their in-memory
# limits, prediction against MONAI on the same GPU, bf16 against fp32, and
# segmentation with every core against prediction. Each figure is a ratio of
# runs in this same script; the card is named first.
#
#   bash benchmarks/gpu_check.sh            # on a machine with CUDA
#   DEVICE=cpu SMALL=1 bash benchmarks/gpu_check.sh   # a dry run of the script on a CPU
#
# PYTHON (default .venv/bin/python, else python3) must have unetpipe installed
# with a CUDA build of torch and the "benchmark" extra (MONAI).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEVICE=${DEVICE:-cuda}
if [ "${SMALL:-0}" = 1 ]; then SIZE="512 512"; ITER=4; REPEAT=1; else SIZE="8192 8192"; ITER=200; REPEAT=2; fi
status=0
step() { echo; echo "== $1 ($(date +%H:%M:%S))"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, '|',
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"

step "the CUDA tests (pytest -m gpu)"
timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests || status=1

step "training: iterations/s of the real pipeline (bf16, channels_last on CUDA) against in-memory batches"
timeout 150 "$PY" benchmarks/train_throughput.py --device "$DEVICE" --iterations "$ITER" --repeat "$REPEAT" || status=1

step "prediction: Zarr to Zarr against the same model's forward over the same windows"
timeout 120 "$PY" benchmarks/predict_throughput.py --device "$DEVICE" --size $SIZE --repeat "$REPEAT" || status=1

step "prediction against MONAI's sliding window, on the same device"
timeout 180 "$PY" benchmarks/predict_vs_monai.py --device "$DEVICE" --size $SIZE --repeat 1 || status=1

step "bf16 against fp32; segmentation with every core against prediction"
timeout 150 "$PY" benchmarks/gpu_check.py --device "$DEVICE" --size $SIZE || status=1

step "done (status $status)"
exit $status
