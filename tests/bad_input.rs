//! Bad input gets a clear error and loses nothing: each case through a real LSL stream
//! and the real CLI.

mod common;
use common::*;
use lsl::ExPushable;

/// A controller rig (no [sim]) reading a `kind` stream, with the sim's model saved to a file.
fn controller_rig(dir: &std::path::Path, rig: &SimRig, kind: &str) -> std::path::PathBuf {
    let model = rig.write_model(dir);
    write(dir, "rig.toml", &rig.controller_toml(kind, &model))
}

fn wait_for_consumer(outlet: &lsl::StreamOutlet) {
    assert!(outlet.wait_for_consumers(30.0), "neuroloop never connected");
    std::thread::sleep(std::time::Duration::from_millis(500));
}

#[test]
fn wrong_channel_count_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("chans");
    let rig_path = controller_rig(dir.path(), &rig, "counts");
    let name = rig.spikes.clone();
    // A counts stream with 10 channels where the rig maps 96.
    let keep = std::thread::spawn(move || {
        let info = lsl::StreamInfo::new(&name, "SpikeCounts", 10, 100.0, lsl::ChannelFormat::Float32, "chans").unwrap();
        let _outlet = lsl::StreamOutlet::new(&info, 0, 360).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(8));
    });
    let out = run(&["run", "--rig", rig_path.to_str().unwrap(), "--bins", "10", "--quiet"]);
    keep.join().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong channel count") && err.contains("96") && err.contains("10"), "{err}");
    assert!(err.contains("rig.toml"), "the error names the rig file: {err}");
}

