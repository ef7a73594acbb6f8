#!/usr/bin/env bash
# Copies what a CUDA `gramzoom` needs at run time from a libtorch prefix made by
# `scripts/setup.sh --cuda` (PREFIX/torch/lib and PREFIX/nvidia/*/lib) to DEST, in the same
# layout, so libtorch's RPATH ($ORIGIN/../../nvidia/...) still finds everything. Left behind:
# headers, static archives, Python modules, libtorch_python, the linalg plug-in (it needs
# cuSOLVER, which is not installed), and CUDA tools' libraries nothing of ours opens
# (profiler, NVBLAS, cuFFTW, the alternative NVRTC, cuFile's RDMA and checkpoint helpers).
# Used by deploy/Dockerfile.worker; run it anywhere to see what the image will carry.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: deploy/runtime-libs.sh PREFIX DEST" >&2; exit 2; }
prefix=$1 dest=$2
[ -f "$prefix/torch/lib/libtorch_cuda.so" ] || { echo "$prefix has no libtorch_cuda.so" >&2; exit 1; }
[ -d "$prefix/nvidia/cudnn/lib" ] || { echo "$prefix has no CUDA libraries: run scripts/setup.sh --cuda" >&2; exit 1; }
skip='libtorch_python\.so|libtorch_cuda_linalg\.so|libnvperf_|libpcsamplingutil|libcheckpoint|libnvblas|libcufftw|libnvrtc\.alt|libnvrtc-builtins\.alt|libcufile_rdma'
copy() { # SRC_DIR DEST_DIR
  mkdir -p "$2"
  find "$1" -maxdepth 1 \( -type f -o -type l \) -name '*.so*' | grep -Ev "$skip" | while read -r f; do
    cp -a "$f" "$2/"
  done
}
copy "$prefix/torch/lib" "$dest/torch/lib"
for lib in "$prefix"/nvidia/*/lib; do
  copy "$lib" "$dest/nvidia/$(basename "$(dirname "$lib")")/lib"
done
du -sh "$dest" >&2
