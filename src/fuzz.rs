//! Entry points for the fuzzers: each takes the outside bytes one of neuroloop's decoders
//! reads — an LSL sample stream, a rig file, a model file, an XDF recording — and runs them
//! through the same code `run`, `check`, `replay` and `fit` use. Any input may be refused
//! with an error; a panic, a hang or a huge allocation is a finding.
//!
//! The coverage-guided fuzzers in `fuzz/` (libFuzzer) call these, and so does
//! `tests/fuzz_corpus.rs`, which replays every committed corpus file and every crasher
//! (`fuzz/regressions/`) in the normal test run. See docs/fuzzing.md.

use crate::binning::Binner;
use crate::clock::BinGrid;
use crate::ingest::{CountsLayout, IngestStats, SampleDecoder, SpikeItem};
use crate::rig::{InputKind, Rig, UnitsConfig};
use crate::units::UnitMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

/// The rig the XDF targets replay and fit with (also the one the seed recordings were made
/// with: see docs/fuzzing.md).
pub const FUZZ_RIG: &str = include_str!("../fuzz/rig.toml");

/// A cursor over the fuzzer's bytes that never fails: past the end it reads zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn f64(&mut self) -> f64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        f64::from_le_bytes(b)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Mostly small integers (what real streams carry), sometimes any f64 (NaN, ±inf,
    /// fractions, 1e300), so both the common and the hostile paths are reached.
    fn value(&mut self) -> f64 {
        match self.u8() {
            0..=199 => (self.u8() % 8) as f64,
            200..=239 => self.u8() as f64 - 16.0,
            _ => self.f64(),
        }
    }
}

/// LSL samples → the decoder → the binner, as live ingest and the loop see them. Checks
/// the rule that every spike is binned or counted: what the decoder counts as handed on is
/// what it handed on, and the binner accounts for all of it.
pub fn lsl_samples(data: &[u8]) {
    let mut b = Bytes(data);
    let head = b.u8();
    let kind = if head & 1 == 0 { InputKind::Events } else { InputKind::Counts };
    let channels = (b.u8() % 16) as usize + 1;
    let sorted = head & 2 != 0 && kind == InputKind::Events;
    let units = if sorted {
        let map: Vec<[u32; 2]> = (0..channels).map(|i| [i as u32 / 2, i as u32 % 3]).collect();
        UnitsConfig { map: Some(map), ..Default::default() }
    } else {
        UnitsConfig { channels: Some(channels), merge_sorted: head & 4 != 0, ..Default::default() }
    };
    let mut units = UnitMap::from_config(&units);
    // Counts mapped by label: the stream's labels (more channels than the rig maps, in any
    // order, some missing or repeated) bound as at connect; a refusal ends the case.
    if kind == InputKind::Counts && head & 2 != 0 {
        let want: Vec<String> = (0..channels).map(|i| format!("c{i}")).collect();
        let width = channels + (b.u8() % 4) as usize;
        let stream: Vec<String> = (0..width).map(|_| format!("c{}", b.u8() as usize % (channels + 2))).collect();
        match UnitMap::from_config(&UnitsConfig { labels: Some(want), ..Default::default() }).bind_labels(&stream, width) {
            Ok(bound) => units = bound,
            Err(_) => return,
        }
    }
    let n_units = units.n_units();
    // A stream's channel count is its own (a spike-event stream has 1 or 2; any other is
    // the decoder's to cope with).
    let width = match kind {
        InputKind::Events => (head >> 3) as usize % 4,
        InputKind::Counts => units.channels(),
    };
    let layout = CountsLayout { period: [0.001, 0.01, 0.0001, 0.05][(head >> 5) as usize % 4], rates: head & 0x80 != 0 };
    let stats = Arc::new(IngestStats::default());
    let (tx, _rx) = crossbeam_channel::bounded(64);
    let mut decoder = SampleDecoder::new(kind, units, stats.clone(), tx, None);
    let clock = BinGrid { t0: 0.0, bin_s: 0.01, grace_s: 0.002, deadline_s: 0.003 };
    let mut binner = Binner::new(clock, n_units.max(1), 8);
    let (mut handed, mut room) = (0.0f64, 4096usize);
    let mut t = 0.0f64;
    let mut buf = vec![0.0; width];
    let mut out = vec![0.0; n_units.max(1)];
    let (mut next_bin, mut closed) = (0u64, 0.0f64);
    let mut late_future = 0u64;
    while !b.is_empty() {
        let op = b.u8();
        t = match op % 8 {
            0 => b.f64(),
            1 => t - (b.u8() as f64) * 1e-3,
            _ => t + (b.u8() as f64) * 1e-4,
        };
        for v in &mut buf {
            *v = b.value();
        }
        decoder.decode(t, &buf, layout, &mut |item: SpikeItem| {
            if room == 0 {
                return false;
            }
            room -= 1;
            handed += item.count as f64;
            binner.feed(&[item]);
            true
        });
        if op & 0x40 != 0 {
            // The loop closes bins as the clock passes them (sometimes skipping some).
            let k = next_bin + (op >> 7) as u64;
            let tally = binner.close(k, &mut out);
            closed += tally.spikes;
            late_future += tally.late_spikes + tally.future_spikes;
            next_bin = k + 1;
            room = 4096;
        }
    }
    if layout.rates && kind == InputKind::Counts {
        return; // fractional spikes: the binner's counters are whole spikes
    }
    assert_eq!(stats.spikes.load(Ordering::Relaxed) as f64, handed.round(), "stats.spikes = spikes handed on");
    let accounted = closed + (late_future + binner.before_start() + binner.unclosed()) as f64;
    assert_eq!(accounted, handed, "every spike handed on is binned or counted");
}

