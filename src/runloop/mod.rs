//! The loop thread: per bin, wait for the bin to close, drain the ring into counts,
//! run the backend (filter → embedding update → controller), hand the result to the
//! emitter, and send a record to telemetry. Nothing here allocates, locks a contended
//! mutex, logs or does I/O (see tests/hot_path_alloc.rs).

pub mod loop_core;

use crate::backend::Backend;
use crate::binning::Binner;
use crate::clock::{self, BinGrid};
use crate::emit::EmitQueues;
use crate::events::{Applied, LoopBin, LoopQueues, LoopStatus};
use crate::ingest::{IngestStats, SpikeConsumer};
use crate::tap::{BinTap, FanOut};
use loop_core::{BinStart, LoopCore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct LoopSetup {
    pub clock: BinGrid,
    pub backend: Box<dyn Backend>,
    pub ring: SpikeConsumer,
    pub ingest: Arc<IngestStats>,
    /// No sample for this long = stream gap (s).
    pub stall_s: f64,
    pub emit: Arc<EmitQueues>,
    /// Control-plane commands, applied at the start of a bin.
    pub commands: Arc<LoopQueues>,
    /// The emitter thread, to wake it when a result is ready.
    pub emitter: std::thread::Thread,
    /// Each bin's record, to every observer (telemetry).
    pub observers: FanOut<LoopBin>,
    /// Run bins 0..end_bin (lowered to stop early).
    pub end_bin: Arc<AtomicU64>,
    /// Lookahead of the binner, in bins.
    pub lookahead_bins: usize,
    /// Observers that take each bin's counts with its record (the recorder, `run --record`;
    /// the control plane's live view).
    pub with_counts: Vec<BinTap>,
    /// How the loop waits for each bin to close (`[timing] wait`).
    pub wait: clock::Wait,
    /// `[realtime]`: applied to the loop thread as it starts.
    pub realtime: crate::realtime::ThreadSetup,
}

/// What the loop hands back when its last bin is done: the backend, and the binner with its
/// ring, which still receive the spikes that arrive until ingest stops (see [`LoopEnd::count_after_end`]).
pub struct LoopEnd {
    pub backend: Box<dyn Backend>,
    binner: Binner,
    ring: SpikeConsumer,
}

impl LoopEnd {
    /// Once ingest has stopped: the spikes handed on after the last bin closed (everything
    /// still in the ring or held by the binner), so that every spike is binned or counted.
    pub fn count_after_end(&mut self) -> u64 {
        let before = self.binner.before_start();
        self.binner.drain(&mut self.ring);
        self.binner.unclosed() + (self.binner.before_start() - before)
    }
}

/// The control plane's commands waiting for the loop, applied before it steps bin `k`: they
/// take effect at bin k, and each one's reply says so. Never waits; replaced objectives go
/// back to be freed off this thread.
#[inline]
fn apply_commands(core: &mut LoopCore, queues: &LoopQueues, k: u64) {
    while let Some((id, command)) = queues.commands.pop() {
        let (retire, outcome) = core.apply(command);
        if let Some(objective) = retire {
            // As deep as the command queue: room for every objective unless the control
            // plane stopped draining it; then (only then) it is freed here.
            let _ = queues.retired.push(objective);
        }
        queues.applied.force_push((Applied { id, at_bin: k }, outcome.err()));
    }
}

pub fn start(setup: LoopSetup, status: Arc<LoopStatus>) -> std::io::Result<std::thread::JoinHandle<LoopEnd>> {
    std::thread::Builder::new().name("neuroloop-loop".into()).spawn(move || run(setup, &status))
}

fn run(mut s: LoopSetup, status: &LoopStatus) -> LoopEnd {
    let mut core = LoopCore::new(s.backend);
    let dims = core.dims();
    let (n, m) = (dims.n_units, dims.control);
    let mut binner = Binner::new(s.clock, n, s.lookahead_bins);
    let mut counts = vec![0.0f64; n];
    let mut u_prev = vec![0.0f64; m];
    let mut u_prev_from: Option<u64> = None;
    s.realtime.apply(crate::realtime::Role::Loop);
    clock::precise_timers();
    crate::hot::enter();
    let mut k: u64 = 0;
    while k < s.end_bin.load(Ordering::Acquire) {
        // Commands that came during bin k−1 are applied while waiting for bin k to close
        // (off its budget), those that come while waiting once it has.
        apply_commands(&mut core, &s.commands, k);
        s.wait.until(s.clock.close(k));
        let started_at = clock::now();
        apply_commands(&mut core, &s.commands, k);
        binner.drain(&mut s.ring);
        let tally = binner.close(k, &mut counts);
        status.pre_session_spikes.store(binner.before_start(), Ordering::Relaxed);
        // What was actually emitted for bin k−1 drove x_k.
        while let Some(e) = s.emit.feedback.pop() {
            if e.bin + 1 == k {
                u_prev.copy_from_slice(&e.u[..m]);
                u_prev_from = Some(e.bin);
            }
        }
        let deadline = s.clock.deadline(k);
        let start = BinStart {
            bin: k,
            started_at,
            has_data: s.ingest.is_live(started_at, s.stall_s),
            want_control: loop_core::wants_control(started_at, deadline),
            u_prev_from,
        };
        let result = core.step(&start, &counts, &u_prev);
        let done_at = clock::now();
        if result.proposal == crate::events::Proposal::ControllerFault {
            // Counted here, at the source (telemetry may drop records); said by telemetry.
            status.controller_faults.fetch_add(1, Ordering::Relaxed);
            let _ = status.first_controller_fault.compare_exchange(0, k + 1, Ordering::Relaxed, Ordering::Relaxed);
        }
        let delivery = loop_core::delivery(start.want_control, done_at, deadline);
        if delivery.on_time() {
            // Never blocks: capacity covers many bins and the emitter drains every bin.
            let _ = s.emit.results.push(result);
            s.emitter.unpark();
        }
        let rec = core.loop_bin(&start, &result, &tally, done_at, delivery);
        s.observers.offer(rec);
        for tap in &mut s.with_counts {
            tap.offer(&rec, &counts);
        }
        k += 1;
        status.bins_done.store(k, Ordering::Release);
    }
    crate::hot::leave();
    LoopEnd { backend: core.into_backend(), binner, ring: s.ring }
}
