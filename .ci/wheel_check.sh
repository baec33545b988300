#!/usr/bin/env bash
# The package as users install it: builds the wheel, installs it (with the export extra) into a
# clean virtual environment outside the repository, and runs a short training, a prediction and
# an export through the console scripts, in a folder named as users name theirs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/wheel.check XXXXXX")
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" .
wheel=$(ls "$work"/dist/affectnet_tf-*.whl)
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "${wheel}[export]"
bin="$work/venv/bin"
home="$work/ü.d"
mkdir -p "$home"
cd "$home"  # nothing of the repository on the path
location=$("$bin/python" -c "import affectnet_tf, os; print(os.path.dirname(affectnet_tf.__file__))")
case "$location" in
    "$work"/venv/*) echo "wheel check: affectnet_tf imports from $location" ;;
    *) echo "wheel check: affectnet_tf imports from $location, not the clean venv" >&2; exit 1 ;;
esac
"$bin/affectnet-train" --dataset synthetic_faces/tiny --data-dir "$home/tfds" \
    --model compact_cnn_small --weights none --image-size 32 --task all --target mv \
    --epochs 1 --batch-size 16 --steps-per-epoch 2 --output-dir "$home/runs/tiny run" > train.log
"$bin/python" - <<'EOF'
import cv2
import numpy as np

cv2.imwrite("photo.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
EOF
"$bin/affectnet-predict" --model-dir "$home/runs/tiny run" photo.png --output predictions.jsonl
"$bin/python" -c "
import json
records = [json.loads(line) for line in open('predictions.jsonl')]
assert len(records) == 1 and 'expression' in records[0], records
"
"$bin/affectnet-export" --model-dir "$home/runs/tiny run" --format tflite --quantization float32 \
    --output "$home/model.tflite"
test -s "$home/model.tflite"
"$bin/affectnet-evaluate" --help > /dev/null
echo "wheel check passed: $(basename "$wheel") installed in a clean venv; train, predict, export ran"
