//! `[units] labels`: a counts stream's channels mapped to model units by their
//! `desc/channels/channel/label`, wherever they sit in the stream, through a real LSL outlet,
//! the real CLI, a real recording and its replay; a stream whose labels contradict the rig
//! is refused at connect with what is wrong.

mod common;
use common::*;
use lsl::ExPushable;

const N: usize = 96;
const SAMPLES: usize = 300;

/// Model unit k is the stream channel labelled `elec<k>`.
fn rig_labels() -> Vec<String> {
    (0..N).map(|k| format!("elec{k}")).collect()
}

/// `text` (a rig mapping 96 channels by position) mapping [`rig_labels`] instead.
fn mapped_by_label(text: &str) -> String {
    let quoted: Vec<String> = rig_labels().iter().map(|l| format!("\"{l}\"")).collect();
    edit(text, "[units]\nchannels = 96\n", &format!("[units]\nlabels = [{}]\n", quoted.join(", ")))
}

/// The controller rig (96 units, counts) mapping by label instead of by position.
fn label_rig(dir: &std::path::Path, rig: &SimRig) -> std::path::PathBuf {
    let model = rig.write_model(dir);
    // The test's samples are stamped off the bins' grid (up to a bin after the one they
    // are binned in): a grace of more than a bin keeps them on time.
    let text = rig.controller_toml("counts", &model).replace("grace_ms = 4\n", "grace_ms = 12\n");
    write(dir, "rig.toml", &mapped_by_label(&text))
}

/// A 100 Hz counts outlet labelled `labels` (None: no desc at all), held `secs` seconds; when
/// `push` is given, it pushes SAMPLES samples of it once neuroloop connects.
fn labelled_outlet(name: String, labels: Option<Vec<String>>, push: Option<Vec<f32>>, secs: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let channels = labels.as_ref().map_or(N, |l| l.len()) as u32;
        let mut info = lsl::StreamInfo::new(&name, "SpikeCounts", channels, 100.0, lsl::ChannelFormat::Float32, "labels-test").unwrap();
        if let Some(labels) = &labels {
            let mut chs = info.desc().append_child("channels");
            for l in labels {
                chs.append_child("channel").append_child_value("label", l).append_child_value("type", "spikes");
            }
        }
        let outlet = lsl::StreamOutlet::new(&info, 0, 360).unwrap();
        let Some(sample) = push else {
            std::thread::sleep(std::time::Duration::from_secs(secs));
            return;
        };
        wait_for_consumer(&outlet);
        let mut pace = Pacer::every(0.01);
        for _ in 0..SAMPLES {
            // Each sample goes out when its interval ends (paced on the clock, not by
            // sleeps that drift), so its spikes are on time for their bin.
            outlet.push_sample_ex(&sample, pace.tick(), true).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    })
}

