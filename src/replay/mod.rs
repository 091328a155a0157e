//! `neuroloop replay FILE.xdf --rig R`: push a recording back through the loop, offline.
//!
//! Two sources:
//! - **recorded bins** (a `neuroloop run --record` file): each bin's counts as they were
//!   formed live go through the live loop's and emitter's own per-bin code
//!   ([`LoopCore`], [`decide`], [`EmitCore`]), repeating the live
//!   run's timing decisions (stream gaps, bins started past their deadline, deadline
//!   misses, the enable gate, which emitted command was u_prev) from its timing stream. On
//!   the CPU backend the Control stream comes out bit for bit; the first differing bin is
//!   reported otherwise.
//! - **a raw spike stream** (a LabRecorder file, or `--from spikes`): the samples go through
//!   the live ingest's validation and unit map and the live binner (rebin.rs), on
//!   a bin grid starting at the first sample, with timestamps mapped by the file's clock
//!   offsets.
//!
//! As fast as possible by default; `--realtime` paces bins at Δ (and then, for a spike
//! stream, a bin whose computation ends past its deadline gets the fallback, as live).

mod rebin;
mod streams;

pub(crate) use rebin::{pick_input, rebin_spikes};
pub(crate) use streams::{bins_in_losses, header_text, recorded_grid, streams_of, Recorded, Rows};

use crate::clock::{self, BinGrid};
use crate::control_plane::CommandRecord;
use crate::emit::{decide, Decision, EmitCore};
use crate::events::{ControlResult, EmitterCommand, LoopCommand, Pushed};
use crate::latency::Percentiles;
use crate::rig::{BackendKind, Rig};
use crate::runloop::loop_core::{self, BinStart, LoopCore};
use crate::safety::Safety;
use anyhow::{bail, Context};
use serde::Serialize;
use std::path::Path;
use xdf::XDFFile;

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
    /// Control-plane commands from the recording re-applied at the bins they took effect
    /// at live (recorded-bins replay; marks and stop act on neither stage and are not counted).
    pub commands_applied: u64,
    /// Bins whose recorded Control sample could not be compared: it, or the records replay
    /// needs to reach it, are in damaged parts of the file. Non-zero: `replay` exits 1.
    pub unchecked_bins: u64,
    /// Those bins as ranges, each with why.
    pub unchecked: Vec<Unchecked>,
    /// What the reader skipped (null: the whole file was read).
    pub damage: Option<crate::record::read::Damage>,
    pub notices: Vec<String>,
}

/// Bins `from..to` (end exclusive) that replay could not check, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Unchecked {
    pub from: u64,
    pub to: u64,
    pub why: String,
}

/// Appends bin k to the ranges (merging with the last range when it continues it).
fn add_unchecked(ranges: &mut Vec<Unchecked>, k: u64, why: &str) {
    if let Some(last) = ranges.last_mut() {
        if last.to == k && last.why == why {
            last.to = k + 1;
            return;
        }
    }
    ranges.push(Unchecked { from: k, to: k + 1, why: why.into() });
}

