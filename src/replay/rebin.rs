//! A raw spike stream (a LabRecorder file, or a recording's input stream) binned as the live
//! loop bins it: the live ingest's validation and unit map ([`SampleDecoder`]) and the live
//! binner, each sample "arriving" at its timestamp.

use super::streams::Recorded;
use crate::binning::Binner;
use crate::clock::BinGrid;
use crate::ingest::{CountsLayout, IngestStats, SampleDecoder};
use crate::rig::{InputKind, Rig};
use crate::units::UnitMap;
use anyhow::bail;
use std::path::Path;
use std::sync::Arc;

/// The file's spike stream: the rig's [input] name if present, else its type.
pub(crate) fn pick_input(path: &Path, mut streams: Vec<Recorded>, rig: &Rig) -> anyhow::Result<Recorded> {
    let want_type = rig.input.stream_type_or_default();
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
    let units =
        UnitMap::from_config(&rig.units).bind_labels(&stream.labels, rows.channels).map_err(|e| anyhow::anyhow!("stream '{name}': {e}"))?;
    let n = units.n_units();
    let srate = stream.srate;
    rig.input.check_stream_shape(&units, rows.channels, srate).map_err(|e| anyhow::anyhow!("stream '{name}': {e}"))?;
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
        bail!(
            "the stream '{name}' spans {:.0} s = {n_bins} bins of {} ms: too long to bin (wrong timestamps, or the wrong rig?)",
            last_t - t0,
            rig.timing.bin_ms
        );
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
