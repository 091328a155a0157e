//! `neuroloop replay FILE.xdf --rig R`: push a recording back through the loop, offline.
//!
//! Two sources:
//! - **recorded bins** (a `neuroloop run --record` file): each bin's counts as they were
//!   formed live go through the same backend step and the same emitter decision
//!   ([`crate::runloop::wants_fallback`], [`crate::emit::command`]), repeating the live
//!   run's timing decisions (stream gaps, bins started past their deadline, deadline
//!   misses, the enable gate, which emitted command was u_prev) from its timing stream. On
//!   the CPU backend the Control stream comes out bit for bit; the first differing bin is
//!   reported otherwise.
//! - **a raw spike stream** (a LabRecorder file, or `--from spikes`): the samples go through
//!   the live ingest's validation and unit map ([`SampleDecoder`]) and the live binner, on
//!   a bin grid starting at the first sample, with timestamps mapped by the file's clock
//!   offsets.
//!
//! As fast as possible by default; `--realtime` paces bins at Δ (and then, for a spike
//! stream, a bin whose computation ends past its deadline gets the fallback, as live).

use crate::backend::{BinInput, BinOutput};
use crate::binning::Binner;
use crate::clock::{self, BinGrid};
use crate::ingest::{CountsLayout, IngestStats, SampleDecoder};
use crate::latency::Percentiles;
use crate::rig::{BackendKind, InputKind, Rig};
use crate::safety::Safety;
use crate::units::UnitMap;
use anyhow::{bail, Context};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use xdf::{Values, XDFFile};

/// Which of a recording's streams drive the replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaySource {
    /// Recorded bins when the file has them, else the raw spike stream.
    Auto,
    Bins,
    Spikes,
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub source: ReplaySource,
    /// Pace bins at Δ instead of running as fast as possible.
    pub realtime: bool,
    /// Run this backend instead of the rig's (bit-for-bit holds on the CPU backend).
    pub backend: Option<BackendKind>,
    pub status_line: bool,
}

/// The first Control sample that came out differently.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub bin: u64,
    pub channel: usize,
    pub recorded: f32,
    pub replayed: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub file: String,
    /// "recorded bins" or the spike stream's name.
    pub source: String,
    pub backend: String,
    pub realtime: bool,
    pub bins: u64,
    /// Recorded Control samples compared (recorded-bins replay).
    pub compared: u64,
    /// Every compared Control sample identical, bit for bit (None: nothing to compare).
    pub identical: Option<bool>,
    pub first_difference: Option<Difference>,
    pub differing_bins: u64,
    /// Largest |x_replayed − x_recorded| over the Status stream (recorded-bins replay).
    pub latent_max_abs_difference: Option<f64>,
    pub fallbacks: u64,
    pub gap_bins: u64,
    /// Spikes in the bins replayed.
    pub spikes: f64,
    /// Spikes that fell in bins already closed (spike-stream replay; recorded bins carry
    /// the live run's own count).
    pub late_spikes: u64,
    /// Samples the ingest checks rejected or could not map (spike-stream replay).
    pub rejected_samples: u64,
    /// Backend step time per bin (µs).
    pub compute_us: Option<Percentiles>,
    pub elapsed_s: f64,
    /// The rig file's hash equals the one the recording names (None: the file names none).
    pub rig_matches_recording: Option<bool>,
    pub notices: Vec<String>,
}

/// The samples of one stream as f64 rows, with timestamps.
pub(crate) struct Rows {
    pub channels: usize,
    pub timestamps: Vec<f64>,
    pub values: Vec<f64>,
    /// String samples (markers), one per sample of a one-channel string stream.
    pub texts: Vec<String>,
}

impl Rows {
    fn of(channels: usize, samples: &[xdf::Sample]) -> Rows {
        let mut r = Rows { channels, timestamps: Vec::with_capacity(samples.len()), values: Vec::with_capacity(samples.len() * channels), texts: Vec::new() };
        for smp in samples {
            r.timestamps.push(smp.timestamp.unwrap_or(f64::NAN));
            match &smp.values {
                Values::Int8(v) => r.values.extend(v.iter().map(|&x| x as f64)),
                Values::Int16(v) => r.values.extend(v.iter().map(|&x| x as f64)),
                Values::Int32(v) => r.values.extend(v.iter().map(|&x| x as f64)),
                Values::Int64(v) => r.values.extend(v.iter().map(|&x| x as f64)),
                Values::Float32(v) => r.values.extend(v.iter().map(|&x| x as f64)),
                Values::Float64(v) => r.values.extend_from_slice(v),
                Values::String(t) => {
                    r.values.extend(std::iter::repeat(f64::NAN).take(channels));
                    r.texts.push(t.clone());
                }
            }
        }
        r
    }
    pub fn len(&self) -> usize {
        self.timestamps.len()
    }
    pub fn row(&self, i: usize) -> &[f64] {
        &self.values[i * self.channels..(i + 1) * self.channels]
    }
}

