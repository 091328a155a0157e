//! The emitter thread: exactly one Control sample per bin, in order, pushed no later than
//! the bin's deadline. If the loop's result for bin k is not there by deadline(k), the
//! rig's fallback is pushed at the deadline and the miss is counted; a result that comes
//! later is dropped (never emitted). Everything pushed passes through [`Safety`].

use crate::clock::{self, BinClock};
use crate::safety::Safety;
use crate::MAX_CONTROL;
use crossbeam_queue::ArrayQueue;
use lsl::ExPushable;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The loop's answer for one bin.
#[derive(Debug, Clone, Copy)]
pub struct ControlResult {
    pub bin: u64,
    pub u: [f64; MAX_CONTROL],
    /// The loop asks for the fallback (e.g. the input stream is gone).
    pub use_fallback: bool,
}

/// What was pushed for one bin.
#[derive(Debug, Clone, Copy)]
pub struct Emitted {
    pub bin: u64,
    pub u: [f64; MAX_CONTROL],
    /// The fallback was pushed (deadline miss or requested by the loop).
    pub fallback: bool,
    /// The loop's result was not there by the deadline.
    pub deadline_miss: bool,
    /// The enable gate was on.
    pub enabled: bool,
    /// Local time the sample was pushed.
    pub pushed_at: f64,
}

/// Lock-free hand-offs between loop, emitter and telemetry.
pub struct EmitChannels {
    /// loop → emitter
    pub results: ArrayQueue<ControlResult>,
    /// emitter → loop (what was actually emitted, for the next bin's prediction)
    pub feedback: ArrayQueue<Emitted>,
    /// emitter → telemetry
    pub telemetry: ArrayQueue<Emitted>,
    /// Results that arrived after their bin's deadline (dropped).
    pub late_results: AtomicU64,
    /// Emitted records telemetry could not take (queue full).
    pub telemetry_dropped: AtomicU64,
    /// Control samples pushed, fallbacks among them, and deadline misses among those —
    /// exact even when telemetry records are dropped.
    pub pushed: AtomicU64,
    pub fallbacks: AtomicU64,
    pub deadline_misses: AtomicU64,
}

impl EmitChannels {
    pub fn new(capacity: usize) -> EmitChannels {
        EmitChannels {
            results: ArrayQueue::new(capacity),
            feedback: ArrayQueue::new(capacity),
            telemetry: ArrayQueue::new(capacity),
            late_results: AtomicU64::new(0),
            telemetry_dropped: AtomicU64::new(0),
            pushed: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            deadline_misses: AtomicU64::new(0),
        }
    }
}

pub struct EmitterSetup {
    pub clock: BinClock,
    pub m: usize,
    pub stream_name: String,
    pub source_id: String,
    pub labels: Vec<String>,
    pub safety: Safety,
    pub enabled: Arc<AtomicBool>,
    pub channels: Arc<EmitChannels>,
    /// Emit bins 0..end_bin; set lower (e.g. on stop) to end early.
    pub end_bin: Arc<AtomicU64>,
    /// The recorder's tap (`run --record`).
    pub record: Option<crate::record::Tap<Emitted>>,
}

/// Create the Control outlet on a new thread and start emitting. Returns once the outlet exists.
pub fn start(setup: EmitterSetup) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let handle = std::thread::Builder::new().name("neuroloop-emit".into()).spawn(move || {
        let outlet = match control_outlet(&setup) {
            Ok(o) => o,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        run(setup, outlet);
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(anyhow::anyhow!(e)),
        Err(_) => Err(anyhow::anyhow!("the emitter thread died while creating the Control outlet")),
    }
}

/// The Control stream's description (the outlet and the recording share it).
pub fn control_stream_spec(name: &str, source_id: &str, bin_s: f64, labels: &[String]) -> crate::lslutil::StreamSpec {
    crate::lslutil::StreamSpec {
        name: name.into(),
        stream_type: "Control".into(),
        srate: 1.0 / bin_s,
        format: lsl::ChannelFormat::Float32,
        source_id: source_id.into(),
        labels: labels.to_vec(),
        channel_type: "control".into(),
    }
}

fn control_outlet(s: &EmitterSetup) -> Result<lsl::StreamOutlet, String> {
    debug_assert_eq!(s.labels.len(), s.m);
    let info = control_stream_spec(&s.stream_name, &s.source_id, s.clock.bin_s, &s.labels).info()?;
    lsl::StreamOutlet::new(&info, 0, 360).map_err(|e| format!("cannot create the Control outlet: {e:?}"))
}

fn run(s: EmitterSetup, outlet: lsl::StreamOutlet) {
    let m = s.m;
    let mut last = [0.0f64; MAX_CONTROL];
    let mut proposal = [0.0f64; MAX_CONTROL];
    let mut out = [0.0f64; MAX_CONTROL];
    let mut sample: Vec<f32> = vec![0.0; m];
    let mut pending: Option<ControlResult> = None;
    let ch = &s.channels;
    crate::hot::enter();
    let mut k: u64 = 0;
    while k < s.end_bin.load(Ordering::Acquire) {
        let deadline = s.clock.deadline(k);
        // Wait for bin k's result or its deadline, whichever comes first.
        let (fallback, miss) = loop {
            let r = pending.take().or_else(|| ch.results.pop());
            match r {
                Some(r) if r.bin < k => {
                    ch.late_results.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some(r) if r.bin > k => {
                    // The loop moved past bin k without a result for it: emit the fallback now.
                    pending = Some(r);
                    break (true, true);
                }
                Some(r) => {
                    proposal[..m].copy_from_slice(&r.u[..m]);
                    break (r.use_fallback, false);
                }
                None => {}
            }
            if clock::now() >= deadline {
                break (true, true);
            }
            clock::park_until(deadline);
        };
        let enabled = s.enabled.load(Ordering::Relaxed);
        command(&s.safety, &mut proposal[..m], fallback, &last[..m], enabled, &mut out[..m]);
        for j in 0..m {
            sample[j] = out[j] as f32;
        }
        // The timestamp is the bin's end on the local clock (DESIGN.md §4).
        let _ = outlet.push_sample_ex(&sample, s.clock.bin_end(k), true);
        let pushed_at = clock::now();
        ch.pushed.fetch_add(1, Ordering::Relaxed);
        ch.fallbacks.fetch_add(fallback as u64, Ordering::Relaxed);
        ch.deadline_misses.fetch_add(miss as u64, Ordering::Relaxed);
        last[..m].copy_from_slice(&out[..m]);
        let rec = Emitted { bin: k, u: out, fallback, deadline_miss: miss, enabled, pushed_at };
        ch.feedback.force_push(rec);
        if ch.telemetry.push(rec).is_err() {
            ch.telemetry_dropped.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(tap) = &s.record {
            tap.offer(rec);
        }
        k += 1;
    }
    crate::hot::leave();
    // Let liblsl deliver the last samples before the outlet goes away.
    std::thread::sleep(std::time::Duration::from_millis(OUTLET_LINGER_MS));
}

/// The command pushed for a bin: the loop's proposal, or the fallback, through the safety
/// layer. `neuroloop replay` repeats exactly this.
#[inline]
pub fn command(safety: &Safety, proposal: &mut [f64], fallback: bool, last: &[f64], enabled: bool, out: &mut [f64]) {
    if fallback {
        safety.fallback(last, proposal);
    }
    safety.apply(proposal, last, enabled, out);
}

/// How long outlets stay up after their last sample (liblsl does not flush on destroy).
pub const OUTLET_LINGER_MS: u64 = 300;
