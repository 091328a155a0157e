"""The Python baselines of `neuroloop bench`: the loop many labs run today, in one process
with pylsl and numpy.

    --mode echo   the LSL floor: resolve the spike stream, bin each bin's spikes, push one
                  Control sample per bin (the safe zero command), no model at all;
    --mode model  the same filter, embedding update, task identification and controller as
                  neuroloop's CPU backend (bench/baselines/ssm.py, a numpy port), then the
                  same safety clamp, pushed once per bin.

Both run on neuroloop's bin grid (bin k = [t0 + kΔ, t0 + (k+1)Δ), closed at its end + grace,
the Control sample stamped with the bin's end), so the simulated rig that `neuroloop bench`
runs measures the same end-to-end latency it measures for neuroloop. The loop sleeps until a
bin closes, pulls what arrived, bins it, steps the model and pushes; it has no deadline and no
fallback. When it falls more than a bin behind it skips to the newest closed bin, as a lab
loop that works on "the latest data" does: stale bins get no sample, their spikes are
dropped, the model only predicts through them, and they are counted as skipped.

On exit it writes OUT (raw little-endian f64), one row per processed bin:
    [bin, close→model done (s), close→pushed (s), late spikes, x_0 … x_{d−1}]
(x only in model mode) and prints one JSON line of totals.
"""
import argparse
import json
import math
import os
import sys
import time
import tomllib

import numpy as np
import pylsl

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--mode", choices=["echo", "model"], required=True)
ap.add_argument("--rig", required=True, help="rig file (TOML): streams, timing, safety")
ap.add_argument("--model", help="model file (safetensors); model mode only")
ap.add_argument("--t0", type=float, required=True, help="start of bin 0 on the local LSL clock")
ap.add_argument("--bins", type=int, required=True, help="bins to run (warm-up included)")
ap.add_argument("--open-loop-block", type=int, default=0,
                help="alternate open/closed-loop blocks of this many bins (0 = always closed)")
ap.add_argument("--source-id", help="the Control outlet's source_id (the simulated rig subscribes to this one)")
ap.add_argument("--out", required=True)
a = ap.parse_args()

with open(a.rig, "rb") as f:
    rig = tomllib.load(f)
timing, inp, out_cfg = rig["timing"], rig["input"], rig["output"]
bin_s = timing["bin_ms"] * 1e-3
grace_s = timing["grace_ms"] * 1e-3
n_units = rig["sim"]["n_units"] if "sim" in rig else rig["units"]["channels"]
m = rig["sim"]["control_dim"] if "sim" in rig else len(out_cfg["control_labels"])

model = None
if a.mode == "model":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import ssm

    rig_cfg = ssm.load_rig_config(a.rig)
    safety = ssm.Safety(rig_cfg, m)
    model = ssm.Loop(ssm.load_model(a.model), rig_cfg, safety.lower, safety.upper)

# Streams: the rig's spike stream in, a Control outlet out (what neuroloop would publish).
found = pylsl.resolve_bypred(f"name='{inp['name']}'", 1, 30.0)
if not found:
    print(json.dumps({"error": f"spike stream '{inp['name']}' not found"}))
    sys.exit(1)
inlet = pylsl.StreamInlet(found[0], max_buflen=360, recover=False)
inlet.open_stream(10.0)
offset = inlet.time_correction(5.0)
counts_stream = inlet.info().type() in ("SpikeCounts", "SpikingRates")


def bin_of(t):
    """The bin a sample belongs to: a counts sample is stamped with its bin's end, an event
    with its own time."""
    if counts_stream:
        return round((t - a.t0) / bin_s) - 1
    return math.floor((t - a.t0) / bin_s)


info = pylsl.StreamInfo(out_cfg["control_name"], "Control", m, 1.0 / bin_s, "float32",
                         a.source_id or f"pyloop-{a.mode}-{os.getpid()}")
outlet = pylsl.StreamOutlet(info)
print("ready", flush=True)

rows = []
pending = []  # (t, sample) stamped in bins not yet closed
counts = np.zeros(n_units)
u_prev = np.zeros(m)
k = max(0, int((pylsl.local_clock() - grace_s - a.t0) / bin_s))  # first bin not yet closed
skipped = k
late_total = 0
while k < a.bins:
    close = a.t0 + (k + 1) * bin_s + grace_s
    wait = close - pylsl.local_clock()
    if wait > 0:
        time.sleep(wait)
    chunk, stamps = inlet.pull_chunk(timeout=0.0, max_samples=1_000_000)
    pending.extend((t + offset, smp) for smp, t in zip(chunk, stamps))
    late = 0
    counts[:] = 0.0
    keep = []
    for t, smp in pending:
        j = bin_of(t)
        if j > k:
            keep.append((t, smp))
        elif j < k:
            late += 1
        elif counts_stream:
            counts += np.asarray(smp[:n_units])
        elif 0 <= int(smp[0]) < n_units:
            counts[int(smp[0])] += 1.0
    pending = keep
    late_total += late
    if model is not None:
        proposal = model.step(counts, u_prev, k)
        enabled = a.open_loop_block == 0 or (k // a.open_loop_block) % 2 == 1
        u = safety.apply(proposal, u_prev, enabled)
    else:
        u = np.zeros(m)
    done = pylsl.local_clock()
    outlet.push_sample(u.astype(np.float32).tolist(), a.t0 + (k + 1) * bin_s)  # stamped with the bin's end
    pushed = pylsl.local_clock()
    u_prev = u
    row = [k, done - close, pushed - close, late]
    if model is not None:
        row.extend(model.x.tolist())
    rows.append(row)
    k += 1
    # More than one bin behind: skip to the newest closed bin. The model still predicts
    # through the skipped bins (no data: their spikes are dropped), so its time stays right.
    newest = min(int((pylsl.local_clock() - grace_s - a.t0) / bin_s) - 1, a.bins)
    if newest > k:
        skipped += newest - k
        if model is not None:
            for j in range(k, newest):
                model.step(counts, u_prev, j, has_data=False, want_control=False)
        k = newest

np.asarray(rows, dtype="<f8").tofile(a.out)
# Give the rig's inlet time to take the last samples before the outlet goes away.
time.sleep(0.2)
print(json.dumps({"bins": len(rows), "skipped": skipped, "late_spikes": late_total,
                  "row_len": len(rows[0]) if rows else 0}), flush=True)
