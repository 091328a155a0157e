#!/usr/bin/env bash
# The soak behind bench/RESULTS.md's "Soak" section: the simulated rigs in closed loop for a
# long time with recording on, the process's memory sampled every minute, then the counters
# checked (bench/soak_check.py): every bin got exactly one Control sample, every spike was
# binned or counted, the recording lost nothing, memory stayed flat.
#   ./bench/soak.sh [OUT] [MINUTES]      (default OUT: bench-out/soak, MINUTES: 60)
# SOAK_RIGS (default "sim-utah96 sim-1khz") picks the rigs; SOAK_PARALLEL=1 runs them side
# by side (each on its own streams); SOAK_KEEP=1 keeps the XDF recordings (about 4 GB per
# hour at 1 ms bins), which are otherwise deleted once their summary is in the report.
# Counts, not timings, are what a soak proves: run it on a quiet machine if its deadline
# misses are to mean anything.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out/soak}
minutes=${2:-60}
rigs=${SOAK_RIGS:-"sim-utah96 sim-1khz"}
nl=target/release/neuroloop
[ -x "$nl" ] || { ./scripts/setup.sh && cargo build --release --locked; }
mkdir -p "$out"

soak_one() {
    local rig=$1 dir="$out/$1"
    mkdir -p "$dir"
    # Own stream names, so that nothing else on this machine (a test run, another soak)
    # resolves the soak's streams or the other way round.
    sed -e "s/neuroloop-\\(control-\\|status-\\|\\)$rig/soak-$$-\\1$rig/" "rigs/$rig.toml" > "$dir/rig.toml"
    local bin_ms bins
    bin_ms=$(sed -n 's/^bin_ms *= *\([0-9.]*\).*/\1/p' "$dir/rig.toml")
    bins=$(python3 -c "print(int(round($minutes * 60e3 / $bin_ms)))")
    echo "soak: $rig, $minutes min = $bins bins of $bin_ms ms, recording to $dir/session.xdf"
    "$nl" run --rig "$dir/rig.toml" --bins "$bins" --record "$dir/session.xdf" --report "$dir/report.json" --quiet \
        2> "$dir/stderr.log" &
    local pid=$! t0=$SECONDS
    echo "elapsed_s,rss_kib" > "$dir/rss.csv"
    while kill -0 "$pid" 2>/dev/null; do
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        [ -n "$rss" ] && echo "$((SECONDS - t0)),$rss" >> "$dir/rss.csv"
        # Sleep a minute, but notice the end at once.
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    done
    wait "$pid" || { echo "soak: $rig: neuroloop exited with $?"; tail -20 "$dir/stderr.log"; return 1; }
    [ "${SOAK_KEEP:-0}" = 1 ] || rm -f "$dir/session.xdf"
}

if [ "${SOAK_PARALLEL:-0}" = 1 ]; then
    pids=()
    for r in $rigs; do soak_one "$r" & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p"; done
else
    for r in $rigs; do soak_one "$r"; done
fi
python3 bench/soak_check.py "$out" $rigs | tee "$out/soak.md"
