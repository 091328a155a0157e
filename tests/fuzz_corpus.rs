//! Every committed fuzz input — the seed corpus (fuzz/corpus/<target>/) and each crasher the
//! fuzzers ever found (fuzz/regressions/<target>/) — through the same entry points the
//! fuzzers call (neuroloop::fuzz), in the normal test run: a fixed crash stays fixed even
//! where the fuzzers are not built. scripts/fuzz.sh runs the coverage-guided fuzzers.

use std::path::Path;

fn inputs(target: &str) -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
            files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    files.sort();
    files
}

fn replay_all(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "fuzz/corpus/{target}/ has no inputs");
    for f in &files {
        let data = std::fs::read(f).unwrap();
        // A panic names the input (the test harness prints it with the panic).
        eprintln!("{target}: {}", f.display());
        run(&data);
    }
}

#[test]
fn lsl_samples_corpus_and_crashers() {
    replay_all("lsl_samples", neuroloop::fuzz::lsl_samples);
}

#[test]
fn rig_toml_corpus_and_crashers() {
    replay_all("rig_toml", neuroloop::fuzz::rig_toml);
}

#[test]
fn model_file_corpus_and_crashers() {
    replay_all("model_file", neuroloop::fuzz::model_file);
}

#[test]
fn xdf_recording_corpus_and_crashers() {
    replay_all("xdf_recording", neuroloop::fuzz::xdf_recording);
}

#[test]
fn xdf_resync_corpus_and_crashers() {
    replay_all("xdf_resync", neuroloop::fuzz::xdf_resync);
}

/// The crasher the lsl_samples fuzzer found first: a spike-event sample with no values (a
/// stream of 0 channels) indexed past its end. It is now counted as invalid.
#[test]
fn an_event_sample_without_values_is_counted_invalid() {
    use neuroloop::ingest::{CountsLayout, IngestStats, SampleDecoder};
    use neuroloop::rig::{InputKind, UnitsConfig};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    let units = neuroloop::units::UnitMap::from_config(&UnitsConfig { channels: Some(4), ..Default::default() });
    let stats = Arc::new(IngestStats::default());
    let (tx, rx) = crossbeam_channel::bounded(4);
    let mut d = SampleDecoder::new(InputKind::Events, units, stats.clone(), tx, None);
    let layout = CountsLayout { period: 0.01, rates: false };
    d.decode(1.0, &[], layout, &mut |_| panic!("nothing to hand on"));
    assert_eq!(stats.invalid.load(Ordering::Relaxed), 1);
    assert!(format!("{:?}", rx.try_recv().unwrap()).contains("no channel value"));
}
