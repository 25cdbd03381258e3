#!/usr/bin/env bash
# Builds the peers' virtualenv for benchmarks/peers.py, speed.py and plot_accuracy.py.
#
# Dev-only: the peers (accelerate, llm-analysis, DeepSpeed, hf-mem) are what modelmem is scored
# against, never dependencies of modelmem itself, so they live in a venv OUTSIDE the repository.
# CI does not run this. Idempotent: re-running only installs what is missing.
#
#   bash benchmarks/setup_peers.sh            # -> /work/peers-venv (or $PEERS_VENV)
set -euo pipefail

VENV="${PEERS_VENV:-/work/peers-venv}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# torch first, pinned to the local CPU wheel: an unpinned torch pulls several GB of CUDA wheels.
"$PY" -c 'import torch' 2>/dev/null || "${PIP[@]}" torch==2.13.0

# llm-analysis 0.2.2 (its last release, 2023) pins huggingface-hub<0.15 and transformers<5, which would
# downgrade what accelerate needs (huggingface_hub>=0.21). It uses transformers only to fetch configs from
# the Hub, which peers.py never does (it builds llm-analysis's ModelConfig from the config rows), so it is
# installed with --no-deps and its one other dependency, fire, by hand.
"$PY" -c 'import llm_analysis' 2>/dev/null || {
    "${PIP[@]}" --no-deps llm-analysis==0.2.2
    "${PIP[@]}" 'fire>=0.5,<0.6'
}

# accelerate's estimator builds the model on the meta device through transformers.
"$PY" -c 'import accelerate, transformers, huggingface_hub as h; assert int(h.__version__.split(".")[0]) >= 1' \
    2>/dev/null || "${PIP[@]}" -U accelerate transformers huggingface_hub

# hf-mem reads safetensors headers over HTTP from $HF_ENDPOINT (peers.py serves a fake repo on 127.0.0.1).
"$PY" -c 'import hf_mem' 2>/dev/null || "${PIP[@]}" hf-mem

# DeepSpeed without CUDA: DS_BUILD_OPS=0 skips building its kernels. It may still refuse to install;
# peers.py then records "did not install: <error>" for it rather than re-implementing its formulas.
if ! "$PY" -c 'import deepspeed' 2>/dev/null; then
    mkdir -p "$VENV/logs"
    if ! DS_BUILD_OPS=0 "${PIP[@]}" deepspeed >"$VENV/logs/deepspeed-install.log" 2>&1; then
        echo "deepspeed did not install; see $VENV/logs/deepspeed-install.log" >&2
    fi
fi

# Plotting for docs/accuracy.png.
"$PY" -c 'import matplotlib' 2>/dev/null || "${PIP[@]}" matplotlib

"$PY" - <<'PY'
from importlib.metadata import version, PackageNotFoundError
for name in ("torch", "transformers", "accelerate", "llm-analysis", "hf-mem", "deepspeed", "matplotlib"):
    try:
        print(f"{name:14s} {version(name)}")
    except PackageNotFoundError:
        print(f"{name:14s} not installed")
PY
