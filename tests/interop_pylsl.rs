//! Interop with an LSL implementation no one here wrote: a pylsl (PyPI) outlet publishes
//! spike events that neuroloop consumes, and a pylsl inlet receives neuroloop's Control
//! stream with the right labels and timestamps.

mod common;
use common::*;

#[test]
fn pylsl_spikes_in_pylsl_control_out() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("py");
    // The controller's rig: no [sim], the simulator's true model from a file, input from pylsl.
    let model = rig.write_model(dir.path());
    // A long lead-in before bin 0, so the Python inlet is connected before the first sample.
    let rig_path = write(dir.path(), "rig.toml", &long_lead_in(&rig.controller_toml("events", &model)));

    let outlet = pylsl_spike_outlet(&rig.spikes, 6, &[]);
    let inlet = pylsl_control_inlet(&rig.control, 20);
    // Run until pylsl has pushed everything, then Ctrl-C.
    let (pushed_out, _, r) = run_until_source_done(&rig_path, &dir.path().join("report.json"), &[], || outlet.wait_with_output().unwrap());

    let pushed: serde_json::Value = serde_json::from_slice(&pushed_out.stdout).unwrap();
    let pushed = pushed["pushed"].as_u64().expect("pylsl outlet output");
    assert!(pushed > 1000);
    assert_eq!(r["ingest"]["samples"].as_u64().unwrap(), pushed, "every spike pylsl pushed reached neuroloop");
    assert_eq!(r["ingest"]["spikes"].as_u64().unwrap(), pushed);
    assert_eq!(r["ring_overflows"], 0);

    let seen: serde_json::Value = serde_json::from_slice(&inlet.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(seen["type"], "Control");
    assert_eq!(seen["channel_count"], 4);
    assert_eq!(seen["labels"], serde_json::json!(["left", "right", "up", "down"]));
    assert!((seen["nominal_srate"].as_f64().unwrap() - 100.0).abs() < 1e-9);
    let ts: Vec<f64> = seen["timestamps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let bins = r["bins"].as_u64().unwrap();
    assert!(bins > 100);
    assert_eq!(r["control_samples"].as_u64().unwrap(), bins);
    assert_eq!(ts.len() as u64, bins, "pylsl sees one Control sample per bin");
    for w in ts.windows(2) {
        assert!((w[1] - w[0] - 0.010).abs() < 1e-6, "Control timestamps are consecutive bin ends");
    }
    for v in seen["values"].as_array().unwrap() {
        for x in v.as_array().unwrap() {
            let x = x.as_f64().unwrap();
            assert!((-1.0..=1.0).contains(&x), "control within the safety bounds");
        }
    }
}