#[test]
fn bad_events_are_counted_reported_and_the_loop_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("badev");
    let rig_path = controller_rig(dir.path(), &rig, "events");
    let name = rig.spikes.clone();
    let pusher = std::thread::spawn(move || {
        let info = lsl::StreamInfo::new(&name, "SpikeEvents", 2, lsl::IRREGULAR_RATE, lsl::ChannelFormat::Float32, "badev").unwrap();
        let outlet = lsl::StreamOutlet::new(&info, 0, 360).unwrap();
        wait_for_consumer(&outlet);
        let mut t = lsl::local_clock();
        let mut good = 0u64;
        for i in 0..400u64 {
            t += 0.005;
            outlet.push_sample_ex(&vec![(i % 96) as f32, 0.0], t, true).unwrap();
            good += 1;
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // 3 NaN channels, 4 unknown units, 2 duplicates, 5 out-of-order.
        for _ in 0..3 {
            outlet.push_sample_ex(&vec![f32::NAN, 0.0], t, true).unwrap();
        }
        for (c, u) in [(100.0, 0.0), (3.0, 2.0), (60.0, 1.0), (-1.0, 0.0)] {
            t += 0.001;
            outlet.push_sample_ex(&vec![c, u], t, true).unwrap();
        }
        t += 0.001;
        outlet.push_sample_ex(&vec![7.0, 0.0], t, true).unwrap();
        outlet.push_sample_ex(&vec![7.0, 0.0], t, true).unwrap(); // duplicate
        outlet.push_sample_ex(&vec![7.0, 0.0], t, true).unwrap(); // duplicate
        good += 1;
        for k in 0..5 {
            outlet.push_sample_ex(&vec![k as f32, 0.0], t - 0.002 - 0.0001 * k as f64, true).unwrap();
            good += 1;
        }
        for i in 0..200u64 {
            t += 0.005;
            outlet.push_sample_ex(&vec![(i % 96) as f32, 0.0], t, true).unwrap();
            good += 1;
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        good
    });
    // Run until the pusher is done, then Ctrl-C: nothing here depends on the machine's speed.
    let report_path = dir.path().join("report.json");
    let child = spawn(&["run", "--rig", rig_path.to_str().unwrap(), "--report", report_path.to_str().unwrap(), "--quiet"]);
    let good = pusher.join().unwrap();
    let out = interrupt(child);
    assert!(out.status.success());
    let r = report(&report_path);
    let ing = &r["ingest"];
    assert_eq!(ing["nonfinite"], 3);
    assert_eq!(ing["unknown_units"], 4);
    assert_eq!(ing["duplicates"], 2);
    assert_eq!(ing["out_of_order"], 5);
    assert_eq!(ing["spikes"].as_u64().unwrap(), good, "every valid spike was kept");
    let computed = r["bins_computed"].as_u64().unwrap();
    assert!(computed >= 100 && computed <= r["bins"].as_u64().unwrap(), "the loop kept going through the bad samples");
    let err = String::from_utf8_lossy(&out.stderr);
    for what in ["NaN/inf", "does not map", "duplicate", "out-of-order"] {
        assert!(err.contains(what), "stderr should report {what}: {err}");
    }
}

#[test]
fn bad_counts_samples_are_rejected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("badcnt");
    let rig_path = controller_rig(dir.path(), &rig, "counts");
    let name = rig.spikes.clone();
    let pusher = std::thread::spawn(move || {
        let info = lsl::StreamInfo::new(&name, "SpikeCounts", 96, 100.0, lsl::ChannelFormat::Float32, "badcnt").unwrap();
        let outlet = lsl::StreamOutlet::new(&info, 0, 360).unwrap();
        wait_for_consumer(&outlet);
        let mut t = lsl::local_clock();
        let mut sample = vec![1.0f32; 96];
        for i in 0..300 {
            t += 0.01;
            if i == 100 {
                sample[5] = f32::INFINITY;
            }
            if i == 101 {
                sample[5] = 1.0;
            }
            outlet.push_sample_ex(&sample, t, true).unwrap();
            if i == 150 {
                outlet.push_sample_ex(&sample, t, true).unwrap(); // duplicate timestamp
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    });
    let report_path = dir.path().join("report.json");
    let child = spawn(&["run", "--rig", rig_path.to_str().unwrap(), "--report", report_path.to_str().unwrap(), "--quiet"]);
    pusher.join().unwrap();
    let out = interrupt(child);
    assert!(out.status.success());
    let r = report(&report_path);
    assert_eq!(r["ingest"]["nonfinite"], 1);
    assert_eq!(r["ingest"]["duplicates"], 1);
    assert_eq!(r["ingest"]["spikes"].as_u64().unwrap(), 299 * 96, "all valid counts kept: 300 samples + 1 repeat, minus the NaN one and the repeat");
}

/// The spike stream vanishes for a second and comes back: the loop keeps emitting (the
/// fallback) on time, reports the gap, then resumes.
#[test]
fn vanished_stream_gap_is_reported_and_the_loop_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("gap");
    let rig_path = write(dir.path(), "rig.toml", &rig.toml("lqr", "events", "events", "dropout_bins = [150, 250]", ""));
    let report_path = dir.path().join("report.json");
    let out = run(&["run", "--rig", rig_path.to_str().unwrap(), "--bins", "800", "--report", report_path.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success());
    let r = report(&report_path);
    assert_eq!(r["control_samples"], 800);
    assert!(r["ingest"]["disconnects"].as_u64().unwrap() >= 1);
    assert!(r["ingest"]["reconnects"].as_u64().unwrap() >= 1);
    // The dropout (bins 150–249) is reported as a gap, and the loop resumes after it. (A
    // busy machine may add short gaps of its own elsewhere; they are reported too.)
    let gaps: Vec<(u64, u64)> = r["gaps"].as_array().unwrap().iter().map(|g| (g[0].as_u64().unwrap(), g[1].as_u64().unwrap())).collect();
    let dropout = gaps.iter().find(|(a, b)| *a <= 230 && *b >= 170).unwrap_or_else(|| panic!("the dropout is not reported: {gaps:?}"));
    assert!(dropout.1 >= 249 && dropout.1 < 790, "the gap ends after the stream returns and the loop resumes: {gaps:?}");
    assert!(r["fallbacks"].as_u64().unwrap() >= r["gap_bins"].as_u64().unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("input LOST"), "{err}");
}
