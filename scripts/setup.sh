#!/usr/bin/env bash
# Installs everything gramzoom needs on a fresh Debian 12 machine, idempotently:
#   - Debian packages for ffmpeg-next (FFmpeg 5.1 dev headers, clang for bindgen, pkg-config)
#   - libtorch 2.11.0, taken from the PyPI torch==2.11.0 wheel, into a prefix outside the repo
# Prints the environment lines to use (`source <(scripts/setup.sh --env)` style is supported via scripts/env.sh).
set -euo pipefail

DEPS_DIR="${GRAMZOOM_DEPS:-$HOME/.cache/gramzoom}"
TORCH_VERSION="2.11.0"
TORCH_PREFIX="$DEPS_DIR/torch-$TORCH_VERSION"

log() { printf '[setup] %s\n' "$*" >&2; }

need_apt=()
for pkg in pkg-config clang libclang-dev libavcodec-dev libavformat-dev libavutil-dev \
           libswscale-dev libavfilter-dev libavdevice-dev libswresample-dev ffmpeg libsqlite3-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
else
  log "Debian packages already installed"
fi

if [ -f "$TORCH_PREFIX/torch/version.py" ] && grep -q "__version__ = '$TORCH_VERSION" "$TORCH_PREFIX/torch/version.py"; then
  log "libtorch $TORCH_VERSION already in $TORCH_PREFIX"
else
  log "installing libtorch $TORCH_VERSION (PyPI torch wheel) into $TORCH_PREFIX"
  rm -rf "$TORCH_PREFIX.partial"
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$TORCH_PREFIX.partial" \
    "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  grep -q "__version__ = '$TORCH_VERSION" "$TORCH_PREFIX.partial/torch/version.py" \
    || { log "unexpected torch version in wheel"; exit 1; }
  rm -rf "$TORCH_PREFIX"
  mv "$TORCH_PREFIX.partial" "$TORCH_PREFIX"
fi