pub fn replay(path: &Path, rig: &Rig, opts: &ReplayOptions) -> anyhow::Result<ReplayReport> {
    let opened = crate::record::read::open(path)?;
    let mut rig = rig.clone();
    if let Some(b) = opts.backend {
        rig.model.backend = b;
    }
    let streams = streams_of(&opened);
    let file = &opened.file;
    let has_bins = streams.iter().any(|s| s.stream_type == "NeuroloopBins");
    let source = match opts.source {
        ReplaySource::Auto if has_bins => ReplaySource::Bins,
        ReplaySource::Auto => ReplaySource::Spikes,
        s => s,
    };
    let mut notices = Vec::new();
    for line in opened.damage_notices(path) {
        eprintln!("[neuroloop] replay: {line}");
        notices.push(line);
    }
    let recorded_sha = header_text(file, &["neuroloop", "rig", "sha256"]);
    let rig_matches_recording = match &recorded_sha {
        Some(sha) => {
            let ours = crate::record::sha256_hex(&std::fs::read(&rig.path).unwrap_or_default());
            let same = &ours == sha;
            if !same {
                let msg = format!(
                    "the rig file {} is not the one the recording ran with (sha256 {} vs {}); a bit-for-bit match is not expected",
                    rig.path.display(),
                    &ours[..12],
                    sha.chars().take(12).collect::<String>()
                );
                eprintln!("[neuroloop] warning: {msg}");
                notices.push(msg);
            }
            Some(same)
        }
        None => None,
    };
    if opts.backend.is_none() && rig.model.backend != BackendKind::Cpu && source == ReplaySource::Bins {
        notices
            .push(format!("backend {}: a bit-for-bit match is only expected on the CPU backend (--backend cpu)", rig.model.backend.name()));
    }
    let mut r = match source {
        ReplaySource::Bins => replay_bins(path, file, streams, &rig, opts)?,
        _ => replay_spikes(path, streams, &rig, opts)?,
    };
    r.rig_matches_recording = rig_matches_recording;
    r.damage = opened.damage();
    notices.append(&mut r.notices);
    r.notices = notices;
    Ok(r)
}

/// The live loop's and emitter's per-bin code ([`LoopCore`], [`decide`], [`EmitCore`]),
/// driven by the recording's decisions instead of a clock.
struct Machine {
    core: LoopCore,
    /// What a recorded command is checked against again before it is re-applied.
    limits: crate::control_plane::SessionLimits,
    emit: EmitCore,
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
        let tasks = model.params().map_or(0, |p| p.task_library.len());
        // The rig's injected controller faults happen in replay too (the slow bins' sleeps
        // do not: replay repeats the recorded timing decisions).
        let faults = crate::rig::FaultConfig { controller_fault_every: rig.fault.controller_fault_every, ..Default::default() };
        let backend = crate::backend::fault::Faulty::wrap(model.backend(rig)?, &faults);
        let limits = crate::session::session_limits(rig, &safety, tasks, backend.as_ref());
        Ok(Machine {
            limits,
            core: LoopCore::new(backend),
            emit: EmitCore::new(safety, dims.control),
            n: dims.n_units,
            m: dims.control,
            dims,
            hist: hdrhistogram::Histogram::new(3).expect("histogram"),
        })
    }

    fn backend_name(&self) -> &'static str {
        self.core.backend().name()
    }

    /// One bin through the loop's code: the backend and the loop's proposal.
    fn step(&mut self, start: &BinStart, counts: &[f64], u_prev: &[f64]) -> ControlResult {
        let t = clock::now();
        let result = self.core.step(start, counts, u_prev);
        let _ = self.hist.record(((clock::now() - t) * 1e6).max(1.0) as u64);
        result
    }

    /// The emitter's decision for bin k, whose result (when the loop had one) reached the
    /// emitter in time or not, and the command it pushes.
    fn emit(&mut self, k: u64, result: Option<&ControlResult>, in_time: bool, enabled: bool) -> (Pushed, &[f64]) {
        let offered = result.filter(|_| in_time);
        // The emitter looks at the result in time, or gives up on the bin at its deadline.
        let pushed = match decide(k, offered, 0.0, 0.0) {
            Decision::Emit { pushed, .. } => pushed,
            // Not reached: bin k's own result is emitted, and without one the deadline has come.
            Decision::Discard | Decision::Wait => Pushed::MissedDeadline,
        };
        (pushed, self.emit.command(pushed, offered, enabled))
    }

    fn compute_us(&self) -> Option<Percentiles> {
        (!self.hist.is_empty()).then(|| Percentiles::of(&self.hist))
    }
}

/// The recording's accepted commands, by the bin the loop and the emitter applied them at.
struct RecordedCommands {
    /// (bin, id, command), in the order they were applied.
    loop_side: std::collections::VecDeque<(u64, u64, LoopCommand)>,
    emitter_side: std::collections::VecDeque<(u64, EmitterCommand)>,
    applied: u64,
}

