#!/usr/bin/env bash
# Prepare a fresh GPU machine for benchmarks/gpu_validation.py, in one step (≈ 1 minute).
#
#   bash benchmarks/gpu_setup.sh [WHEEL_DIR]      # then: .venv-gpu/bin/python benchmarks/gpu_validation.py
#   bash benchmarks/gpu_setup.sh --download DIR   # on a machine with a registry: fetch the wheels for one without
#
# A virtualenv .venv-gpu that sees the system's packages (a GPU image's CUDA torch is ~3 GB: reuse it, never
# reinstall it), with modelmem installed from this checkout and the GPU-only wheels on top: bitsandbytes (real
# 4-bit kernels and 8-bit/paged optimizers; its wheel carries CUDA 11.8–13.x binaries), and transformers/peft when
# missing. With WHEEL_DIR, everything comes from that folder (no network: `pip --no-index --find-links`); without,
# from the registry. vLLM is optional: put its wheels in WHEEL_DIR (or have it installed) and the grid's vLLM job runs.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${MODELMEM_GPU_VENV:-$ROOT/.venv-gpu}"
PY="${PYTHON:-python3}"
# bitsandbytes 0.50.2: CUDA 13.0 binaries (the H100/H200 images' torch is cu130); transformers/peft: the trace pins.
GPU_WHEELS=(bitsandbytes==0.50.2)
TRACE_WHEELS=(transformers==5.24.0 peft==0.21.2)

if [[ "${1:-}" == "--download" ]]; then
  dest="${2:?--download needs a folder}"
  mkdir -p "$dest"
  # manylinux wheels for CPython 3.12 on x86-64 (what the GPU image runs), without their dependencies: the image has them
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$dest" "${GPU_WHEELS[@]}" "${TRACE_WHEELS[@]}"
  ls -l "$dest"
  exit 0
fi

WHEELS="${1:-}"
t0=$SECONDS
"$PY" -m venv --system-site-packages "$VENV"
# When $PY itself lives in a virtualenv (the GPU image's python3 is /opt/torch/.venv), --system-site-packages
# reaches only the base interpreter's packages: link the parent venv's site-packages in too, after our own.
parent_sites="$("$PY" -c 'import site, sys; print("\n".join(site.getsitepackages()) if sys.prefix != sys.base_prefix else "")')"
if [[ -n "$parent_sites" ]]; then
  own_site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  printf '%s\n' "$parent_sites" > "$own_site/_parent_venv.pth"
fi
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-compile)
if [[ -n "$WHEELS" ]]; then
  [[ -d "$WHEELS" ]] || { echo "gpu_setup: wheel folder $WHEELS not found" >&2; exit 2; }
  pip+=(--no-index --find-links "$WHEELS")
fi
# the project itself: no dependencies (the core is standard-library only)
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT" 2>/dev/null \
  || "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT"
have() { "$VENV/bin/python" -c "import $1" 2>/dev/null; }
have torch || "${pip[@]}" torch  # a registry's default Linux torch wheel is a CUDA build
want=()
if [[ -n "$WHEELS" ]]; then
  # whatever the folder holds, by distribution name (bitsandbytes, transformers, peft, vllm…); --no-deps: the image has the rest
  mapfile -t want < <(ls "$WHEELS"/*.whl 2>/dev/null | xargs -r -n1 basename | cut -d- -f1 | sort -u)
  ((${#want[@]})) && "${pip[@]}" --no-deps --ignore-installed "${want[@]}"  # shadow the image's older copies
else
  "${pip[@]}" "${GPU_WHEELS[@]}"
  have transformers || "${pip[@]}" "${TRACE_WHEELS[0]}"
  have peft || "${pip[@]}" "${TRACE_WHEELS[1]}"
fi
"$VENV/bin/python" - <<'EOF'
from importlib.metadata import version, PackageNotFoundError
import torch
row = []
for name in ("torch", "transformers", "peft", "bitsandbytes", "vllm"):
    try:
        row.append(f"{name} {version(name)}")
    except PackageNotFoundError:
        row.append(f"{name} -")
print("gpu_setup:", ", ".join(row), f"| CUDA {torch.version.cuda}, GPU available: {torch.cuda.is_available()}")
import transformers, peft, modelmem  # noqa: F401  (fail here, not in the middle of the run)
EOF
echo "gpu_setup: ready in $((SECONDS - t0)) s; run: $VENV/bin/python benchmarks/gpu_validation.py"
