# Sourced by the profile scripts, with ROOT set to the repository: a causalkv
# cluster on free loopback ports, DURABILITY=fsync, data and logs in one
# temporary directory under BENCH_TMP (a real disk).
#
#   profile_cluster N RF     build the release binaries, set BENCH, start the
#                            cluster (below) and stop it when the script exits;
#                            CAUSALKV_BIN names another node binary (an A/B)
#   start_cluster BIN N RF   start N nodes; sets CLUSTER_DIR, ADDRS and PIDS
#                            (arrays, node 1 first) and returns once every node
#                            answers /ready (30 s at most)
#   stop_cluster             SIGTERM, SIGKILL after 1 s, remove CLUSTER_DIR
#   node_cpu                 user + system ticks of each node, space-separated
#   sum N...                 the sum of its arguments
# shellcheck source=bench/ports.sh
source "$ROOT/bench/ports.sh"

CLUSTER_DIR=
ADDRS=()
PIDS=()

profile_cluster() {
    cargo build --release --bins --quiet
    BENCH=$ROOT/target/release/causalkv-bench
    trap stop_cluster EXIT
    start_cluster "${CAUSALKV_BIN:-$ROOT/target/release/causalkv}" "$1" "$2"
}

start_cluster() {
    local bin=$1 n=$2 rf=$3 p i a ok view
    CLUSTER_DIR=$(mktemp -d "${BENCH_TMP:-/var/tmp}/causalkv-profile.XXXXXX")
    for p in $(ports "$n"); do ADDRS+=("127.0.0.1:$p"); done
    view=$(IFS=,; echo "${ADDRS[*]}")
    for i in "${!ADDRS[@]}"; do
        env ADDRESS="${ADDRS[$i]}" VIEW="$view" REPL_FACTOR="$rf" DATA_DIR="$CLUSTER_DIR/n$i" DURABILITY=fsync \
            RUST_LOG=warn "$bin" >"$CLUSTER_DIR/log$i" 2>&1 &
        PIDS+=($!)
    done
    for _ in $(seq 1 300); do
        ok=1
        for a in "${ADDRS[@]}"; do curl -fs "http://$a/ready" >/dev/null 2>&1 || ok=0; done
        [[ $ok == 1 ]] && return 0
        sleep 0.1
    done
    echo "the cluster did not get ready in 30 s; node logs:" >&2
    tail -n 5 "$CLUSTER_DIR"/log* >&2
    return 1
}

stop_cluster() {
    kill "${PIDS[@]}" 2>/dev/null || true
    sleep 1
    kill -9 "${PIDS[@]}" 2>/dev/null || true
    [[ -n $CLUSTER_DIR ]] && rm -rf "$CLUSTER_DIR"
}

node_cpu() {
    local p
    for p in "${PIDS[@]}"; do
        set -- $(cut -d' ' -f14,15 "/proc/$p/stat")
        printf '%s ' $(($1 + $2))
    done
}

sum() {
    local t=0 x
    for x; do t=$((t + x)); done
    echo "$t"
}
