#!/usr/bin/env bash
# The loop with the dashboard open against the loop without, in alternating rounds on the
# default rig (bench/RESULTS.md, "The loop with a dashboard open"). "With": the control plane
# serving, and headless Chromium showing the dashboard (its WebSocket at ~30 frames/s) on
# the same machine. Release build; ROUNDS × 2 runs of BINS bins (default 3 × 6000: ~8 min).
#   ./bench/dashboard.sh [OUT]        (default OUT: bench-out/dashboard)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out/dashboard}
rounds=${ROUNDS:-3}
bins=${BINS:-6000}
./scripts/setup.sh
cargo build --release --locked
nl=target/release/neuroloop
# CPU time the hypervisor stole during each run (% of all CPU time, from /proc/stat).
cpu() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print $9, t }' /proc/stat; }
steal_since() { read -r s0 t0 <<<"$1"; read -r s1 t1 <<<"$(cpu)"; awk -v a="$s0" -v b="$s1" -v c="$t0" -v d="$t1" 'BEGIN { printf "%.1f", 100 * (b - a) / (d - c) }'; }
for r in $(seq 1 "$rounds"); do
    start=$(cpu)
    $nl bench --rig rigs/sim-utah96.toml --bins "$bins" --warmup 500 --baselines none --quiet --out "$out/round$r-without"
    steal_since "$start" > "$out/round$r-without/steal"
    port=$((7900 + r))
    profile=$(mktemp -d)
    # The page opens once the session serves it (a second or two after start).
    (sleep 2; exec chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
        --disable-component-update --disable-sync --remote-debugging-port=0 --user-data-dir="$profile" \
        --window-size=1400,1100 "http://127.0.0.1:$port/") >/dev/null 2>&1 &
    browser=$!
    start=$(cpu)
    $nl bench --rig rigs/sim-utah96.toml --bins "$bins" --warmup 500 --baselines none --quiet --control "127.0.0.1:$port" --out "$out/round$r-dashboard"
    steal_since "$start" > "$out/round$r-dashboard/steal"
    pkill -P "$browser" 2>/dev/null || true
    kill "$browser" 2>/dev/null || true
    wait "$browser" 2>/dev/null || true
    rm -rf "$profile"
done
.venv/bin/python - "$out" "$rounds" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print("| round | dashboard | compute p50 / p99 µs | close → push p50 / p99 µs | end to end p50 / p99 µs | deadline misses | CPU steal % |")
print("|---|---|---|---|---|---|---|")
for r in range(1, rounds + 1):
    for kind in ("without", "dashboard"):
        rep = json.load(open(f"{out}/round{r}-{kind}/report.json"))
        steal = float(open(f"{out}/round{r}-{kind}/steal").read())
        c, p, e = rep["compute_us"], rep["close_to_push_us"], rep["end_to_end_us"] or {"p50": 0, "p99": 0}
        print(f"| {r} | {'open' if kind == 'dashboard' else 'none'} | {c['p50']:.0f} / {c['p99']:.0f} | {p['p50']:.0f} / {p['p99']:.0f} | "
              f"{e['p50']:.0f} / {e['p99']:.0f} | {rep['measured_deadline_misses']} | {steal:.1f} |")
PY
