#!/usr/bin/env bash
# The virtualenv benchmarks/bench_peer.py runs BOTH trainers in, so that they share one
# interpreter and one torch: diffusers' train_text_to_image_lora.py needs torchvision and
# datasets, which the project's own venv does not install (its torch has no matching
# torchvision). shoelib goes in editable without its torch pin, then the rest of its pins.
#
#     bash benchmarks/bench_peer.sh                # -> .peer-venv/ (a few GB: torch + CUDA libs)
#     bash benchmarks/bench_peer.sh /tmp/peer-venv  # elsewhere
#     .peer-venv/bin/python benchmarks/bench_peer.py --peer-script PATH ...
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.peer-venv}
PYTHON=${PYTHON:-python3}
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install 'torch==2.14.1' 'torchvision==0.29.1' 'datasets==5.0.1'
"$VENV/bin/python" -m pip install --no-deps -e .
# shoelib's own pins, all but torch (the one above replaces it).
"$VENV/bin/python" - <<'PY' > "$VENV/shoelib-deps.txt"
from importlib.metadata import requires
for req in requires("shoelib"):
    name = req.split("==")[0].strip()
    if "extra ==" not in req and name.lower() != "torch":
        print(req)
PY
"$VENV/bin/python" -m pip install -r "$VENV/shoelib-deps.txt"
"$VENV/bin/python" -c "import torch, torchvision, datasets, diffusers, shoelib; \
print('peer venv ready:', 'torch', torch.__version__, 'torchvision', torchvision.__version__, \
'diffusers', diffusers.__version__)"
