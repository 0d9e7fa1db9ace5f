#!/usr/bin/env bash
# GPU check on a CUDA machine (sized to fit in 8 minutes on an H200; not yet run on one): training
# it/s and peak GPU memory at 512 px, batch 8, bf16 (shoelib, with torch_compile where it has the
# switch, and diffusers' own script with --peer-script), generation
# images/s at 25 steps, batch 8, on SD 1.5-size random weights. Prints ONE JSON object, also
# written to $OUT/gpu_check.json when OUT is set. See benchmarks/gpu_check.py.
#
#     bash benchmarks/gpu_check.sh [--peer-script PATH/train_text_to_image_lora.py]
#     bash benchmarks/gpu_check.sh --dry-run     # CPU, tiny model: proves the script works
#
# It installs nothing (a GPU machine may have no network): it needs a Python with shoelib's
# dependencies (`make setup`'s .venv, the peer venv of benchmarks/bench_peer.sh, or any python3
# where they are installed; PYTHON=... picks one), and for the peer also torchvision and datasets.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    for candidate in .peer-venv/bin/python .venv/bin/python python3; do
        if command -v "$candidate" > /dev/null; then PYTHON=$candidate; break; fi
    done
fi
if ! "$PYTHON" -c "import torch, diffusers, transformers, peft, accelerate" 2> /dev/null; then
    echo "error: $PYTHON lacks torch, diffusers, transformers, peft or accelerate; run make setup" \
         "or set PYTHON to an interpreter that has shoelib's dependencies" >&2
    exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
