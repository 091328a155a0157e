#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, through libfuzzer-sys) of neuroloop's decoders of
# outside bytes, on the stable toolchain: LSL samples, rig files, model files, XDF
# recordings (the targets are neuroloop::fuzz's functions; docs/fuzzing.md).
#   ./scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
# Each target starts from its committed corpus (fuzz/corpus/T) and crashers (fuzz/regressions/T);
# inputs that reach new code go to target/fuzz-corpus/T, a crasher to target/fuzz-artifacts/.
# FUZZ_ARGS adds libFuzzer flags (e.g. "-jobs=2").
# Exit status 1 on the first crash, hang (> 20 s on one input) or allocation beyond the limit.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-lsl_samples rig_toml model_file xdf_recording xdf_resync}

# What cargo-fuzz passes, less the sanitizer (nightly only): edge counters, the PC table
# and comparison tracing, so that libFuzzer is guided by coverage.
export NEUROLOOP_SANCOV="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares"
# .cargo/config.toml links liblsl from .liblsl/, relative to the crate being built.
[ -e fuzz/.liblsl ] || ln -s ../.liblsl fuzz/.liblsl
echo "fuzz: building the targets (neuroloop instrumented; dependencies from target/)"
RUSTC_WRAPPER="$PWD/scripts/fuzz-rustc" CARGO_TARGET_DIR="$PWD/target" \
    cargo build --manifest-path fuzz/Cargo.toml --locked --bins

for t in $targets; do
    [ -x "target/debug/$t" ] || { echo "fuzz: no target $t"; exit 2; }
    mkdir -p "target/fuzz-corpus/$t" target/fuzz-artifacts fuzz/regressions/$t
    echo "fuzz: $t for $secs s"
    # Address space capped: a size read from the input that is allocated before it is checked
    # fails the allocation (abort: a finding) instead of being mapped lazily and unnoticed.
    # (Exit status of the fuzzer, not of the filter: taken before anything else runs.)
    set +e
    (
        ulimit -v 6000000
        # shellcheck disable=SC2086 # FUZZ_ARGS: extra libFuzzer flags, split on spaces
        exec "target/debug/$t" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 ${FUZZ_ARGS:-} \
            -artifact_prefix="target/fuzz-artifacts/$t-" "target/fuzz-corpus/$t" "fuzz/corpus/$t" "fuzz/regressions/$t"
    ) 2>&1 | grep -v -E '^(#[0-9]+\s+(NEW|REDUCE|pulse)|"|###|\s+NEW_FUNC)'
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
        echo "fuzz: $t FAILED (exit $status): the input is in target/fuzz-artifacts/$t-*;"
        echo "      fix the cause, then add the input to fuzz/regressions/$t/ (tests/fuzz_corpus.rs replays it)"
        exit 1
    fi
done
echo "fuzz: every target ran $secs s without a finding"
