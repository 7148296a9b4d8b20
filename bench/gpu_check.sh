#!/usr/bin/env bash
# The GPU check of issue 12, in about 5 minutes on a machine with an NVIDIA GPU (CUDA 12, cuDNN 9):
#   1. a virtual environment with the `gpu` extra (onnxruntime-gpu; it cannot live beside onnxruntime),
#      the trainer's `torch` extra (torch==2.13.0, the CUDA build pip picks on Linux) and lipgraph itself;
#   2. bench/gpu_check.py in it: certify of the sample models on CUDA vs the CPU, PGD inside the CUDA radii,
#      a short `--device cuda` training run, certify throughput CUDA vs CPU; one table, one JSON;
#   3. the CUDA-only tests (they skip on a CPU machine).
# Every step says what it does; a failed step is reported and the script goes on. Exit 0 only if all passed.
#
#   bash bench/gpu_check.sh                      # venv in .venv-gpu (reused when present)
#   GPU_CHECK_PYTHON=/path/to/python bash bench/gpu_check.sh   # use an environment that already has the gpu extra
#   OUT=/some/dir bash bench/gpu_check.sh        # JSON to $OUT/bench/results (else bench/results)
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
RESULTS=${OUT:+$OUT/bench/results}
RESULTS=${RESULTS:-$ROOT/bench/results}
VENV=${GPU_CHECK_VENV:-$ROOT/.venv-gpu}
failed=()
step() { echo; echo "=== $1"; }
run() {  # run NAME CMD...: the command's status is recorded, the script continues
    local name=$1; shift
    echo "+ $*"
    if "$@"; then echo "--- $name: ok"; else local rc=$?; echo "--- $name: FAILED (exit $rc)"; failed+=("$name"); fi
}

step "machine"
run nvidia-smi nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
date -u

if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    PY=$GPU_CHECK_PYTHON
    step "using $PY as given (no installation)"
else
    PY=$VENV/bin/python
    step "virtual environment $VENV with lipgraph[gpu,torch,test]"
    [ -x "$PY" ] || run venv python3 -m venv "$VENV"
    run pip-upgrade "$PY" -m pip install -q --upgrade pip
    run pip-torch "$PY" -m pip install -q "torch==2.13.0"
    run pip-lipgraph "$PY" -m pip install -q -e ".[gpu,torch,test]"
fi
export PYTHONPATH=$ROOT OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-4}

step "onnxruntime-gpu sees CUDA, torch sees the GPU"
run ort-cuda "$PY" -c "import onnxruntime as o; o.preload_dlls() if hasattr(o, 'preload_dlls') else None; \
p = o.get_available_providers(); print(o.__version__, p); assert 'CUDAExecutionProvider' in p, 'no CUDA provider'"
run torch-cuda "$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available()); \
assert torch.cuda.is_available(), 'torch sees no GPU'; print(torch.cuda.get_device_name(0))"

step "lipgraph certify on CUDA (CLI, JSON on stdout must parse)"
run cli-cuda bash -c "'$PY' -m lipgraph certify sample_models/lmt.onnx --data sample_models/digits_test.npz \
--providers cuda --format json -q | '$PY' -c \"import json, sys; m = json.load(sys.stdin)['meta']; \
print({k: m[k] for k in ('provider', 'device', 'precision')}); assert m['provider'] == 'CUDAExecutionProvider'\""

step "lipgraph train --device cuda (CLI), then certify the result on CUDA"
TMP=$(mktemp -d)
run train-cli "$PY" -m lipgraph train --device cuda --method groupsort --epochs 3 --out "$TMP/gs.onnx" -q
run certify-trained "$PY" -m lipgraph certify "$TMP/gs.onnx" --data "$TMP/gs.test.npz" --providers cuda --eps 0.5

step "bench/gpu_check.py: certificates CUDA vs CPU, attack, training, throughput"
run gpu-check "$PY" bench/gpu_check.py --require-cuda --out "$RESULTS"

step "CUDA-only tests"
run cuda-tests "$PY" -m pytest -q -p no:cacheprovider -rs tests/train/test_device.py tests/gpu

echo
if [ ${#failed[@]} -eq 0 ]; then echo "gpu_check: all steps passed"; exit 0; fi
echo "gpu_check: failed steps: ${failed[*]}"
exit 1
