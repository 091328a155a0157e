//! The live view of a running session (the control plane's `GET /api/status`, the
//! WebSocket stream and the dashboard): telemetry publishes a [`LiveFrame`] at most
//! [`FRAME_RATE`] times a second — the latest state and what happened since the last frame
//! (per-unit rates, the worst latencies, misses) — and readers take the newest one. Nothing
//! queues up: a slow reader sees fewer frames, never older ones.

use super::report::IngestCounts;
use crate::events::{Emitted, LoopBin};
use crate::latency::Percentiles;
use crate::tap::BinTapReader;
use ringbuf::traits::Consumer;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Frames per second, at most.
pub const FRAME_RATE: f64 = 30.0;

/// One frame of the live view.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveFrame {
    /// Increases by one per frame published.
    pub seq: u64,
    /// The newest bin telemetry has joined (loop and emitter), if any yet.
    pub bin: Option<u64>,
    /// Local (LSL) clock time the frame was published.
    pub time: f64,
    pub bin_ms: f64,
    /// Session totals so far.
    #[serde(flatten)]
    pub totals: Totals,
    /// The newest bin's filtered latent x, embedding z, command pushed u and enable gate.
    pub x: Vec<f64>,
    pub z: Vec<f64>,
    pub u: Vec<f64>,
    pub gate: bool,
    /// The library task nearest to z (None without a library).
    pub task: Option<usize>,
    /// Since the previous frame: bins joined, each unit's rate (Hz), and the worst latencies.
    pub frame_bins: u64,
    pub rates_hz: Vec<f64>,
    pub frame_deadline_misses: u64,
    pub frame_fallbacks: u64,
    pub frame_gap_bins: u64,
    pub frame_compute_us_max: Option<f64>,
    pub frame_close_to_push_us_max: Option<f64>,
    pub frame_end_to_end_us_max: Option<f64>,
    /// The session has ended (the last frame).
    pub ended: bool,
}

/// Where the newest frame is kept (shared by telemetry and the control plane's threads).
#[derive(Default)]
pub struct LiveShared {
    frame: Mutex<Arc<LiveFrame>>,
    seq: AtomicU64,
}

impl LiveShared {
    /// The newest frame (cheap: an `Arc`).
    pub fn latest(&self) -> Arc<LiveFrame> {
        self.frame.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The newest frame's sequence number (0: none yet), without taking the lock.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    fn publish(&self, frame: LiveFrame) {
        let seq = frame.seq;
        *self.frame.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(frame);
        self.seq.store(seq, Ordering::Release);
    }
}

/// What telemetry needs for the live view.
pub struct LiveInputs {
    pub shared: Arc<LiveShared>,
    /// The loop's records with their counts (a tap of its own).
    pub counts: BinTapReader,
    pub n_units: usize,
}

/// Telemetry's side: accumulates the bins since the last frame.
pub(super) struct LiveView {
    inputs: LiveInputs,
    library: Vec<Vec<f64>>,
    counts: Vec<f64>,
    scratch: Vec<f64>,
    counted_bins: u64,
    frame: LiveFrame,
    last_publish: f64,
}

/// Session totals, handed in by telemetry at publish time; percentiles after the warm-up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub bins: u64,
    pub deadline_misses: u64,
    pub fallbacks: u64,
    /// Bins whose controller had no usable command (the fallback went out).
    pub controller_faults: u64,
    pub gap_bins: u64,
    pub late_spikes: u64,
    pub late_results: u64,
    pub compute_us: Option<Percentiles>,
    pub close_to_push_us: Option<Percentiles>,
    pub end_to_end_us: Option<Percentiles>,
    pub ingest: Option<IngestCounts>,
}

