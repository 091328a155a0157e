//! Taps: how a stage hands records to an observer without ever waiting. Each is a
//! preallocated lock-free queue or ring; when it is full the record is dropped and counted
//! (the observer reports the count), never blocking the stage. A stage holds a [`FanOut`]
//! of its observers' taps (or, for the recorder's input and counts taps, an `Option`) and
//! knows nothing more of them; session.rs builds and hands them out.

use crate::events::LoopBin;
use crossbeam_queue::ArrayQueue;
use ringbuf::traits::{Observer, Producer, Split};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A bounded, lock-free hand-off to an observer: a full queue drops and counts.
pub struct Tap<T> {
    pub queue: Arc<ArrayQueue<T>>,
    pub dropped: Arc<AtomicU64>,
}

impl<T> Clone for Tap<T> {
    fn clone(&self) -> Self {
        Tap { queue: self.queue.clone(), dropped: self.dropped.clone() }
    }
}

impl<T> Tap<T> {
    pub fn new(capacity: usize) -> Tap<T> {
        Tap { queue: Arc::new(ArrayQueue::new(capacity.max(1))), dropped: Arc::new(AtomicU64::new(0)) }
    }
    /// Never waits, never allocates.
    #[inline]
    pub fn offer(&self, item: T) {
        if self.queue.push(item).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One record to every observer's tap, each dropping and counting on its own. Built once
/// at wiring time (session.rs); offering allocates nothing. Adding an observer of a stage is
/// one more [`FanOut::with`] there.
pub struct FanOut<T> {
    taps: Vec<Tap<T>>,
}

impl<T> Default for FanOut<T> {
    fn default() -> Self {
        FanOut { taps: Vec::new() }
    }
}

impl<T: Copy> FanOut<T> {
    pub fn with(mut self, tap: Tap<T>) -> FanOut<T> {
        self.taps.push(tap);
        self
    }

    pub fn with_opt(self, tap: Option<Tap<T>>) -> FanOut<T> {
        match tap {
            Some(t) => self.with(t),
            None => self,
        }
    }

    /// Never waits, never allocates.
    #[inline]
    pub fn offer(&self, item: T) {
        for t in &self.taps {
            t.offer(item);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.taps.is_empty()
    }
}

/// The loop's tap: each bin's record and the counts it was closed with (kept in lockstep).
pub struct BinTap {
    pub(crate) records: Tap<LoopBin>,
    pub(crate) counts: ringbuf::HeapProd<f64>,
    pub(crate) n_units: usize,
}

/// The observer's end of a [`BinTap`]: each record, and its counts in the same order.
pub struct BinTapReader {
    pub records: Tap<LoopBin>,
    pub counts: ringbuf::HeapCons<f64>,
}

impl BinTap {
    /// A tap holding `capacity` bins of N = `n_units` counts, and its reader.
    pub fn pair(capacity: usize, n_units: usize) -> (BinTap, BinTapReader) {
        let records = Tap::new(capacity);
        let (counts, reader) = ringbuf::HeapRb::<f64>::new(capacity.max(1) * n_units.max(1)).split();
        (BinTap { records: records.clone(), counts, n_units }, BinTapReader { records, counts: reader })
    }

    /// Never waits, never allocates. The loop is the only producer of both, so room seen
    /// here is still there when it pushes.
    #[inline]
    pub fn offer(&mut self, rec: &LoopBin, counts: &[f64]) {
        debug_assert_eq!(counts.len(), self.n_units);
        let q = &self.records.queue;
        if q.len() < q.capacity() && self.counts.vacant_len() >= counts.len() {
            self.counts.push_slice(counts);
            let _ = q.push(*rec);
        } else {
            self.records.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Ingest's tap: one [`InputWriter`] per connection to the input stream.
#[derive(Clone)]
pub struct InputTap {
    pub(crate) connections: crossbeam_channel::Sender<InputConnection>,
    pub(crate) dropped: Arc<AtomicU64>,
}

/// A connection to the input stream, as the recorder gets it.
pub struct InputConnection {
    /// The stream's full info XML as the inlet reported it.
    pub xml: String,
    pub name: String,
    pub uid: String,
    /// Numeric (a string stream is not tapped).
    pub format: lsl::ChannelFormat,
    pub channels: usize,
    pub ring: ringbuf::HeapCons<f64>,
}

/// Writes one connection's samples and clock offsets into its ring.
/// Ring layout: a sample is `[0, t, v_0 … v_{c−1}]`, a clock offset `[1, t, offset]`. Each
/// token goes in with one `push_slice`, which publishes it whole: the recorder never sees
/// half a token.
pub struct InputWriter {
    ring: ringbuf::HeapProd<f64>,
    dropped: Arc<AtomicU64>,
    /// One sample token, preallocated.
    token: Vec<f64>,
}

pub(crate) const TOKEN_SAMPLE: f64 = 0.0;
pub(crate) const TOKEN_OFFSET: f64 = 1.0;

impl InputTap {
    /// A new connection: `info` is the inlet's full stream info (with desc). Returns None (and the stream
    /// is not recorded) for a string stream: spikes are numbers.
    pub fn connect(&self, info: &lsl::StreamInfo, channels: usize) -> Option<InputWriter> {
        let (xml, srate) = (info.to_xml().ok()?, info.nominal_srate());
        let format = info.channel_format();
        if matches!(format, lsl::ChannelFormat::String | lsl::ChannelFormat::Undefined) {
            return None;
        }
        // About 8 s of the stream (irregular streams: 4 M values), so a briefly starved
        // recorder loses nothing.
        let per_s = if srate > 0.0 { srate } else { 2000.0 };
        let capacity = ((8.0 * per_s * (channels + 2) as f64) as usize).clamp(1 << 16, 1 << 25);
        let (prod, cons) = ringbuf::HeapRb::<f64>::new(capacity).split();
        let (name, uid) = (info.stream_name(), info.uid());
        self.connections.send(InputConnection { xml, name, uid, format, channels, ring: cons }).ok()?;
        Some(InputWriter { ring: prod, dropped: self.dropped.clone(), token: vec![0.0; 2 + channels] })
    }
}

impl InputWriter {
    /// A sample as received: remote timestamp, every channel.
    #[inline]
    pub fn sample(&mut self, t_remote: f64, values: &[f64]) {
        debug_assert_eq!(values.len() + 2, self.token.len());
        if self.ring.vacant_len() < self.token.len() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.token[0] = TOKEN_SAMPLE;
        self.token[1] = t_remote;
        self.token[2..].copy_from_slice(values);
        self.ring.push_slice(&self.token);
    }

    /// A clock offset measured at local time `t` (local = remote + offset).
    pub fn clock_offset(&mut self, t: f64, offset: f64) {
        if self.ring.vacant_len() < 3 {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.ring.push_slice(&[TOKEN_OFFSET, t, offset]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each observer's tap drops and counts on its own: a slow observer never costs a fast
    /// one its records.
    #[test]
    fn a_fan_out_gives_every_observer_its_own_drops() {
        let (fast, slow) = (Tap::<u64>::new(8), Tap::<u64>::new(2));
        let out = FanOut::default().with(fast.clone()).with_opt(Some(slow.clone())).with_opt(None);
        for k in 0..5 {
            out.offer(k);
        }
        assert_eq!((fast.queue.len(), fast.dropped.load(Ordering::Relaxed)), (5, 0));
        assert_eq!((slow.queue.len(), slow.dropped.load(Ordering::Relaxed)), (2, 3));
        assert_eq!(slow.queue.pop(), Some(0), "the oldest are kept, the newest dropped");
        assert!(FanOut::<u64>::default().is_empty());
    }
}
