#!/usr/bin/env bash
# Installs everything gramzoom needs on a fresh Debian 12 machine, idempotently:
#   - Debian packages for ffmpeg-next (FFmpeg 5.1 dev headers, clang for bindgen, pkg-config)
#   - libtorch 2.11.0, taken from the PyPI torch==2.11.0 wheel, into a prefix outside the repo
# Prints the environment lines to use (`source <(scripts/setup.sh --env)` style is supported via scripts/env.sh).
#   - with --browser: Debian's Chromium and ChromeDriver and axe-core (npm), for the dashboard's
#     browser tests (scripts/test.sh passes it; images and plain renders do not need them)
#   - with --cuda: also the CUDA libraries libtorch_cuda loads, for `cargo build -p cli --features
#     cuda` and the worker image; with --no-torch: no libtorch at all (the coordinator image).
# deploy/Dockerfile.* run this very script, so images are built the way CI builds.
set -euo pipefail

CUDA=0
TORCH=1
BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --cuda) CUDA=1 ;;
    --no-torch) TORCH=0 ;;
    --browser) BROWSER=1 ;;
    *) echo "usage: scripts/setup.sh [--cuda | --no-torch] [--browser]" >&2; exit 2 ;;
  esac
done

DEPS_DIR="${GRAMZOOM_DEPS:-$HOME/.cache/gramzoom}"
TORCH_VERSION="2.11.0"
TORCH_PREFIX="$DEPS_DIR/torch-$TORCH_VERSION"

log() { printf '[setup] %s\n' "$*" >&2; }

packages=(pkg-config clang libclang-dev libavcodec-dev libavformat-dev libavutil-dev
          libswscale-dev libavfilter-dev libavdevice-dev libswresample-dev ffmpeg libsqlite3-dev
          # aubio's beat tracker, run as its own program (GPL-3) for `--beats`.
          aubio-tools)
# The browser tests drive Debian's Chromium through its ChromeDriver (W3C WebDriver).
if [ "$BROWSER" -eq 1 ]; then
  packages+=(chromium chromium-driver fonts-dejavu-core)
  # A machine's own Node.js (not Debian's) brings its npm; Debian's would conflict with it.
  command -v npm >/dev/null || packages+=(npm)
fi
need_apt=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
# pip fetches libtorch (and the CI tools of scripts/test.sh).
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
else
  log "Debian packages already installed"
fi

if [ "$TORCH" -eq 0 ]; then
  log "no libtorch (--no-torch)"
elif [ -f "$TORCH_PREFIX/torch/version.py" ] && grep -q "__version__ = '$TORCH_VERSION" "$TORCH_PREFIX/torch/version.py"; then
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

# The CUDA libraries a CUDA build links and loads: libtorch_cuda's DT_NEEDED closure (cudart,
# cupti, cuBLAS/cuBLASLt, cuFFT, cuFile, cuRAND, cuSPARSE with its nvJitLink, cuSPARSELt, NCCL,
# NVSHMEM, cuDNN with the sub-libraries it opens) and NVRTC, which ATen opens for jitted
# element-wise kernels. Pinned as torch 2.11.0's own metadata pins them. Left out: cuSOLVER
# (only torch.linalg), NVTX, Triton and the Python packages (about 1.3 GB of the 2.6 GB a plain
# `pip install torch` brings).
CUDA_WHEELS=(
  "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85" "nvidia-cublas==13.1.0.3.*"
  "nvidia-cufft==12.0.0.61.*" "nvidia-cufile==1.15.1.6.*" "nvidia-curand==10.4.0.35.*"
  "nvidia-cusparse==12.6.3.3.*" "nvidia-nvjitlink==13.0.88.*" "nvidia-cuda-nvrtc==13.0.88.*"
  "nvidia-cudnn-cu13==9.19.0.56" "nvidia-cusparselt-cu13==0.8.0" "nvidia-nccl-cu13==2.28.9"
  "nvidia-nvshmem-cu13==3.4.5"
)
if [ "$CUDA" -eq 1 ]; then
  marker="$TORCH_PREFIX/.cuda-libraries"
  if [ -f "$marker" ] && [ "$(cat "$marker")" = "${CUDA_WHEELS[*]}" ]; then
    log "CUDA libraries already in $TORCH_PREFIX"
  else
    log "installing the CUDA libraries libtorch_cuda loads into $TORCH_PREFIX"
    python3 -m pip install -q --disable-pip-version-check --no-deps --upgrade --target "$TORCH_PREFIX" "${CUDA_WHEELS[@]}"
    printf '%s' "${CUDA_WHEELS[*]}" > "$marker"
  fi
fi

# axe-core, the accessibility checker the browser tests run on every dashboard page; pinned.
AXE_VERSION="4.10.3"
if [ "$BROWSER" -eq 1 ]; then
  axe="$DEPS_DIR/npm/node_modules/axe-core"
  if [ -f "$axe/axe.min.js" ] && grep -q "\"version\": \"$AXE_VERSION\"" "$axe/package.json"; then
    log "axe-core $AXE_VERSION already in $axe"
  else
    log "installing axe-core $AXE_VERSION into $DEPS_DIR/npm"
    mkdir -p "$DEPS_DIR/npm"
    npm install --silent --no-audit --no-fund --prefix "$DEPS_DIR/npm" "axe-core@$AXE_VERSION" >/dev/null
  fi
fi
