#!/usr/bin/env bash
# Create (or reuse) the environment of vssm's nnU-Net extra: a virtual environment that sees this machine's packages
# (torch, the rest of vssm's dependencies) and adds nnunetv2 with its own pins on top, plus vssm itself (editable).
# nnunetv2 2.8.x pulls dynamic-network-architectures 0.4.x, which pins timm<1.0.23: the older timm is installed inside
# the environment only and shadows the machine's, so the main environment keeps its timm.
#
# Usage: tools/nnunet_env.sh [VENV_DIR]   (default: .venv-nnunet in the repository root)
# Then:  VENV_DIR/bin/python -m pytest -q -m nnunet tests/seg/test_nnunet_trainers.py
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$repo/.venv-nnunet}"
python="${PYTHON:-python}"

if [ ! -x "$venv/bin/python" ]; then
    echo "nnunet_env: creating $venv (with the system site packages)"
    "$python" -m venv --system-site-packages "$venv"
fi
# nnunetv2 >= 2.8 reads nnUNet_extTrainer (how it finds the vssm trainers); the same spec as the extra in pyproject.toml.
"$venv/bin/python" -m pip install "nnunetv2>=2.8"
"$venv/bin/python" -m pip install --no-deps -e "$repo"
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
import nnunetv2, timm, torch, vssm  # noqa: F401  (fails loudly if the environment is broken)
print("nnunet_env: nnunetv2", md.version("nnunetv2"), "| dynamic-network-architectures",
      md.version("dynamic-network-architectures"), "| timm", timm.__version__, "| torch", torch.__version__,
      "| vssm", vssm.__version__, "from", vssm.__file__)
PY
