//! Ingest: the LSL inlet thread. Resolves the rig's spike stream, maps timestamps onto
//! the local clock, validates every sample, and hands spikes to the loop through a
//! preallocated SPSC ring. Nothing is dropped silently: every rejected sample and every
//! full-ring event is counted and reported.

use crate::rig::Input;
use crate::tap::{InputTap, InputWriter};
use crate::units::UnitMap;
use lsl::Pullable;
use ringbuf::traits::Producer;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

mod decode;
use decode::Rejection;
pub use decode::{CountsLayout, SampleDecoder, MAX_CHANNEL_RATE_HZ};

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
    /// `[realtime]`: applied to the ingest thread as it starts.
    pub realtime: crate::realtime::ThreadSetup,
}

/// Start the ingest thread. Returns once the stream is resolved and connected (or with a
/// clear error if it is not found within `input.resolve_timeout_s`, or is of the wrong shape).
pub fn start(setup: IngestSetup) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let handle = std::thread::Builder::new().name("neuroloop-ingest".into()).spawn(move || {
        setup.realtime.apply(crate::realtime::Role::Ingest);
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
            let list: Vec<String> =
                found.iter().map(|i| format!("'{}' (source_id '{}', on {})", i.stream_name(), i.source_id(), i.hostname())).collect();
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
        self.input
            .check_stream_shape(self.decoder.units(), channels, info.nominal_srate())
            .map_err(|e| ConnectError::Refused(format!("{description}: {e}")))?;
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
        let mut full = (self.decoder.units().by_label() || self.record.is_some()).then(|| inlet.info(timeout_s.max(1.0)).ok()).flatten();
        if self.decoder.units().by_label() {
            let Some(info) = full.as_mut() else {
                return Err(ConnectError::Refused(format!(
                    "{description}: its description (channel labels) could not be read; [units] labels needs it"
                )));
            };
            let labels = crate::lslutil::channel_labels(info);
            let bound =
                self.decoder.units().bind_labels(&labels, channels).map_err(|e| ConnectError::Refused(format!("{description}: {e}")))?;
            self.decoder.set_units(bound);
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
                    if pulls.is_multiple_of(256) {
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
