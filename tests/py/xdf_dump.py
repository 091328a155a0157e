"""Load an XDF file with pyxdf (PyPI), a reader no one here wrote, and print every stream as
JSON: header fields, footer sample count, clock offsets, and every timestamp and value as
exact IEEE-754 bits (values as f64: exact for int and float32 streams; string streams such as
Markers as their text). Loads the file twice:
raw (no clock sync, no dejitter: the timestamps as stored) and with pyxdf's defaults (which
must not fail either)."""
import json, struct, sys
import numpy as np
import pyxdf

path = sys.argv[1]
pyxdf.load_xdf(path)  # defaults: clock sync + dejitter must work on the file
streams, header = pyxdf.load_xdf(path, synchronize_clocks=False, dejitter_timestamps=False)

def bits(a):
    return np.asarray(a, dtype="<f8").view("<u8").tolist()

def first(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d or not d[k]:
            return None
        d = d[k][0] if isinstance(d[k], list) else d[k]
    return d

out = {"header": {
    "version": first(header, "info", "version"),
    "neuroloop_version": first(header, "info", "neuroloop", "version"),
    "rig_sha256": first(header, "info", "neuroloop", "rig", "sha256"),
    "t0": first(header, "info", "neuroloop", "bin_grid", "t0"),
    "bin_s": first(header, "info", "neuroloop", "bin_grid", "bin_s"),
}, "streams": []}
def labels(info):
    """desc/channels/channel/label, as the stream header says (empty without one)."""
    try:
        return [(c.get("label") or [""])[0] or "" for c in info["desc"][0]["channels"][0]["channel"]]
    except (KeyError, IndexError, TypeError):
        return []

for s in streams:
    info = s["info"]
    text = info["channel_format"][0] == "string"
    if text:  # pyxdf gives a list of rows of str
        values = {"value_strings": [list(row) for row in s["time_series"]], "value_bits": None}
    else:
        ts = np.asarray(s["time_series"], dtype=np.float64).reshape(len(s["time_stamps"]), -1)
        values = {"value_strings": None, "value_bits": [bits(row) for row in ts]}
    out["streams"].append({
        "id": int(info["stream_id"]),
        "name": info["name"][0],
        "type": info["type"][0],
        "channel_format": info["channel_format"][0],
        "channel_count": int(info["channel_count"][0]),
        "labels": labels(info),
        "footer_sample_count": int(s["footer"]["info"]["sample_count"][0]) if "footer" in s else None,
        "provenance_rig_sha256": first(info, "desc", "neuroloop", "rig_sha256"),
        "n": len(s["time_stamps"]),
        "timestamp_bits": bits(s["time_stamps"]),
        **values,
        "clock_times": list(map(float, s["clock_times"])),
        "clock_values": list(map(float, s["clock_values"])),
    })
print(json.dumps(out))
