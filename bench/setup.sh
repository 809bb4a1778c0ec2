#!/usr/bin/env bash
# Create bench/.venv with the pinned PyTorch reference stack (CPU use of the PyPI CUDA wheels).
# Usage: bash bench/setup.sh            (idempotent; re-run to repair)
#        PYTHON=python3.11 bash bench/setup.sh
# Size: ~5.4 GB (torch 1.2 GB, nvidia-* 3.0 GB, triton 1.0 GB). Needs PyPI access.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/bench/.venv"
REQ="$ROOT/scripts/fixtures/requirements-torch.txt"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r "$REQ"
"$VENV/bin/python" - <<'PY'
import torch, torchvision, numpy, safetensors
print("torch", torch.__version__, "torchvision", torchvision.__version__,
      "numpy", numpy.__version__, "safetensors", safetensors.__version__,
      "mkldnn", torch.backends.mkldnn.is_available())
x = torch.randn(1, 3, 32, 32)
torchvision.models.resnet18().eval()(x)  # smoke test: CPU forward works
print("ok: bench/.venv ready")
PY
