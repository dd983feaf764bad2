#!/usr/bin/env bash
# `make demo`: the main job on the built-in sample images with the built-in model.
# Each step resumes: re-running skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
D2=".venv/bin/d2"
OUT="${DEMO_OUT:-demo-out}"
IMAGES="src/d2cli/data/sacre_coeur"
mkdir -p "$OUT"
if $D2 --help | grep -q " sfm "; then
  $D2 sfm "$IMAGES" --out "$OUT"
  $D2 show model "$OUT/sparse" --out "$OUT/model.png"
else
  $D2 extract "$IMAGES" --out "$OUT/feats.h5"
fi
echo "demo outputs in $OUT/"
