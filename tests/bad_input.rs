//! Bad input gets a clear error and loses nothing: each case through a real LSL stream
//! and the real CLI.

mod common;
use common::*;
use lsl::ExPushable;

#[test]
fn wrong_channel_count_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("chans");
    let rig_path = rig.write_controller_rig(dir.path(), "counts");
    // A counts stream with 10 channels where the rig maps 96.
    let keep = hold_outlet(rig.spikes.clone(), "SpikeCounts", 10, 100.0, lsl::ChannelFormat::Float32, "chans", 8);
    let err = run_refused_at_connect(&rig_path, [keep]);
    assert!(err.contains("wrong channel count") && err.contains("96") && err.contains("10"), "{err}");
    assert!(err.contains("rig.toml"), "the error names the rig file: {err}");
}

#[test]
fn bad_events_are_counted_reported_and_the_loop_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("badev");
    let rig_path = rig.write_controller_rig(dir.path(), "events");
    let name = rig.spikes.clone();
    let pusher = std::thread::spawn(move || {
        let outlet = events_outlet(&name, "badev");
        wait_for_consumer(&outlet);
        let mut pace = Pacer::every(0.005);
        let mut good = 0u64;
        for i in 0..400u64 {
            outlet.push_sample_ex(&vec![(i % 96) as f32, 0.0], pace.tick(), true).unwrap();
            good += 1;
        }
        let mut t = pace.last_tick();
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
        let mut pace = Pacer::after(t, 0.005);
        for i in 0..200u64 {
            outlet.push_sample_ex(&vec![(i % 96) as f32, 0.0], pace.tick(), true).unwrap();
            good += 1;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        good
    });
    // Run until the pusher is done, then Ctrl-C: nothing here depends on the machine's speed.
    let (good, out, r) = run_until_source_done(&rig_path, &dir.path().join("report.json"), &[], || pusher.join().unwrap());
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
    let rig_path = rig.write_controller_rig(dir.path(), "counts");
    let name = rig.spikes.clone();
    let pusher = std::thread::spawn(move || {
        let outlet = counts_outlet(&name, 96, lsl::ChannelFormat::Float32, "badcnt");
        wait_for_consumer(&outlet);
        let mut pace = Pacer::every(0.01);
        let mut sample = vec![1.0f32; 96];
        for i in 0..300 {
            let t = pace.tick();
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
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    });
    let ((), _, r) = run_until_source_done(&rig_path, &dir.path().join("report.json"), &[], || pusher.join().unwrap());
    assert_eq!(r["ingest"]["nonfinite"], 1);
    assert_eq!(r["ingest"]["duplicates"], 1);
    assert_eq!(
        r["ingest"]["spikes"].as_u64().unwrap(),
        299 * 96,
        "all valid counts kept: 300 samples + 1 repeat, minus the NaN one and the repeat"
    );
}

/// The spike stream vanishes for a second and comes back: the loop keeps emitting (the
/// fallback) on time, reports the gap, then resumes.
#[test]
fn vanished_stream_gap_is_reported_and_the_loop_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("gap");
    let rig_path = write(dir.path(), "rig.toml", &rig.toml("lqr", "events", "events", "dropout_bins = [150, 250]", ""));
    let (out, r) = run_bins(&rig_path, 800, &dir.path().join("report.json"), &[]);
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

/// A stream of the rig's name and type that carries strings (a marker stream, say) is not
/// spikes: refused at connect, naming its format, instead of read as channel 0.
#[test]
fn a_string_stream_of_the_rigs_name_is_refused_at_connect() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("strfmt");
    let rig_path = rig.write_controller_rig(dir.path(), "events");
    let keep = hold_outlet(rig.spikes.clone(), "SpikeEvents", 2, lsl::IRREGULAR_RATE, lsl::ChannelFormat::String, "strfmt", 8);
    let err = run_refused_at_connect(&rig_path, [keep]);
    assert!(err.contains("channel format is String, not a number") && err.contains("[input]"), "{err}");
}

