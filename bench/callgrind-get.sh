#!/usr/bin/env bash
# CPU cost of one GET (and one PUT) on a single node, in instructions, with
# callgrind: repeatable under any machine load, unlike wall-clock rates.
#
#   bench/callgrind-get.sh                 # build, then measure
#   CG_NO_BUILD=1 bench/callgrind-get.sh   # measure the binaries already built
#
# Starts one node (DURABILITY=fsync) under `valgrind --tool=callgrind` with
# instrumentation off, preloads CG_KEYS keys, runs CG_WARMUP GETs, waits for
# the log compaction that follows the preload, then per phase: zero the
# counters, instrumentation on, exactly CG_GETS GETs (`causalkv-bench --ops`,
# each session sending back its last context), instrumentation off, dump. The
# same for CG_PUTS PUTs (0 skips it). Everything the process executes during a
# phase counts (hyper, axum, the handler, sled, malloc, background tasks; an
# idle node costs ~20 k instructions/s, i.e. noise). The node is stopped with
# SIGTERM. Prints instructions per operation and the top functions of the
# GET phase; keeps the dumps in CG_DIR (default: a temporary directory).
set -euo pipefail

GETS=${CG_GETS:-5000}
PUTS=${CG_PUTS:-2000}
KEYS=${CG_KEYS:-2000}
CONNS=${CG_CONNS:-16}
WARMUP=${CG_WARMUP:-1000}
TOP=${CG_TOP:-30}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
for tool in valgrind callgrind_control callgrind_annotate curl python3; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install valgrind curl python3)" >&2; exit 1; }
done

if [[ -z ${CG_NO_BUILD:-} ]]; then
    # Line tables give callgrind_annotate file:function names; they do not change the code.
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --bins --quiet
fi
BIN=$CARGO_TARGET_DIR/release/causalkv
BENCH=$CARGO_TARGET_DIR/release/causalkv-bench
WORK=$(mktemp -d "${TMPDIR:-/tmp}/causalkv-callgrind.XXXXXX")
OUT_DIR=${CG_DIR:-$WORK}
mkdir -p "$OUT_DIR"
node=
cleanup() {
    if [[ -n $node ]] && kill -0 "$node" 2>/dev/null; then
        kill -TERM "$node" 2>/dev/null || true
        wait "$node" 2>/dev/null || true
    fi
    rm -rf "$WORK/data"
    [[ $OUT_DIR == "$WORK" ]] || rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=bench/ports.sh
source "$ROOT/bench/ports.sh"
port=$(ports 1)
addr=127.0.0.1:$port
ADDRESS=$addr VIEW=$addr REPL_FACTOR=1 DATA_DIR=$WORK/data DURABILITY=fsync RUST_LOG=warn \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT_DIR/cg.out" "$BIN" >"$WORK/node.log" 2>&1 &
node=$!
for _ in $(seq 600); do curl -fsS -m 2 "http://$addr/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS -m 2 "http://$addr/ready" >/dev/null || { echo "node did not become ready:" >&2; cat "$WORK/node.log" >&2; exit 1; }

bench() { "$BENCH" --target causalkv --nodes "$addr" -c "$CONNS" --keys "$KEYS" --warmup 0 "$@"; }
ctl() { callgrind_control "$@" "$node" >/dev/null 2>&1 || { echo "callgrind_control $* failed" >&2; exit 1; }; }
# Runs one measured phase; prints the dump file's name.
phase() {
    local name=$1
    shift
    ctl -z
    ctl -i on
    bench "$@" >"$WORK/$name.txt"
    ctl -i off
    ctl -d "$name"
    grep -l "^desc: Trigger: Client Request: $name\$\|^desc: Trigger: dump $name\$" "$OUT_DIR"/cg.out.* | tail -1
}
total() { awk '/^totals:/ {print $2}' "$1"; }
check() {
    # Every operation must have succeeded, or the division means nothing.
    awk -v op="$2" '$1 == op && $NF != 0 {bad = 1} END {exit bad}' "$WORK/$1.txt" ||
        { echo "errors in the $1 phase:" >&2; cat "$WORK/$1.txt" >&2; exit 1; }
}

bench --preload-only >/dev/null
bench --put-ratio 0 --ops "$WARMUP" >/dev/null
# The preload's log entries are compacted every 2 s; let that happen outside the measurement.
sleep 6

get_file=$(phase get --put-ratio 0 --ops "$GETS")
check get get
get_ir=$(total "$get_file")
put_ir=
if ((PUTS > 0)); then
    put_file=$(phase put --put-ratio 1 --ops "$PUTS")
    check put put
    put_ir=$(total "$put_file")
fi
kill -TERM "$node"
wait "$node" || true
node=

echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' + uncommitted changes')"
echo "GET: $get_ir instructions / $GETS GETs = $((get_ir / GETS)) per GET ($CONNS connections, $KEYS keys)"
[[ -n $put_ir ]] && echo "PUT: $put_ir instructions / $PUTS PUTs = $((put_ir / PUTS)) per PUT (DURABILITY=fsync; group commit makes this vary)"
echo "dumps: $get_file${put_ir:+ $put_file}"
echo
echo "## GET phase: top functions (self, instructions per GET = Ir / $GETS)"
callgrind_annotate --threshold=100 "$get_file" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | grep -v 'PROGRAM TOTALS' | head -n "$TOP" |
    sed -E 's#/root/\.cargo/registry/src/[^/]*/##; s#/rustc/[0-9a-f]*/library/##; s# \[[^]]*\]$##' |
    awk -v n="$GETS" '{ir = $1; gsub(",", "", ir); $1 = sprintf("%8.0f", ir / n); print}' | cut -c1-170