impl RecordedCommands {
    fn read(rows: Option<&Rows>, limits: &crate::control_plane::SessionLimits, notices: &mut Vec<String>) -> RecordedCommands {
        let mut loop_side = Vec::new();
        let mut emitter_side = Vec::new();
        let mut applied = 0;
        for text in rows.map_or(&[][..], |r| &r.texts[..]) {
            let record: CommandRecord = match serde_json::from_str(text) {
                Ok(r) => r,
                Err(e) => {
                    notices.push(format!("a command record could not be read ({e}); it is not re-applied, so bins after it may differ"));
                    continue;
                }
            };
            // A part took effect where its bin is recorded (at a session's end, a command may
            // be refused with one part applied).
            let Some(request) = record.command.clone().filter(|_| record.loop_bin.is_some() || record.emitter_bin.is_some()) else {
                continue;
            };
            // Checked again: the file may come from another session or have been edited.
            let request = match request.check(limits) {
                Ok(r) => r,
                Err(e) => {
                    notices.push(format!("command {} in the recording does not fit this rig ({e}); it is not re-applied", record.id));
                    continue;
                }
            };
            let plan = crate::control_plane::dispatch::plan(&request, limits.control);
            applied += 1;
            if let (Some(c), Some(bin)) = (plan.loop_command, record.loop_bin) {
                loop_side.push((bin, record.id, c));
            }
            if let (Some(c), Some(bin)) = (plan.emitter_command, record.emitter_bin) {
                emitter_side.push((bin, record.id, c));
            }
        }
        // Within a bin, in the order the live stage took them (their ids).
        loop_side.sort_by_key(|(bin, id, _)| (*bin, *id));
        emitter_side.sort_by_key(|(bin, id, _)| (*bin, *id));
        RecordedCommands {
            loop_side: loop_side.into(),
            emitter_side: emitter_side.into_iter().map(|(bin, _, c)| (bin, c)).collect(),
            applied,
        }
    }

    /// The loop's commands for bin k (and any for earlier bins the replay never stepped).
    fn for_loop(&mut self, k: u64) -> Vec<(u64, LoopCommand)> {
        let mut v = Vec::new();
        while self.loop_side.front().is_some_and(|(bin, _, _)| *bin <= k) {
            let (_, id, c) = self.loop_side.pop_front().unwrap();
            v.push((id, c));
        }
        v
    }

