#!/usr/bin/env bash
# Second README command: install what is needed (skipped when present) and run the test suite,
# plus the format and lint checks CI enforces. Tests build in the release profile, which shares
# libtorch's C++ glue with `cargo build --release` instead of compiling it a second time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
cargo fmt --all -- --check
cargo test --release --workspace
cargo clippy --release --workspace --all-targets -- -D warnings
# The Kubernetes manifests, validated offline against the 1.37 schemas (strict: unknown fields fail).
KV="${GRAMZOOM_DEPS:-$HOME/.cache/gramzoom}/kubernetes-validate-1.37.0"
if [ ! -d "$KV/kubernetes_validate" ]; then
  rm -rf "$KV.partial"
  python3 -m pip install -q --disable-pip-version-check --target "$KV.partial" kubernetes-validate==1.37.0
  mv "$KV.partial" "$KV"
fi
PYTHONPATH="$KV" python3 -m kubernetes_validate --strict --quiet deploy/k8s/coordinator.yaml deploy/k8s/worker.yaml
