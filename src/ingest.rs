//! Ingest: the LSL inlet thread. Resolves the rig's spike stream, maps timestamps onto
//! the local clock, validates every sample, and hands spikes to the loop through a
//! preallocated SPSC ring. Nothing is dropped silently: every rejected sample and every
//! full-ring event is counted and reported.

use crate::tap::{InputTap, InputWriter};
use crate::rig::{Input, InputKind};
use crate::units::UnitMap;
use lsl::Pullable;
use ringbuf::traits::Producer;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// One entry in the ingest → loop ring: `count` spikes of model unit `unit` at local time `t`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpikeItem {
    pub t: f64,
    pub unit: u32,
    pub count: f32,
}

pub type SpikeProducer = ringbuf::HeapProd<SpikeItem>;
pub type SpikeConsumer = ringbuf::HeapCons<SpikeItem>;

/// A preallocated ring between ingest and loop.
pub fn spike_ring(capacity: usize) -> (SpikeProducer, SpikeConsumer) {
    use ringbuf::traits::Split;
    ringbuf::HeapRb::<SpikeItem>::new(capacity).split()
}

/// Counters shared by ingest, loop and telemetry (lock-free).
#[derive(Debug, Default)]
pub struct IngestStats {
    pub samples: AtomicU64,
    pub spikes: AtomicU64,
    pub ring_overflows: AtomicU64,
    pub unknown_units: AtomicU64,
    pub nonfinite: AtomicU64,
    pub invalid: AtomicU64,
    pub out_of_order: AtomicU64,
    pub duplicates: AtomicU64,
    pub disconnects: AtomicU64,
    pub reconnects: AtomicU64,
    /// Samples that arrived more than `stall_ms` after their own timestamp (live only): their
    /// spikes could only be late, so they are not binned, and they do not keep the stream live.
    pub stale: AtomicU64,
    /// Times the inlet's buffer was found full: liblsl then drops its oldest samples without
    /// counting them, so spikes may have been lost uncounted (see [`inlet_capacity`]).
    pub inlet_full: AtomicU64,
    /// Local time at which the newest sample arrived (f64 bits; 0 = none yet). Arrival,
    /// not the sample's timestamp: a source running behind is late, not gone.
    pub last_arrival: AtomicU64,
    pub connected: AtomicBool,
    /// Ingest lag samples for telemetry: [sample timestamp, arrival − timestamp, the time the
    /// sample is binned at] (s; a counts sample is binned at the middle of its interval).
    pub lag: LagQueue,
    /// Lag samples not recorded because telemetry had not drained the queue.
    pub lag_dropped: AtomicU64,
}

/// A bounded queue of ingest-lag samples (about a second of a fast rig's spikes between
/// two telemetry polls). Full = the sample is counted in `lag_dropped`, never waited on.
pub struct LagQueue(pub crossbeam_queue::ArrayQueue<[f64; 3]>);

impl Default for LagQueue {
    fn default() -> Self {
        LagQueue(crossbeam_queue::ArrayQueue::new(1 << 16))
    }
}

impl std::fmt::Debug for LagQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LagQueue({} queued)", self.0.len())
    }
}

impl IngestStats {
    #[inline]
    pub fn last_arrival(&self) -> f64 {
        f64::from_bits(self.last_arrival.load(Ordering::Acquire))
    }
    /// Whether the stream is connected and a sample arrived within `stall_s` before `now`.
    #[inline]
    pub fn is_live(&self, now: f64, stall_s: f64) -> bool {
        self.connected.load(Ordering::Acquire) && now - self.last_arrival() <= stall_s
    }
}

/// Things the operator must hear about (first occurrence of each kind, and connection changes).
#[derive(Debug, Clone, PartialEq)]
pub enum IngestNotice {
    Connected { description: String },
    Lost { description: String },
    Rejected { what: String },
}

/// What the ingest thread needs to start.
pub struct IngestSetup {
    pub input: Input,
    pub units: UnitMap,
    pub producer: SpikeProducer,
    pub stats: Arc<IngestStats>,
    pub stop: Arc<AtomicBool>,
    pub notices: crossbeam_channel::Sender<IngestNotice>,
    /// The recorder's tap (`run --record`): every sample as received, and the clock offsets.
    pub record: Option<InputTap>,
}

