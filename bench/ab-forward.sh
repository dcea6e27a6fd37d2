#!/usr/bin/env bash
# A/B of forwarding between two node binaries: ROUNDS alternated runs of
# bench/profile-forward.sh (forwarded run only, no perf), the order swapped
# every other round. Prints each run's rate and CPU per request per node.
# Build each binary first and copy it out of target/ (e.g. with git stash).
#
#   bench/ab-forward.sh OLD_BIN NEW_BIN [get|put] [ROUNDS] [SECONDS]   (default get 4 5)
set -euo pipefail
OLD=$1
NEW=$2
OP=${3:-get}
ROUNDS=${4:-4}
SECS=${5:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for r in $(seq 1 "$ROUNDS"); do
    order=("old $OLD" "new $NEW")
    ((r % 2 == 0)) && order=("new $NEW" "old $OLD")
    for pair in "${order[@]}"; do
        read -r label bin <<<"$pair"
        printf '%s %s: ' "$r" "$label"
        CAUSALKV_BIN=$bin NO_PERF=1 ONLY_FWD=1 "$ROOT/bench/profile-forward.sh" "$OP" "$SECS" | grep '^forwarded'
    done
done
