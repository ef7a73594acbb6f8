#!/usr/bin/env bash
# First README command: install what gramzoom needs (skipped when present), build it, and render a
# short zoom movie from the built-in example style (Van Gogh's wheat field) on the CPU, or on
# CUDA when a GPU build and device are there. Output: out/demo.mp4 (and out/demo.gif).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
cargo build --release --bin gramzoom
mkdir -p out
./target/release/gramzoom render -o out/demo.mp4 --size 320x180 --seconds 3 "$@"
./target/release/gramzoom render -o out/demo.gif --size 160x96 --seconds 2 --fps 25 --quiet "$@"
echo "wrote out/demo.mp4 and out/demo.gif"
