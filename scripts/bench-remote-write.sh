#!/usr/bin/env bash
# Remote-write throughput and lag, measured: a release collector pushing to a local
# VictoriaMetrics (Debian package victoria-metrics) while gpulse-loadgen streams
# simulated agents to it. Prints what the collector's own counters say.
#
#   scripts/bench-remote-write.sh [AGENTS] [DURATION] [PUSH_INTERVAL]
#
# Defaults: 100 agents x 8 GPUs sampling every 5 s, for 60 s, pushed every 5 s.
# Build first: cargo build --release -p gpulse-collector -p gpulse-loadgen
set -euo pipefail
cd "$(dirname "$0")/.."

agents=${1:-100}
duration=${2:-60s}
push=${3:-5s}
bin=${BIN_DIR:-target/release}
vm=$(command -v victoria-metrics || true)
[ -n "$vm" ] || { echo "bench-remote-write: victoria-metrics is missing: scripts/install-test-deps.sh installs it" >&2; exit 1; }
for b in gpulse-collector gpulse-loadgen; do
  [ -x "$bin/$b" ] || { echo "bench-remote-write: no $bin/$b; cargo build --release -p gpulse-collector -p gpulse-loadgen" >&2; exit 1; }
done

dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
vm_port=$(free_port); grpc_port=$(free_port); http_port=$(free_port)

"$vm" -storageDataPath "$dir/vm" -httpListenAddr "127.0.0.1:$vm_port" -retentionPeriod 1d \
  -search.latencyOffset 0s -memory.allowedPercent 20 > "$dir/vm.log" 2>&1 &
pids+=($!)

cat > "$dir/collector.toml" <<EOF
grpc_listen = "127.0.0.1:$grpc_port"
http_listen = "127.0.0.1:$http_port"
data_dir = "$dir/data"

[[remote_write]]
name = "victoria"
url = "http://127.0.0.1:$vm_port/api/v1/write"
interval = "$push"
EOF
"$bin/gpulse-collector" --config "$dir/collector.toml" > "$dir/collector.log" 2>&1 &
pids+=($!)
collector_pid=$!

metric() {
  python3 - "$http_port" "$1" <<'PY'
import sys, urllib.request
port, name = sys.argv[1], sys.argv[2]
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
total = 0.0
for line in text.splitlines():
    if line.startswith(name + "{") or line.startswith(name + " "):
        total += float(line.rsplit(" ", 1)[1])
print(total)
PY
}

for _ in $(seq 100); do
  metric gpulse_collector_remote_write_samples_sent_total >/dev/null 2>&1 && break
  sleep 0.2
done
cpu_before=$(awk '{print $14 + $15}' "/proc/$collector_pid/stat")
sent_before=$(metric gpulse_collector_remote_write_samples_sent_total)
start=$(date +%s.%N)
"$bin/gpulse-loadgen" --collector "http://127.0.0.1:$grpc_port" --http "127.0.0.1:$http_port" \
  --agents "$agents" --gpus 8 --interval 5s --duration "$duration" --json > "$dir/loadgen.json"
end=$(date +%s.%N)
sent=$(metric gpulse_collector_remote_write_samples_sent_total)
dropped=$(metric gpulse_collector_remote_write_samples_dropped_total)
failed=$(metric gpulse_collector_remote_write_samples_failed_total)
queue=$(metric gpulse_collector_remote_write_queue_samples)
last=$(metric gpulse_collector_remote_write_last_success_timestamp_seconds)
now=$(date +%s.%N)
cpu_after=$(awk '{print $14 + $15}' "/proc/$collector_pid/stat")
tick=$(getconf CLK_TCK)
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$collector_pid/status")
stored=$(python3 - "$vm_port" <<'PY'
import sys, urllib.request, json
port = sys.argv[1]
body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/series/count", timeout=30).read()
print(json.loads(body)["data"][0])
PY
)
python3 - <<PY
elapsed = $end - $start
sent = $sent - $sent_before
print(f"agents {$agents} x 8 GPUs, samples every 5s, pushed every $push, {elapsed:.1f} s")
print(f"remote write: {sent:.0f} samples sent, {sent / elapsed:,.0f} samples/s; dropped {$dropped:.0f}, failed {$failed:.0f}")
print(f"at the end: queue {$queue:.0f} samples, last accepted push {$now - $last:.2f} s ago")
print(f"series at VictoriaMetrics: $stored")
print(f"collector CPU {($cpu_after - $cpu_before) / $tick / elapsed:.2f} cores, peak RSS {$rss_kib / 1024:.0f} MiB")
PY
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("loadgen:", {k: d[k] for k in d if k in ("batches_sent","batches_acked","gpu_samples_per_second","ack_latency_ms_p99")})' "$dir/loadgen.json" 2>/dev/null || cat "$dir/loadgen.json"
