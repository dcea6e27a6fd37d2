#!/usr/bin/env bash
# Profiles one causalkv node (DURABILITY=fsync) under causalkv-bench load:
# CPU profile of the node (perf record -g), its top functions and shared
# objects, the CPU split between node, load generator and the rest, and the
# fdatasync/fsync/sync_file_range calls (perf stat on syscall tracepoints).
#
#   bench/profile.sh [get|put] [CONNECTIONS] [SECONDS]      (default: get 64 5)
#
# Writes bench/results/profile-<stamp>-<op>.txt and prints it. Needs perf.
set -euo pipefail

OP=${1:-get}
CONNS=${2:-64}
SECS=${3:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STAMP=${BENCH_STAMP:-$(date -u +%Y-%m-%d-%H%M)}
OUT=bench/results/profile-$STAMP-$OP.txt
command -v perf >/dev/null || { echo "perf is needed (apt-get install linux-perf)" >&2; exit 1; }

cargo build --release --bins --quiet
BIN=$ROOT/target/release/causalkv
BENCH=$ROOT/target/release/causalkv-bench
WORK=$(mktemp -d "${BENCH_TMP:-/var/tmp}/causalkv-profile.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=bench/ports.sh
source "$ROOT/bench/ports.sh"
port=$(ports 1)
addr=127.0.0.1:$port
ADDRESS=$addr DATA_DIR=$WORK/data DURABILITY=fsync RUST_LOG=warn "$BIN" >"$WORK/node.log" 2>&1 &
node=$!
PIDS+=("$node")
for _ in $(seq 300); do curl -fsS -m 1 "http://$addr/ready" >/dev/null 2>&1 && break; sleep 0.1; done

ratio=0
[[ $OP == put ]] && ratio=1
"$BENCH" --target causalkv --nodes "$addr" -c 64 --keys 10000 --preload-only >/dev/null
"$BENCH" --target causalkv --nodes "$addr" -c "$CONNS" --put-ratio "$ratio" --keys 10000 --warmup 1 \
    --duration $((SECS * 2 + 2)) >"$WORK/bench.txt" &
bench=$!
PIDS+=("$bench")
sleep 1.5

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
read -ra cpu0 </proc/stat
n0=$(ticks "$node")
b0=$(ticks "$bench")
perf record -F 499 -g -p "$node" -o "$WORK/perf.data" -- sleep "$SECS" 2>/dev/null >/dev/null
read -ra cpu1 </proc/stat
n1=$(ticks "$node")
b1=$(ticks "$bench")
syncs=$(perf stat -x, -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync,syscalls:sys_enter_sync_file_range \
    -p "$node" -- sleep "$SECS" 2>&1 >/dev/null | awk -F, '{sub(/^syscalls:sys_enter_/, "", $3); printf "%s %s, ", $3, $1}') || syncs="?"
wait "$bench" || true

total=0
for i in 1 2 3 4 5 6 7 8; do total=$((total + cpu1[i] - cpu0[i])); done
idle=$((cpu1[4] - cpu0[4] + cpu1[5] - cpu0[5]))
{
    echo "# causalkv node under $OP load, $CONNS connections ($(date -u +%FT%TZ), commit $(git rev-parse --short HEAD))"
    echo
    grep -E '^(op|get|put|load)' "$WORK/bench.txt"
    echo
    echo "CPU over ${SECS}s of all cores' time: node $((100 * (n1 - n0) / total))%, load generator $((100 * (b1 - b0) / total))%," \
        "everything else $((100 * (total - idle - (n1 - n0) - (b1 - b0)) / total))%, idle $((100 * idle / total))%"
    echo "disk syncs by the node in ${SECS}s: $syncs"
    echo
    echo "## node: shared objects (self time)"
    perf report -i "$WORK/perf.data" --no-children --sort dso --stdio --percent-limit 1 2>/dev/null | grep -E '^ +[0-9]'
    echo
    echo "## node: functions (self time, ≥ 0.7%)"
    perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio --percent-limit 0.7 -g none 2>/dev/null |
        grep -E '^ +[0-9]' | cut -c1-150
} | tee "$OUT"
