#!/usr/bin/env bash
# Renders the gallery in docs/gallery: for three styles, a short movie per random-feature design
# (the former default vgg16-he-colour and the default vgg16-he-spectrum), shown as the style
# and the movie's first, middle and last frames in one contact sheet (gallery.jpg) with each
# row's texture scores (README.md). Run it again when a default changes. About 20 minutes on
# 2 CPU cores; pass --device cuda for a GPU. The sliced Wasserstein loss (`--loss gram,swd`)
# would add six rows at 2.6 times the time each; ARCHITECTURE.md compares the losses.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
cargo build --release -p cli
target/release/gramzoom bench --gallery docs/gallery \
  --styles examples/wheatfield.jpg,examples/immunohistochemistry.png,examples/gravel.png \
  --designs vgg16-he-colour,vgg16-he-spectrum --loss gram --sizes 192x128 --frames 24 --iters 4 "$@"
