#!/bin/sh
# Benchmark the sample bridge: for each N, start a fresh bridge pinned to core 0, run
# bench/run.py --external against it (load generator on core 1), then stop that bridge.
# Usage, from the repository root: bench/compare/run_sample.sh [LABEL] [CALLS] [STEADY_S]
set -eu
LABEL=${1:-sample}
CALLS=${2:-10,50,100}
STEADY=${3:-30}
BRIDGE_PORT=${BRIDGE_PORT:-9000}
RT_PORT=${RT_PORT:-9100}
PY=${PY:-.venv/bin/python}
BRIDGE=""
stop_bridge() {
    if [ -n "$BRIDGE" ]; then kill "$BRIDGE" 2>/dev/null || true; wait "$BRIDGE" 2>/dev/null || true; BRIDGE=""; fi
}
trap stop_bridge EXIT INT TERM
for N in $(echo "$CALLS" | tr ',' ' '); do
    OPENAI_API_KEY=bench-key taskset -c 0 bench/compare/.venv/bin/python bench/compare/sample_bridge.py \
        --port "$BRIDGE_PORT" --realtime-url "ws://127.0.0.1:$RT_PORT/v1/realtime" \
        > "${TMPDIR:-/tmp}/sample-bridge-$N.log" 2>&1 &
    BRIDGE=$!
    i=0
    until python3 -c "import socket; socket.create_connection(('127.0.0.1', $BRIDGE_PORT), 1)" 2>/dev/null; do
        i=$((i + 1)); [ "$i" -lt 100 ] || { echo "sample bridge did not start" >&2; exit 1; }; sleep 0.1
    done
    timeout 600 "$PY" bench/run.py --external "127.0.0.1:$BRIDGE_PORT" --realtime-port "$RT_PORT" \
        --bridge-pid "$BRIDGE" --no-webhook --stream-path /media-stream \
        --calls "$N" --steady-s "$STEADY" --label "$LABEL"
    stop_bridge
done
