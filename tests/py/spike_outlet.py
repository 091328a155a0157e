"""A spike-event outlet written with pylsl (liblsl from PyPI): the layout the Neural Data
Simulator publishes (type SpikeEvents, irregular rate, int16; column 0 = channel,
column 1 = unit). Waits for a consumer, pushes Poisson spikes in real time for
--duration seconds with per-sample timestamps, prints {"pushed": N}, then lingers.
With --log FILE it also writes every pushed sample as [timestamp's IEEE-754 bits, channel, unit]."""
import argparse, json, struct, sys, time
import numpy as np
import pylsl

ap = argparse.ArgumentParser()
ap.add_argument("--name", required=True)
ap.add_argument("--channels", type=int, default=48)
ap.add_argument("--rate", type=float, default=20.0, help="Hz per channel")
ap.add_argument("--duration", type=float, default=3.0)
ap.add_argument("--linger", type=float, default=3.0)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--log", help="write every pushed sample here (JSON)")
a = ap.parse_args()

info = pylsl.StreamInfo(a.name, "SpikeEvents", 2, pylsl.IRREGULAR_RATE, "int16", a.name + "-uid")
chans = info.desc().append_child("channels")
for label in ("channel", "unit"):
    chans.append_child("channel").append_child_value("label", label)
outlet = pylsl.StreamOutlet(info)
deadline = time.time() + 30
while not outlet.have_consumers():
    if time.time() > deadline:
        print(json.dumps({"error": "no consumer"}))
        sys.exit(1)
    time.sleep(0.01)
time.sleep(0.5)  # liblsl start-up race: let the inlet finish connecting before the first push

rng = np.random.default_rng(a.seed)
pushed = 0
log = []
t_start = pylsl.local_clock()
t = t_start
step = 0.005
while t - t_start < a.duration:
    t_next = t + step
    n = rng.poisson(a.rate * a.channels * step)
    stamps = np.sort(rng.uniform(t, t_next, n))
    for ts in stamps:
        ch = int(rng.integers(a.channels))
        outlet.push_sample([ch, 0], float(ts))
        pushed += 1
        if a.log:
            log.append([struct.unpack("<Q", struct.pack("<d", float(ts)))[0], ch, 0])
    while pylsl.local_clock() < t_next:
        time.sleep(0.0005)
    t = t_next
if a.log:
    with open(a.log, "w") as f:
        json.dump(log, f)
print(json.dumps({"pushed": pushed}), flush=True)
time.sleep(a.linger)
