#!/usr/bin/env bash
# Profiles forwarding: 4 nodes, REPL_FACTOR=2 (2 shards × 2), DURABILITY=fsync.
# GETs (or PUTs) at node 1 of only the other shard's keys, so every request is
# forwarded. Then the same keys are sent straight to a replica of their shard.
# For both it prints the server CPU per request of every node (from
# /proc/<pid>/stat), and the top functions of node 1 (perf) in the forwarded
# run.
#
#   bench/profile-forward.sh [get|put] [SECONDS]   (default get 6; needs perf; builds first)
#   NO_PERF=1 bench/profile-forward.sh             # only CPU per request
#   ONLY_FWD=1 ...                                 # only the forwarded run
#   CAUSALKV_BIN=path ...                          # another node binary (bench/ab-forward.sh)
set -euo pipefail
OP=${1:-get}
SECS=${2:-6}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/cluster.sh
source "$ROOT/bench/cluster.sh"
profile_cluster 4 2
D=$CLUSTER_DIR
N1=${ADDRS[0]}
ratio=0
[[ $OP == put ]] && ratio=1
COMMON=(--keys 10000 --key-size 16 --value-size 256 -c 64 --warmup 1 --put-ratio "$ratio" --only-keys-not-served-by "$N1")
"$BENCH" --target causalkv --nodes "$N1" -c 64 --keys 10000 --key-size 16 --value-size 256 --preload-only >/dev/null
sleep 1
per_op() { # BEFORE AFTER OPS: µs of CPU per request, per node and in all
    local -a a=($1) b=($2)
    local i t=0 out=""
    for i in 0 1 2 3; do
        out+="$(((b[i] - a[i]) * 10000 / $3)) "
        t=$((t + b[i] - a[i]))
    done
    echo "per node ${out}µs, all $((t * 10000 / $3)) µs"
}
run() { # LABEL PERF ARGS...: one measured run, its rate and CPU per request
    local label=$1 perf=$2
    shift 2
    local c0 c1 out ops perf_pid=
    c0=$(node_cpu)
    if [[ $perf == 1 && -z ${NO_PERF:-} ]]; then
        perf record -F 999 -g -p "${PIDS[0]}" -o "$D/perf.data" -- sleep "$((SECS + 1))" >/dev/null 2>&1 &
        perf_pid=$!
    fi
    out=$("$BENCH" --target causalkv --nodes "$N1" -d "$SECS" "${COMMON[@]}" "$@")
    # Only perf: the nodes are background jobs of this shell too.
    [[ -n $perf_pid ]] && wait "$perf_pid"
    c1=$(node_cpu)
    ops=$(echo "$out" | awk '/^all/ {print $2}')
    # The window includes the warm-up second: count its requests too (same rate).
    echo "$label: $ops req/s; $(per_op "$c0" "$c1" $((ops * (SECS + 1))))"
}
run "forwarded (at node 1)" 1
[[ -n ${ONLY_FWD:-} ]] || run "direct (at a replica of the key's shard)" 0 --route shard
if [[ -z ${NO_PERF:-} ]]; then
    echo "=== node 1 (the forwarding node), share of samples per object (kernel, causalkv, libc)"
    perf report -i "$D/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -6
    echo "=== node 1 (the forwarding node), top functions (self)"
    perf report -i "$D/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -25 | cut -c1-120
    echo "=== node 1, top functions (with children)"
    perf report -i "$D/perf.data" --children --sort symbol --stdio 2>/dev/null | grep -E "^ +[0-9]" | grep -i "causalkv\|hyper\|forward" | head -25 | cut -c1-140
fi
