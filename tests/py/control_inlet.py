"""A pylsl inlet on neuroloop's Control stream: resolves it by name, records every sample
until the stream goes away (or --seconds pass), and prints what it saw as JSON."""
import argparse, json, struct, time
import pylsl
try:
    from pylsl import LostError
except ImportError:  # pylsl ≥ 1.17 keeps it in pylsl.util
    from pylsl.util import LostError

ap = argparse.ArgumentParser()
ap.add_argument("--name", required=True)
ap.add_argument("--seconds", type=float, default=30.0)
a = ap.parse_args()

found = pylsl.resolve_byprop("name", a.name, 1, 30.0)
if not found:
    print(json.dumps({"error": "Control stream not found"}))
    raise SystemExit(1)
inlet = pylsl.StreamInlet(found[0], recover=False)
info = inlet.info(5.0)
labels = []
ch = info.desc().child("channels").child("channel")
while not ch.empty():
    labels.append(ch.child_value("label"))
    ch = ch.next_sibling("channel")
inlet.open_stream(5.0)
stamps, values = [], []
end = time.time() + a.seconds
try:
    while time.time() < end:
        sample, ts = inlet.pull_sample(timeout=0.5)
        if ts is not None:
            stamps.append(ts)
            values.append(sample)
except LostError:
    pass
print(json.dumps({
    "type": info.type(), "channel_count": info.channel_count(), "nominal_srate": info.nominal_srate(),
    "labels": labels, "timestamps": stamps, "values": values,
    # Exact: IEEE-754 bits of each timestamp (f64) and value (f32).
    "timestamp_bits": [struct.unpack("<Q", struct.pack("<d", t))[0] for t in stamps],
    "value_bits": [[struct.unpack("<I", struct.pack("<f", v))[0] for v in s] for s in values],
}))
