#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. This is the README's test command and
# what CI runs. Integration tests run real-time loops over LSL on loopback, so test binaries
# run one test at a time to keep a 2-core machine from starving them.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Habits first (fast): the tree is formatted (rustfmt.toml) and clippy-clean, warnings as
# errors (the project's exceptions are in Cargo.toml's [workspace.lints.clippy]).
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked -- --test-threads=1 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo's last line is a doc-test run of 0 tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
[ "$status" -eq 0 ] || exit "$status"
# The coverage-guided fuzzers, bounded (docs/fuzzing.md): NEUROLOOP_FUZZ_SECONDS per target.
./scripts/fuzz.sh "${NEUROLOOP_FUZZ_SECONDS:-40}"