/// Start the ingest thread. Returns once the stream is resolved and connected (or with a
/// clear error if it is not found within `input.resolve_timeout_s`, or is of the wrong shape).
pub fn start(setup: IngestSetup) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let handle = std::thread::Builder::new().name("neuroloop-ingest".into()).spawn(move || {
        let mut ingest = Ingest::new(setup);
        match ingest.connect(ingest.input.resolve_timeout_s) {
            Ok(inlet) => {
                let _ = ready_tx.send(Ok(()));
                ingest.run(inlet);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.message()));
            }
        }
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(anyhow::anyhow!(e))
        }
        Err(_) => Err(anyhow::anyhow!("the ingest thread died while connecting")),
    }
}

struct Connected {
    inlet: lsl::StreamInlet,
    /// Remote → local clock offset (s).
    offset: f64,
    /// Sample period of a counts stream (s).
    period: f64,
    rates: bool,
    channels: usize,
    /// Samples the inlet's buffer holds.
    capacity: usize,
    /// This connection's recording ring.
    record: Option<InputWriter>,
}

struct Ingest {
    input: Input,
    producer: SpikeProducer,
    stats: Arc<IngestStats>,
    stop: Arc<AtomicBool>,
    notices: crossbeam_channel::Sender<IngestNotice>,
    record: Option<InputTap>,
    decoder: SampleDecoder,
}

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
enum Rejection {
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

/// Samples liblsl's inlet may hold for an irregular (spike-event) stream: room for a burst
/// far larger than the ingest → loop ring, since a full inlet drops its oldest samples
/// without a count (liblsl keeps no drop counter). Regular streams get [`INLET_BUFFER_S`].
pub fn inlet_capacity(ring_capacity: usize) -> usize {
    (ring_capacity.saturating_mul(16)).clamp(1 << 20, 1 << 24)
}

/// Seconds of a regular (counts) stream the inlet may hold.
pub const INLET_BUFFER_S: i32 = 360;

/// Why a stream was not connected: not there (keep looking), or there and unusable (say so).
#[derive(Debug)]
enum ConnectError {
    NotFound(String),
    Refused(String),
}

impl ConnectError {
    fn message(self) -> String {
        match self {
            ConnectError::NotFound(m) | ConnectError::Refused(m) => m,
        }
    }
}

impl Ingest {
    fn new(s: IngestSetup) -> Ingest {
        let live = Some(s.input.stall_ms * 1e-3);
        let decoder = SampleDecoder::new(s.input.kind, s.units, s.stats.clone(), s.notices.clone(), live);
        Ingest { input: s.input, producer: s.producer, stats: s.stats, stop: s.stop, notices: s.notices, record: s.record, decoder }
    }