    fn for_emitter(&mut self, k: u64) -> Vec<EmitterCommand> {
        let mut v = Vec::new();
        while self.emitter_side.front().is_some_and(|(bin, _)| *bin <= k) {
            v.push(self.emitter_side.pop_front().unwrap().1);
        }
        v
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

fn replay_bins(path: &Path, file: &XDFFile, mut streams: Vec<Recorded>, rig: &Rig, opts: &ReplayOptions) -> anyhow::Result<ReplayReport> {
    let mut take = |ty: &str| {
        let i = streams.iter().position(|s| s.stream_type == ty);
        i.map(|i| streams.swap_remove(i))
    };
    let need = |r: Option<Recorded>, ty: &str| {
        r.with_context(|| format!("{}: no {ty} stream; was it recorded by `neuroloop run --record`?", path.display()))
    };
    let Recorded { rows: bins, losses: bins_losses, .. } = need(take("NeuroloopBins"), "NeuroloopBins")?;
    let Recorded { rows: timing, losses: timing_losses, .. } = need(take("NeuroloopTiming"), "NeuroloopTiming")?;
    let Recorded { rows: control, losses: control_losses, .. } = need(take("Control"), "Control")?;
    let status = take("NeuroloopStatus").map(|s| s.rows);
    let commands = streams
        .iter()
        .position(|s| s.stream_type == "Markers" && s.labels.len() == 1 && s.labels[0] == crate::record::COMMANDS_LABEL)
        .map(|i| streams.swap_remove(i));
    let (commands, commands_losses) = commands.map_or((None, Vec::new()), |c| (Some(c.rows), c.losses));
    let grid = |k: &str| recorded_grid(file, path, k);
    let clock = BinGrid { t0: grid("t0")?, bin_s: grid("bin_s")?, grace_s: grid("grace_s")?, deadline_s: grid("deadline_s")? };
    if (clock.bin_s - rig.timing.bin_ms * 1e-3).abs() > 1e-12 {
        bail!(
            "the recording binned at Δ = {} ms, the rig at {} ms: replay needs the rig the session ran with",
            clock.bin_s * 1e3,
            rig.timing.bin_ms
        );
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
    // Index every stream by bin. One timing row per bin; when timing rows were in a damaged
    // part of the file, the bins go on as far as the timing and Control rows name (no
    // further than they have rows: a bin number from a file allocates nothing by itself).
    let n_bins = if timing_losses.is_empty() {
        timing.len()
    } else {
        let cap = (timing.len() + control.len()) as i64;
        let last_timing = (0..timing.len()).map(|i| timing.row(i)[0]).filter(|k| k.is_finite()).map(|k| k as i64).max().unwrap_or(-1);
        let last_control = (0..control.len()).map(|i| clock.bin_ending_at(control.timestamps[i])).max().unwrap_or(-1);
        (last_timing.max(last_control).min(cap - 1) + 1).max(timing.len() as i64) as usize
    };
    let index = |rows: &Rows, by_column: bool| -> Vec<Option<usize>> {
        let mut idx = vec![None; n_bins];
        for i in 0..rows.len() {
            let k = match by_column {
                true if rows.row(i)[0].is_finite() => rows.row(i)[0] as i64,
                true => -1,
                false => clock.bin_ending_at(rows.timestamps[i]),
            };
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
    let (c_started, c_has, c_want, c_miss, c_fb, c_en, c_from) = (
        col("started_at"),
        col("has_data"),
        col("want_control"),
        col("deadline_miss"),
        col("fallback"),
        col("enabled"),
        col("u_prev_from"),
    );

    let mut report = empty_report(path, "recorded bins", mach.backend_name(), opts.realtime);
    // From this bin on, a control-plane command may have been lost in a damaged part of the
    // file: a bin that differs there is unchecked (it may have missed the command), not a
    // divergence.
    let commands_lost_from = commands.as_ref().and_then(|rows| {
        let bin_before = |row: usize| row.checked_sub(1).map_or(0, |r| clock.bin_ending_at(rows.timestamps[r]).max(0) as u64);
        commands_losses.iter().map(|&row| bin_before(row)).min()
    });
    let mut commands = RecordedCommands::read(commands.as_ref(), &mach.limits, &mut report.notices);
    report.commands_applied = commands.applied;
    let mut emitted = vec![0.0f64; n_bins * m];
    let mut u_prev = vec![0.0f64; m];
    let mut counts = vec![0.0f64; n];
    let mut latent_diff: Option<f64> = None;
    let mut emitter_unknown = 0u64;
    let mut progress = Progress { on: opts.status_line, last: clock::now(), total: n_bins as u64 };
    // Bins whose Control sample was in a damaged part of the file.
    let control_lost = crate::replay::bins_in_losses(&control, &control_losses, clock.t0, clock.bin_s, n_bins);
    // Replay stops at the first bin whose timing or bins row was in a damaged part: every
    // bin after it depends on the bins it cannot run.
    let mut stopped_at: Option<(usize, &str)> = None;
    let start = clock::now();
    let pace_t0 = clock::now() + 0.05;
    for k in 0..n_bins {
        progress.tick(k as u64);
        let Some(ti) = t_idx[k] else {
            if !timing_losses.is_empty() {
                stopped_at = Some((k, "its timing row is in a damaged part of the file; replay cannot go on without it"));
                break;
            }
            bail!(
                "the recording has no timing row for bin {k} (its records were dropped while recording): replay cannot go on past bin {k}"
            );
        };
        let t = timing.row(ti);
        if opts.realtime {
            clock::sleep_until(pace_t0 + (k as f64 + 1.0) * clock.bin_s + clock.grace_s);
        }
        // NaN started_at: the loop never ran this bin (the run was stopped while it was
        // behind); the emitter pushed the fallback.
        let loop_ran = t[c_started].is_finite();
        let mut result = None;
        if loop_ran {
            let Some(bi) = b_idx[k] else {
                if !bins_losses.is_empty() {
                    stopped_at = Some((k, "its counts are in a damaged part of the file; replay cannot go on without them"));
                    break;
                }
                bail!("the recording has no bins row for bin {k}: replay cannot go on past bin {k}")
            };
            counts.copy_from_slice(&bins.row(bi)[..n]);
            report.late_spikes += bins.row(bi)[n] as u64;
            report.spikes += counts.iter().sum::<f64>();
            // The emitted command the live loop had as u_prev (none: zeros).
            let from = t[c_from];
            let u_prev_from = (from >= 0.0 && (from as usize) < k).then_some(from as u64);
            match u_prev_from {
                Some(j) => u_prev.copy_from_slice(&emitted[j as usize * m..(j as usize + 1) * m]),
                None => u_prev.fill(0.0),
            }
            for (id, c) in commands.for_loop(k as u64) {
                if let (_, Err(why)) = mach.core.apply(c) {
                    report.notices.push(format!("bin {k}: command {id}, which the live loop applied, was refused in replay: {why}"));
                }
            }
            let bin_start = BinStart {
                bin: k as u64,
                started_at: t[c_started],
                has_data: t[c_has] == 1.0,
                want_control: t[c_want] == 1.0,
                u_prev_from,
            };
            result = Some(mach.step(&bin_start, &counts, &u_prev));
            report.gap_bins += !bin_start.has_data as u64;
            if let (Some(st), Some(si)) = (&status, s_idx.as_ref().and_then(|ix| ix[k])) {
                let rec = st.row(si);
                let x = &mach.core.output().x;
                let diff = (0..x.len()).map(|i| (rec[1 + i] - x[i]).abs()).fold(0.0, f64::max);
                latent_diff = Some(latent_diff.map_or(diff, |v: f64| v.max(diff)));
            }
        }
        // The live emitter's side as recorded: the result reached it in time unless it
        // missed the deadline. A row without it (the record was lost) is assumed in time
        // with the gate closed, and counted.
        emitter_unknown += !t[c_miss].is_finite() as u64;
        let in_time = t[c_miss] != 1.0;
        // The gate is the timing row's; limits and fallbacks are the commands'.
        let mut gate = t[c_en] == 1.0;
        for c in commands.for_emitter(k as u64) {
            mach.emit.apply(&c, &mut gate);
        }
        let (pushed, cmd) = mach.emit(k as u64, result.as_ref(), in_time, t[c_en] == 1.0);
        let fallback = pushed.fallback();
        if t[c_fb].is_finite() && (t[c_fb] == 1.0) != fallback && report.notices.len() < 10 {
            report.notices.push(format!("bin {k}: the live emitter's fallback decision was {}, replay's is {fallback}", t[c_fb] == 1.0));
        }
        report.fallbacks += fallback as u64;
        emitted[k * m..(k + 1) * m].copy_from_slice(cmd);
        if let Some(ci) = c_idx[k] {
            report.compared += 1;
            let rec = control.row(ci);
            let differs = (0..m).find(|&j| (rec[j] as f32).to_bits() != (emitted[k * m + j] as f32).to_bits());
            match differs {
                Some(_) if commands_lost_from.is_some_and(|from| k as u64 >= from) => add_unchecked(
                    &mut report.unchecked,
                    k as u64,
                    "it differs after a damaged part of the file that may have held a control-plane command",
                ),
                Some(j) => {
                    let (a, b) = (rec[j] as f32, emitted[k * m + j] as f32);
                    report.first_difference.get_or_insert(Difference { bin: k as u64, channel: j, recorded: a, replayed: b });
                    report.differing_bins += 1;
                }
                None => {}
            }
        } else if control_lost[k] {
            add_unchecked(&mut report.unchecked, k as u64, "its Control sample is in a damaged part of the file");
        }
        report.bins += 1;
    }
    if let Some((k, why)) = stopped_at {
        report.unchecked.push(Unchecked { from: k as u64, to: n_bins as u64, why: why.into() });
        report.notices.push(format!("replay stopped at bin {k} of {n_bins}: {why}"));
    }
    report.unchecked_bins = report.unchecked.iter().map(|u| u.to - u.from).sum();
    report.elapsed_s = clock::now() - start;
    report.identical = (report.compared > 0).then_some(report.differing_bins == 0);
    report.latent_max_abs_difference = latent_diff;
    report.compute_us = mach.compute_us();
    if emitter_unknown > 0 {
        report.notices.push(format!(
            "{emitter_unknown} bins' timing rows lack the emitter's decision (its record was lost while recording): replay assumed the result in time and the gate closed there, so those bins may differ"
        ));
    }
    let missing = (n_bins as u64).saturating_sub(report.compared + report.unchecked_bins);
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
        commands_applied: 0,
        unchecked_bins: 0,
        unchecked: Vec::new(),
        damage: None,
        notices: Vec::new(),
    }
}

fn replay_spikes(path: &Path, streams: Vec<Recorded>, rig: &Rig, opts: &ReplayOptions) -> anyhow::Result<ReplayReport> {
    let stream = pick_input(path, streams, rig)?;
    let mut binned = rebin_spikes(&stream, rig).with_context(|| path.display().to_string())?;
    // Bins whose spikes were in a damaged part of the file are gaps (no data), as live.
    let lost = crate::replay::bins_in_losses(&stream.rows, &stream.losses, binned.clock.t0, binned.clock.bin_s, binned.bins());
    let n_lost = lost.iter().filter(|l| **l).count();
    if n_lost > 0 {
        for (k, l) in lost.iter().enumerate() {
            binned.has_data[k] &= !l;
        }
        binned.notices.push(format!("{n_lost} bins' spikes are in damaged parts of the file: they are replayed as stream gaps"));
    }
    let mut mach = Machine::new(rig)?;
    let (n, m) = (mach.n, mach.m);
    if n != binned.n_units {
        bail!("the rig's [units] maps {} units, its model has {n}", binned.n_units);
    }
    let clock = binned.clock;
    let n_bins = binned.bins() as u64;
    let mut last = vec![0.0f64; m];
    let mut report = empty_report(path, &stream.name, mach.backend_name(), opts.realtime);
    let mut progress = Progress { on: opts.status_line, last: clock::now(), total: n_bins };
    let start = clock::now();
    // Paced: bin k closes at pace_t0 + close(k). Its computation is due `deadline_s` after
    // it starts (a replay that falls behind is not charged for the backlog).
    let pace_t0 = clock::now() + 0.05 - clock.t0;
    for k in 0..n_bins {
        progress.tick(k);
        if opts.realtime {
            clock::sleep_until(pace_t0 + clock.close(k));
        }
        let started_at = clock::now();
        let deadline = if opts.realtime { started_at + clock.deadline_s } else { f64::INFINITY };
        let ku = k as usize;
        let counts = &binned.counts[ku * n..(ku + 1) * n];
        let has_data = binned.has_data[ku];
        // The previous bin's command drove this bin, as live; the controller always runs.
        let bin_start = BinStart { bin: k, started_at, has_data, want_control: true, u_prev_from: k.checked_sub(1) };
        let result = mach.step(&bin_start, counts, &last);
        let in_time = loop_core::delivery(true, clock::now(), deadline).on_time();
        let (pushed, cmd) = mach.emit(k, Some(&result), in_time, rig.safety.enabled);
        last.copy_from_slice(cmd);
        report.fallbacks += pushed.fallback() as u64;
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
