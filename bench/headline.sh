#!/usr/bin/env bash
# The runs behind bench/RESULTS.md, in one go (release build; ~20 minutes on 2 cores).
# Run on a machine doing nothing else: every number is a latency.
#   ./bench/headline.sh [OUT]        (default OUT: bench-out)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out}
./scripts/setup.sh
cargo build --release --locked
nl=target/release/neuroloop
# Headline: 100 000 bins at 1 kHz (64 units, LQR), then the pylsl echo and the Python loop.
$nl bench --rig rigs/sim-1khz.toml --bins 100000 --warmup 2000 --out "$out/headline-1khz" --quiet
# The default rig: 96 units, 10 ms bins, MPPI 128 × 25, task identification.
$nl bench --rig rigs/sim-utah96.toml --bins 20000 --warmup 500 --out "$out/utah96" --quiet
# The scaling table (every backend compiled in).
$nl sweep --rig rigs/sim-utah96.toml --out "$out/sweep" --quiet
echo "headline: results in $out/{headline-1khz,utah96,sweep}"