#[test]
fn counts_mapped_by_label_land_on_the_labelled_units_live_recorded_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("bylabel");
    let rig_path = label_rig(dir.path(), &rig);
    // 98 channels: an unmapped "ref" first, the rig's labels in reverse order, an unmapped
    // "aux" last. The channel labelled elec<k> carries k mod 4 spikes per sample; the two
    // unmapped ones carry what no counts channel may (NaN, a fraction: say, an analog
    // channel beside the units), which must neither reach a unit nor reject the sample.
    let mut labels = vec!["ref".to_string()];
    labels.extend(rig_labels().into_iter().rev());
    labels.push("aux".into());
    let sample: Vec<f32> = labels
        .iter()
        .map(|l| match l.strip_prefix("elec") {
            Some(k) => (k.parse::<usize>().unwrap() % 4) as f32,
            None if l == "ref" => f32::NAN,
            None => 0.5,
        })
        .collect();
    let pusher = labelled_outlet(rig.spikes.clone(), Some(labels), Some(sample), 0);
    let xdf = dir.path().join("run.xdf");
    let ((), _, r) =
        run_until_source_done(&rig_path, &dir.path().join("report.json"), &["--record", xdf.to_str().unwrap()], || pusher.join().unwrap());
    let per_sample: u64 = (0..N as u64).map(|k| k % 4).sum();
    assert_eq!(
        r["ingest"]["spikes"].as_u64().unwrap(),
        SAMPLES as u64 * per_sample,
        "every mapped count kept, none of the unmapped channels'"
    );
    assert_eq!(r["ingest"]["unknown_units"], 0);
    assert_eq!(
        (&r["ingest"]["nonfinite"], &r["ingest"]["invalid"]),
        (&serde_json::json!(0), &serde_json::json!(0)),
        "unmapped channels are not checked"
    );

    // The recording's bins hold each unit's own counts, and say which label each unit is.
    let d = xdf_dump(&xdf);
    let bins = xdf_stream(&d, "NeuroloopBins");
    let unit_labels: Vec<String> = bins["labels"].as_array().unwrap()[..N].iter().map(|l| l.as_str().unwrap().to_string()).collect();
    let expected: Vec<String> = rig_labels().iter().map(|l| format!("count {l}")).collect();
    assert_eq!(unit_labels, expected);
    let rows = bins["n"].as_u64().unwrap() as usize;
    let mut per_unit = vec![0.0; N];
    for row in 0..rows {
        for (k, total) in per_unit.iter_mut().enumerate() {
            *total += bits_col(bins, row, k);
        }
    }
    // Every sample's counts land in one bin, so unit k holds S · (k mod 4) for one number S
    // of binned samples (the others came before bin 0, during the start delay).
    let s_binned = per_unit[1];
    assert!(s_binned >= 50.0, "{s_binned} samples binned");
    for (k, total) in per_unit.iter().enumerate() {
        assert_eq!(*total, s_binned * (k % 4) as f64, "unit {k} (elec{k}) holds its own channel's counts");
    }
    // The recorded input stream keeps its labels; replay re-binds them from its header.
    assert_eq!(xdf_stream(&d, "SpikeCounts")["labels"].as_array().unwrap().len(), N + 2);
    let out = run(&["replay", xdf.to_str().unwrap(), "--rig", rig_path.to_str().unwrap(), "--from", "spikes", "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["spikes"].as_f64().unwrap(), (SAMPLES as u64 * per_sample) as f64, "replay maps the recorded stream by its labels too");
}

#[test]
fn a_stream_whose_labels_contradict_the_rig_is_refused_at_connect() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("badlabel");
    let rig_path = label_rig(dir.path(), &rig);
    // elec5 is missing (the channel is called "elec05").
    let labels: Vec<String> = rig_labels().into_iter().map(|l| if l == "elec5" { "elec05".into() } else { l }).collect();
    let keep = labelled_outlet(rig.spikes.clone(), Some(labels), None, 8);
    let err = run_refused_at_connect(&rig_path, [keep]);
    assert!(err.contains("no channel labelled 'elec5'") && err.contains("'elec05'"), "names the missing label and the stream's: {err}");
    assert!(err.contains("rig.toml") || err.contains(&rig.spikes), "names the rig or the stream: {err}");

    // A stream with no labels at all cannot be mapped by label.
    let keep = labelled_outlet(rig.spikes.clone(), None, None, 8);
    let err = run_refused_at_connect(&rig_path, [keep]);
    assert!(err.contains("no channel labels") && err.contains("[units] channels or map"), "{err}");
}

/// The simulated rig labels its counts channels with the rig's labels, so a rig that maps
/// by label runs closed loop anywhere.
#[test]
fn a_simulated_rig_mapped_by_label_runs_closed_loop() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("simlabel");
    let rig_path = write(dir.path(), "rig.toml", &mapped_by_label(&rig.toml("lqr", "counts", "counts", "", "")));
    let (_, r) = run_bins(&rig_path, 200, &dir.path().join("report.json"), &[]);
    assert!(r["ingest"]["spikes"].as_u64().unwrap() > 1000, "{}", r["ingest"]);
    assert_eq!(r["ingest"]["unknown_units"], 0);
}
