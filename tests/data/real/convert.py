#!/usr/bin/env python3
"""Converts the two public recordings of tests/data/real/README.md from their
published formats to XDF files as LabRecorder writes them: a SpikeEvents stream
(channel, unit) per spike and, where there was a stimulus, a Control stream sampled at
each change of the stimulus. Run once; the XDF files are committed.

    python3 tests/data/real/convert.py LOCUST_SPIKE_TRAINS_DIR RETINA_H5 OUT_DIR

Needs numpy and h5py. The XDF writer below is the format's minimum (file header, stream
headers, clock offsets, samples chunks, stream footers), as neuroloop's own writer writes it.
"""
import struct
import sys
from pathlib import Path

import h5py
import numpy as np

TAG_FILE_HEADER, TAG_STREAM_HEADER, TAG_SAMPLES, TAG_CLOCK_OFFSET, TAG_FOOTER = 1, 2, 3, 4, 6


def varlen(n):
    if n < 256:
        return bytes([1, n])
    if n < 2**32:
        return bytes([4]) + struct.pack("<I", n)
    return bytes([8]) + struct.pack("<Q", n)


def chunk(tag, content):
    return varlen(len(content) + 2) + struct.pack("<H", tag) + content


def header_xml(name, typ, channels, srate, fmt, labels, desc=""):
    chans = "".join(f"<channel><label>{l}</label></channel>" for l in labels)
    return (
        f'<?xml version="1.0"?><info><name>{name}</name><type>{typ}</type>'
        f"<channel_count>{channels}</channel_count><nominal_srate>{srate}</nominal_srate>"
        f"<channel_format>{fmt}</channel_format><source_id>{name}</source_id>"
        f"<desc><channels>{chans}</channels>{desc}</desc></info>"
    )


def write_xdf(path, streams):
    """streams: [(id, xml, timestamps (S,), values (S, C) float32)]."""
    out = bytearray(b"XDF:")
    out += chunk(TAG_FILE_HEADER, b'<?xml version="1.0"?><info><version>1.0</version></info>')
    for sid, xml, ts, vals in streams:
        out += chunk(TAG_STREAM_HEADER, struct.pack("<I", sid) + xml.encode())
        out += chunk(TAG_CLOCK_OFFSET, struct.pack("<Idd", sid, 0.0, 0.0))
    for sid, xml, ts, vals in streams:
        for a in range(0, len(ts), 1000):
            b = min(a + 1000, len(ts))
            body = bytearray(struct.pack("<I", sid)) + varlen(b - a)
            for i in range(a, b):
                body += bytes([8]) + struct.pack("<d", ts[i]) + vals[i].astype("<f4").tobytes()
            out += chunk(TAG_SAMPLES, bytes(body))
    for sid, xml, ts, vals in streams:
        footer = (
            f'<?xml version="1.0"?><info><first_timestamp>{ts[0]!r}</first_timestamp>'
            f"<last_timestamp>{ts[-1]!r}</last_timestamp><sample_count>{len(ts)}</sample_count>"
            f"<clock_offsets><offset><time>0.0</time><value>0.0</value></offset></clock_offsets></info>"
        )
        out += chunk(TAG_FOOTER, struct.pack("<I", sid) + footer.encode())
    tmp = Path(str(path) + ".tmp")
    tmp.write_bytes(bytes(out))
    tmp.replace(path)
    print(f"{path}: {len(out)} bytes", file=sys.stderr)


def spike_events(times_per_unit):
    """(timestamps, values (S, 2) = (channel, unit 0)) in time order; unit i is channel i."""
    ts = np.concatenate(times_per_unit)
    ch = np.concatenate([np.full(len(t), i, dtype=np.float32) for i, t in enumerate(times_per_unit)])
    order = np.argsort(ts, kind="stable")
    vals = np.stack([ch[order], np.zeros(len(ts), dtype=np.float32)], axis=1)
    return ts[order], vals


# Locust antennal lobe (Pouzat): block C3H_3, units 1–10, first 20 trials of 30 s each
# (29 s recorded); odour from 10 s to 11 s of each trial. Spike times are 15 kHz samples.
LOCUST_TRIALS = 20
LOCUST_T0 = 100.0  # a clock origin away from 0, as a real LSL clock


def locust(spike_dir, out_dir):
    units = []
    for u in range(1, 11):
        t = np.loadtxt(Path(spike_dir) / f"locust20010214_C3H_3_tetB_u{u}.txt") / 15000.0
        units.append(LOCUST_T0 + t[t < 30.0 * LOCUST_TRIALS])
    ts, vals = spike_events(units)
    on = [LOCUST_T0 + 30.0 * k + 10.0 for k in range(LOCUST_TRIALS)]
    off = [t + 1.0 for t in on]
    cts = np.array([LOCUST_T0] + sorted(on + off))
    cvals = np.array([[0.0]] + [[1.0 if t in on else 0.0] for t in cts[1:]], dtype=np.float32)
    write_xdf(
        Path(out_dir) / "locust-c3h3.xdf",
        [
            (1, header_xml("locust20010214-tetB", "SpikeEvents", 2, 0, "float32", ["channel", "unit"]), ts, vals),
            (2, header_xml("olfactometer", "Control", 1, 0, "float32", ["odour"]), cts, cvals),
        ],
    )


# Mouse retina at P5 (Kirkby & Feller 2013, via Eglen's wave repository): 65 units,
# spontaneous retinal waves, the first 600 s.
RETINA_SECONDS = 600.0


def retina(h5_path, out_dir):
    with h5py.File(h5_path, "r") as f:
        spikes = np.asarray(f["spikes"][()], dtype=np.float64).ravel()
        counts = np.asarray(f["sCount"][()], dtype=np.int64).ravel()
    edges = np.concatenate([[0], np.cumsum(counts)])
    units = []
    for i in range(len(counts)):
        t = spikes[edges[i] : edges[i + 1]]
        units.append(LOCUST_T0 + t[t < RETINA_SECONDS])
    ts, vals = spike_events(units)
    write_xdf(
        Path(out_dir) / "retina-p5-waves.xdf",
        [(1, header_xml("kirkby2013-wt-p5", "SpikeEvents", 2, 0, "float32", ["channel", "unit"]), ts, vals)],
    )


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    locust(sys.argv[1], sys.argv[3])
    retina(sys.argv[2], sys.argv[3])
