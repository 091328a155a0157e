//! Sample validation and the unit map: each input sample becomes spikes of model units, or is
//! rejected and counted. The live ingest and `neuroloop replay`/`fit` of a raw spike stream
//! share this code, so all of them bin the same spikes.

use super::{IngestNotice, IngestStats, SpikeItem};
use crate::rig::InputKind;
use crate::units::UnitMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Validates input samples and turns them into spikes of model units: the live ingest and
/// `neuroloop replay` of a raw spike stream share it, so both bin the same spikes. Every
/// rejected sample is counted in [`IngestStats`]; the first of each kind is reported.
pub struct SampleDecoder {
    kind: InputKind,
    units: UnitMap,
    stats: Arc<IngestStats>,
    notices: crossbeam_channel::Sender<IngestNotice>,
    /// Kinds of rejection already reported (report the first of each kind).
    reported: [bool; REJECTION_KINDS],
    /// Live ingest: the rig's stall (s). A sample that arrives later than this after its own
    /// timestamp is stale; arrival times and ingest lags are tracked. None offline (replay).
    live_stall_s: Option<f64>,
    /// Spikes handed on so far (a rates stream's are fractional; `stats.spikes` is its round).
    spike_total: f64,
    last_t: f64,
    last_t_unit: Vec<f64>,
}

/// How a counts stream's samples are laid out in time.
#[derive(Debug, Clone, Copy)]
pub struct CountsLayout {
    /// Sample period (s): a sample covers (t − period, t].
    pub period: f64,
    /// Values are rates (Hz), not counts.
    pub rates: bool,
}

/// The kinds of rejected input; the first of each kind is reported to the operator.
#[derive(Debug, Clone, Copy)]
pub(super) enum Rejection {
    NonFinite,
    Unknown,
    Order,
    Duplicate,
    Overflow,
    Invalid,
    Fractional,
    Implausible,
    Stale,
    InletFull,
}

const REJECTION_KINDS: usize = Rejection::InletFull as usize + 1;

/// The highest firing rate a channel can plausibly carry (Hz): above it a counts sample is
/// not spikes (a multi-unit channel's threshold crossings stay well below it).
pub const MAX_CHANNEL_RATE_HZ: f64 = 10_000.0;

impl SampleDecoder {
    pub fn new(
        kind: InputKind,
        units: UnitMap,
        stats: Arc<IngestStats>,
        notices: crossbeam_channel::Sender<IngestNotice>,
        live_stall_s: Option<f64>,
    ) -> SampleDecoder {
        let n = units.n_units();
        SampleDecoder {
            kind,
            units,
            stats,
            notices,
            reported: [false; REJECTION_KINDS],
            live_stall_s,
            spike_total: 0.0,
            last_t: f64::NEG_INFINITY,
            last_t_unit: vec![f64::NEG_INFINITY; n],
        }
    }

    pub fn units(&self) -> &UnitMap {
        &self.units
    }

    /// The unit map bound to a new connection's channel labels.
    pub(super) fn set_units(&mut self, units: UnitMap) {
        self.units = units;
    }

    pub(super) fn reject(&mut self, kind: Rejection, what: impl FnOnce() -> String) {
        if !self.reported[kind as usize] {
            self.reported[kind as usize] = true;
            let _ = self.notices.try_send(IngestNotice::Rejected { what: what() });
        }
    }

    /// Hands a spike to `sink` (the loop's ring, or replay's binner); false (and counted)
    /// when the sink is full.
    fn push(&mut self, item: SpikeItem, sink: &mut impl FnMut(SpikeItem) -> bool) -> bool {
        if !sink(item) {
            self.stats.ring_overflows.fetch_add(1, Ordering::Relaxed);
            self.reject(Rejection::Overflow, || {
                "the ingest → loop ring is full: spikes are being dropped (counted as ring_overflows); \
                 raise [input] ring_capacity or check that the loop keeps up"
                    .into()
            });
            false
        } else {
            // One writer (this decoder): a store of the running total never wraps or truncates.
            self.spike_total += item.count as f64;
            self.stats.spikes.store(self.spike_total.round() as u64, Ordering::Relaxed);
            true
        }
    }

