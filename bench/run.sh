#!/usr/bin/env bash
# The full benchmark: causalkv (1 node; 1 shard × 3 replicas; 2 shards × 2;
# 3 shards × 2), etcd (3 members), Redis (1 server) and the HTTP ceiling, all
# on loopback, driven by causalkv-bench with the same code; then visibility
# latency, hold-back share and footprint. Writes bench/results/<stamp>.{json,md,png}
# and refreshes the generated part of docs/BENCHMARKS.md.
#
# Replication speed (issue 15), at BENCH_ROUTE_CONNS connections:
#   causalkv-3  put-master: every PUT sent to the shard's master (--route shard).
#   etcd        put-leader: every PUT sent to the leader (its counterpart, as in
#               issue 15's table).
#   causalkv-4  4 nodes, REPL_FACTOR=2 (2 shards × 2). put/get: every request at
#               node 1 (at every BENCH_CONNS; about half the keys belong to the
#               other shard and are forwarded); put-direct/get-direct: the same
#               keys, each sent to a node of its own shard (PUT to the master, GET
#               to a replica; --route shard); put-fwd/get-fwd: only the other
#               shard's keys, at node 1 (all forwarded; --only-keys-not-served-by);
#               put-fwd-direct/get-fwd-direct: those keys at their own shard.
#   Every causalkv row samples the CPU time (/proc/<pid>/stat) of every node
#   process at the start and end of its measured window (--server-pids):
#   µs of server CPU per successful operation, per node and in total, apart
#   from the load generator's own CPU ("bench CPU").
#
# Settings (environment):
#   BENCH_SECONDS  measured seconds per run            (10)
#   BENCH_WARMUP   warm-up seconds per run              (2)
#   BENCH_RUNS     runs per row, the median is reported (3)
#   BENCH_CONNS    connection counts                    ("1 16 64 256")
#   BENCH_KEYS     distinct keys of the rows            (10000)
#   BENCH_TARGETS  subset of: ceiling causalkv-1 causalkv-3 causalkv-4 causalkv-6 etcd redis
#   BENCH_ROUTE_CONNS connections of the routing rows above (64)
#   BENCH_EXTRAS   subset of: visibility holdback footprint
#   BENCH_VIS_SECONDS measured seconds of the visibility run (15)
#   FOOTPRINT_KEYS keys loaded for the footprint        (1000000)
#   BENCH_TMP      where data directories go (a real disk, not tmpfs) (/var/tmp)
#   BENCH_NO_DOCS  set to 1 to leave docs/BENCHMARKS.md alone
#   BENCH_QUIET_PCT   before each run, wait while the machine is busier than this
#                     (% of all cores, sampled over 0.5 s; 0 = never wait)  (25)
#   BENCH_QUIET_WAIT  longest such wait in seconds, then run anyway          (120)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_WARMUP=${BENCH_WARMUP:-2}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_CONNS=${BENCH_CONNS:-"1 16 64 256"}
BENCH_KEYS=${BENCH_KEYS:-10000}
BENCH_TARGETS=${BENCH_TARGETS:-"ceiling causalkv-1 causalkv-3 causalkv-4 causalkv-6 etcd redis"}
BENCH_ROUTE_CONNS=${BENCH_ROUTE_CONNS:-64}
BENCH_EXTRAS=${BENCH_EXTRAS-"visibility holdback footprint"}
FOOTPRINT_KEYS=${FOOTPRINT_KEYS:-1000000}
BENCH_VIS_SECONDS=${BENCH_VIS_SECONDS:-15}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
BENCH_QUIET_PCT=${BENCH_QUIET_PCT:-25}
BENCH_QUIET_WAIT=${BENCH_QUIET_WAIT:-120}
STAMP=${BENCH_STAMP:-$(date -u +%Y-%m-%d-%H%M)}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
has() { [[ " $2 " == *" $1 "* ]]; }

# ---------------------------------------------------------------- install
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3 python3-venv)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
# The Debian packages may start their own service on the default ports; ours use others.

VENV=bench/.venv
if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    log "setting up $VENV (matplotlib)"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        as_root apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check matplotlib
fi
PY="$VENV/bin/python"

# ---------------------------------------------------------------- build
log "building release binaries"
cargo build --release --bins --quiet
BIN=$ROOT/target/release/causalkv
BENCH=$ROOT/target/release/causalkv-bench

# ---------------------------------------------------------------- processes
mkdir -p "$BENCH_TMP"
WORK=$(mktemp -d "$BENCH_TMP/causalkv-bench.XXXXXX")
RAW=$WORK/raw
mkdir -p "$RAW" "$WORK/logs"
PIDS=()

stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
stop_all() {
    ((${#PIDS[@]})) && stop_pids "${PIDS[@]}"
    PIDS=()
}
cleanup() {
    local rc=$?
    stop_all
    if [[ $rc != 0 ]]; then log "failed (status $rc); logs kept in $WORK/logs"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, logs in $WORK/logs/NAME.log.
LAST_PID=
start() {
    local name=$1
    shift
    "$@" >"$WORK/logs/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# shellcheck source=bench/ports.sh
source "$ROOT/bench/ports.sh"

# wait_for DESCRIPTION CMD...: polls CMD for up to 60 s; fails at once when a
# process started since the last stop_all has exited (e.g. its port was taken).
wait_for() {
    local what=$1 pid
    shift
    for _ in $(seq 600); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        for pid in "${PIDS[@]}"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                log "$what: a process exited during start-up (logs in $WORK/logs)"
                return 1
            fi
        done
        sleep 0.1
    done
    log "$what did not come up (logs in $WORK/logs)"
    return 1
}
http_ok() { curl -fsS -m 2 "$1" >/dev/null 2>&1; }
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# attempt FN ARGS...: starts a target, up to 3 times with new ports.
attempt() {
    local i
    for i in 1 2 3; do
        if "$@"; then return 0; fi
        stop_all
        log "starting $1 failed (try $i of 3)"
    done
    die "could not start $*"
}

# start_causalkv NAME NODES RF [ENV...]: NODES causalkv processes; sets NODES_CSV.
NODES_CSV=
NODE_PIDS=()
SERVER_PIDS= # ADDRESS=PID,... of the nodes, for --server-pids
start_causalkv() {
    local name=$1 n=$2 rf=$3
    shift 3
    local p addrs=() i=0
    for p in $(ports "$n"); do addrs+=("127.0.0.1:$p"); done
    NODES_CSV=$(IFS=,; echo "${addrs[*]}")
    NODE_PIDS=()
    local named=()
    for a in "${addrs[@]}"; do
        rm -rf "$WORK/data/$name-$i"
        start "$name-$i" env ADDRESS="$a" VIEW="$NODES_CSV" REPL_FACTOR="$rf" DATA_DIR="$WORK/data/$name-$i" \
            DURABILITY=fsync RUST_LOG=warn "$@" "$BIN"
        NODE_PIDS+=("$LAST_PID")
        named+=("$a=$LAST_PID")
        i=$((i + 1))
    done
    SERVER_PIDS=$(IFS=,; echo "${named[*]}")
    for a in "${addrs[@]}"; do wait_for "causalkv $a" http_ok "http://$a/ready" || return 1; done
}

CEILING=
start_ceiling() {
    local p
    read -r p < <(ports 1)
    CEILING=127.0.0.1:$p
    start ceiling "$BENCH" ceiling-server --port "$p"
    wait_for "ceiling server" tcp_open "$p"
}

ETCD=
start_etcd() {
    local c0 c1 c2 q0 q1 q2 i c
    read -r c0 c1 c2 q0 q1 q2 < <(ports 6)
    local cports=("$c0" "$c1" "$c2") qports=("$q0" "$q1" "$q2")
    local initial="m0=http://127.0.0.1:$q0,m1=http://127.0.0.1:$q1,m2=http://127.0.0.1:$q2"
    for i in 0 1 2; do
        rm -rf "$WORK/data/etcd-$i"
        start "etcd-$i" etcd --name "m$i" --data-dir "$WORK/data/etcd-$i" \
            --listen-client-urls "http://127.0.0.1:${cports[$i]}" --advertise-client-urls "http://127.0.0.1:${cports[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${qports[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${qports[$i]}" \
            --initial-cluster "$initial" --initial-cluster-token causalkv-bench --initial-cluster-state new \
            --logger zap --log-level warn
    done
    for c in "${cports[@]}"; do
        wait_for "etcd on $c" bash -c "curl -fsS -m 2 http://127.0.0.1:$c/health | grep -q '\"health\":\"true\"'" || return 1
    done
    ETCD="127.0.0.1:$c0,127.0.0.1:$c1,127.0.0.1:$c2"
}

etcd_leader() { # the client address of the member that leads now (v3 JSON gateway status)
    local a
    for a in ${ETCD//,/ }; do
        if curl -fsS -m 2 -X POST "http://$a/v3/maintenance/status" -d '{}' 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if s["header"]["member_id"] == s["leader"] else 1)'; then
            echo "$a"
            return 0
        fi
    done
    return 1
}

REDIS=
start_redis() {
    local p
    read -r p < <(ports 1)
    mkdir -p "$WORK/data/redis"
    start redis redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --protected-mode no --dir "$WORK/data/redis"
    wait_for "redis" bash -c "redis-cli -p $p ping | grep -q PONG" || return 1
    REDIS=127.0.0.1:$p
}

# ---------------------------------------------------------------- quiet
# busy_pct SECONDS: share of all cores' time spent busy (by any process).
busy_pct() {
    local a b tot=0 idle i
    read -ra a < /proc/stat
    sleep "$1"
    read -ra b < /proc/stat
    for i in 1 2 3 4 5 6 7 8; do tot=$((tot + b[i] - a[i])); done
    idle=$((b[4] - a[4] + b[5] - a[5]))
    echo $((tot > 0 ? 100 * (tot - idle) / tot : 0))
}
# wait_quiet NAME: waits (bounded) until other work on the machine calms down;
# records the busy share seen before the run in $RAW/quiet.tsv.
wait_quiet() {
    local busy=0 start=$SECONDS
    if ((BENCH_QUIET_PCT > 0)); then
        while busy=$(busy_pct 0.5); ((busy > BENCH_QUIET_PCT)); do
            if ((SECONDS - start >= BENCH_QUIET_WAIT)); then
                log "machine still ${busy}% busy after $((SECONDS - start)) s: running $1 anyway"
                break
            fi
        done
    fi
    printf '%s\t%s\t%s\n' "$1" "$busy" "$((SECONDS - start))" >>"$RAW/quiet.tsv"
}

# ---------------------------------------------------------------- rows
COMMON=(--keys "$BENCH_KEYS" --key-size 16 --value-size 256 --duration "$BENCH_SECONDS" --warmup "$BENCH_WARMUP")

# series SERIES KIND NODES OP [ARGS...]: every connection count (SERIES_CONNS
# if set, else BENCH_CONNS), BENCH_RUNS times. OP put* writes, any other reads.
series() {
    local name=$1 kind=$2 nodes=$3 op=$4
    shift 4
    local ratio=0
    [[ $op == put* ]] && ratio=1
    local c r line
    for c in ${SERIES_CONNS:-$BENCH_CONNS}; do
        for r in $(seq "$BENCH_RUNS"); do
            wait_quiet "$name/$op/c$c/r$r"
            line=$("$BENCH" --target "$kind" --nodes "$nodes" -c "$c" --put-ratio "$ratio" "${COMMON[@]}" --seed "$r" \
                --label "$name/$op" --json "$RAW/run.$name.$op.c$c.r$r.json" "$@" 2>&1 | tee -a "$WORK/logs/bench.log" | grep '^all' || true)
            if [[ -s $RAW/run.$name.$op.c$c.r$r.json ]]; then
                log "$name $op c=$c run $r: $(awk '{printf "%s ops/s, p50 %s ms, p99 %s ms, errors %s", $2, $4, $5, $9}' <<<"$line")"
            else
                log "$name $op c=$c run $r: FAILED (see $WORK/logs/bench.log)"
            fi
        done
    done
}

preload() { # KIND NODES
    "$BENCH" --target "$1" --nodes "$2" -c 64 --keys "$BENCH_KEYS" --key-size 16 --value-size 256 --preload-only \
        >>"$WORK/logs/bench.log"
}

median_put_rate() { # SERIES CONNS: median PUT throughput of the runs
    python3 -c 'import json,glob,sys,statistics
v=[json.load(open(f))["put"]["throughput"] for f in glob.glob(sys.argv[1])]
print(int(statistics.median(v)) if v else 0)' "$RAW/run.$1.put.c$2.r*.json"
}

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
# The disk, measured first, before any target has written to it.
"$BENCH" fsync-probe --dir "$WORK" --count 300 >"$RAW/fsync.json"
log "work dir $WORK; ${BENCH_SECONDS}s runs (+${BENCH_WARMUP}s warm-up) × $BENCH_RUNS at connections: $BENCH_CONNS"

if has ceiling "$BENCH_TARGETS"; then
    attempt start_ceiling
    series ceiling ceiling "$CEILING" put
    series ceiling ceiling "$CEILING" get
    stop_all
fi

kv_target() { # NAME NODES RF
    attempt start_causalkv "$1" "$2" "$3"
    series "$1" causalkv "$NODES_CSV" put --server-pids "$SERVER_PIDS"
    preload causalkv "$NODES_CSV"
    series "$1" causalkv "$NODES_CSV" get --server-pids "$SERVER_PIDS"
}

if has causalkv-1 "$BENCH_TARGETS"; then
    kv_target causalkv-1 1 1
    stop_all
fi

if has causalkv-3 "$BENCH_TARGETS"; then
    kv_target causalkv-3 3 3
    IFS=, read -r master w1 w2 <<<"$NODES_CSV"
    # Every write at the master (learnt from its /kv-store/status): the cost of
    # replication without forwarding.
    SERIES_CONNS=$BENCH_ROUTE_CONNS series causalkv-3 causalkv "$master" put-master --route shard --server-pids "$SERVER_PIDS"
    if has holdback "$BENCH_EXTRAS"; then
        log "hold-back: sessions write at the master and read at a worker right after"
        wait_quiet holdback
        "$BENCH" --target causalkv --nodes "$NODES_CSV" --pattern write-read -c 16 "${COMMON[@]}" \
            --label causalkv-3/write-read --json "$RAW/holdback.json" | tee -a "$WORK/logs/bench.log" >&2
    fi
    if has visibility "$BENCH_EXTRAS"; then
        max=$(median_put_rate causalkv-3 64)
        [[ $max -gt 0 ]] || max=$(median_put_rate causalkv-3 "$(awk '{print $NF}' <<<"$BENCH_CONNS")")
        rate=$((max / 2))
        log "visibility at $rate PUT/s (half of the measured $max)"
        wait_quiet visibility
        "$BENCH" visibility --master "$master" --workers "$w1,$w2" --rate "$rate" -c 64 --duration "$BENCH_VIS_SECONDS" \
            --warmup "$BENCH_WARMUP" --json "$RAW/visibility.json" | tee -a "$WORK/logs/bench.log" >&2
    fi
    stop_all
fi

if has causalkv-4 "$BENCH_TARGETS"; then
    # 2 shards × 2. Node 1 (first in VIEW) takes every request of the "at node 1"
    # rows; the routed rows send each key to its own shard instead.
    attempt start_causalkv causalkv-4 4 2
    IFS=, read -r n1 _ <<<"$NODES_CSV"
    cpu=(--server-pids "$SERVER_PIDS")
    series causalkv-4 causalkv "$n1" put "${cpu[@]}"
    SERIES_CONNS=$BENCH_ROUTE_CONNS series causalkv-4 causalkv "$n1" put-direct --route shard "${cpu[@]}"
    SERIES_CONNS=$BENCH_ROUTE_CONNS series causalkv-4 causalkv "$n1" put-fwd --only-keys-not-served-by "$n1" "${cpu[@]}"
    SERIES_CONNS=$BENCH_ROUTE_CONNS series causalkv-4 causalkv "$n1" put-fwd-direct --only-keys-not-served-by "$n1" --route shard "${cpu[@]}"
    preload causalkv "$NODES_CSV"
    series causalkv-4 causalkv "$n1" get "${cpu[@]}"
    SERIES_CONNS=$BENCH_ROUTE_CONNS series causalkv-4 causalkv "$n1" get-direct --route shard "${cpu[@]}"
    SERIES_CONNS=$BENCH_ROUTE_CONNS series causalkv-4 causalkv "$n1" get-fwd --only-keys-not-served-by "$n1" "${cpu[@]}"
    SERIES_CONNS=$BENCH_ROUTE_CONNS series causalkv-4 causalkv "$n1" get-fwd-direct --only-keys-not-served-by "$n1" --route shard "${cpu[@]}"
    stop_all
fi

if has causalkv-6 "$BENCH_TARGETS"; then
    kv_target causalkv-6 6 2
    stop_all
fi

if has etcd "$BENCH_TARGETS"; then
    attempt start_etcd
    series etcd etcd "$ETCD" put
    if leader=$(etcd_leader); then
        SERIES_CONNS=$BENCH_ROUTE_CONNS series etcd etcd "$leader" put-leader
    else
        log "no etcd leader found: the PUT-at-the-leader row is skipped"
    fi
    preload etcd "$ETCD"
    series etcd etcd "$ETCD" get
    series etcd etcd "$ETCD" get-serializable --serializable
    stop_all
fi

if has redis "$BENCH_TARGETS"; then
    attempt start_redis
    series redis redis "$REDIS" put
    preload redis "$REDIS"
    series redis redis "$REDIS" get
    stop_all
fi

# ---------------------------------------------------------------- footprint
rss_bytes() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$1/status"; }
now_ms() { date +%s%3N; }
if has footprint "$BENCH_EXTRAS"; then
    log "footprint: loading $FOOTPRINT_KEYS keys (16 B keys, 100 B values) into one node"
    attempt start_causalkv footprint 1 1
    pid=${NODE_PIDS[0]}
    addr=$NODES_CSV
    dir="$WORK/data/footprint-0"
    rss_empty=$(rss_bytes "$pid")
    disk_empty=$(du -sb "$dir" | cut -f1)
    t0=$(now_ms)
    "$BENCH" --target causalkv --nodes "$addr" -c 64 --keys "$FOOTPRINT_KEYS" --key-size 16 --value-size 100 --preload-only \
        --json "$RAW/footprint-load.json" >>"$WORK/logs/bench.log"
    load_ms=$(($(now_ms) - t0))
    sleep 2
    rss_loaded=$(rss_bytes "$pid")
    live=$(curl -fsS "http://$addr/kv-store/key-count" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key-count"])')
    t0=$(now_ms)
    stop_pids "$pid"
    stop_ms=$(($(now_ms) - t0))
    disk_loaded=$(du -sb "$dir" | cut -f1)
    t0=$(now_ms)
    start footprint-restart env ADDRESS="$addr" VIEW="$addr" REPL_FACTOR=1 DATA_DIR="$dir" DURABILITY=fsync RUST_LOG=warn "$BIN"
    pid=$LAST_PID
    for _ in $(seq 120000); do http_ok "http://$addr/ready" && break; sleep 0.005; done
    ready_ms=$(($(now_ms) - t0))
    sleep 1
    rss_restarted=$(rss_bytes "$pid")
    live_restarted=$(curl -fsS "http://$addr/kv-store/key-count" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key-count"])')
    stop_all
    cat >"$RAW/footprint.json" <<EOF
{"mode": "footprint", "keys": $FOOTPRINT_KEYS, "key_bytes": 16, "value_bytes": 100, "live_keys": $live,
 "live_keys_after_restart": $live_restarted, "load_ms": $load_ms, "rss_empty": $rss_empty, "rss_loaded": $rss_loaded,
 "rss_restarted": $rss_restarted, "disk_empty": $disk_empty, "disk_loaded": $disk_loaded, "stop_ms": $stop_ms,
 "restart_to_ready_ms": $ready_ms}
EOF
    log "footprint: $(cat "$RAW/footprint.json" | tr -d '\n')"
fi

# ---------------------------------------------------------------- machine
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
fs=$(df -T "$WORK" | awk 'NR==2 {print $2}')
M_NPROC=$(nproc) M_CPU=$cpu M_MEM=$((mem_kb * 1024)) M_KERNEL=$(uname -r) M_FS=$fs \
    M_OS=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-}") \
    M_ETCD=$(etcd --version 2>/dev/null | head -1) M_REDIS=$(redis-server --version 2>/dev/null) \
    M_LOADAVG="$LOADAVG (after: $(cut -d' ' -f1-3 /proc/loadavg))" M_RUSTC=$(rustc --version) M_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || true) \
    S_SECONDS=$BENCH_SECONDS S_WARMUP=$BENCH_WARMUP S_RUNS=$BENCH_RUNS S_CONNS=$BENCH_CONNS S_KEYS=$BENCH_KEYS \
    S_ROUTE_CONNS=$BENCH_ROUTE_CONNS \
    "$PY" - "$RAW/machine.json" <<'EOF'
import json, os, sys
e = os.environ
json.dump({
    "nproc": int(e["M_NPROC"]), "cpu": e["M_CPU"], "mem_bytes": int(e["M_MEM"]), "kernel": e["M_KERNEL"],
    "os": e["M_OS"], "filesystem": e["M_FS"], "etcd": e["M_ETCD"], "redis": e["M_REDIS"],
    "loadavg": e["M_LOADAVG"], "rustc": e["M_RUSTC"], "commit": e["M_COMMIT"],
    "settings": {"seconds": float(e["S_SECONDS"]), "warmup": float(e["S_WARMUP"]), "runs": int(e["S_RUNS"]),
                 "connections": [int(c) for c in e["S_CONNS"].split()], "keys": int(e["S_KEYS"]),
                 "route_connections": int(e["S_ROUTE_CONNS"]),
                 "key_bytes": 16, "value_bytes": 256},
}, open(sys.argv[1], "w"), indent=1)
EOF

# ---------------------------------------------------------------- report
mkdir -p bench/results
docs=(--doc docs/BENCHMARKS.md)
[[ ${BENCH_NO_DOCS:-0} == 1 ]] && docs=()
"$PY" bench/report.py --raw "$RAW" --stamp "$STAMP" --out bench/results "${docs[@]}"
log "done: bench/results/$STAMP.{json,md,png}"