/// A rig file's text, through everything `neuroloop check` does with it (against the
/// simulator's or the file's model). `check` must refuse what `run` would fail on.
pub fn rig_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rig) = Rig::parse(text, Path::new("fuzz.toml")) else {
        return;
    };
    // A fuzzed rig may name a model file: only the simulator's truth is built here.
    if rig.model_path().is_some() {
        return;
    }
    let Ok(model) = crate::session::SessionModel::resolve(&rig) else {
        return;
    };
    let _ = model.check(&rig);
}

/// A model file's bytes, through the loader and validation `run` and `check` use.
pub fn model_file(data: &[u8]) {
    if let Ok(params) = crate::model::ModelParams::from_bytes(data, Path::new("fuzz.safetensors")) {
        // A model that loads is one a backend can be built from.
        let rig = fuzz_rig();
        let _ = crate::session::backend(rig, params);
    }
}

/// An XDF recording's bytes, through `replay` (from its spikes and from its bins) and
/// `fit`'s reader.
pub fn xdf_recording(data: &[u8]) {
    let path = scratch_file("xdf");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let rig = fuzz_rig();
    for source in [crate::replay::ReplaySource::Bins, crate::replay::ReplaySource::Spikes] {
        let opts = crate::replay::ReplayOptions { source, realtime: false, backend: None, status_line: false };
        let _ = crate::replay::replay(&path, rig, &opts);
    }
    let _ = crate::fit::data::load(std::slice::from_ref(&path), rig, crate::fit::data::TaskSource::File, 0.2);
    let _ = crate::fit::data::load(std::slice::from_ref(&path), rig, crate::fit::data::TaskSource::Markers, 0.2);
    let _ = std::fs::remove_file(&path);
}

fn fuzz_rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| Rig::parse(FUZZ_RIG, Path::new("fuzz/rig.toml")).expect("fuzz/rig.toml is a valid rig"))
}

/// One file per process for the targets that need a path.
fn scratch_file(ext: &str) -> PathBuf {
    std::env::temp_dir().join(format!("neuroloop-fuzz-{}.{ext}", std::process::id()))
}

/// An XDF file's bytes through the chunk scanner every reader goes through (damaged chunks
/// skipped, the reading resynchronised after them): every byte is either kept or counted as
/// skipped, and what is kept parses whole — the parser reads every sample the scan kept, so
/// no reader can stop silently part-way through a file.
pub fn xdf_resync(data: &[u8]) {
    let Ok(scan) = crate::record::scan::scan(data) else { return };
    assert_eq!(scan.clean.len() as u64 + scan.bytes_skipped(), data.len() as u64, "every byte is kept or counted as skipped");
    let file = xdf::XDFFile::from_bytes(&scan.clean).expect("the scan keeps only chunks that parse");
    for (id, kept) in &scan.kept {
        let read = file.streams.iter().find(|s| s.id == *id).map_or(0, |s| s.samples.len() as u64);
        assert_eq!(read, *kept, "stream {id}: the parser read {read} of the {kept} samples the scan kept");
    }
}
