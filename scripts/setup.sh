#!/usr/bin/env bash
# Create .venv and install Modelseek with its test tools; safe to run again (it only tops up).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# constraints.txt pins the torch/torchvision builds that load together on these machines.
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[test]'
# The demo's face GAN: its package declares heavy dependencies (wandb, requests) that sampling
# does not use, so it is installed without them.
.venv/bin/python -m pip install --quiet --no-deps gan-face-generate==1.1.1
echo "setup done: $(.venv/bin/python -c 'import torch, ray, open_clip; print("torch", torch.__version__, "ray", ray.__version__, "open_clip", open_clip.__version__)')"
