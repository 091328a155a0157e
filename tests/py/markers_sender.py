"""Experiment software's side of neuroloop's Markers commands, in pylsl (PyPI): a Markers
outlet (type Markers, one string channel) named --name sends each --command once neuroloop
has subscribed, --gap seconds apart, while an inlet on `<name>-replies` collects neuroloop's
replies. Prints {"sent": [...], "replies": [...]} as JSON."""
import argparse, json, time
import pylsl

ap = argparse.ArgumentParser()
ap.add_argument("--name", required=True)
ap.add_argument("--command", action="append", default=[])
ap.add_argument("--gap", type=float, default=0.3)
ap.add_argument("--timeout", type=float, default=30.0)
a = ap.parse_args()

info = pylsl.StreamInfo(a.name, "Markers", 1, pylsl.IRREGULAR_RATE, "string", "markers-sender-" + a.name)
outlet = pylsl.StreamOutlet(info)
found = pylsl.resolve_byprop("name", a.name + "-replies", 1, a.timeout)
if not found:
    print(json.dumps({"error": "no replies stream"}))
    raise SystemExit(1)
replies = pylsl.StreamInlet(found[0])
replies.open_stream(10.0)
end = time.time() + a.timeout
while not outlet.have_consumers() and time.time() < end:
    time.sleep(0.05)
if not outlet.have_consumers():
    print(json.dumps({"error": "neuroloop never subscribed to the Markers stream"}))
    raise SystemExit(1)
got = []
for c in a.command:
    outlet.push_sample([c])
    time.sleep(a.gap)
    while True:
        s, _ = replies.pull_sample(0.0)
        if s is None:
            break
        got.append(json.loads(s[0]))
# The rest of the replies (each command is answered within a few bins).
deadline = time.time() + 5.0
while len(got) < len(a.command) and time.time() < deadline:
    s, _ = replies.pull_sample(0.2)
    if s is not None:
        got.append(json.loads(s[0]))
print(json.dumps({"sent": a.command, "replies": got}))
