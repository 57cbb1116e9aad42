#!/bin/sh
# CI for the deterministic simulator (called from .ci/run). Exits non-zero on any failure.
#  1. 500 seeds (SIM_SEEDS=N for more), plus the seeds of regressions.txt;
#  2. determinism: 20 seeds run twice, identical trace hashes;
#  3. the checkers can fail: every --inject-bug variant is caught within 200 seeds;
#  4. unit tests and tests/inject.rs.
set -eu
cd "$(dirname "$0")"
start=$(date +%s)

cargo build --release --locked
sim=${CARGO_TARGET_DIR:-target}/release/sim

seeds=${SIM_SEEDS:-500}
echo "== $seeds seeds + regressions"
$sim --seeds "1..=$seeds" --no-record --quiet

echo "== determinism"
$sim --determinism 1..=20 --quiet

echo "== injected bugs"
for bug in $($sim --list-bugs | cut -d' ' -f1); do
    # These runs must fail; their "N passed, M failed" lines are prefixed so that nothing
    # reading this log takes them for the test run's own result.
    out=$($sim --inject-bug "$bug" --seeds 1..=200 --expect-failure --quiet)
    echo "$out" | sed "s/^/  [$bug, expected to fail] /"
done

echo "== tests"
cargo test --release --locked --quiet

echo "sim CI passed in $(( $(date +%s) - start ))s"
