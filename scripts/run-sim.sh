#!/usr/bin/env bash
# Set up (idempotent), build, and run the simulated rig in closed loop with a live status
# line. Extra arguments go to `neuroloop run` (e.g. --bins 6000 --report report.json).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked
exec ./target/release/neuroloop run --rig rigs/sim-utah96.toml "$@"
