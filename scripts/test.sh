#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. This is the README's test command and
# what CI runs. Integration tests run real-time loops over LSL on loopback, so test binaries
# run one test at a time to keep a 2-core machine from starving them.
# At the end it prints how long each phase took (the README's "Testing" has a breakdown).
set -euo pipefail
cd "$(dirname "$0")/.."
phases=()
started=$(date +%s)
phase_start=$started
phase() {
    local now
    now=$(date +%s)
    phases+=("$(printf '%-44s %5d s' "$1" $((now - phase_start)))")
    phase_start=$now
}
report_phases() {
    echo "test.sh: time per phase"
    for p in "${phases[@]}"; do echo "  $p"; done
    echo "  $(printf '%-44s %5d s' "total" $(($(date +%s) - started)))"
}
trap report_phases EXIT
./scripts/setup.sh
phase "set-up"
# Habits first (fast): the tree is formatted (rustfmt.toml).
cargo fmt --all --check
phase "cargo fmt --check"
log=$(mktemp)
trap 'rm -f "$log"; report_phases' EXIT
# One build for the lints and the tests: clippy's driver compiles the workspace's crates
# (every target the tests build: lib, bins, unit and integration tests) with its lints on and
# warnings as errors (the project's exceptions are in Cargo.toml's [workspace.lints.clippy]),
# and that build is the one the tests run. `cargo clippy --all-targets` would check the same
# code in a build of its own. CLIPPY_ARGS is how cargo-clippy hands the driver its flags.
driver=$(command -v clippy-driver || echo "$(rustc --print sysroot)/bin/clippy-driver")
if [ ! -x "$driver" ]; then
    echo "test.sh: clippy-driver not found (install the clippy component: rustup component add clippy)" >&2
    exit 1
fi
clippy=(env RUSTC_WORKSPACE_WRAPPER="$driver" CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__")
"${clippy[@]}" cargo test --workspace --locked --no-run
phase "build + clippy (-D warnings) of every target"
set +e
"${clippy[@]}" cargo test --workspace --locked -- --test-threads=1 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
phase "tests"
# One closing line over every test binary (cargo's last line is a doc-test run of 0 tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
# The slowest test binaries (where to look when the suite gets slow).
awk '/Running (unittests|tests)/ { name = $2 } /^test result:/ { for (i = 1; i <= NF; i++) if ($i == "in") t = $(i+1); sub(/s$/, "", t); if (name != "") printf "%8.1f s  %s\n", t, name; name = "" }' "$log" | sort -rn | head -5
[ "$status" -eq 0 ] || exit "$status"
# The coverage-guided fuzzers, bounded (docs/fuzzing.md): NEUROLOOP_FUZZ_SECONDS per target.
./scripts/fuzz.sh "${NEUROLOOP_FUZZ_SECONDS:-20}"
phase "fuzz build + fuzzers"
