"""Record a pylsl spike-event outlet with LabRecorder's own recording code (the `labrecorder`
package on PyPI) into an XDF file: Poisson spikes on --channels channels pushed in real time
with per-sample timestamps for --duration seconds. Prints {"pushed": N}."""
import argparse, json, time
import numpy as np
import pylsl
import labrecorder

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--name", required=True)
ap.add_argument("--channels", type=int, default=96)
ap.add_argument("--rate", type=float, default=20.0, help="Hz per channel")
ap.add_argument("--duration", type=float, default=3.0)
ap.add_argument("--seed", type=int, default=3)
a = ap.parse_args()

info = pylsl.StreamInfo(a.name, "SpikeEvents", 2, pylsl.IRREGULAR_RATE, "int16", a.name + "-uid")
outlet = pylsl.StreamOutlet(info)
found = pylsl.resolve_byprop("name", a.name, 1, 10.0)
rec = labrecorder.Recording(a.out, found)
deadline = time.time() + 30
while not outlet.have_consumers():
    if time.time() > deadline:
        raise SystemExit("LabRecorder never connected")
    time.sleep(0.01)
time.sleep(0.5)  # liblsl start-up race
rng = np.random.default_rng(a.seed)
pushed = 0
t = t_start = pylsl.local_clock()
step = 0.005
while t - t_start < a.duration:
    n = rng.poisson(a.rate * a.channels * step)
    for ts in np.sort(rng.uniform(t, t + step, n)):
        outlet.push_sample([int(rng.integers(a.channels)), 0], float(ts))
        pushed += 1
    while pylsl.local_clock() < t + step:
        time.sleep(0.0005)
    t += step
time.sleep(1.0)  # let LabRecorder receive the last samples
rec.stop()
print(json.dumps({"pushed": pushed}), flush=True)
