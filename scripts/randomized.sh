#!/usr/bin/env bash
# A longer randomized run (not CI): the property tests of tests/properties.rs with many
# more generated cases than `cargo test` uses (256 each), in release mode. The SSE parser
# and framing, units, config text, usage and token-bucket arithmetic, and the admin API
# over arbitrary operator input against a live gateway are each tried CASES times.
#
#   scripts/randomized.sh              # 20,000 cases each (a few minutes on 2 cores)
#   CASES=200000 scripts/randomized.sh # longer
#
# A failure prints the minimal input proptest shrank it to; add it to a test as a
# regression.
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${CASES:-20000}"
echo "== property tests, ${cases} cases each (release)"
start=$(date +%s)
PROPTEST_CASES="$cases" cargo test --release --test properties -- --test-threads 2 --nocapture
echo "== ${cases} cases each passed in $(( $(date +%s) - start )) s"