    /// One sample at local time `t` (the stream's timestamp mapped onto the local clock).
    pub fn decode(&mut self, t: f64, buf: &[f64], layout: CountsLayout, sink: &mut impl FnMut(SpikeItem) -> bool) {
        self.stats.samples.fetch_add(1, Ordering::Relaxed);
        if !t.is_finite() {
            self.stats.nonfinite.fetch_add(1, Ordering::Relaxed);
            self.reject(Rejection::NonFinite, || "a sample with a non-finite timestamp was rejected".into());
            return;
        }
        if let Some(stall_s) = self.live_stall_s {
            let arrival = crate::clock::now();
            if arrival - t > stall_s {
                self.stats.stale.fetch_add(1, Ordering::Relaxed);
                self.reject(Rejection::Stale, || {
                    format!(
                        "samples arrive more than [input] stall_ms ({:.0} ms) after their own timestamps (one stamped \
                         {t:.3} s arrived at {arrival:.3} s on the local LSL clock): they are counted as stale, not \
                         binned, and do not keep the stream live (fallbacks go out); the source's timestamps are not \
                         on the LSL clock, or it sends an old backlog: have it stamp samples with lsl_local_clock() \
                         (or let liblsl stamp them on push)",
                        stall_s * 1e3
                    )
                });
                return;
            }
            self.stats.last_arrival.store(arrival.to_bits(), Ordering::Release);
        }
        match self.kind {
            InputKind::Events => self.handle_event(t, buf, sink),
            InputKind::Counts => self.handle_counts(layout, t, buf, sink),
        }
    }

    fn handle_event(&mut self, t: f64, buf: &[f64], sink: &mut impl FnMut(SpikeItem) -> bool) {
        let Some(&channel) = buf.first() else {
            // A stream (or a recorded one) with no channels: no spike can be read from it.
            self.stats.invalid.fetch_add(1, Ordering::Relaxed);
            self.reject(Rejection::Invalid, || "a spike event with no channel value (a stream of 0 channels) was rejected".into());
            return;
        };
        let unit = if buf.len() > 1 { buf[1] } else { 0.0 };
        if !channel.is_finite() || !unit.is_finite() {
            self.stats.nonfinite.fetch_add(1, Ordering::Relaxed);
            self.reject(Rejection::NonFinite, || format!("a spike event with a NaN/inf channel or unit (at t={t:.6}) was rejected"));
            return;
        }
        if channel.fract() != 0.0 || unit.fract() != 0.0 {
            self.stats.invalid.fetch_add(1, Ordering::Relaxed);
            self.reject(Rejection::Invalid, || format!("a spike event with non-integer channel/unit ({channel}, {unit}) was rejected"));
            return;
        }
        let Some(model_unit) = self.units.lookup(channel as i64, unit as i64) else {
            self.stats.unknown_units.fetch_add(1, Ordering::Relaxed);
            self.reject(Rejection::Unknown, || {
                format!("spikes from (channel {channel}, unit {unit}), which the rig's [units] does not map, are counted as unknown_units")
            });
            return;
        };
        if t == self.last_t_unit[model_unit] {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            self.reject(Rejection::Duplicate, || format!("a duplicate spike (same unit {model_unit}, same timestamp {t:.6}) was dropped"));
            return;
        }
        if t < self.last_t {
            self.stats.out_of_order.fetch_add(1, Ordering::Relaxed);
            let last = self.last_t;
            self.reject(Rejection::Order, || {
                format!("out-of-order timestamps: {t:.6} after {last:.6}; such spikes are binned by their own timestamp")
            });
        } else {
            self.last_t = t;
        }
        self.last_t_unit[model_unit] = t;
        if self.push(SpikeItem { t, unit: model_unit as u32, count: 1.0 }, sink) {
            self.note_lag(t, t);
        }
    }

