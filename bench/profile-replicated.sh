#!/usr/bin/env bash
# Profiles a 1 shard × 3 cluster (DURABILITY=fsync) under PUT load at the master:
# node CPU per write, the time node threads waited for a CPU (run-queue wait,
# /proc/<pid>/task/*/schedstat), and the top functions of each node (perf).
#
#   bench/profile-replicated.sh [SECONDS]        (default 8; needs perf; builds first)
#   NO_PERF=1 bench/profile-replicated.sh        # only CPU per write and run-queue wait
set -euo pipefail
SECS=${1:-8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release --bins --quiet
BIN=$ROOT/target/release/causalkv
BENCH=$ROOT/target/release/causalkv-bench
PORT=${PORT:-17500}
D=$(mktemp -d "${BENCH_TMP:-/var/tmp}/causalkv-profile3.XXXXXX")
VIEW=127.0.0.1:$PORT,127.0.0.1:$((PORT + 1)),127.0.0.1:$((PORT + 2))
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; sleep 1; kill -9 "${PIDS[@]}" 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
for i in 0 1 2; do
    env ADDRESS=127.0.0.1:$((PORT + i)) VIEW=$VIEW REPL_FACTOR=3 DATA_DIR=$D/n$i RUST_LOG=warn "$BIN" >"$D/log$i" 2>&1 &
    PIDS+=($!)
done
for _ in $(seq 1 100); do
    ok=1
    for j in 0 1 2; do curl -fs "http://127.0.0.1:$((PORT + j))/ready" >/dev/null 2>&1 || ok=0; done
    [[ $ok == 1 ]] && break
    sleep 0.1
done
cpu() { local t=0 p; for p in "${PIDS[@]}"; do set -- $(cut -d' ' -f14,15 "/proc/$p/stat"); t=$((t + $1 + $2)); done; echo $t; }
sched() { local t=0 f; for p in "${PIDS[@]}"; do for f in /proc/$p/task/*/schedstat; do set -- $(cat "$f" 2>/dev/null || echo 0 0 0); t=$((t + $2)); done; done; echo $t; }
c0=$(cpu); w0=$(sched)
if [[ -z ${NO_PERF:-} ]]; then
    for i in 0 1 2; do perf record -F 999 -p "${PIDS[$i]}" -o "$D/perf$i.data" -- sleep "$SECS" >/dev/null 2>&1 & done
fi
OUT=$("$BENCH" --nodes 127.0.0.1:$PORT -c 64 -d "$SECS" --warmup 0 --put-ratio 1.0 --value-size 256)
wait
c1=$(cpu); w1=$(sched)
echo "$OUT" | grep -E "^(op|put)"
ops=$(echo "$OUT" | awk '/^put/ {print $2}')
echo "cluster CPU per write: $(((c1 - c0) * 10000 / (ops * SECS))) µs; node threads waited for a CPU $(((w1 - w0) / 1000000)) ms in ${SECS} s"
if [[ -z ${NO_PERF:-} ]]; then
    for i in 0 1 2; do
        echo "=== node $i ($([[ $i == 0 ]] && echo master || echo worker))"
        perf report -i "$D/perf$i.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -20 | cut -c1-110
    done
fi