impl LiveView {
    pub(super) fn new(inputs: LiveInputs, library: Vec<Vec<f64>>, bin_ms: f64) -> LiveView {
        let n = inputs.n_units;
        LiveView {
            inputs,
            library,
            counts: vec![0.0; n],
            scratch: vec![0.0; n],
            counted_bins: 0,
            frame: LiveFrame { bin_ms, rates_hz: vec![0.0; n], ..LiveFrame::default() },
            last_publish: f64::NEG_INFINITY,
        }
    }

    /// A bin as telemetry joined it, with the latencies it measured (s).
    pub(super) fn add_bin(&mut self, k: u64, rec: Option<&LoopBin>, emitted: Option<&Emitted>, latent: usize, embed: usize, m: usize) {
        let f = &mut self.frame;
        f.bin = Some(f.bin.map_or(k, |b| b.max(k)));
        f.frame_bins += 1;
        if let Some(r) = rec {
            f.x.clear();
            f.x.extend_from_slice(&r.x[..latent]);
            f.z.clear();
            f.z.extend_from_slice(&r.z[..embed]);
            f.frame_gap_bins += !r.has_data() as u64;
            max_into(&mut f.frame_compute_us_max, (r.done_at - r.started_at) * 1e6);
        }
        if let Some(e) = emitted {
            f.u.clear();
            f.u.extend_from_slice(&e.u[..m]);
            f.gate = e.enabled;
            f.frame_deadline_misses += e.pushed.deadline_miss() as u64;
            f.frame_fallbacks += e.pushed.fallback() as u64;
        }
    }

    pub(super) fn close_to_push(&mut self, seconds: f64) {
        max_into(&mut self.frame.frame_close_to_push_us_max, seconds * 1e6);
    }

    pub(super) fn end_to_end(&mut self, seconds: f64) {
        max_into(&mut self.frame.frame_end_to_end_us_max, seconds * 1e6);
    }

    /// Takes the counts the loop handed over since the last call.
    pub(super) fn drain_counts(&mut self) {
        let n = self.inputs.n_units;
        while self.inputs.counts.records.queue.pop().is_some() {
            let got = self.inputs.counts.counts.pop_slice(&mut self.scratch);
            debug_assert_eq!(got, n);
            for i in 0..n {
                self.counts[i] += self.scratch[i];
            }
            self.counted_bins += 1;
        }
    }

    /// Publishes a frame if one is due (or `last`, the session's final frame).
    pub(super) fn maybe_publish(&mut self, now: f64, last: bool, totals: impl FnOnce() -> Totals) {
        if !last && now - self.last_publish < 1.0 / FRAME_RATE {
            return;
        }
        self.last_publish = now;
        let f = &mut self.frame;
        f.totals = totals();
        f.seq += 1;
        f.time = now;
        f.ended = last;
        let seconds = self.counted_bins as f64 * f.bin_ms * 1e-3;
        for i in 0..self.counts.len() {
            f.rates_hz[i] = if seconds > 0.0 { self.counts[i] / seconds } else { 0.0 };
        }
        f.task = nearest(&self.library, &f.z);
        self.inputs.shared.publish(f.clone());
        // The next frame covers what comes after this one.
        self.counts.fill(0.0);
        self.counted_bins = 0;
        let f = &mut self.frame;
        (f.frame_bins, f.frame_deadline_misses, f.frame_fallbacks, f.frame_gap_bins) = (0, 0, 0, 0);
        (f.frame_compute_us_max, f.frame_close_to_push_us_max, f.frame_end_to_end_us_max) = (None, None, None);
    }
}

fn max_into(slot: &mut Option<f64>, v: f64) {
    if v.is_finite() {
        *slot = Some(slot.map_or(v, |s| s.max(v)));
    }
}

/// The library entry nearest to z (Euclidean), if there is a library and z is known.
fn nearest(library: &[Vec<f64>], z: &[f64]) -> Option<usize> {
    if z.is_empty() || z.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let dist = |p: &Vec<f64>| p.iter().zip(z).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
    (0..library.len()).min_by(|&a, &b| dist(&library[a]).total_cmp(&dist(&library[b])))
}
