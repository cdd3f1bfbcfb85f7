#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: runs gpulse-agent's diagnose and a short capture
# against the real NVML and saves what came back. Reads the GPU only: it changes no
# clocks, power limits, persistence or MIG settings, and installs nothing.
#
#   BIN=path/to/gpulse-agent OUT=dir scripts/gpu-capture.sh
#
# BIN defaults to target/release/gpulse-agent (built elsewhere and carried over);
# OUT defaults to ./gpu-capture; DURATION (capture, default 20s) and DIAGNOSE_DURATION
# (default 10s) set how long it samples. If python3 with torch is present, a short
# matrix multiply loop runs during part of the capture so busy readings are captured
# too. The agent finds NVML as it always does (GPULSE_AGENT_NVML_LIBRARY to point it
# elsewhere). Exits 1 when the capture or the diagnosis failed to run; a critical
# finding is not a failure of this script.
set -uo pipefail

BIN=${BIN:-target/release/gpulse-agent}
OUT=${OUT:-gpu-capture}
DURATION=${DURATION:-20s}
DIAGNOSE_DURATION=${DIAGNOSE_DURATION:-10s}
failed=0
mkdir -p "$OUT"

if [ ! -x "$BIN" ]; then
  echo "gpu-capture: no agent binary at $BIN; set BIN" >&2
  exit 1
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname)"
  echo "kernel: $(uname -r)"
  nvidia-smi --query-gpu=name,driver_version,pci.bus_id,power.default_limit,power.limit,clocks.max.sm --format=csv 2>&1 || true
} > "$OUT/host.txt"
nvidia-smi -q > "$OUT/nvidia-smi-q.txt" 2>&1 || true

# How NVML itself answers each call the backend uses (NVIDIA's Python binding, when present),
# idle here and again under load below: the NVML test library is checked against these.
probe=""
if python3 -c 'import pynvml' 2>/dev/null; then
  probe="$(dirname "$0")/nvml-probe.py"
  python3 "$probe" > "$OUT/nvml-probe-idle.json" 2> "$OUT/nvml-probe.log" || true
fi

load_pid=""
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  python3 - <<'PY' > "$OUT/load.txt" 2>&1 &
import time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.time() + 12
n = 0
while time.time() < end:
    a = (a @ a).clamp_(-1, 1); n += 1
torch.cuda.synchronize()
print(f"matmuls: {n}")
PY
  load_pid=$!
  echo "load: torch bf16 matmul loop for 12 s" >> "$OUT/host.txt"
else
  echo "load: none (no python3 with CUDA torch): idle readings only" >> "$OUT/host.txt"
fi

# nvidia-smi's own readings beside the capture, every 500 ms, to compare moment by moment.
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,utilization.memory,clocks.sm,clocks.mem,clocks.max.sm,temperature.gpu,temperature.memory,power.draw,power.limit,memory.used,memory.total,pcie.link.gen.current,pcie.link.width.current,clocks_event_reasons.active --format=csv -lms 500 > "$OUT/nvidia-smi-samples.csv" 2>&1 &
smi_pid=$!
if [ -n "$probe" ] && [ -n "$load_pid" ]; then
  (sleep 5; python3 "$probe" > "$OUT/nvml-probe-busy.json" 2>> "$OUT/nvml-probe.log") &
fi

"$BIN" capture --duration "$DURATION" --rate 500ms --out "$OUT/capture.gpulse" 2> "$OUT/capture.log"
rc=$?
echo "capture rc=$rc" >> "$OUT/host.txt"
[ "$rc" -eq 0 ] || failed=1
[ -n "$load_pid" ] && wait "$load_pid"
kill "$smi_pid" 2>/dev/null
wait

"$BIN" diagnose --duration "$DIAGNOSE_DURATION" --json > "$OUT/diagnose.json" 2> "$OUT/diagnose.log"
rc=$?
echo "diagnose rc=$rc (0 ok, 2 critical finding, 1 error)" >> "$OUT/host.txt"
[ "$rc" -le 2 ] && [ "$rc" -ne 1 ] || failed=1
"$BIN" diagnose --duration "$DIAGNOSE_DURATION" > "$OUT/diagnose.txt" 2>> "$OUT/diagnose.log"

# The agent's own /metrics on this host, as Prometheus would scrape it (no collector
# needed: batches wait unacknowledged while it serves its local page).
port=${METRICS_PORT:-19457}
"$BIN" --collector http://127.0.0.1:9 --interval 1s --http-listen "127.0.0.1:$port" 2> "$OUT/agent.log" &
agent_pid=$!
sleep 4
python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
  "http://127.0.0.1:$port/metrics" > "$OUT/agent-metrics.txt" 2>> "$OUT/agent.log" || failed=1
kill "$agent_pid" 2>/dev/null
wait "$agent_pid" 2>/dev/null

if [ -s "$OUT/capture.gpulse" ]; then
  "$BIN" diagnose --replay "$OUT/capture.gpulse" --duration "$DIAGNOSE_DURATION" --rate 100ms > "$OUT/replay-diagnose.txt" 2>&1
fi

ls -l "$OUT"
cat "$OUT/host.txt"
exit "$failed"
