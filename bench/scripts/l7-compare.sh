#!/usr/bin/env bash
# Same-run L7 comparison of two `weft` binaries: each runs the demo mesh
# (`weft up examples/demo`), and wrk (HTTP/1.1) and h2load (h2c) load its
# gateway `edge` (127.0.1.50:8080, then HBONE/mTLS to frontend's node),
# alternating A, B, A, B so drift on this noisy machine hits both.
#
#   bench/scripts/l7-compare.sh A-binary B-binary [rounds]
#
# Needs wrk and h2load (Debian: wrk, nghttp2-client). Prints one line per
# run: binary, tool, requests/s, latency figures.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
a="$1"; b="$2"; rounds="${3:-2}"
url="http://127.0.1.50:8080/"
ulimit -n 20000

run_one() {
  local bin="$1" label="$2" state
  state="$(mktemp -d)"
  "$bin" up examples/demo --state-dir "$state" --log-level warn --background-load 0 \
    >"$state/up.log" 2>&1 &
  local pid=$!
  local ready=0
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then ready=1; break; fi
    sleep 0.1
  done
  if [ "$ready" != 1 ]; then
    echo "$label: the gateway did not answer; log in $state/up.log" >&2
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
    return 1
  fi
  # Warm up connections and pools.
  wrk -t1 -c32 -d2s "$url" >/dev/null 2>&1 || true
  local w h
  w="$(wrk -t1 -c32 -d10s --latency "$url")"
  h="$(h2load -t1 -c32 -m10 -D10 "$url" 2>&1)"
  printf '%s wrk   %s req/s  p50 %s  p99 %s\n' "$label" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$w")" \
    "$(awk '$1=="50%" {print $2}' <<<"$w")" \
    "$(awk '$1=="99%" {print $2}' <<<"$w")"
  printf '%s h2load %s req/s  mean %s  max %s  (%s)\n' "$label" \
    "$(awk '/^finished in/ {print $4}' <<<"$h")" \
    "$(awk '/^time for request:/ {print $6}' <<<"$h")" \
    "$(awk '/^time for request:/ {print $5}' <<<"$h")" \
    "$(awk '/^requests:/ {print $8, $9, $10, $11}' <<<"$h")"
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$state"
}

for round in $(seq 1 "$rounds"); do
  run_one "$a" "A(round $round)"
  run_one "$b" "B(round $round)"
done
