#!/usr/bin/env bash
# Second README command: install what is needed (skipped when present) and run the test suite,
# plus the format and lint checks CI enforces. Tests build in the release profile, which shares
# libtorch's C++ glue with `cargo build --release` instead of compiling it a second time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --browser
source scripts/env.sh
cargo fmt --all -- --check
cargo test --release --workspace
cargo clippy --release --workspace --all-targets -- -D warnings
# The deployment files: Dockerfiles linted, kustomizations rendered and validated, offline.
scripts/check_deploy.sh
# The images: both built and a job run through each, when what they are made of changed since
# their last check on this machine (always on a fresh one). Needs root (debootstrap, chroot).
if [ "$(id -u)" = 0 ]; then
  scripts/check_images.sh --if-changed
else
  echo "images not checked: scripts/check_images.sh needs root" >&2
fi