/// The text at `path` under the file header's `<info>`.
pub(crate) fn header_text(file: &XDFFile, path: &[&str]) -> Option<String> {
    let mut cur = &file.header;
    for p in path {
        cur = cur.get_child(*p)?;
    }
    cur.get_text().map(|t| t.into_owned())
}

/// One stream of the file, its samples as f64 rows.
pub(crate) struct Recorded {
    pub name: String,
    pub stream_type: String,
    /// Nominal rate (Hz; 0 = irregular).
    pub srate: f64,
    pub rows: Rows,
    /// `desc/channels/channel/label` from the stream header (empty when it has none).
    pub labels: Vec<String>,
}

/// The file's streams (timestamps mapped onto the recorder's clock by its clock offsets).
pub(crate) fn streams_of(file: &XDFFile) -> Vec<Recorded> {
    file.streams
        .iter()
        .map(|s| Recorded {
            name: s.name.as_deref().unwrap_or("").to_string(),
            stream_type: s.r#type.as_deref().unwrap_or("").to_string(),
            srate: s.nominal_srate.unwrap_or(0.0),
            rows: Rows::of(s.channel_count as usize, &s.samples),
            // `info/desc/channels/channel/label`, as LabRecorder and neuroloop write it.
            labels: s
                .header
                .get_child("desc")
                .and_then(|d| d.get_child("channels"))
                .map(|chs| {
                    chs.children
                        .iter()
                        .filter_map(|n| n.as_element())
                        .filter(|e| e.name == "channel")
                        .map(|c| c.get_child("label").and_then(|l| l.get_text()).map(|t| t.into_owned()).unwrap_or_default())
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

pub fn replay(path: &Path, rig: &Rig, opts: &ReplayOptions) -> anyhow::Result<ReplayReport> {
    let opened = crate::record::read::open(path)?;
    let file = opened.file;
    let mut rig = rig.clone();
    if let Some(b) = opts.backend {
        rig.model.backend = b;
    }
    let streams = streams_of(&file);
    let has_bins = streams.iter().any(|s| s.stream_type == "NeuroloopBins");
    let source = match opts.source {
        ReplaySource::Auto if has_bins => ReplaySource::Bins,
        ReplaySource::Auto => ReplaySource::Spikes,
        s => s,
    };
    let mut notices = Vec::new();
    if let Some(t) = opened.truncated {
        eprintln!("[neuroloop] replay: {t}");
        notices.push(t);
    }
    let recorded_sha = header_text(&file, &["neuroloop", "rig", "sha256"]);
    let rig_matches_recording = match &recorded_sha {
        Some(sha) => {
            let ours = crate::record::sha256_hex(&std::fs::read(&rig.path).unwrap_or_default());
            let same = &ours == sha;
            if !same {
                let msg = format!(
                    "the rig file {} is not the one the recording ran with (sha256 {} vs {}); a bit-for-bit match is not expected",
                    rig.path.display(),
                    &ours[..12],
                    &sha[..sha.len().min(12)]
                );
                eprintln!("[neuroloop] warning: {msg}");
                notices.push(msg);
            }
            Some(same)
        }
        None => None,
    };
    if opts.backend.is_none() && rig.model.backend != BackendKind::Cpu && source == ReplaySource::Bins {
        notices.push(format!("backend {}: a bit-for-bit match is only expected on the CPU backend (--backend cpu)", rig.model.backend.name()));
    }
    let mut r = match source {
        ReplaySource::Bins => replay_bins(path, &file, streams, &rig, opts)?,
        _ => replay_spikes(path, streams, &rig, opts)?,
    };
    r.rig_matches_recording = rig_matches_recording;
    notices.append(&mut r.notices);
    r.notices = notices;
    Ok(r)
}

/// What replay needs from the rig: the model's backend and the safety layer.
struct Machine {
    backend: Box<dyn crate::backend::Backend>,
    safety: Safety,
    out: BinOutput,
    n: usize,
    m: usize,
    dims: crate::model::Dims,
    hist: hdrhistogram::Histogram<u64>,
}

impl Machine {
    fn new(rig: &Rig) -> anyhow::Result<Machine> {
        let model = crate::session::SessionModel::resolve(rig)?;
        model.check(rig)?;
        let dims = model.dims();
        let safety = Safety::from_rig(rig, dims.control)?;
        let backend = model.backend(rig)?;
        Ok(Machine {
            backend,
            safety,
            out: BinOutput::new(&dims),
            n: dims.n_units,
            m: dims.control,
            dims,
            hist: hdrhistogram::Histogram::new(3).expect("histogram"),
        })
    }

    /// One bin through the backend; returns whether the loop would ask for the fallback.
    fn step(&mut self, bin: u64, counts: &[f64], u_prev: &[f64], has_data: bool, want_control: bool) -> bool {
        let t = clock::now();
        self.backend.step(&BinInput { bin, counts, u_prev, has_data, want_control }, &mut self.out);
        let _ = self.hist.record(((clock::now() - t) * 1e6).max(1.0) as u64);
        crate::runloop::wants_fallback(has_data, &self.out)
    }

    fn compute_us(&self) -> Option<Percentiles> {
        (!self.hist.is_empty()).then(|| Percentiles::of(&self.hist))
    }
}

/// Prints a progress line about once a second.
struct Progress {
    on: bool,
    last: f64,
    total: u64,
}

impl Progress {
    fn tick(&mut self, k: u64) {
        if self.on && clock::now() - self.last > 1.0 {
            self.last = clock::now();
            eprintln!("[neuroloop] replay: bin {k} of {}", self.total);
        }
    }
}

/// One value of the recording's bin grid (`neuroloop/bin_grid/KEY` in the file header),
/// refused unless it is a finite number (and, for `bin_s`, > 0).
pub(crate) fn recorded_grid(file: &XDFFile, path: &Path, key: &str) -> anyhow::Result<f64> {
    let v: f64 = header_text(file, &["neuroloop", "bin_grid", key])
        .and_then(|t| t.trim().parse().ok())
        .with_context(|| format!("{}: the file header has no neuroloop/bin_grid/{key}", path.display()))?;
    if !v.is_finite() || (key == "bin_s" && v <= 0.0) {
        bail!("{}: the file header's neuroloop/bin_grid/{key} is {v}, not a usable {}: the header is damaged", path.display(), if key == "bin_s" { "bin width (a finite number > 0)" } else { "time (a finite number)" });
    }
    Ok(v)
}

fn replay_bins(path: &Path, file: &XDFFile, mut streams: Vec<Recorded>, rig: &Rig, opts: &ReplayOptions) -> anyhow::Result<ReplayReport> {
    let mut take = |ty: &str| {
        let i = streams.iter().position(|s| s.stream_type == ty);
        i.map(|i| streams.swap_remove(i).rows)
    };
    let need = |r: Option<Rows>, ty: &str| {
        r.with_context(|| format!("{}: no {ty} stream; was it recorded by `neuroloop run --record`?", path.display()))
    };
    let bins = need(take("NeuroloopBins"), "NeuroloopBins")?;
    let timing = need(take("NeuroloopTiming"), "NeuroloopTiming")?;
    let control = need(take("Control"), "Control")?;
    let status = take("NeuroloopStatus");
    let grid = |k: &str| recorded_grid(file, path, k);
    let clock = BinGrid { t0: grid("t0")?, bin_s: grid("bin_s")?, grace_s: grid("grace_s")?, deadline_s: grid("deadline_s")? };
    if (clock.bin_s - rig.timing.bin_ms * 1e-3).abs() > 1e-12 {
        bail!("the recording binned at Δ = {} ms, the rig at {} ms: replay needs the rig the session ran with", clock.bin_s * 1e3, rig.timing.bin_ms);
    }
    let mut mach = Machine::new(rig)?;
    let (n, m) = (mach.n, mach.m);
    if bins.channels != n + 2 || control.channels != m {
        bail!(
            "the recording has N = {} units and m = {} control channels, the rig's model N = {n}, m = {m}: replay needs the rig the session ran with",
            bins.channels.saturating_sub(2),
            control.channels
        );
    }
    // Every stream replay reads by column has the shape neuroloop records.
    let timing_channels = crate::schema::TIMING_LABELS.len();
    if timing.channels != timing_channels {
        bail!("{}: the NeuroloopTiming stream has {} channels, neuroloop records {timing_channels}: not a recording of this neuroloop version, or a damaged one", path.display(), timing.channels);
    }
    let status_channels = crate::schema::status_channels(mach.dims.latent, mach.dims.embed);
    if let Some(st) = &status {
        if st.channels != status_channels {
            bail!(
                "{}: the NeuroloopStatus stream has {} channels; with the rig's model (d = {}, e = {}) neuroloop records {status_channels}: replay needs the rig the session ran with",
                path.display(),
                st.channels,
                mach.dims.latent,
                mach.dims.embed
            );
        }
    }
    // Index every stream by bin.
    let n_bins = timing.len();
    let index = |rows: &Rows, by_column: bool| -> Vec<Option<usize>> {
        let mut idx = vec![None; n_bins];
        for i in 0..rows.len() {
            let k = if by_column { rows.row(i)[0] as i64 } else { clock.bin_ending_at(rows.timestamps[i]) };
            if k >= 0 && (k as usize) < n_bins {
                idx[k as usize] = Some(i);
            }
        }
        idx
    };
    let t_idx = index(&timing, true);
    let b_idx = index(&bins, false);
    let c_idx = index(&control, false);
    let s_idx = status.as_ref().map(|s| index(s, true));
    let col = |name: &str| crate::schema::TIMING_LABELS.iter().position(|l| *l == name).unwrap();
    let (c_started, c_has, c_want, c_miss, c_fb, c_en, c_from) =
        (col("started_at"), col("has_data"), col("want_control"), col("deadline_miss"), col("fallback"), col("enabled"), col("u_prev_from"));

    let mut emitted = vec![0.0f64; n_bins * m];
    let mut last = vec![0.0f64; m];
    let mut proposal = vec![0.0f64; m];
    let mut cmd = vec![0.0f64; m];
    let zeros = vec![0.0f64; m];
    let mut u_prev = vec![0.0f64; m];
    let mut counts = vec![0.0f64; n];
    let mut report = empty_report(path, "recorded bins", mach.backend.name(), opts.realtime);
    let mut latent_diff: Option<f64> = None;
    let mut progress = Progress { on: opts.status_line, last: clock::now(), total: n_bins as u64 };
    let start = clock::now();
    let pace_t0 = clock::now() + 0.05;
    for k in 0..n_bins {
        progress.tick(k as u64);
        let Some(ti) = t_idx[k] else {
            bail!("the recording has no timing row for bin {k} (its records were dropped while recording): replay cannot go on past bin {k}");
        };
        let t = timing.row(ti);
        if opts.realtime {
            clock::sleep_until(pace_t0 + (k as f64 + 1.0) * clock.bin_s + clock.grace_s);
        }
        let miss = t[c_miss] == 1.0;
        let enabled = t[c_en] == 1.0;
        // NaN started_at: the loop never ran this bin (the run was stopped while it was
        // behind); the emitter pushed the fallback.
        let loop_ran = t[c_started].is_finite();
        let mut fallback = true;
        if loop_ran {
            let Some(bi) = b_idx[k] else { bail!("the recording has no bins row for bin {k}: replay cannot go on past bin {k}") };
            counts.copy_from_slice(&bins.row(bi)[..n]);
            report.late_spikes += bins.row(bi)[n] as u64;
            report.spikes += counts.iter().sum::<f64>();
            let from = t[c_from];
            if from >= 0.0 && (from as usize) < k {
                let j = from as usize;
                u_prev.copy_from_slice(&emitted[j * m..(j + 1) * m]);
            } else {
                u_prev.copy_from_slice(&zeros);
            }
            let has_data = t[c_has] == 1.0;
            let use_fallback = mach.step(k as u64, &counts, &u_prev, has_data, t[c_want] == 1.0);
            report.gap_bins += !has_data as u64;
            if !miss {
                proposal.copy_from_slice(&mach.out.u);
                fallback = use_fallback;
            }
            if let (Some(st), Some(si)) = (&status, s_idx.as_ref().and_then(|ix| ix[k])) {
                let rec = st.row(si);
                let d = mach.out.x.len();
                let diff = (0..d).map(|i| (rec[1 + i] - mach.out.x[i]).abs()).fold(0.0, f64::max);
                latent_diff = Some(latent_diff.map_or(diff, |v: f64| v.max(diff)));
            }
        }
        if t[c_fb].is_finite() && (t[c_fb] == 1.0) != fallback && report.notices.len() < 10 {
            report.notices.push(format!("bin {k}: the live emitter's fallback decision was {}, replay's is {fallback}", t[c_fb] == 1.0));
        }
        crate::emit::command(&mach.safety, &mut proposal, fallback, &last, enabled, &mut cmd);
        report.fallbacks += fallback as u64;
        emitted[k * m..(k + 1) * m].copy_from_slice(&cmd);
        last.copy_from_slice(&cmd);
        if let Some(ci) = c_idx[k] {
            report.compared += 1;
            let rec = control.row(ci);
            let mut differs = false;
            for j in 0..m {
                let (a, b) = (rec[j] as f32, cmd[j] as f32);
                if a.to_bits() != b.to_bits() {
                    differs = true;
                    report.first_difference.get_or_insert(Difference { bin: k as u64, channel: j, recorded: a, replayed: b });
                }
            }
            report.differing_bins += differs as u64;
        }
        report.bins += 1;
    }
    report.elapsed_s = clock::now() - start;
    report.identical = (report.compared > 0).then_some(report.differing_bins == 0);
    report.latent_max_abs_difference = latent_diff;
    report.compute_us = mach.compute_us();
    let missing = n_bins as u64 - report.compared;
    if missing > 0 {
        report.notices.push(format!("{missing} bins have no recorded Control sample to compare"));
    }
    Ok(report)
}

fn empty_report(path: &Path, source: &str, backend: &str, realtime: bool) -> ReplayReport {
    ReplayReport {
        file: path.display().to_string(),
        source: source.into(),
        backend: backend.into(),
        realtime,
        bins: 0,
        compared: 0,
        identical: None,
        first_difference: None,
        differing_bins: 0,
        latent_max_abs_difference: None,
        fallbacks: 0,
        gap_bins: 0,
        spikes: 0.0,
        late_spikes: 0,
        rejected_samples: 0,
        compute_us: None,
        elapsed_s: 0.0,
        rig_matches_recording: None,
        notices: Vec::new(),
    }
}

/// The file's spike stream: the rig's [input] name if present, else its type.
pub(crate) fn pick_input(path: &Path, mut streams: Vec<Recorded>, rig: &Rig) -> anyhow::Result<Recorded> {
    let want_type = rig.input.stream_type.clone().unwrap_or_else(|| match rig.input.kind {
        InputKind::Events => "SpikeEvents".into(),
        InputKind::Counts => "SpikeCounts".into(),
    });
    let by_name = rig.input.name.as_deref().and_then(|n| streams.iter().position(|s| s.name == n));
    let by_type = || streams.iter().position(|s| s.stream_type == want_type);
    let found = by_name.or_else(by_type);
    if let Some(i) = found {
        return Ok(streams.swap_remove(i));
    }
    bail!({
        let have: Vec<String> = streams.iter().map(|s| format!("'{}' ({})", s.name, s.stream_type)).collect();
        format!(
            "{}: no stream named '{}' or of type {want_type} (the rig's [input]); the file has {}",
            path.display(),
            rig.input.name.as_deref().unwrap_or("-"),
            have.join(", ")
        )
    })
}

/// A raw spike stream binned as the live loop bins it (the live ingest's validation and
/// unit map, the live binner), on a grid starting where the first sample's span starts.
pub(crate) struct Rebinned {
    pub clock: BinGrid,
    pub n_units: usize,
    /// Counts per bin, bins × N row-major.
    pub counts: Vec<f64>,
    /// Whether the bin had live input (false: a stream gap of more than `stall_ms`).
    pub has_data: Vec<bool>,
    pub spikes: f64,
    pub late_spikes: u64,
    /// Samples the ingest checks rejected or could not map.
    pub rejected_samples: u64,
    pub notices: Vec<String>,
}

impl Rebinned {
    pub fn bins(&self) -> usize {
        self.has_data.len()
    }
}

/// Consecutive samples of one stream further apart than this are a time jump, not a pause
/// (a stream gap of ten minutes is a different session).
pub(crate) const MAX_TIME_JUMP_S: f64 = 600.0;

/// Samples whose timestamp is more than [`MAX_TIME_JUMP_S`] from both neighbours' (the
/// first and last: from their one neighbour): a single mis-stamped sample (stamped 0, or
/// 10⁶ s late) that must not stretch the bin grid.
fn stamped_far_from_neighbours(ts: &[f64]) -> Vec<bool> {
    let far = |a: f64, b: f64| (a - b).abs() > MAX_TIME_JUMP_S;
    (0..ts.len())
        .map(|i| {
            if !ts[i].is_finite() || ts.len() < 2 {
                return false;
            }
            let before = i.checked_sub(1).map(|j| far(ts[i], ts[j]));
            let after = ts.get(i + 1).map(|&t| far(ts[i], t));
            match (before, after) {
                (Some(b), Some(a)) => b && a,
                (Some(b), None) => b,
                (None, Some(a)) => a,
                (None, None) => false,
            }
        })
        .collect()
}

/// Bin the stream's samples: each "arrives" at its timestamp, so every sample stamped before
/// bin k closes is in by then, exactly as live.
pub(crate) fn rebin_spikes(stream: &Recorded, rig: &Rig) -> anyhow::Result<Rebinned> {
    let rows = &stream.rows;
    let name = stream.name.as_str();
    if rows.len() == 0 {
        bail!("the stream '{name}' has no samples");
    }
    let units = UnitMap::from_config(&rig.units)
        .bind_labels(&stream.labels, rows.channels)
        .map_err(|e| anyhow::anyhow!("stream '{name}': {e}"))?;
    let n = units.n_units();
    let srate = stream.srate;
    match rig.input.kind {
        InputKind::Events if rows.channels < 1 => bail!("stream '{}': a spike-event stream needs ≥ 1 channel", name),
        InputKind::Counts if !units.by_label() && rows.channels != units.channels() => bail!(
            "stream '{}': wrong channel count: the rig's [units] maps {} channels, the stream has {}",
            name,
            units.channels(),
            rows.channels
        ),
        InputKind::Counts if srate <= 0.0 => bail!("stream '{}': a counts stream must have a regular sampling rate", name),
        _ => {}
    }
    let period = if srate > 0.0 { 1.0 / srate } else { 0.0 };
    let rates = rig.input.values_are_rates.unwrap_or(stream.stream_type == "SpikingRates");
    let layout = CountsLayout { period, rates };
    let stats = Arc::new(IngestStats::default());
    let (notice_tx, notice_rx) = crossbeam_channel::unbounded();
    let mut decoder = SampleDecoder::new(rig.input.kind, units, stats.clone(), notice_tx, None);
    let skip = stamped_far_from_neighbours(&rows.timestamps);
    let skipped = skip.iter().filter(|s| **s).count();
    let kept = || rows.timestamps.iter().zip(&skip).filter(|(t, s)| t.is_finite() && !**s).map(|(t, _)| *t);
    let first = kept().fold(f64::INFINITY, f64::min);
    let last_t = kept().fold(f64::NEG_INFINITY, f64::max);
    if !first.is_finite() {
        bail!("the stream '{name}' has no finite timestamps");
    }
    // A clock reset or a stamping error that persists: binning across it would step through
    // (or allocate) every bin in between.
    let mut prev: Option<(usize, f64)> = None;
    for (i, t) in rows.timestamps.iter().enumerate() {
        if skip[i] || !t.is_finite() {
            continue;
        }
        if let Some((j, tp)) = prev {
            if (t - tp).abs() > MAX_TIME_JUMP_S {
                bail!(
                    "the stream '{name}' jumps in time by {:+.0} s between samples {j} and {i} (t = {tp:.3} → {t:.3}), and stays there: a clock reset or a stamping error. \
                     Replay and fit cannot bin across it; cut the recording at the jump",
                    t - tp
                );
            }
        }
        prev = Some((i, *t));
    }
    let t0 = first - if rig.input.kind == InputKind::Counts { period } else { 0.0 };
    let clock = rig.timing.grid(t0);
    let n_bins = (((last_t - t0) / clock.bin_s).floor() as u64).saturating_add(1);
    // A wrong rig (Δ) or garbage timestamps must not ask for an absurd allocation.
    const MAX_BINS: u64 = 50_000_000;
    if n_bins.saturating_mul(n as u64) > 2_000_000_000 || n_bins > MAX_BINS {
        bail!("the stream '{name}' spans {:.0} s = {n_bins} bins of {} ms: too long to bin (wrong timestamps, or the wrong rig?)", last_t - t0, rig.timing.bin_ms);
    }
    let mut binner = Binner::new(clock, n, rig.timing.lookahead_bins());
    let mut out = Rebinned {
        clock,
        n_units: n,
        counts: vec![0.0; n_bins as usize * n],
        has_data: vec![false; n_bins as usize],
        spikes: 0.0,
        late_spikes: 0,
        rejected_samples: 0,
        notices: Vec::new(),
    };
    let stall_s = rig.input.stall_ms * 1e-3;
    let mut next = 0usize;
    let mut last_arrival = f64::NEG_INFINITY;
    for k in 0..n_bins {
        let close = clock.close(k);
        while next < rows.len() && !(rows.timestamps[next] > close) {
            let t = rows.timestamps[next];
            if skip[next] {
                next += 1;
                continue;
            }
            decoder.decode(t, rows.row(next), layout, &mut |item| {
                binner.feed(&[item]);
                true
            });
            if t.is_finite() {
                last_arrival = last_arrival.max(t);
            }
            next += 1;
        }
        let ku = k as usize;
        let tally = binner.close(k, &mut out.counts[ku * n..(ku + 1) * n]);
        out.late_spikes += tally.late_spikes;
        out.spikes += tally.spikes;
        out.has_data[ku] = close - last_arrival <= stall_s;
    }
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    out.rejected_samples = ld(&stats.nonfinite) + ld(&stats.invalid) + ld(&stats.unknown_units) + ld(&stats.duplicates) + skipped as u64;
    if skipped > 0 {
        out.notices.push(format!(
            "input: {skipped} samples stamped more than {MAX_TIME_JUMP_S} s away from both neighbours were skipped (counted in rejected_samples)"
        ));
    }
    while let Ok(crate::ingest::IngestNotice::Rejected { what }) = notice_rx.try_recv() {
        out.notices.push(format!("input: {what}"));
    }
    Ok(out)
}

fn replay_spikes(path: &Path, streams: Vec<Recorded>, rig: &Rig, opts: &ReplayOptions) -> anyhow::Result<ReplayReport> {
    let stream = pick_input(path, streams, rig)?;
    let binned = rebin_spikes(&stream, rig).with_context(|| path.display().to_string())?;
    let mut mach = Machine::new(rig)?;
    let (n, m) = (mach.n, mach.m);
    if n != binned.n_units {
        bail!("the rig's [units] maps {} units, its model has {n}", binned.n_units);
    }
    let clock = binned.clock;
    let n_bins = binned.bins() as u64;
    let mut last = vec![0.0f64; m];
    let mut proposal = vec![0.0f64; m];
    let mut cmd = vec![0.0f64; m];
    let mut report = empty_report(path, &stream.name, mach.backend.name(), opts.realtime);
    let mut progress = Progress { on: opts.status_line, last: clock::now(), total: n_bins };
    let start = clock::now();
    let pace_t0 = clock::now() + 0.05 - clock.t0;
    for k in 0..n_bins {
        progress.tick(k);
        if opts.realtime {
            clock::sleep_until(pace_t0 + clock.close(k));
        }
        let started = clock::now();
        let ku = k as usize;
        let counts = &binned.counts[ku * n..(ku + 1) * n];
        let has_data = binned.has_data[ku];
        let deadline = started + clock.deadline_s;
        let use_fallback = mach.step(k, counts, &last, has_data, true);
        let miss = opts.realtime && clock::now() > deadline;
        let fallback = miss || use_fallback;
        if !miss {
            proposal.copy_from_slice(&mach.out.u);
        }
        crate::emit::command(&mach.safety, &mut proposal, fallback, &last, rig.safety.enabled, &mut cmd);
        last.copy_from_slice(&cmd);
        report.fallbacks += fallback as u64;
        report.gap_bins += !has_data as u64;
        report.bins += 1;
    }
    report.spikes = binned.spikes;
    report.late_spikes = binned.late_spikes;
    report.rejected_samples = binned.rejected_samples;
    report.notices.extend(binned.notices);
    report.elapsed_s = clock::now() - start;
    report.compute_us = mach.compute_us();
    Ok(report)
}
