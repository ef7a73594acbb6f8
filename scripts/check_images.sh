#!/usr/bin/env bash
# Builds both images of deploy/ and runs a job through each, with no container registry: the
# images their FROM lines name are made here from Debian's packages (debootstrap) and this
# machine's Rust toolchain, and buildah builds the Dockerfiles with chroot isolation and the vfs
# driver (no daemon, no overlay mounts). Then:
#   - the coordinator image serves (as uid 10001) a job that a worker on the host renders;
#   - the worker image renders (as uid 10001, on the CPU) a job of a coordinator on the host.
# Prints both images' sizes.
#
#   scripts/check_images.sh              build and run, always
#   scripts/check_images.sh --if-changed only when the images' inputs (deploy/, the set-up
#                                        scripts, Cargo.lock, the crates' sources) changed since
#                                        the last pass on this machine (a stamp in the cache)
# Needs root (debootstrap, chroot); installs debootstrap and buildah with apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

cache="${GRAMZOOM_CACHE:-$HOME/.cache/gramzoom}/images"
mkdir -p "$cache"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Names as the Dockerfiles' FROM lines spell them, so no FROM line needs changing.
slim=docker.io/library/debian:bookworm-slim
rust=docker.io/library/rust:1.89-bookworm
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot

# What the images are made of: a change to any of these rebuilds them.
inputs_hash() {
  git ls-files -z deploy scripts/setup.sh scripts/env.sh scripts/check_images.sh Cargo.lock \
    Cargo.toml '*/Cargo.toml' '*.rs' '*.proto' '*build.rs' .dockerignore \
    | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}
stamp="$cache/passed"
hash=$(inputs_hash)
if [ "${1:-}" = "--if-changed" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
  echo "images: unchanged since their last check on this machine (stamp $stamp)"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "check_images.sh needs root (debootstrap and chroot builds)" >&2; exit 1; }
# One check at a time on a machine (two test runs would debootstrap into the same cache); a
# check killed half-way leaves a root file system behind, removed by the next.
exec 9>"$cache/lock"
flock 9
awk -v c="$cache/rootfs-" 'index($2, c) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
rm -rf --one-file-system "$cache"/rootfs-*
if ! command -v debootstrap >/dev/null || ! command -v buildah >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap buildah >/dev/null
fi

# The recipe of the base images below: a change remakes them.
base_version=2
have_image() {
  [ "$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "gramzoom.base"}}' "$1" 2>/dev/null)" \
    = "$base_version" ]
}

