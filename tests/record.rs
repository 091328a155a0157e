//! Session recording (`run --record`) and replay, through the real CLI, checked with
//! readers and peers no one here wrote: pyxdf loads every stream with exact counts, values
//! and timestamps; a killed run leaves a readable file; `replay` reproduces the Control
//! stream bit for bit; a LabRecorder (PyPI `labrecorder`) file of a raw spike stream replays.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Where a recording is written until its session ends (then renamed to its path).
fn partial(xdf: &Path) -> std::path::PathBuf {
    let mut p = xdf.as_os_str().to_owned();
    p.push(".partial");
    p.into()
}

/// Waits (up to a minute) until the recording a spawned run is writing holds `bytes`.
fn wait_until_recorded(xdf: &Path, bytes: u64) {
    let started = std::time::Instant::now();
    while std::fs::metadata(partial(xdf)).map_or(0, |m| m.len()) < bytes {
        assert!(started.elapsed().as_secs() < 60, "the recording never grew");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_recorded_session_loads_in_pyxdf_with_every_sample_exact() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("rec");
    let model = rig.write_model(dir.path());
    // Controller only (no [sim]): the spikes come from a pylsl outlet that logs what it pushed.
    let rig_path = write(dir.path(), "rig.toml", &long_lead_in(&rig.controller_toml("events", &model)));
    let xdf = dir.path().join("session.xdf");
    let log = dir.path().join("pushed.json");
    let outlet = pylsl_spike_outlet(&rig.spikes, 5, &["--log", log.to_str().unwrap()]);
    let inlet = pylsl_control_inlet(&rig.control, 25);
    // What the Status outlet pushed, as an LSL inlet received it.
    let status_inlet = record::<f64>(&rig.status);
    let ((), _, r) = run_until_source_done(&rig_path, &dir.path().join("report.json"), &["--record", xdf.to_str().unwrap()], || {
        assert!(outlet.wait_with_output().unwrap().status.success())
    });
    let seen: Value = serde_json::from_slice(&inlet.wait_with_output().unwrap().stdout).unwrap();
    let status_seen = status_inlet.join().unwrap();
    let pushed: Vec<Vec<u64>> = serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
    let d = xdf_dump(&xdf);

    // Provenance: the rig file's hash in the file header and in every stream neuroloop wrote.
    let sha = neuroloop::record::sha256_hex(&std::fs::read(&rig_path).unwrap());
    assert_eq!(d["header"]["version"], "1.0");
    assert_eq!(d["header"]["rig_sha256"], sha.as_str());
    assert_eq!(d["header"]["neuroloop_version"], env!("CARGO_PKG_VERSION"));
    let rec = &r["recording"];
    assert_eq!(u(&rec["dropped_input_samples"]) + u(&rec["dropped_bins"]) + u(&rec["dropped_control"]) + u(&rec["dropped_status"]), 0);
    for s in d["streams"].as_array().unwrap() {
        assert_eq!(u(&s["footer_sample_count"]), u(&s["n"]), "{}: the footer counts every sample", s["name"]);
        if s["type"] != "SpikeEvents" {
            assert_eq!(s["provenance_rig_sha256"], sha.as_str(), "{}: provenance in desc", s["name"]);
        }
    }

    // The input stream exactly as pylsl pushed it: format, count, timestamps, values.
    let input = xdf_stream(&d, "SpikeEvents");
    assert_eq!(input["id"], 1);
    assert_eq!(input["name"], rig.spikes.as_str());
    assert_eq!(input["channel_format"], "int16");
    assert_eq!(u(&input["n"]), pushed.len() as u64, "every pushed sample recorded");
    assert_eq!(u(&r["ingest"]["samples"]), pushed.len() as u64);
    for (i, p) in pushed.iter().enumerate() {
        assert_eq!(u(&input["timestamp_bits"][i]), p[0], "sample {i}: timestamp as pushed");
        assert_eq!(bits_col(input, i, 0), p[1] as f64, "sample {i}: channel");
        assert_eq!(bits_col(input, i, 1), p[2] as f64, "sample {i}: unit");
    }
    assert!(!input["clock_times"].as_array().unwrap().is_empty(), "ingest's clock offsets are recorded");

    // Control: what the emitter pushed is what pylsl received, bit for bit.
    let bins = u(&r["bins"]);
    assert!(bins > 200);
    let control = xdf_stream(&d, "Control");
    assert_eq!(control["channel_format"], "float32");
    assert_eq!(u(&control["n"]), bins);
    assert_eq!(u(&r["control_samples"]), bins);
    assert_eq!(control["timestamp_bits"], seen["timestamp_bits"], "Control timestamps = what the pylsl inlet saw");
    for (i, row) in seen["value_bits"].as_array().unwrap().iter().enumerate() {
        for (j, b) in row.as_array().unwrap().iter().enumerate() {
            assert_eq!((bits_col(control, i, j) as f32).to_bits() as u64, u(b), "Control sample {i} channel {j}");
        }
    }

    // Bins: one per bin at the bin's end; counts = the pushed spikes re-binned on the recorded
    // grid with the recorded clock offsets, except spikes that arrived late (counted).
    let t0: f64 = d["header"]["t0"].as_str().unwrap().parse().unwrap();
    let bin_s: f64 = d["header"]["bin_s"].as_str().unwrap().parse().unwrap();
    let bstream = xdf_stream(&d, "NeuroloopBins");
    assert_eq!(u(&bstream["n"]), bins);
    assert_eq!(bstream["timestamp_bits"], control["timestamp_bits"], "bins and Control share the bin-end timestamps");
    let (ct, cv): (Vec<f64>, Vec<f64>) = (
        input["clock_times"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect(),
        input["clock_values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect(),
    );
    let n = 96;
    let mut expected = vec![vec![0u64; n]; bins as usize];
    for p in &pushed {
        let t = f64::from_bits(p[0]);
        // The offset ingest had when the spike arrived (about its own time).
        let i = ct.iter().rposition(|&c| c <= t + cv[0]).unwrap_or(0);
        let k = ((t + cv[i] - t0) / bin_s).floor();
        if k >= 0.0 && (k as u64) < bins {
            expected[k as usize][p[1] as usize] += 1;
        }
    }
    // Every spike missing from its bin was counted late (or future) when it arrived, except
    // those that arrived after the loop's last bin (the run was stopped): so
    // late ≤ missing ≤ late + future + the last half second's spikes.
    let (mut missing, mut late, mut future) = (0u64, 0u64, 0u64);
    for k in 0..bins as usize {
        for c in 0..n {
            let got = bits_col(bstream, k, c);
            assert!(got <= expected[k][c] as f64, "bin {k} unit {c}: {got} recorded, {} pushed", expected[k][c]);
            missing += expected[k][c] - got as u64;
        }
        late += bits_col(bstream, k, n) as u64;
        future += bits_col(bstream, k, n + 1) as u64;
    }
    let tail: u64 = expected[bins as usize - 50..].iter().flatten().sum();
    assert!(late <= missing && missing <= late + future + tail, "missing {missing}, late {late}, future {future}, last 50 bins {tail}");
    assert!(expected.iter().flatten().sum::<u64>() > 1000, "the bins hold the pushed spikes");

    // Status and timing: one sample per bin, in order; the timing's decisions add up to the report.
    let status = xdf_stream(&d, "NeuroloopStatus");
    let timing = xdf_stream(&d, "NeuroloopTiming");
    assert_eq!(u(&status["n"]), bins);
    assert_eq!(u(&timing["n"]), bins);
    let col = |name: &str| neuroloop::schema::TIMING_LABELS.iter().position(|l| *l == name).unwrap();
    let (mut misses, mut fallbacks) = (0u64, 0u64);
    for k in 0..bins as usize {
        assert_eq!(bits_col(status, k, 0), k as f64);
        assert_eq!(bits_col(timing, k, col("bin")), k as f64);
        misses += bits_col(timing, k, col("deadline_miss")) as u64;
        fallbacks += bits_col(timing, k, col("fallback")) as u64;
    }
    assert_eq!(misses, u(&r["deadline_misses"]));
    assert_eq!(fallbacks, u(&r["fallbacks"]));
    // The recorded Status stream is what the outlet pushed, bit for bit (built once, not
    // recomputed by the recorder).
    assert!(status_seen.len() as u64 > bins / 2, "the inlet heard {} of {bins} Status samples", status_seen.len());
    let rec_ts = xdf_timestamps(status);
    for (ts, v) in &status_seen {
        let k = v[0] as usize;
        assert_eq!(rec_ts[k].to_bits(), ts.to_bits(), "bin {k}: the recorded Status timestamp is the pushed one");
        for (c, x) in v.iter().enumerate() {
            assert_eq!(bits_col(status, k, c).to_bits(), x.to_bits(), "bin {k}, Status channel {c}: recorded ≠ pushed");
        }
    }
}

fn replay(args: &[&str]) -> (std::process::Output, Value) {
    let out = run(args);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, v)
}

#[test]
fn replay_reproduces_the_control_stream_bit_for_bit_and_reports_the_first_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("replay");
    // MPPI (counter-based noise) with online embedding updates: the whole model replays.
    let rig_path = write(dir.path(), "rig.toml", &rig.events_toml("mppi"));
    let xdf = dir.path().join("run.xdf");
    let (_, r) = run_bins(&rig_path, 300, &dir.path().join("report.json"), &["--record", xdf.to_str().unwrap()]);
    assert_eq!(u(&r["recording"]["dropped_bins"]), 0);

    let (out, v) = replay(&["replay", xdf.to_str().unwrap(), "--rig", rig_path.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success(), "replay of an untouched recording must match");
    assert_eq!(v["identical"], true);
    assert_eq!(u(&v["compared"]), 300);
    assert_eq!(u(&v["bins"]), 300);
    assert_eq!(v["latent_max_abs_difference"], 0.0);
    assert_eq!(v["rig_matches_recording"], true);
    assert!(v["spikes"].as_f64().unwrap() > 1000.0);

    // Real-time pacing repeats the same decisions.
    let (out, v) = replay(&["replay", xdf.to_str().unwrap(), "--rig", rig_path.to_str().unwrap(), "--quiet", "--realtime"]);
    assert!(out.status.success());
    assert_eq!(v["identical"], true);
    assert!(v["elapsed_s"].as_f64().unwrap() >= 2.9, "300 bins of 10 ms paced in real time");

    // A different safety layer: replay says where the Control stream first differs.
    let text = std::fs::read_to_string(&rig_path).unwrap();
    assert!(text.contains("max_step = 0.25"));
    let other = write(dir.path(), "other.toml", &text.replace("max_step = 0.25", "max_step = 0.2"));
    let (out, v) = replay(&["replay", xdf.to_str().unwrap(), "--rig", other.to_str().unwrap(), "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "a divergence exits with status 1");
    assert_eq!(v["identical"], false);
    assert_eq!(v["rig_matches_recording"], false);
    let first = u(&v["first_difference"]["bin"]);
    assert!(u(&v["differing_bins"]) >= 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("DIVERGED at bin {first}")));

    // A damaged file: a Control chunk that declares one sample more than it holds. The
    // rest of the file is still read and replayed; the bins whose Control sample was in the
    // damaged chunk could not be checked, which replay says, naming them, and exits 1.
    let bytes = std::fs::read(&xdf).unwrap();
    let mut damaged = bytes.clone();
    let at = declare_one_more_sample(&mut damaged, "Control", 2);
    let bad = dir.path().join("damaged-control.xdf");
    std::fs::write(&bad, &damaged).unwrap();
    let (out, v) = replay(&["replay", bad.to_str().unwrap(), "--rig", rig_path.to_str().unwrap(), "--quiet"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "bins that could not be checked fail the replay: {stderr}");
    assert!(stderr.contains(&format!("damaged at byte {at}")), "{stderr}");
    assert!(stderr.contains("replay could NOT check"), "{stderr}");
    let unchecked = u(&v["unchecked_bins"]);
    assert!(unchecked > 0 && unchecked < 100, "{v}");
    assert_eq!(u(&v["compared"]) + unchecked, 300, "every bin compared or named as unchecked");
    assert_eq!(v["identical"], true, "what could be compared is identical");
    assert_eq!(v["damage"]["parts"][0]["at"], at as u64);
    assert_eq!(u(&v["damage"]["samples_skipped"][format!("{} (Control)", rig.control)]), unchecked, "{}", v["damage"]);
    // A damaged timing chunk: replay runs up to it and stops there, saying so.
    let mut damaged = bytes.clone();
    declare_one_more_sample(&mut damaged, "NeuroloopTiming", 1);
    std::fs::write(&bad, &damaged).unwrap();
    let (out, v) = replay(&["replay", bad.to_str().unwrap(), "--rig", rig_path.to_str().unwrap(), "--quiet"]);
    assert_eq!(out.status.code(), Some(1));
    let stop = u(&v["unchecked"][0]["from"]);
    assert!(stop > 0 && u(&v["unchecked"][0]["to"]) == 300, "{v}");
    assert_eq!(u(&v["compared"]), stop, "bins before the damage replay and match");
    assert!(v["notices"].to_string().contains(&format!("replay stopped at bin {stop}")), "{v}");

    // Bad input: not an XDF file; a rig with another model.
    let bogus = write(dir.path(), "bogus.xdf", "not xdf");
    let (out, _) = replay(&["replay", bogus.to_str().unwrap(), "--rig", rig_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an XDF file (it does not start with \"XDF:\")"));
    let wide = write(dir.path(), "wide.toml", &text.replace("channels = 96", "channels = 95").replace("n_units = 96", "n_units = 95"));
    let (out, _) = replay(&["replay", xdf.to_str().unwrap(), "--rig", wide.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("replay needs the rig the session ran with"), "a clear error for the wrong rig");
}

#[test]
fn a_killed_run_leaves_a_readable_recording_that_replays() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("kill");
    let rig_path = write(dir.path(), "rig.toml", &rig.events_toml("lqr"));
    let xdf = dir.path().join("killed.xdf");
    let child = spawn(&["run", "--rig", rig_path.to_str().unwrap(), "--quiet", "--record", xdf.to_str().unwrap()]);
    // Wait until well into the bins (the grid starts ~2.5 s after launch), then SIGKILL:
    // no handler runs, no footer is written.
    wait_until_recorded(&xdf, 200_000);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let out = signal(child, "KILL");
    assert!(!out.status.success(), "killed");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("written as {}", partial(&xdf).display())), "the run says where");
    // The session never finished: its recording is the .partial file; nothing was put at
    // the path (an earlier file there would have stayed whole).
    assert!(!xdf.exists());
    let xdf = partial(&xdf);

    let d = xdf_dump(&xdf);
    let control = xdf_stream(&d, "Control");
    let bins = u(&control["n"]);
    assert!(bins > 50, "the flushed bins are there ({bins})");
    for ty in ["SpikeEvents", "NeuroloopBins", "NeuroloopStatus", "NeuroloopTiming"] {
        let s = xdf_stream(&d, ty);
        assert!(u(&s["n"]) > 0, "{ty} has samples");
        assert!(s["footer_sample_count"].is_null(), "{ty}: no footer after a kill");
    }
    // The simulator's task switches: a string Markers stream pyxdf reads as text.
    // (The other Markers stream is the control plane's commands, empty here.)
    let markers = d["streams"].as_array().unwrap().iter().find(|s| s["name"] == "test-tasks").expect("the task-switch markers");
    let first = markers["value_strings"][0][0].as_str().unwrap_or_else(|| panic!("no marker text in {markers}"));
    assert!(first.starts_with("task="), "first marker {first:?}");
    // Everything flushed together: the per-bin streams end within a flush of each other.
    let nb = u(&xdf_stream(&d, "NeuroloopBins")["n"]);
    assert!(nb.abs_diff(bins) <= 60, "bins {nb} vs Control {bins}");
    let ts = xdf_timestamps(control);
    for w in ts.windows(2) {
        assert!((w[1] - w[0] - 0.010).abs() < 1e-9, "Control timestamps are consecutive bin ends");
    }
    // The truncated recording still replays bit for bit, up to its last flushed bin.
    let (out, v) = replay(&["replay", xdf.to_str().unwrap(), "--rig", rig_path.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success());
    assert_eq!(v["identical"], true);
    assert!(u(&v["compared"]) > 50);
}

#[test]
fn replay_bins_a_labrecorder_file_of_the_raw_spike_stream() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("lab");
    let rig_path = rig.write_controller_rig(dir.path(), "events");
    let xdf = dir.path().join("labrecorder.xdf");
    let out = py_script("labrecorder_spikes.py")
        .args(["--out", xdf.to_str().unwrap(), "--name", &rig.spikes, "--channels", "96", "--duration", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "LabRecorder: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout);
    // LabRecorder prints its own progress lines to stdout as well.
    let json = line.lines().find(|l| l.starts_with("{\"pushed\"")).unwrap_or_else(|| panic!("no result line in {line}"));
    let pushed: Value = serde_json::from_str(json).unwrap();
    let pushed = u(&pushed["pushed"]);
    assert!(pushed > 3000);

    let (out, v) = replay(&["replay", xdf.to_str().unwrap(), "--rig", rig_path.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success());
    assert_eq!(v["source"], rig.spikes.as_str());
    assert!(v["identical"].is_null(), "a LabRecorder file has no Control stream to compare");
    assert_eq!(v["spikes"].as_f64().unwrap(), pushed as f64, "every recorded spike lands in a bin");
    assert_eq!(u(&v["late_spikes"]), 0);
    assert_eq!(u(&v["rejected_samples"]), 0);
    let bins = u(&v["bins"]);
    assert!((290..=310).contains(&bins), "3 s of 10 ms bins: {bins}");
    assert!(u(&v["gap_bins"]) <= 1, "the stream is live throughout");
}

/// One stream of a crafted recording: (id, type, channels, timestamps, row-major values).
type CraftedStream<'a> = (u32, &'a str, usize, Vec<f64>, Vec<f64>);

/// A crafted recording: `streams` of (id, type, channels, timestamps, row-major values), all
/// double64, with a bin grid in the header as neuroloop writes it.
fn crafted(path: &Path, streams: &[CraftedStream]) {
    use neuroloop::record::xdf::{Format, XdfWriter};
    let header = "<neuroloop><bin_grid><t0>100.0</t0><bin_s>0.01</bin_s><grace_s>0.004</grace_s><deadline_s>0.005</deadline_s></bin_grid></neuroloop>";
    let mut w = XdfWriter::create(path, header).unwrap();
    for (id, ty, channels, ts, values) in streams {
        let xml = format!(
            "<?xml version=\"1.0\"?><info><name>s{id}</name><type>{ty}</type><channel_count>{channels}</channel_count><nominal_srate>0</nominal_srate><channel_format>double64</channel_format><source_id>s{id}</source_id></info>"
        );
        w.add_stream(*id, &xml, Format::Double64, *channels);
        w.samples(*id, ts, values);
    }
    w.finish().unwrap();
}

/// Every stream replay reads by column is checked for its shape first: a damaged or
/// foreign recording is refused with the stream's name, never an index out of bounds.
#[test]
fn recordings_with_streams_of_the_wrong_shape_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("shape");
    let rig_path = write(dir.path(), "rig.toml", &rig.events_toml("lqr"));
    let bins = 50usize;
    let ends: Vec<f64> = (0..bins).map(|k| 100.0 + 0.01 * (k + 1) as f64).collect();
    let bins_stream = (2, "NeuroloopBins", 98, ends.clone(), vec![0.0; bins * 98]);
    let control = (3, "Control", 4, ends.clone(), vec![0.0; bins * 4]);
    let timing = |ch: usize| {
        (
            5,
            "NeuroloopTiming",
            ch,
            ends.clone(),
            (0..bins).flat_map(|k| std::iter::once(k as f64).chain(std::iter::repeat_n(1.0, ch - 1))).collect::<Vec<_>>(),
        )
    };
    let status = |ch: usize| {
        (
            4,
            "NeuroloopStatus",
            ch,
            ends.clone(),
            (0..bins).flat_map(|k| std::iter::once(k as f64).chain(std::iter::repeat_n(0.0, ch - 1))).collect::<Vec<_>>(),
        )
    };
    let timing_channels = neuroloop::schema::TIMING_LABELS.len();
    let status_channels = neuroloop::schema::status_channels(4, 3);
    for (name, streams, want) in [
        ("timing-narrow.xdf", vec![bins_stream.clone(), control.clone(), timing(3)], "NeuroloopTiming stream has 3 channels"),
        ("timing-wide.xdf", vec![bins_stream.clone(), control.clone(), timing(timing_channels + 5)], "NeuroloopTiming stream has"),
        (
            "status-narrow.xdf",
            vec![bins_stream.clone(), control.clone(), timing(timing_channels), status(2)],
            "NeuroloopStatus stream has 2 channels",
        ),
        (
            "status-wide.xdf",
            vec![bins_stream.clone(), control.clone(), timing(timing_channels), status(status_channels + 1)],
            "NeuroloopStatus stream has",
        ),
    ] {
        let p = dir.path().join(name);
        crafted(&p, &streams);
        let (out, _) = replay(&["replay", p.to_str().unwrap(), "--rig", rig_path.to_str().unwrap(), "--quiet"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(want) && err.contains(name) && !err.contains("panicked"), "{name}: {err}");
    }
}

/// A mis-stamped sample (10⁶ s late, an epoch time, or 0) is skipped and counted instead of
/// stretching the bin grid; a jump that persists is refused with where it is.
#[test]
fn time_jumps_in_a_spike_stream_are_skipped_or_refused_never_stepped_through() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("jump");
    let rig_path = rig.write_controller_rig(dir.path(), "events");
    let n = 2000usize;
    // LSL's clock counts from boot: an hour and a half into the machine's uptime.
    let ts: Vec<f64> = (0..n).map(|i| 5000.0 + i as f64 * 0.002).collect();
    let vals: Vec<f64> = (0..n).flat_map(|i| [(i % 96) as f64, 0.0]).collect();
    for (name, at, t) in [("late.xdf", 700, 100.0 + 1e6), ("epoch.xdf", 900, 1.7e9), ("zero.xdf", 0, 0.0)] {
        let mut ts = ts.clone();
        ts[at] = t;
        let p = dir.path().join(name);
        crafted(&p, &[(1, "SpikeEvents", 2, ts, vals.clone())]);
        let started = std::time::Instant::now();
        let (out, v) = replay(&["replay", p.to_str().unwrap(), "--rig", rig_path.to_str().unwrap(), "--quiet"]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(u(&v["bins"]) < 500, "{name}: {} bins: the outlier stretched the grid", v["bins"]);
        assert_eq!(u(&v["rejected_samples"]), 1, "{name}: {v}");
        assert!(v["notices"].to_string().contains("skipped"), "{name}: {}", v["notices"]);
        assert!(started.elapsed().as_secs() < 60);
    }
    let mut jumped = ts.clone();
    for t in jumped.iter_mut().skip(1200) {
        *t += 1e6;
    }
    let p = dir.path().join("reset.xdf");
    crafted(&p, &[(1, "SpikeEvents", 2, jumped, vals)]);
    let (out, _) = replay(&["replay", p.to_str().unwrap(), "--rig", rig_path.to_str().unwrap(), "--quiet"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("jumps in time") && err.contains("samples 1199 and 1200") && err.contains("reset.xdf"), "{err}");
}

/// SIGTERM and SIGHUP stop a run as Ctrl-C does: the report is written and the recording is
/// finished with its footers. A report path that cannot be written stops the run at start.
#[test]
fn sigterm_and_sighup_end_a_run_cleanly_and_a_bad_report_path_stops_it_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("term");
    let rig_path = write(dir.path(), "rig.toml", &rig.events_toml("lqr"));
    for signal in ["TERM", "HUP"] {
        let xdf = dir.path().join(format!("{signal}.xdf"));
        let report_path = dir.path().join(format!("{signal}.json"));
        let child = spawn(&[
            "run",
            "--rig",
            rig_path.to_str().unwrap(),
            "--quiet",
            "--record",
            xdf.to_str().unwrap(),
            "--report",
            report_path.to_str().unwrap(),
        ]);
        wait_until_recorded(&xdf, 100_000);
        let out = common::signal(child, signal);
        assert!(out.status.success(), "SIG{signal}: {}", String::from_utf8_lossy(&out.stderr));
        let r = report(&report_path);
        assert!(u(&r["bins"]) > 50, "SIG{signal}: {}", r["bins"]);
        let d = xdf_dump(&xdf);
        for s in d["streams"].as_array().unwrap() {
            assert_eq!(u(&s["footer_sample_count"]), u(&s["n"]), "SIG{signal}: {} has its footer", s["name"]);
        }
        assert_eq!(u(&xdf_stream(&d, "Control")["n"]), u(&r["control_samples"]));
    }
    let out = run(&["run", "--rig", rig_path.to_str().unwrap(), "--quiet", "--bins", "10", "--report", "/nonexistent/folder/report.json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/folder/report.json") && !err.contains("liblsl"), "checked before anything started: {err}");
}

/// The disk fills during a recording (here: a file-size limit, EFBIG): the run goes on with
/// every bin emitted, the recorder keeps nothing more in memory, the report says what
/// failed and counts the samples that did not reach the file, and what was written before
/// still replays.
#[test]
fn a_full_disk_stops_the_recording_not_the_run_and_the_loss_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("full");
    let rig_path = write(dir.path(), "rig.toml", &rig.events_toml("lqr"));
    let xdf = dir.path().join("full.xdf");
    let report_path = dir.path().join("report.json");
    // 600 blocks of 512 bytes: the recording fails after ~300 kB (a few seconds of bins).
    let out = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 600; exec \"$0\" run --rig \"$1\" --bins 1000 --quiet --record \"$2\" --report \"$3\"")
        .arg(bin())
        .args([&rig_path, &xdf, &report_path])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let r = report(&report_path);
    assert_eq!(u(&r["bins"]), 1000);
    assert_eq!(u(&r["control_samples"]), 1000, "every bin still emitted");
    let rec = &r["recording"];
    assert!(rec["error"].as_str().unwrap_or("").contains("failed"), "{rec}");
    assert!(err.contains("the recording stops here"), "{err}");
    // A failed recording is not renamed over the path: it stays as its .partial file, and
    // the report says where.
    assert!(!xdf.exists());
    let xdf = partial(&xdf);
    assert_eq!(rec["path"], xdf.to_str().unwrap(), "{rec}");
    let lost = u(&rec["samples_lost_after_error"]);
    let written: u64 = rec["streams"].as_array().unwrap().iter().map(|s| u(&s["samples"])).sum();
    assert!(lost > 1000, "the samples after the error are counted: {lost}");
    assert!(written > 0 && std::fs::metadata(&xdf).unwrap().len() <= 600 * 512);
    // What reached the disk is a readable, truncated recording.
    let (out, v) = replay(&["replay", xdf.to_str().unwrap(), "--rig", rig_path.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(u(&v["bins"]) > 10, "{v}");
}