    /// Resolve the stream and open an inlet; Err with an operator-facing message.
    fn connect(&mut self, timeout_s: f64) -> Result<Connected, ConnectError> {
        let pred = self.input.predicate();
        let deadline = crate::clock::now() + timeout_s;
        let mut found = loop {
            let wait = (deadline - crate::clock::now()).clamp(0.05, 1.0);
            match lsl::resolve_bypred(&pred, 1, wait) {
                Ok(found) if !found.is_empty() => break found,
                _ => {}
            }
            if crate::clock::now() >= deadline || self.stop.load(Ordering::Relaxed) {
                return Err(ConnectError::NotFound(format!(
                    "no LSL stream matching {pred} was found within {timeout_s:.1} s; \
                     check that the rig is streaming and the rig file's [input] name/type/source_id"
                )));
            }
        };
        // A second look: two sources answering the same predicate must not be resolved by
        // whichever answered first (that differs from run to run).
        if let Ok(more) = lsl::resolve_bypred(&pred, 2, 0.25) {
            found.extend(more);
        }
        let mut uids: Vec<String> = Vec::new();
        found.retain(|i| {
            let new = !uids.contains(&i.uid());
            uids.push(i.uid());
            new
        });
        if found.len() > 1 {
            let list: Vec<String> = found
                .iter()
                .map(|i| format!("'{}' (source_id '{}', on {})", i.stream_name(), i.source_id(), i.hostname()))
                .collect();
            return Err(ConnectError::Refused(format!(
                "{} streams match [input] ({pred}): {}; give [input] source_id (or a name only the rig's stream has) \
                 so that neuroloop reads the rig and not another source",
                found.len(),
                list.join(", ")
            )));
        }
        let info = found.remove(0);
        let channels = info.channel_count().max(0) as usize;
        let description = format!(
            "stream '{}' (type {}, source_id '{}', {} channels, {} Hz) on {}",
            info.stream_name(),
            info.stream_type(),
            info.source_id(),
            channels,
            info.nominal_srate(),
            info.hostname()
        );
        if matches!(info.channel_format(), lsl::ChannelFormat::String | lsl::ChannelFormat::Undefined) {
            return Err(ConnectError::Refused(format!(
                "{description}: its channel format is {:?}, not a number: spikes are read as numbers \
                 (float32, double64 or an integer format); select the rig's numeric spike stream with [input] name/type/source_id",
                info.channel_format()
            )));
        }
        let rates = self.input.values_are_rates.unwrap_or(info.stream_type() == "SpikingRates");
        match self.input.kind {
            InputKind::Events if channels < 1 => {
                return Err(ConnectError::Refused(format!("{description}: a spike-event stream needs ≥ 1 channel (channel[, unit])")))
            }
            InputKind::Counts if !self.decoder.units.by_label() && channels != self.decoder.units.channels() => {
                return Err(ConnectError::Refused(format!(
                    "{description}: wrong channel count: the rig's [units] maps {} channels, the stream has {}; \
                     fix [units] or select another stream",
                    self.decoder.units.channels(),
                    channels
                )))
            }
            InputKind::Counts if info.nominal_srate() <= 0.0 => {
                return Err(ConnectError::Refused(format!("{description}: a counts stream must have a regular sampling rate")))
            }
            _ => {}
        }
        let period = if info.nominal_srate() > 0.0 { 1.0 / info.nominal_srate() } else { 0.0 };
        // liblsl drops the oldest samples silently when its inlet buffer is full, so give it
        // room for any stall: INLET_BUFFER_S of a regular stream, inlet_capacity() samples of
        // an irregular one (liblsl counts those in hundreds). recover=false so that a
        // vanished stream is reported (StreamLost), not hidden.
        let (buflen, capacity) = if info.nominal_srate() > 0.0 {
            (INLET_BUFFER_S, (INLET_BUFFER_S as f64 * info.nominal_srate()) as usize)
        } else {
            let samples = inlet_capacity(self.input.ring_capacity);
            ((samples / 100) as i32, samples)
        };
        let inlet = lsl::StreamInlet::new(&info, buflen, 0, false)
            .map_err(|e| ConnectError::Refused(format!("{description}: cannot open inlet: {e:?}")))?;
        inlet
            .open_stream(timeout_s.max(1.0))
            .map_err(|e| ConnectError::NotFound(format!("{description}: cannot open the stream: {e:?}")))?;
        // The full info (with desc): the labels a map by label reads, and the header
        // LabRecorder would write into the recording.
        let mut full = (self.decoder.units.by_label() || self.record.is_some()).then(|| inlet.info(timeout_s.max(1.0)).ok()).flatten();
        if self.decoder.units.by_label() {
            let Some(info) = full.as_mut() else {
                return Err(ConnectError::Refused(format!("{description}: its description (channel labels) could not be read; [units] labels needs it")));
            };
            let labels = crate::lslutil::channel_labels(info);
            self.decoder.units = self.decoder.units.bind_labels(&labels, channels).map_err(|e| ConnectError::Refused(format!("{description}: {e}")))?;
        }
        let offset = inlet.time_correction(timeout_s.max(1.0)).unwrap_or(0.0);
        let record = self.record.as_ref().and_then(|tap| {
            let full = full.as_ref()?;
            let mut w = tap.connect(full, channels);
            if w.is_none() {
                let _ = self.notices.try_send(IngestNotice::Rejected {
                    what: format!("{description}: its channel format cannot be recorded; the recording has no input stream"),
                });
            }
            if let Some(w) = &mut w {
                w.clock_offset(crate::clock::now(), offset);
            }
            w
        });
        self.stats.connected.store(true, Ordering::Release);
        let _ = self.notices.try_send(IngestNotice::Connected { description });
        Ok(Connected { inlet, offset, period, rates, channels, capacity, record })
    }

