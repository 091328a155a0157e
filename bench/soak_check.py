#!/usr/bin/env python3
"""Checks a soak (bench/soak.sh) and prints its table: counters from each run's report.json,
memory from its rss.csv. Exit status 1 if any check fails. Standard library only."""
import csv
import json
import re
import sys
from pathlib import Path


def check(out: Path, rig: str):
    d = out / rig
    r = json.loads((d / "report.json").read_text())
    rss = [(int(t), int(k)) for t, k in (row.values() for row in csv.DictReader((d / "rss.csv").open()))]
    bins = r["bins"]
    rows, ok = [], True

    def row(what, value, passed, note=""):
        nonlocal ok
        ok &= passed
        rows.append((what, value, "yes" if passed else "**NO**", note))

    row("bins", f"{bins:,} of {r['bin_ms']} ms", bins > 0)
    row("Control samples", f"{r['control_samples']:,}", r["control_samples"] == bins, "exactly one per bin")
    e2e = (r.get("end_to_end_us") or {}).get("count", 0)
    measured = bins - r["warmup_bins"]
    # The rig receives every sample; the last few may still be in flight when it stops.
    row("received by the rig", f"{e2e:,} of {measured:,} after warm-up", 0 <= measured - e2e <= 10, "LSL Control stream, simulator side")
    row("deadline misses (fallback sent on time)", f"{r['deadline_misses']:,}", True, "counted, not a pass/fail: the machine's load")
    ing = r["ingest"]
    handed = ing["spikes"]
    accounted = r["binned_spikes"] + r["late_spikes"] + r["future_spikes"] + r["pre_session_spikes"] + r["after_end_spikes"]
    row(
        "spikes binned or counted",
        f"{accounted:,.0f} of {handed:,}",
        r["telemetry_dropped"] == 0 and accounted == handed,
        f"binned {r['binned_spikes']:,.0f}, late {r['late_spikes']:,}, future {r['future_spikes']:,}, "
        f"before bin 0 {r['pre_session_spikes']:,}, after the last bin {r['after_end_spikes']:,}",
    )
    lost = r["ring_overflows"] + ing["inlet_full"] + ing["stale"]
    row("ring overflows / inlet full / stale", f"{r['ring_overflows']} / {ing['inlet_full']} / {ing['stale']}", lost == 0)
    rec = r.get("recording") or {}
    rec_lost = sum(rec.get(k, 0) for k in ("dropped_input_samples", "dropped_bins", "dropped_control", "dropped_truth", "samples_lost_after_error"))
    row(
        "recording: records dropped or lost",
        f"{rec_lost}",
        bool(rec) and rec_lost == 0 and rec.get("error") is None,
        f"{rec.get('bytes', 0) / 2**30:.2f} GiB written" + (f"; error: {rec['error']}" if rec.get("error") else ""),
    )
    rig_text = (d / "rig.toml").read_text()
    names = dict(re.findall(r'^(control_name|stream_name) *= *"([^"]+)"', rig_text, re.M))
    recorded = {s["name"]: s["samples"] for s in rec.get("streams", [])}
    row(
        "recording: Control samples",
        f"{recorded.get(names.get('control_name'), 0):,}",
        recorded.get(names.get("control_name")) == r["control_samples"],
        "the recorded Control stream holds every sample pushed",
    )
    row(
        "recording: input samples",
        f"{recorded.get(names.get('stream_name'), 0):,} of {ing['samples']:,} received",
        recorded.get(names.get("stream_name")) == ing["samples"],
        "every sample the inlet received is in the file",
    )
    row("telemetry records dropped", f"{r['telemetry_dropped']}", r["telemetry_dropped"] == 0)
    # Memory: flat once started (the first 5 minutes hold start-up and the allocator's growth).
    steady = [k for t, k in rss if t >= 300] or [k for _, k in rss]
    if steady:
        lo, hi, first, last = min(steady), max(steady), steady[0], steady[-1]
        growth = last - first
        flat = growth <= max(10 * 1024, 0.05 * first)
        row(
            "RSS from minute 5 to the end",
            f"{first / 1024:.1f} → {last / 1024:.1f} MiB",
            flat,
            f"min {lo / 1024:.1f}, max {hi / 1024:.1f} MiB over {len(steady)} samples (a minute apart); flat = grows ≤ 10 MiB or 5 %",
        )
    else:
        row("RSS", "no samples", False)
    return ok, rows, r


def main():
    out = Path(sys.argv[1])
    all_ok = True
    for rig in sys.argv[2:]:
        ok, rows, r = check(out, rig)
        all_ok &= ok
        print(f"### {rig} ({r['bins']:,} bins of {r['bin_ms']} ms, recording on)\n")
        print("| check | value | pass | note |\n|---|---|---|---|")
        for what, value, passed, note in rows:
            print(f"| {what} | {value} | {passed} | {note} |")
        print()
    print("all checks passed" if all_ok else "SOME CHECKS FAILED")
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