/// Two sources answer the rig's [input]: neither is picked silently (which one answered first
/// differs from run to run); the error lists both and says how to choose.
#[test]
fn two_streams_matching_the_input_are_refused_with_how_to_choose() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("twins");
    let rig_path = rig.write_controller_rig(dir.path(), "events");
    let a = hold_outlet(rig.spikes.clone(), "SpikeEvents", 2, lsl::IRREGULAR_RATE, lsl::ChannelFormat::Float32, "twin-a", 10);
    let b = hold_outlet(rig.spikes.clone(), "SpikeEvents", 2, lsl::IRREGULAR_RATE, lsl::ChannelFormat::Float32, "twin-b", 10);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let err = run_refused_at_connect(&rig_path, [a, b]);
    assert!(err.contains("2 streams match [input]") && err.contains("twin-a") && err.contains("twin-b"), "{err}");
    assert!(err.contains("give [input] source_id"), "{err}");
}

/// Counts no channel can carry (1e30 in 10 ms) and fractional counts are rejected whole and
/// counted; every valid count is kept, and the spike counter neither wraps nor truncates.
#[test]
fn impossible_and_fractional_counts_are_rejected_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("hugecnt");
    let rig_path = rig.write_controller_rig(dir.path(), "counts");
    let name = rig.spikes.clone();
    let pusher = std::thread::spawn(move || {
        let outlet = counts_outlet(&name, 96, lsl::ChannelFormat::Double64, "hugecnt");
        wait_for_consumer(&outlet);
        let mut pace = Pacer::every(0.01);
        for i in 0..300 {
            let t = pace.tick();
            let mut sample = vec![2.0f64; 96];
            match i {
                100 => sample[7] = 1e30,
                150 => sample[3] = 2.5,
                200 => sample[9] = 101.0, // 10 100 Hz over 10 ms: above what a channel carries
                _ => {}
            }
            outlet.push_sample_ex(&sample, t, true).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    });
    let ((), out, r) = run_until_source_done(&rig_path, &dir.path().join("report.json"), &[], || pusher.join().unwrap());
    assert_eq!(r["ingest"]["invalid"], 3);
    assert_eq!(r["ingest"]["spikes"].as_u64().unwrap(), 297 * 96 * 2, "every valid count kept, none of the bad samples");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fractional count (2.5) in channel 3") && err.contains("values_are_rates"), "{err}");
    assert!(err.contains("1e30 in channel 7") && err.contains("10000 Hz a channel can carry"), "{err}");
}

/// A source stamping its samples on its own clock (here: seconds since it started, near 0)
/// is not live input: every sample is counted as stale, none is binned, the loop sends the
/// fallback for every bin, and the operator is told what is wrong.
#[test]
fn input_stamped_far_in_the_past_is_counted_stale_and_not_live() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("stale");
    let rig_path = rig.write_controller_rig(dir.path(), "events");
    let name = rig.spikes.clone();
    let pusher = std::thread::spawn(move || {
        let outlet = events_outlet(&name, "stale");
        wait_for_consumer(&outlet);
        let mut pace = Pacer::every(0.005);
        for i in 0..600u64 {
            pace.tick();
            outlet.push_sample_ex(&vec![(i % 96) as f32, 0.0], 1.0 + i as f64 * 0.005, true).unwrap();
        }
        // Ingest pulls the last samples before the run is interrupted.
        std::thread::sleep(std::time::Duration::from_secs(1));
        600u64
    });
    let (pushed, out, r) = run_until_source_done(&rig_path, &dir.path().join("report.json"), &[], || pusher.join().unwrap());
    assert_eq!(r["ingest"]["stale"].as_u64().unwrap(), pushed, "every sample counted stale");
    assert_eq!(r["ingest"]["spikes"], 0);
    assert_eq!(r["binned_spikes"], 0.0);
    assert_eq!(r["gap_bins"], r["bins"], "never live: every bin is a gap");
    assert_eq!(r["fallbacks"], r["bins"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("counted as stale") && err.contains("lsl_local_clock()"), "{err}");
}

