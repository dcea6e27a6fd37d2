#!/usr/bin/env bash
# Docker tests: builds the image (docker/build.sh), brings up the compose
# cluster of docker/compose.yaml on a project of its own, runs the scenarios
# of tests/docker_cluster.rs against it through host ports, and always tears
# it down (containers, networks, volumes). Skips, saying so, when no Docker
# engine answers.
#
# The cluster is docker/compose.yaml with two mechanical changes so it can
# run beside a cluster a developer already has up: host ports 23800-23807
# instead of 13800-13807 and subnet 10.214.0.0/24 instead of 10.213.0.0/24.
#
#   tests/docker/run.sh                       # every scenario
#   tests/docker/run.sh s2_partition          # a cargo test filter
#   KEEP_CLUSTER=1 tests/docker/run.sh        # leave the cluster up afterwards
#   CAUSALKV_TEST_RUST_LOG=causalkv=debug tests/docker/run.sh   # node log level
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! docker info >/dev/null 2>&1; then
  echo "docker tests SKIPPED: no Docker engine (docker info failed)"
  exit 0
fi
if docker compose version >/dev/null 2>&1; then
  COMPOSE_BIN=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE_BIN=(docker-compose)
else
  echo "docker tests FAILED: a Docker engine answers but neither 'docker compose' nor 'docker-compose' exists" >&2
  exit 1
fi

PROJECT=${CAUSALKV_TEST_PROJECT:-causalkv-dockertest}
WORK=target/docker/test
FILE=$WORK/compose.yaml
LOG=$WORK/scenarios.log
mkdir -p "$WORK"
COMPOSE=("${COMPOSE_BIN[@]}" -f "$FILE" -p "$PROJECT")

teardown() {
  local status=$?
  if [ "$status" -ne 0 ] && [ -f "$FILE" ]; then
    echo "--- last container logs (failure) ---"
    "${COMPOSE[@]}" --profile grow logs --no-color --tail 30 2>&1 | tail -n 120 || true
  fi
  if [ -z "${KEEP_CLUSTER:-}" ] && [ -f "$FILE" ]; then
    echo "--- tearing down compose project $PROJECT ---"
    "${COMPOSE[@]}" --profile grow down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    # Side networks a partition scenario made (if it stopped half-way).
    docker network ls --quiet --filter "name=${PROJECT}_cluster-side" | xargs -r docker network rm >/dev/null 2>&1 || true
    # Containers and networks of the multi-homed scenario (if it stopped half-way).
    docker ps -aq --filter "label=causalkv-test=multihome" | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker network ls -q --filter "label=causalkv-test=multihome" | xargs -r docker network rm >/dev/null 2>&1 || true
  fi
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

echo "=== docker tests: ${COMPOSE_BIN[*]} ($("${COMPOSE_BIN[@]}" version --short 2>/dev/null || "${COMPOSE_BIN[@]}" version | head -n 1)), project $PROJECT"
docker/build.sh
echo "image: $(docker image inspect causalkv:latest --format '{{.Size}}' | awk '{printf "%.1f MB", $1/1000000}')"

sed -e 's/127\.0\.0\.1:138\([0-9][0-9]\):13800/127.0.0.1:238\1:13800/' \
    -e 's/10\.213\.0\./10.214.0./g' \
    -e "s/RUST_LOG: info/RUST_LOG: \"${CAUSALKV_TEST_RUST_LOG:-info}\"/" docker/compose.yaml > "$FILE"
# A fresh shared secret for this run (the file reads CAUSALKV_CLUSTER_KEY).
CAUSALKV_CLUSTER_KEY=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
export CAUSALKV_CLUSTER_KEY

# Leftovers of an interrupted run go first.
"${COMPOSE[@]}" --profile grow down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
started=$(date +%s)
"${COMPOSE[@]}" up -d

SERVICES=(node1 node2 node3 node4 node5 node6)
CONTAINERS=()
for s in "${SERVICES[@]}"; do
  CONTAINERS+=("$("${COMPOSE[@]}" ps -q "$s")")
done
for c in "${CONTAINERS[@]}"; do
  until [ "$(docker inspect --format '{{.State.Health.Status}}' "$c")" = healthy ]; do
    if [ $(( $(date +%s) - started )) -gt 120 ]; then
      echo "docker tests FAILED: container $c not healthy after 120 s" >&2
      exit 1
    fi
    sleep 1
  done
done
echo "cluster healthy in $(( $(date +%s) - started )) s"

join() { local IFS=,; echo "$*"; }
export CAUSALKV_DOCKER_NODES=127.0.0.1:23800,127.0.0.1:23801,127.0.0.1:23802,127.0.0.1:23803,127.0.0.1:23804,127.0.0.1:23805
CAUSALKV_DOCKER_CONTAINERS=$(join "${CONTAINERS[@]}")
export CAUSALKV_DOCKER_CONTAINERS
export CAUSALKV_DOCKER_VIEW=node1:13800,node2:13800,node3:13800,node4:13800,node5:13800,node6:13800
export CAUSALKV_DOCKER_COMPOSE="${COMPOSE[*]}"
export CAUSALKV_DOCKER_EXTRA_SERVICES=node7,node8
export CAUSALKV_DOCKER_EXTRA_NODES=127.0.0.1:23806,127.0.0.1:23807
export CAUSALKV_DOCKER_EXTRA_VIEW=node7:13800,node8:13800

set +e
cargo test --test docker_cluster -- --ignored --nocapture --test-threads=1 "$@" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e

echo "=== docker scenarios ==="
grep -oE 'docker [a-z ]+: .*' "$LOG" || echo "(no scenario printed its counts)"
read -r passed failed < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$LOG" | tail -n 1) || true
echo "docker: ${passed:-0} passed, ${failed:-0} failed"
exit "$status"