    fn run(&mut self, mut conn: Connected) {
        // f64 holds every numeric channel format exactly (liblsl converts on pull).
        let mut buf: Vec<f64> = vec![0.0; conn.channels];
        let mut next_correction = crate::clock::now() + 5.0;
        let mut pulls = 0u32;
        let mut was_full = false;
        while !self.stop.load(Ordering::Relaxed) {
            match conn.inlet.pull_sample_buf(&mut buf, 0.02) {
                Ok(ts) if ts != 0.0 => {
                    if let Some(w) = &mut conn.record {
                        w.sample(ts, &buf);
                    }
                    let layout = CountsLayout { period: conn.period, rates: conn.rates };
                    let producer = &mut self.producer;
                    self.decoder.decode(ts + conn.offset, &buf, layout, &mut |item| producer.try_push(item).is_ok());
                    // A full inlet buffer is the one loss liblsl does not count: look for it
                    // often enough to see any burst that fills it (it drains at pull speed).
                    pulls = pulls.wrapping_add(1);
                    if pulls % 256 == 0 {
                        let full = conn.inlet.samples_available() as usize + 1 >= conn.capacity;
                        if full && !was_full {
                            self.stats.inlet_full.fetch_add(1, Ordering::Relaxed);
                            let capacity = conn.capacity;
                            self.decoder.reject(Rejection::InletFull, || {
                                format!(
                                    "the LSL inlet's buffer ({capacity} samples) was full: liblsl drops its oldest samples \
                                     without counting them, so spikes may have been lost (counted as inlet_full events); \
                                     the source sends faster than ingest pulls: check the machine's load, or raise \
                                     [input] ring_capacity (an event stream's inlet holds 16× it)"
                                )
                            });
                        }
                        was_full = full;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    // The stream is gone. The loop sees `connected == false` and emits fallbacks.
                    self.stats.connected.store(false, Ordering::Release);
                    self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                    let _ = self.notices.try_send(IngestNotice::Lost {
                        description: format!("input stream lost ({}); waiting for it to come back", self.input.predicate()),
                    });
                    drop(conn);
                    let mut last_refusal = String::new();
                    loop {
                        if self.stop.load(Ordering::Relaxed) {
                            return;
                        }
                        match self.connect(1.0) {
                            Ok(c) => {
                                conn = c;
                                buf.resize(conn.channels, 0.0);
                                self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(ConnectError::Refused(e)) => {
                                // Said once per distinct reason, not every half second.
                                if e != last_refusal {
                                    let _ = self.notices.try_send(IngestNotice::Rejected { what: e.clone() });
                                    last_refusal = e;
                                }
                                std::thread::sleep(std::time::Duration::from_millis(500));
                            }
                            Err(ConnectError::NotFound(_)) => {}
                        }
                    }
                }
            }
            let now = crate::clock::now();
            if now > next_correction {
                if let Ok(o) = conn.inlet.time_correction(0.5) {
                    conn.offset = o;
                    if let Some(w) = &mut conn.record {
                        w.clock_offset(crate::clock::now(), o);
                    }
                }
                next_correction = now + 5.0;
            }
        }
    }
}

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

    fn reject(&mut self, kind: Rejection, what: impl FnOnce() -> String) {
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
            self.reject(Rejection::Invalid, || format!("a counts sample with a negative value in channel {c} (at t={t:.6}) was rejected whole"));
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
            self.reject(Rejection::Order, || format!("out-of-order counts timestamps: {t:.6} after {last:.6}; binned by their own timestamp"));
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
