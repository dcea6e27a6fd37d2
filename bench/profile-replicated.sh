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
# shellcheck source=bench/cluster.sh
source "$ROOT/bench/cluster.sh"
profile_cluster 3 3
D=$CLUSTER_DIR
cpu() { sum $(node_cpu); }
sched() { local t=0 f; for p in "${PIDS[@]}"; do for f in /proc/$p/task/*/schedstat; do set -- $(cat "$f" 2>/dev/null || echo 0 0 0); t=$((t + $2)); done; done; echo $t; }
c0=$(cpu); w0=$(sched)
PERF_PIDS=()
if [[ -z ${NO_PERF:-} ]]; then
    for i in 0 1 2; do
        perf record -F 999 -p "${PIDS[$i]}" -o "$D/perf$i.data" -- sleep "$SECS" >/dev/null 2>&1 &
        PERF_PIDS+=($!)
    done
fi
OUT=$("$BENCH" --nodes "${ADDRS[0]}" -c 64 -d "$SECS" --warmup 0 --put-ratio 1.0 --value-size 256)
# Only perf: the nodes are background jobs of this shell too.
for p in "${PERF_PIDS[@]}"; do wait "$p"; done
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