    /// Queues this sample's ingest lag (arrival − timestamp) for telemetry, with the time
    /// its spikes are binned at (telemetry measures lateness against that bin's close).
    fn note_lag(&self, t: f64, t_binned: f64) {
        if self.live_stall_s.is_none() {
            return;
        }
        let arrived = self.stats.last_arrival();
        if self.stats.lag.0.push([t, arrived - t, t_binned]).is_err() {
            self.stats.lag_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn handle_counts(&mut self, conn: CountsLayout, t: f64, buf: &[f64], sink: &mut impl FnMut(SpikeItem) -> bool) {
        // Only the channels the rig maps are checked: a stream may carry others (e.g. an
        // analog channel beside the units of a map by label), which are not the model's.
        let units = &self.units;
        let bad = |pred: &dyn Fn(f64) -> bool| (0..buf.len()).find(|&c| pred(buf[c]) && units.lookup(c as i64, 0).is_some());
        if let Some(c) = bad(&|v| !v.is_finite()) {
            self.stats.nonfinite.fetch_add(1, Ordering::Relaxed);
            self.reject(Rejection::NonFinite, || format!("a counts sample with NaN/inf in channel {c} (at t={t:.6}) was rejected whole"));
            return;
        }
        if let Some(c) = bad(&|v| v < 0.0) {
            self.stats.invalid.fetch_add(1, Ordering::Relaxed);
            self.reject(Rejection::Invalid, || {
                format!("a counts sample with a negative value in channel {c} (at t={t:.6}) was rejected whole")
            });
            return;
        }
        if !conn.rates {
            if let Some(c) = bad(&|v| v.fract() != 0.0) {
                self.stats.invalid.fetch_add(1, Ordering::Relaxed);
                let v = buf[c];
                self.reject(Rejection::Fractional, || {
                    format!(
                        "a counts sample with a fractional count ({v}) in channel {c} (at t={t:.6}) was rejected whole \
                         (counted as invalid); if the stream carries rates in Hz, set [input] values_are_rates = true \
                         or give it the type SpikingRates"
                    )
                });
                return;
            }
        }
        // Above MAX_CHANNEL_RATE_HZ over the sample's interval it is not spike counts.
        let limit = if conn.rates { MAX_CHANNEL_RATE_HZ } else { (MAX_CHANNEL_RATE_HZ * conn.period).ceil().max(1.0) };
        if let Some(c) = bad(&|v| v > limit) {
            self.stats.invalid.fetch_add(1, Ordering::Relaxed);
            let (v, period_ms) = (buf[c], conn.period * 1e3);
            self.reject(Rejection::Implausible, || {
                format!(
                    "a counts sample with {v:e} in channel {c} (at t={t:.6}) was rejected whole (counted as invalid): \
                     over its {period_ms:.3} ms that is above the {MAX_CHANNEL_RATE_HZ} Hz a channel can carry \
                     (at most {limit}{}); check the stream's format and scaling",
                    if conn.rates { " Hz as a rate" } else { " spikes per sample" }
                )
            });
            return;
        }
        if t == self.last_t {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            self.reject(Rejection::Duplicate, || format!("a counts sample with a duplicate timestamp {t:.6} was dropped"));
            return;
        }
        if t < self.last_t {
            self.stats.out_of_order.fetch_add(1, Ordering::Relaxed);
            let last = self.last_t;
            self.reject(Rejection::Order, || {
                format!("out-of-order counts timestamps: {t:.6} after {last:.6}; binned by their own timestamp")
            });
        } else {
            self.last_t = t;
        }
        // A counts sample covers (t − period, t]: bin it at its midpoint.
        let t_mid = t - 0.5 * conn.period;
        let scale = if conn.rates { conn.period } else { 1.0 };
        for (c, v) in buf.iter().enumerate() {
            if *v > 0.0 {
                if let Some(u) = self.units.lookup(c as i64, 0) {
                    self.push(SpikeItem { t: t_mid, unit: u as u32, count: (v * scale) as f32 }, sink);
                }
            }
        }
        // The sample is stamped at its interval's end: its lag is measured from there.
        self.note_lag(t, t_mid);
    }
}
