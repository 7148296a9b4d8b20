#!/usr/bin/env bash
# Regenerates every file in sample_models/ (needs the torch extra). Deterministic for a given seed
# on the same torch build; all four models share the same digits split (seed 0).
set -euo pipefail
cd "$(dirname "$0")"
common=(--dataset digits --arch mlp --epochs 60 --seed 0 --threads 1)
lipgraph train "${common[@]}" --method plain     --out plain.onnx     --test-out digits_test.npz
lipgraph train "${common[@]}" --method lmt       --c 1.0 --out lmt.onnx       --test-out digits_test.npz
lipgraph train "${common[@]}" --method groupsort --eps 0.5 --out groupsort.onnx --test-out digits_test.npz
lipgraph train "${common[@]}" --method awp       --eps 0.5 --out awp.onnx       --test-out digits_test.npz
