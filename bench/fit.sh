#!/usr/bin/env bash
# The fit benchmark (bench/RESULTS.md, "Fitting"): `neuroloop fit` on a 10-minute probe
# session (60 000 bins of 10 ms, 96 units, 3 tasks) — time, peak memory, held-out bits/spike
# against the true model's — and how the time grows with bins (the first 25 / 50 / 100 % of
# the file: a cut recording is read up to its last whole chunk) and with d (2, 4, 8).
# The recording (≈ 90 MB) is made once if missing (10 min of real time) and not committed.
#   ./bench/fit.sh              # release build; results into bench/results/fit/
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/neuroloop
OUT=${OUT:-bench/results/fit}
REC=${REC:-/tmp/neuroloop-probe60k.xdf}
RIG=rigs/sim-utah96-probe.toml
[ -x "$BIN" ] || cargo build --release --locked
mkdir -p "$OUT"
if [ ! -f "$REC" ]; then
    echo "fit bench: recording a 60 000-bin identification session into $REC (10 min)"
    "$BIN" run --rig "$RIG" --bins 60000 --record "$REC" --quiet --report "$OUT/record.json" > /dev/null
fi
size=$(stat -c %s "$REC")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fit() { # name file extra-args…
    local name=$1 file=$2; shift 2
    echo "fit bench: $name"
    "$BIN" fit "$file" --rig "$RIG" --tasks markers --quiet --out "$tmp/$name.safetensors" --report "$OUT/$name.json" "$@" | sed 's/^/  /'
}
for pct in 25 50; do
    head -c $((size * pct / 100)) "$REC" > "$tmp/cut$pct.xdf"
    fit "bins-$pct" "$tmp/cut$pct.xdf"
done
fit "bins-100" "$REC"
for d in 2 8; do
    fit "latent-$d" "$REC" --latent "$d"
done
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = []
for name in ["bins-25", "bins-50", "bins-100", "latent-2", "latent-8"]:
    p = os.path.join(out, name + ".json")
    if not os.path.exists(p):
        continue
    r = json.load(open(p))
    train = sum(i["training_bins"] for i in r["inputs"])
    rows.append(f"| {name} | {sum(i['bins'] for i in r['inputs'])} | {train} | {r['dims']['latent']} | {r['elapsed_s']:.1f} | "
                f"{r['peak_memory_bytes'] / 2**20:.0f} | {r['heldout_bits_per_spike']:.3f} | {r['true_model_heldout_bits_per_spike']:.3f} | "
                f"{r['heldout_predictive_bits_per_spike']:.3f} | {r['true_model_heldout_predictive_bits_per_spike']:.3f} | {r['latent_r2']:.3f} |")
head = ("| run | bins | training bins | d | fit time (s) | peak memory (MiB) | held-out bits/spike | true model | "
        "one-step-ahead bits/spike | true model | latent R² |\n|---|---|---|---|---|---|---|---|---|---|---|")
open(os.path.join(out, "fit.md"), "w").write(head + "\n" + "\n".join(rows) + "\n")
print(head + "\n" + "\n".join(rows))
PY
