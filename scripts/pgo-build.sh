#!/usr/bin/env bash
# A release build of switchyard optimised with the profile of its own request path
# (profile-guided optimisation): the way to build the binary you deploy.
#
#   scripts/pgo-build.sh        # prints the binary's path: target/pgo/switchyard
#
# 1. builds an instrumented switchyard (its own target dir; every crate instrumented),
# 2. trains it: `switchyard bench` runs its in-process mock and gateway (the example
#    tenants, limits, scheduler, routing, audit, cache and metrics all on) through whole
#    answers, streams and cache hits,
# 3. merges the counts with `llvm-profdata` and builds again with them.
#
# The compiler then lays the hot path out together and inlines and branches by what
# requests do, not by guesses; the gateway's code is large and flat (no function above
# 3% of its time), which is where this pays (the README's "A build to deploy" says
# what it bought). Two clean release builds: about 15 minutes on two cores.
#
# Needs `llvm-profdata` of the LLVM major version rustc uses (`rustc -vV`): rustup's
# `llvm-tools` component, or Debian's llvm-N package (`llvm-profdata-N`). Set
# LLVM_PROFDATA to choose one.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/target/pgo
LLVM=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')

find_profdata() {
    local sysroot
    sysroot=$(rustc --print sysroot)
    for candidate in "${LLVM_PROFDATA:-}" \
        "$sysroot"/lib/rustlib/*/bin/llvm-profdata \
        "$(command -v "llvm-profdata-$LLVM" || true)" \
        "$(command -v llvm-profdata || true)"; do
        [ -n "$candidate" ] && [ -x "$candidate" ] || continue
        if "$candidate" --version 2>/dev/null | grep -q "LLVM version $LLVM\."; then
            echo "$candidate"
            return
        fi
    done
}
PROFDATA=$(find_profdata)
if [ -z "$PROFDATA" ]; then
    echo "pgo-build: no llvm-profdata of LLVM $LLVM (the version rustc uses) found;" >&2
    echo "  install rustup's llvm-tools component, or Debian's llvm-$LLVM package," >&2
    echo "  or set LLVM_PROFDATA" >&2
    exit 1
fi

mkdir -p "$OUT"
rm -rf "$OUT/profiles"
echo "pgo-build: 1/3 the instrumented build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$OUT/profiles" \
    cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --target-dir "$OUT/generate"

echo "pgo-build: 2/3 training (about 30 s)" >&2
TRAIN=$OUT/generate/release/switchyard
# The build scripts ran instrumented too: only the gateway's own counts are kept.
rm -rf "$OUT/profiles"
# Each run exits normally, which is when the counts are written.
{
    "$TRAIN" bench -n 20000 -c 32
    "$TRAIN" bench -n 20000 -c 1
    "$TRAIN" bench --stream -n 2000 -c 64
    "$TRAIN" bench --cached -n 5000 -c 16
} > "$OUT/train.log" 2>&1 || {
    echo "pgo-build: the training run failed; its output is in $OUT/train.log" >&2
    exit 1
}
"$PROFDATA" merge -o "$OUT/switchyard.profdata" "$OUT/profiles"

echo "pgo-build: 3/3 the optimised build" >&2
# Functions the training never ran have no counts; that is expected, not worth a warning each.
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$OUT/switchyard.profdata -Cllvm-args=-pgo-warn-missing-function=false" \
    cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --target-dir "$OUT/use"
cp "$OUT/use/release/switchyard" "$OUT/switchyard"
echo "$OUT/switchyard"
