#!/usr/bin/env bash
# The RLVR pieces on one CUDA GPU in one short run (under 10 minutes): the real vllm package behind the
# vllm engine, bf16 learner steps, weight sync by reload and by ipc (CUDA IPC buffers, a second engine), on
# a random-init ~1B Olmo 3. Prints tokens/s and sync seconds; bench/gpu_check.py says what is measured.
#   make install GPU=1 && bash bench/gpu_check.sh [--layers 5] [--prompts 64]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  || { echo "gpu_check: no nvidia-smi: this needs a CUDA GPU" >&2; exit 2; }
"$PYTHON" -c "import vllm, torch; assert torch.cuda.is_available(); print('vllm', vllm.__version__, 'torch', torch.__version__)" \
  || { echo "gpu_check: $PYTHON lacks the GPU stack (make install GPU=1)" >&2; exit 2; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec timeout 600 "$PYTHON" bench/gpu_check.py "$@"