/// Counts stamped 20 ms after the interval they count (within stall, so live): all arrive
/// after their bin closed; they are counted late and the operator is told by how much to
/// raise grace_ms.
#[test]
fn input_that_always_arrives_late_gets_a_notice_with_the_grace_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("late");
    let rig_path = rig.write_controller_rig(dir.path(), "counts");
    let name = rig.spikes.clone();
    let pusher = std::thread::spawn(move || {
        let outlet = counts_outlet(&name, 96, lsl::ChannelFormat::Float32, "late");
        wait_for_consumer(&outlet);
        let mut pace = Pacer::every(0.01);
        for _ in 0..400 {
            // Paced on the clock; each stamped 20 ms before it goes out.
            pace.tick();
            outlet.push_sample_ex(&vec![1.0f32; 96], lsl::local_clock() - 0.02, true).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    });
    let ((), out, r) = run_until_source_done(&rig_path, &dir.path().join("report.json"), &[], || pusher.join().unwrap());
    // Those before bin 0 (the session's start-up) are counted apart; the rest are late.
    let in_session = r["ingest"]["spikes"].as_f64().unwrap() - r["pre_session_spikes"].as_f64().unwrap();
    assert!(in_session >= 200.0 * 96.0, "{r}");
    assert!(r["late_spikes"].as_f64().unwrap() > 0.9 * in_session, "nearly all late: {r}");
    let err = String::from_utf8_lossy(&out.stderr);
    let notice =
        err.lines().find(|l| l.contains("arrived after their bin had closed")).unwrap_or_else(|| panic!("no lateness notice: {err}"));
    // 20 ms behind the stamp, binned 5 ms before it: ≥ 15 ms after the bin's end, grace 4.
    let needed: f64 = notice.split("raise grace_ms to ≥ ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((15.0..40.0).contains(&needed), "{notice}");
}

/// 200 000 spikes within 1 ms: the inlet's buffer holds the burst (liblsl would drop the
/// oldest without a count), so every spike is either handed to the loop or counted as a
/// ring overflow.
#[test]
fn a_burst_of_200k_spikes_is_binned_or_counted_every_one() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("burst");
    let rig_path = rig.write_controller_rig(dir.path(), "events");
    let name = rig.spikes.clone();
    const BURST: usize = 200_000;
    let pusher = std::thread::spawn(move || {
        let info = lsl::StreamInfo::new(&name, "SpikeEvents", 2, lsl::IRREGULAR_RATE, lsl::ChannelFormat::Float32, "burst").unwrap();
        // The outlet's own buffer must hold the burst too (max_buffered 10 000 → 1 M samples).
        let outlet = lsl::StreamOutlet::new(&info, 0, 10_000).unwrap();
        wait_for_consumer(&outlet);
        std::thread::sleep(std::time::Duration::from_secs(2)); // into the session (bin 0 starts 1.5 s in)
        let t = lsl::local_clock();
        let samples: Vec<Vec<f32>> = (0..BURST).map(|i| vec![(i % 96) as f32, 0.0]).collect();
        let stamps: Vec<f64> = (0..BURST).map(|i| t + i as f64 * 5e-9).collect();
        outlet.push_chunk_stamped_ex(&samples, &stamps, true).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(3));
    });
    let ((), _, r) = run_until_source_done(&rig_path, &dir.path().join("report.json"), &[], || pusher.join().unwrap());
    let ing = &r["ingest"];
    assert_eq!(ing["samples"].as_u64().unwrap(), BURST as u64, "the inlet received every sample: {ing}");
    assert_eq!(ing["inlet_full"], 0);
    let handed = ing["spikes"].as_u64().unwrap();
    assert_eq!(handed + r["ring_overflows"].as_u64().unwrap(), BURST as u64, "handed on or counted: {r}");
    let binned = r["binned_spikes"].as_f64().unwrap() + r["late_spikes"].as_f64().unwrap() + r["future_spikes"].as_f64().unwrap();
    assert_eq!(binned, handed as f64, "every spike handed on is in a bin or counted");
}
