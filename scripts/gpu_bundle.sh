#!/usr/bin/env bash
# Packs gramzoom's CUDA build for a GPU host that has PyTorch 2.11 (its libtorch and CUDA) but
# another Linux than Debian 12, without FFmpeg 5.1: one .tar.xz holding the binary and every
# shared library it needs except glibc's, the C++ runtime's (PyTorch's host already has a newer
# one, and a process can load only one) and libtorch's and CUDA's (the host's PyTorch brings
# them). On the GPU host, the two lines:
#   tar -xJf gramzoom-cuda.tar.xz
#   export LD_LIBRARY_PATH=$PWD/gramzoom-cuda/lib:$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__)+"/lib")')
# then gramzoom-cuda/gramzoom bench --device cuda --precision fp32,tf32,bf16 (and so on).
#
# Usage: scripts/gpu_bundle.sh [OUT.tar.xz]        default: target/gramzoom-cuda.tar.xz
#        BUNDLE_FEATURES= scripts/gpu_bundle.sh   packs the CPU build instead (to check the
#                                                  packing on a machine without CUDA libraries)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/gramzoom-cuda.tar.xz}
features=${BUNDLE_FEATURES-cli/cuda}
scripts/setup.sh
source scripts/env.sh

if [ -n "$features" ]; then
  cargo build --release -p cli --features "$features"
else
  cargo build --release -p cli
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dir=$stage/gramzoom-cuda
mkdir -p "$dir/lib"
cp target/release/gramzoom "$dir/gramzoom"
strip "$dir/gramzoom"

# What stays on the host: glibc, the C++ runtime, libtorch and CUDA.
host_lib() {
  case "$1" in
    linux-vdso* | ld-linux* | libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | \
      libutil.so* | libresolv.so* | libstdc++.so* | libgcc_s.so* | libgomp* | \
      libtorch* | libc10* | libcud* | libcupti* | libcublas* | libcufft* | libcurand* | \
      libcusparse* | libcusolver* | libnccl* | libnv* | libcaffe2* | libshm*) return 0 ;;
  esac
  return 1
}

missing=0
while read -r name arrow path _; do
  [ "$arrow" = "=>" ] || continue
  host_lib "$name" && continue
  if [ "$path" = "not" ]; then
    echo "gpu_bundle: $name is needed and not found" >&2
    missing=1
    continue
  fi
  cp -L "$path" "$dir/lib/$name"
done < <(ldd "$dir/gramzoom")
[ "$missing" = 0 ] || exit 1

# Every library the binary needs, other than the host's, must now resolve inside the bundle.
while read -r name arrow path _; do
  [ "$arrow" = "=>" ] || continue
  host_lib "$name" && continue
  case "$path" in
    "$dir/lib/"*) ;;
    *) echo "gpu_bundle: $name resolves to $path, not to the bundle" >&2; exit 1 ;;
  esac
done < <(LD_LIBRARY_PATH="$dir/lib" ldd "$dir/gramzoom")

mkdir -p "$(dirname "$out")"
tar -C "$stage" -cf - gramzoom-cuda | xz -T0 -6 > "$out.partial"
mv "$out.partial" "$out"
size=$(stat -c %s "$out")
echo "$out: $(ls "$dir/lib" | wc -l) libraries, $((size / 1024 / 1024)) MiB"
if [ "$size" -ge $((64 * 1024 * 1024)) ]; then
  echo "gpu_bundle: $out is over the 64 MiB a device call carries" >&2
  exit 1
fi
