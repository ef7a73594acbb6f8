#!/usr/bin/env bash
# The overhead of distribution: one movie rendered by `gramzoom render` (in-process coordinator
# and node, one segment) and by `gramzoom serve` + two `gramzoom worker` processes + `submit`
# (in segments, hand-offs through the coordinator), on this machine. Prints both wall times.
#   scripts/bench_cluster.sh [SIZE] [FRAMES] [SEGMENT_FRAMES]
# WORKERS (default 2) sets how many workers; WORKER_FLAGS is passed to each (e.g.
# --no-render-ahead, to see what rendering ahead during uploads saves).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
SIZE=${1:-128x128}
FRAMES=${2:-48}
SEG=${3:-12}
B=target/release/gramzoom
FLAGS=(--size "$SIZE" --frames "$FRAMES" --iters 5 --warmup 150 --seed 1)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

t0=$(date +%s.%N)
$B render examples/wheatfield.jpg -o "$WORK/local.mp4" "${FLAGS[@]}" --quiet
t1=$(date +%s.%N)
local_s=$(echo "$t1 - $t0" | bc)

$B serve --listen 127.0.0.1:0 --data "$WORK/data" 2> "$WORK/serve.log" &
for _ in $(seq 100); do grep -q "listening on" "$WORK/serve.log" && break; sleep 0.1; done
URL="http://$(sed -n 's/^listening on //p' "$WORK/serve.log")"
read -r -a EXTRA <<< "${WORKER_FLAGS:-}"
for i in $(seq "${WORKERS:-2}"); do
  RUST_LOG=warn $B worker --coordinator "$URL" --name "w$i" "${EXTRA[@]}" 2> "$WORK/w$i.log" &
done
sleep 1
t0=$(date +%s.%N)
JOB=$($B submit examples/wheatfield.jpg --coordinator "$URL" "${FLAGS[@]}" --segment-frames "$SEG")
$B watch "$JOB" --coordinator "$URL" 2> /dev/null
t1=$(date +%s.%N)
$B download "$JOB" -o "$WORK/cluster.mp4" --coordinator "$URL" 2> /dev/null
cluster_s=$(echo "$t1 - $t0" | bc)

segments=$(( (FRAMES + SEG - 1) / SEG ))
echo "movie $SIZE, $FRAMES frames, 5 iters/frame, warm-up 150"
printf 'render (one process, one segment):           %.1f s\n' "$local_s"
printf 'serve + %d worker(s) (%d segments of %d frames): %.1f s  (overhead %+.1f%%)\n' \
  "${WORKERS:-2}" "$segments" "$SEG" "$cluster_s" "$(echo "($cluster_s - $local_s) * 100 / $local_s" | bc -l)"
