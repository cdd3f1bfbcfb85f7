#!/usr/bin/env bash
# The wire, connections and start-up, measured against a release collector in its own
# process (docs/benchmarks.md, "Wire, connections and start-up").
#
#   scripts/bench-wire.sh load AGENTS DURATION [gpulse-loadgen flags...]
#       gpulse-loadgen's JSON for AGENTS agents of 8 GPUs streaming for DURATION to a
#       collector process of its own; the load generator finds the collector's process
#       by its gRPC port and reports its CPU and memory. Add --http-less to skip the
#       /metrics scrapes (a scrape of 10,000 hosts is about 1 GB).
#   scripts/bench-wire.sh startup [RUNS]
#       Starts gpulse-agent --simulate RUNS times (default 10) against the collector and
#       prints, for each, the milliseconds from its start to its first acknowledged
#       batch (read from the agent's own /metrics every 2 ms).
#
# Build first: cargo build --release -p gpulse-collector -p gpulse-loadgen -p gpulse-agent
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${BIN_DIR:-target/release}
mode=${1:-}
for b in gpulse-collector gpulse-loadgen gpulse-agent; do
  [ -x "$bin/$b" ] || { echo "bench-wire: no $bin/$b; cargo build --release -p gpulse-collector -p gpulse-loadgen -p gpulse-agent" >&2; exit 1; }
done
# One descriptor per agent connection on each side, and a margin.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc_port=$(free_port); http_port=$(free_port)

# A plain collector: no simulated fleet, its ledger in SQLite under a temporary data dir.
RUST_LOG=warn "$bin/gpulse-collector" --grpc-listen "127.0.0.1:$grpc_port" \
  --http-listen "127.0.0.1:$http_port" --data-dir "$dir/data" > "$dir/collector.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$http_port/healthz" > /dev/null && break
  sleep 0.1
done

case "$mode" in
  load)
    agents=${2:?AGENTS}; duration=${3:?DURATION}; shift 3
    http=(--http "127.0.0.1:$http_port")
    args=()
    for a in "$@"; do
      if [ "$a" = "--http-less" ]; then http=(); else args+=("$a"); fi
    done
    # The agent's default interval unless the flags give one.
    interval=(--interval 5s)
    for a in "${args[@]}"; do [ "$a" = "--interval" ] && interval=(); done
    "$bin/gpulse-loadgen" --collector "http://127.0.0.1:$grpc_port" "${http[@]}" \
      --agents "$agents" --gpus 8 "${interval[@]}" --duration "$duration" --json "${args[@]}"
    ;;
  startup)
    runs=${2:-10}
    for i in $(seq "$runs"); do
      port=$(free_port)
      start=$(date +%s%N)
      RUST_LOG=warn "$bin/gpulse-agent" --simulate gpus=8,model=h100-sxm --agent-id "startup-$i" \
        --collector "http://127.0.0.1:$grpc_port" --http-listen "127.0.0.1:$port" > "$dir/agent-$i.log" 2>&1 &
      agent=$!
      until curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null \
          | grep -q '^gpulse_agent_batches_acked_total [1-9]'; do
        sleep 0.002
        if [ $(( ($(date +%s%N) - start) / 1000000 )) -gt 10000 ]; then echo "run $i: no ack in 10 s" >&2; break; fi
      done
      echo $(( ($(date +%s%N) - start) / 1000000 ))
      kill "$agent"; wait "$agent" 2>/dev/null || true
    done
    ;;
  *)
    echo "usage: scripts/bench-wire.sh load AGENTS DURATION [loadgen flags] | startup [RUNS]" >&2
    exit 2
    ;;
esac