# What Debian's official images add to a plain debootstrap: apt keeps no package archives or
# binary caches after it runs (136 MB in the coordinator image without it), and in the slim one
# dpkg installs no documentation, manual pages or translations (copyright files stay).
debian_image_config() { # $1 root, $2 slim or full
  cat >"$1/etc/apt/apt.conf.d/90gramzoom-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  [ "$2" = slim ] || return 0
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/lintian/*' 'path-exclude /usr/share/linda/*' 'path-exclude /usr/share/locale/*' \
    >"$1/etc/dpkg/dpkg.cfg.d/90gramzoom-slim"
  find "$1/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
  rm -rf "$1"/usr/share/{man,groff,info,lintian,linda,locale}/*
}

# A Debian root file system as an image: debootstrap into a folder, then one layer of it.
# $1 image name, $2 extra packages (comma-separated, may be empty), $3 a script run on the folder.
base_image() {
  local name=$1 include=$2 finish=$3 root="$cache/rootfs-$RANDOM"
  echo "images: making $name from Debian bookworm packages"
  debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; rm -rf "$root" "$root.log"; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
  $finish "$root"
  local ctr
  ctr=$(buildah from scratch)
  tar -C "$root" -cf "$root.tar" .
  buildah add --quiet "$ctr" "$root.tar" / >/dev/null
  buildah config --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd bash --label gramzoom.base="$base_version" "$ctr"
  if [ "$name" = "$rust" ]; then buildah config --env CARGO_HOME=/usr/local/cargo "$ctr"; fi
  buildah commit --quiet --rm "$ctr" "$name" >/dev/null
  rm -rf "$root" "$root.tar" "$root.log"
}
slim_base() { debian_image_config "$1" slim; }
# The Rust toolchain this machine builds with (its docs left out), at /usr/local/rust; and the
# certificate authorities this machine adds to Debian's (an intercepting proxy's), so that the
# builds reach crates.io and PyPI as this machine does. The images built here are for this
# check, never pushed.
rust_base() {
  debian_image_config "$1" full
  local sysroot
  sysroot=$(rustc --print sysroot)
  mkdir -p "$1/usr/local/rust" "$1/usr/local/cargo"
  tar -C "$sysroot" --exclude=./share/doc -cf - . | tar -C "$1/usr/local/rust" -xf -
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/"
    chroot "$1" update-ca-certificates >/dev/null 2>&1
  fi
}
have_image "$slim" || base_image "$slim" "" slim_base
# The official rust image's base (buildpack-deps) has a C toolchain, git, curl and certificates.
have_image "$rust" || base_image "$rust" \
  "ca-certificates,curl,git,gcc,g++,libc6-dev,make,pkg-config,python3,xz-utils,procps" rust_base

build() { # $1 Dockerfile, $2 tag
  local t=$SECONDS
  echo "images: building $2 from $1"
  # Docker format: OCI images would drop the Dockerfiles' SHELL lines.
  buildah bud --quiet --pull=never --format docker --layers -f "$1" -t "$2" . >"$cache/build-$(basename "$2").log" 2>&1 \
    || { tail -40 "$cache/build-$(basename "$2").log" >&2; exit 1; }
  echo "images: $2 built in $((SECONDS - t)) s"
}
# vfs keeps every layer as a whole copy, about 10 GB more per rebuild of both: earlier builds'
# layers are the next build's cache (the set-up steps, the CUDA wheels), kept while the disk has
# room and let go of (all untagged images, the cache with them) when it has less than 40 GB.
store=/var/lib/containers/storage
mkdir -p "$store"
if [ "$(df --output=avail -B1G "$store" | tail -1)" -lt 40 ]; then
  echo "images: less than 40 GB free, removing earlier builds' layers"
  buildah rmi --prune >/dev/null 2>&1 || true
fi
build deploy/Dockerfile.coordinator localhost/gramzoom-coordinator:check
build deploy/Dockerfile.worker localhost/gramzoom-worker:check

# --- a job through each ---
cargo build --release -q -p cli
gz=target/release/gramzoom
work=$(mktemp -d)
pids=()
containers=()
cleanup() {
  # Each was started in a session of its own (setsid): its whole group goes, a container's
  # process with it.
  for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for c in "${containers[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The port a coordinator bound, from its `listening on` line.
port_of() {
  for _ in $(seq 600); do
    local line
    line=$(grep -m1 '^listening on ' "$1" 2>/dev/null || true)
    [ -n "$line" ] && { echo "${line##*:}"; return; }
    sleep 0.1
  done
  echo "no coordinator came up:" >&2; cat "$1" >&2; exit 1
}

# Submits a 64x48 movie, waits for it and checks the output is a whole MP4.
run_job() { # $1 coordinator URL, $2 label
  local job
  job=$($gz submit --coordinator "$1" --size 64x48 --frames 6 --warmup 10 --iters 2 --segment-frames 3)
  timeout 600 $gz watch --coordinator "$1" "$job" >/dev/null 2>&1 \
    || { echo "$2: job $job did not succeed" >&2; $gz status --coordinator "$1" "$job" >&2 || true; exit 1; }
  $gz download --coordinator "$1" "$job" -o "$work/$2.mp4" >/dev/null
  head -c 12 "$work/$2.mp4" | grep -q ftyp || { echo "$2: the output is not an MP4" >&2; exit 1; }
  echo "images: $2: job $job rendered and downloaded ($(stat -c %s "$work/$2.mp4") bytes)"
}

# Runs a command in a container of image $1 as the image's user, host network, with $work
# mounted at /work; its output goes to $2.
in_image() {
  local image=$1 log=$2 ctr
  shift 2
  ctr=$(buildah from --pull-never "$image")
  containers+=("$ctr")
  local user
  user=$(buildah inspect --format '{{.OCIv1.Config.User}}' "$ctr")
  [ "$user" = 10001 ] || { echo "$image runs as user '$user', not 10001" >&2; exit 1; }
  setsid buildah run --user 10001 -v "$work:/work" "$ctr" -- "$@" >"$log" 2>&1 &
  pids+=($!)
}
chmod 777 "$work"

# The coordinator image, a host worker.
mkdir -m 777 "$work/data"
in_image localhost/gramzoom-coordinator:check "$work/coordinator.log" \
  gramzoom-coordinator --listen 127.0.0.1:0 --data /work/data
url="http://127.0.0.1:$(port_of "$work/coordinator.log")"
GRAMZOOM_OFFLINE=1 setsid $gz worker --coordinator "$url" --device cpu --name host >"$work/host-worker.log" 2>&1 &
pids+=($!)
run_job "$url" coordinator-image

# The worker image (a CUDA build, on the CPU here), a host coordinator.
setsid $gz serve --listen 127.0.0.1:0 --data "$work/host-data" 2>"$work/host-coordinator.log" &
pids+=($!)
url="http://127.0.0.1:$(port_of "$work/host-coordinator.log")"
mkdir -m 777 "$work/cache"
in_image localhost/gramzoom-worker:check "$work/image-worker.log" \
  env GRAMZOOM_OFFLINE=1 GRAMZOOM_CACHE=/work/cache gramzoom worker --coordinator "$url" --device cpu --name image
run_job "$url" worker-image

for image in gramzoom-coordinator gramzoom-worker; do
  size=$(buildah images --format '{{.Size}}' "localhost/$image:check")
  echo "images: $image $size"
done
echo "$hash" >"$stamp"
echo "images: passed"
