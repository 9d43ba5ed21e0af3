#!/usr/bin/env bash
# Instructions, and simulated L1 misses, per request of one L7 proxy on
# one thread, under valgrind's callgrind: a count that does not move with
# this machine's speed, for comparing two builds of the engine hop (or the
# hop and HAProxy) when timings are too noisy to tell a few percent apart.
# It counts user-space work only, and instructions are not time: a program
# can run more instructions faster (HAProxy does, with fewer cache
# misses), so compare builds of one program with it, and programs by time
# (`l7`). The count still depends a little on how many requests each
# wake-up finds ready (more under HTTP/2, where the load generator
# batches), so compare builds measured one after the other on a machine
# otherwise idle.
#
#   bench/l7/instructions.sh L7_BINARY [h1|h2] [SECONDS] [noop|header]
#   bench/l7/instructions.sh haproxy [h1|h2] [SECONDS]
#
# L7_BINARY is a built `l7` (its `hop` is the engine hop, with the no-op or
# header-adding Proxy-Wasm plugin when one is named); `haproxy` runs
# HAProxy with bench/l7's configuration. Needs valgrind, wrk, h2load,
# and (for the backend) `weft` next to L7_BINARY, or WEFT=path.
set -euo pipefail

target=${1:?usage: instructions.sh L7_BINARY|haproxy [h1|h2] [SECONDS]}
proto=${2:-h1}
seconds=${3:-10}
plugin=${4:-}
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_http() {
  for _ in $(seq 1 200); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  echo "nothing answers on port $1" >&2
  return 1
}

weft=${WEFT:-$(dirname "$(readlink -f "${target}")")/weft}
[ "$target" = haproxy ] && weft=${WEFT:-weft}
backend=$(free_port)
"$weft" sample-app --listen "127.0.0.1:$backend" --name app > "$dir/app.log" 2>&1 &
pids+=($!)
wait_http "$backend"

port=$(free_port)
if [ "$target" = haproxy ]; then
  bind="bind 127.0.0.1:$port"
  [ "$proto" = h2 ] && bind="$bind proto h2"
  cat > "$dir/haproxy.cfg" <<EOF
global
  nbthread 1
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 1s
  retries 2
  retry-on conn-failure empty-response response-timeout 502 503 504
  option http-keep-alive
frontend bench
  $bind
  default_backend app
backend app
  http-reuse always
  server app 127.0.0.1:$backend maxconn 0
EOF
  command=(haproxy -db -f "$dir/haproxy.cfg")
else
  command=("$target" hop "127.0.0.1:$port" "127.0.0.1:$backend" $plugin)
fi
valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file="$dir/cg.%p" \
  "${command[@]}" > "$dir/proxy.log" 2>&1 &
pids+=($!)
proxy=$!
if [ "$proto" = h2 ]; then
  # h2load needs the h2 port answering; curl speaks HTTP/1.1 only.
  for _ in $(seq 1 200); do
    h2load -n1 "http://127.0.0.1:$port/" 2>/dev/null | grep -q "1 succeeded" && break
    sleep 0.1
  done
else
  wait_http "$port"
fi

load() {
  if [ "$proto" = h2 ]; then
    h2load -t1 -c32 -m10 -D"$1" "http://127.0.0.1:$port/" |
      awk '/^requests:/ {print $8; exit}'
  else
    wrk -t1 -c32 -d"$1"s "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}'
  fi
}

echo "== warming up ($target, $proto)" >&2
load 3 > /dev/null
callgrind_control -z "$proxy" > /dev/null 2>&1
echo "== measuring ${seconds} s" >&2
requests=$(load "$seconds")
callgrind_control -d "$proxy" > /dev/null 2>&1
dump=$(ls "$dir"/cg.*.* | head -1)
python3 - "$dump" "$requests" "$target" "$proto" "$plugin" <<'EOF'
import sys
dump, requests, target, proto, plugin = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
events = totals = None
for line in open(dump):
    if line.startswith("events:"):
        events = line.split()[1:]
    if line.startswith(("summary:", "totals:")):
        totals = [int(x) for x in line.split()[1:]]
per = {e: t / requests for e, t in zip(events, totals)}
print(f"{target} {proto}{' ' + plugin if plugin else ''}: {requests} requests; per request: "
      f"{per['Ir']:.0f} instructions, {per['I1mr']:.0f} L1i misses, "
      f"{per['D1mr'] + per['D1mw']:.0f} L1d misses")
EOF
