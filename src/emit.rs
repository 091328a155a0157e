//! The emitter thread: exactly one Control sample per bin, in order, pushed no later than
//! the bin's deadline. If the loop's result for bin k is not there by deadline(k), the
//! rig's fallback is pushed at the deadline and the miss is counted; a result that comes
//! later is dropped (never emitted). Everything pushed passes through [`Safety`].

use crate::clock::{self, BinGrid};
use crate::events::{Applied, ControlResult, Emitted, EmitterCommand, Pushed, COMMAND_QUEUE};
use crate::safety::Safety;
use crate::schema::{control_stream_spec, OUTLET_LINGER_MS};
use crate::tap::FanOut;
use crate::MAX_CONTROL;
use crossbeam_queue::ArrayQueue;
use lsl::ExPushable;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The emitter's hand-offs (lock-free, preallocated).
pub struct EmitQueues {
    /// loop → emitter
    pub results: ArrayQueue<ControlResult>,
    /// emitter → loop (what was actually emitted, for the next bin's prediction)
    pub feedback: ArrayQueue<Emitted>,
    /// control plane → emitter: commands (with their ids) applied before the next push.
    pub commands: ArrayQueue<(u64, EmitterCommand)>,
    /// emitter → control plane: the bin each command took effect at (the oldest are
    /// overwritten when nobody reads them).
    pub applied: ArrayQueue<Applied>,
}

impl EmitQueues {
    pub fn new(capacity: usize) -> EmitQueues {
        EmitQueues {
            results: ArrayQueue::new(capacity),
            feedback: ArrayQueue::new(capacity),
            commands: ArrayQueue::new(COMMAND_QUEUE),
            applied: ArrayQueue::new(COMMAND_QUEUE),
        }
    }
}

/// Applies the commands waiting for the emitter before it pushes bin `k`: they take effect
/// at bin k, and each one's reply says so. Never waits, never allocates.
#[inline]
pub fn apply_commands(queues: &EmitQueues, k: u64, core: &mut EmitCore, enabled: &mut bool) {
    while let Some((id, command)) = queues.commands.pop() {
        core.apply(&command, enabled);
        queues.applied.force_push(Applied { id, at_bin: k });
    }
}

/// The emitter's counts, exact even when observers' records are dropped (the report reads
/// them).
#[derive(Debug, Default)]
pub struct EmitCounts {
    /// Results that arrived after their bin's deadline (dropped).
    pub late_results: AtomicU64,
    /// Control samples pushed, fallbacks among them, and deadline misses among those.
    pub pushed: AtomicU64,
    pub fallbacks: AtomicU64,
    pub deadline_misses: AtomicU64,
}

pub struct EmitterSetup {
    pub clock: BinGrid,
    pub m: usize,
    pub stream_name: String,
    pub source_id: String,
    pub labels: Vec<String>,
    pub safety: Safety,
    /// The enable gate at bin 0; `EmitQueues::commands` change it from a known bin on.
    pub enabled: bool,
    pub queues: Arc<EmitQueues>,
    pub counts: Arc<EmitCounts>,
    /// Emit bins 0..end_bin; set lower (e.g. on stop) to end early.
    pub end_bin: Arc<AtomicU64>,
    /// What was pushed, to every observer (telemetry, the recorder).
    pub observers: FanOut<Emitted>,
    /// `[realtime]`: applied to the emitter thread as it starts.
    pub realtime: crate::realtime::ThreadSetup,
    /// After the last bin the outlet stays up OUTLET_LINGER_MS, and then, if this is given,
    /// until it is set (at most MAX_LINGER_S): the session sets it once its consumers have
    /// everything. liblsl drops what an outlet has not sent when it is destroyed, and on a
    /// loaded machine that can be seconds of samples (issue 16).
    pub release: Option<Arc<AtomicBool>>,
}

/// The longest the emitter keeps its outlet up after the last bin, waiting for `release`.
pub const MAX_LINGER_S: f64 = 10.0;

/// Create the Control outlet on a new thread and start emitting. Returns once the outlet exists.
pub fn start(setup: EmitterSetup) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let handle = std::thread::Builder::new().name("neuroloop-emit".into()).spawn(move || {
        setup.realtime.apply(crate::realtime::Role::Emitter);
        // Its deadline wait is a timed park: 50 µs of default timer slack would be most of
        // a 1 kHz rig's deadline.
        crate::clock::precise_timers();
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

/// The Control outlet; None for a model without inputs (m = 0, a monitor): no Control
/// stream exists, and every bin is still decided and accounted as for any other session.
fn control_outlet(s: &EmitterSetup) -> Result<Option<lsl::StreamOutlet>, String> {
    debug_assert_eq!(s.labels.len(), s.m);
    if s.m == 0 {
        return Ok(None);
    }
    let info = control_stream_spec(&s.stream_name, &s.source_id, s.clock.bin_s, &s.labels).info()?;
    lsl::StreamOutlet::new(&info, 0, 360).map(Some).map_err(|e| format!("cannot create the Control outlet: {e:?}"))
}

fn run(s: EmitterSetup, outlet: Option<lsl::StreamOutlet>) {
    let m = s.m;
    let mut core = EmitCore::new(s.safety, m);
    let mut sample: Vec<f32> = vec![0.0; m];
    let mut pending: Option<ControlResult> = None;
    let mut enabled = s.enabled;
    let (ch, counts) = (&s.queues, &s.counts);
    crate::hot::enter();
    let mut k: u64 = 0;
    while k < s.end_bin.load(Ordering::Acquire) {
        let deadline = s.clock.deadline(k);
        // Wait for bin k's result or its deadline, whichever comes first.
        let (pushed, used) = loop {
            let r = pending.take().or_else(|| ch.results.pop());
            match decide(k, r.as_ref(), clock::now(), deadline) {
                Decision::Discard => {
                    counts.late_results.fetch_add(1, Ordering::Relaxed);
                }
                Decision::Emit { pushed, keep } => {
                    if keep {
                        pending = r;
                        break (pushed, None);
                    }
                    break (pushed, r);
                }
                Decision::Wait => clock::park_until(deadline),
            }
        };
        apply_commands(ch, k, &mut core, &mut enabled);
        let out = core.command(pushed, used.as_ref(), enabled);
        for j in 0..m {
            sample[j] = out[j] as f32;
        }
        // The timestamp is the bin's end on the local clock (docs/streams.md).
        if let Some(outlet) = &outlet {
            let _ = outlet.push_sample_ex(&sample, s.clock.bin_end(k), true);
        }
        let pushed_at = clock::now();
        counts.pushed.fetch_add(1, Ordering::Relaxed);
        counts.fallbacks.fetch_add(pushed.fallback() as u64, Ordering::Relaxed);
        counts.deadline_misses.fetch_add(pushed.deadline_miss() as u64, Ordering::Relaxed);
        let rec = Emitted { bin: k, u: core.last_full(), pushed, enabled, pushed_at };
        ch.feedback.force_push(rec);
        s.observers.offer(rec);
        k += 1;
    }
    crate::hot::leave();
    // Let liblsl deliver the last samples before the outlet goes away.
    std::thread::sleep(std::time::Duration::from_millis(OUTLET_LINGER_MS));
    if let Some(release) = &s.release {
        let until = clock::now() + MAX_LINGER_S;
        while !release.load(Ordering::Acquire) && clock::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    drop(outlet);
}

/// What the emitter does for bin `k`, holding `result` (the next one from the loop, if any)
/// at local time `now`, with bin k due at `deadline`. The whole deadline protocol on the
/// emitter's side: the thread around it only waits, pushes and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A result for a bin already emitted (it came after its deadline): count it as a late
    /// result, and look at the next one.
    Discard,
    /// Push bin k now, as `pushed` says (the result's command, the fallback it asked for, or
    /// the fallback for a miss); `keep` the result, which is for a later bin (the loop
    /// skipped k).
    Emit { pushed: Pushed, keep: bool },
    /// Nothing for bin k yet and its deadline is ahead: wait for a result or the deadline.
    Wait,
}

#[inline]
pub fn decide(k: u64, result: Option<&ControlResult>, now: f64, deadline: f64) -> Decision {
    match result {
        Some(r) if r.bin < k => Decision::Discard,
        Some(r) if r.bin > k => Decision::Emit { pushed: Pushed::MissedDeadline, keep: true },
        Some(r) if r.proposal.wants_fallback() => Decision::Emit { pushed: Pushed::RequestedFallback, keep: false },
        Some(_) => Decision::Emit { pushed: Pushed::Command, keep: false },
        None if now >= deadline => Decision::Emit { pushed: Pushed::MissedDeadline, keep: false },
        None => Decision::Wait,
    }
}

/// The emitter's state from bin to bin (the last command pushed) and its buffers: turns a
/// decision into the command pushed, through the safety layer. The live emitter and
/// `neuroloop replay` both run it.
pub struct EmitCore {
    safety: Safety,
    m: usize,
    last: [f64; MAX_CONTROL],
    proposal: [f64; MAX_CONTROL],
    out: [f64; MAX_CONTROL],
}

impl EmitCore {
    pub fn new(safety: Safety, m: usize) -> EmitCore {
        EmitCore { safety, m, last: [0.0; MAX_CONTROL], proposal: [0.0; MAX_CONTROL], out: [0.0; MAX_CONTROL] }
    }

    /// The command for the bin `pushed` decides, from `result` (the bin's own, when it came
    /// in time) or the fallback, with the enable gate as it is now. It becomes the last
    /// command (for the maximum step and a "hold" fallback).
    pub fn command(&mut self, pushed: Pushed, result: Option<&ControlResult>, enabled: bool) -> &[f64] {
        let m = self.m;
        if let (Pushed::Command, Some(r)) = (pushed, result) {
            self.proposal[..m].copy_from_slice(&r.u[..m]);
        }
        command(&self.safety, &mut self.proposal[..m], pushed.fallback(), &self.last[..m], enabled, &mut self.out[..m]);
        self.last[..m].copy_from_slice(&self.out[..m]);
        &self.out[..m]
    }

    /// Applies a control-plane command (the live emitter through [`apply_commands`], replay
    /// from the recording's commands stream). Never allocates.
    pub fn apply(&mut self, command: &EmitterCommand, enabled: &mut bool) {
        match command {
            EmitterCommand::Arm => *enabled = true,
            EmitterCommand::Disarm => *enabled = false,
            EmitterCommand::SetLimits { lower, upper, max_step } => self.safety.set_limits(lower, upper, *max_step),
            EmitterCommand::SetFallback { fallback, vector } => self.safety.set_fallback(*fallback, vector),
        }
    }

    /// The safety layer as it is now (after any commands).
    pub fn safety(&self) -> &Safety {
        &self.safety
    }

    /// The last command, padded to the record's width.
    pub fn last_full(&self) -> [f64; MAX_CONTROL] {
        self.last
    }
}

/// The command pushed for a bin: the loop's proposal, or the fallback, through the safety
/// layer.
#[inline]
pub fn command(safety: &Safety, proposal: &mut [f64], fallback: bool, last: &[f64], enabled: bool, out: &mut [f64]) {
    if fallback {
        safety.fallback(last, proposal);
    }
    safety.apply(proposal, last, enabled, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Proposal;
    use crate::rig::FallbackKind;
    use proptest::prelude::*;

    fn result(bin: u64, use_fallback: bool) -> ControlResult {
        let mut u = [0.0; MAX_CONTROL];
        u[0] = bin as f64;
        let proposal = if use_fallback { Proposal::Gap } else { Proposal::Command };
        ControlResult { bin, u, proposal }
    }

    /// Commands take effect at the bin about to be pushed, in order, each one's reply naming
    /// that bin.
    #[test]
    fn commands_take_effect_at_the_next_bin_pushed() {
        let q = EmitQueues::new(4);
        let mut core = EmitCore::new(Safety::for_tests(2, -1.0, 1.0, 0.5), 2);
        let mut enabled = true;
        apply_commands(&q, 0, &mut core, &mut enabled);
        assert!(enabled && q.applied.is_empty(), "nothing waiting, nothing changes");
        q.commands.push((7, EmitterCommand::Disarm)).unwrap();
        apply_commands(&q, 12, &mut core, &mut enabled);
        assert!(!enabled);
        q.commands.push((8, EmitterCommand::Arm)).unwrap();
        q.commands.push((9, EmitterCommand::Disarm)).unwrap();
        apply_commands(&q, 13, &mut core, &mut enabled);
        assert!(!enabled, "the last command wins");
        let replies: Vec<Applied> = std::iter::from_fn(|| q.applied.pop()).collect();
        assert_eq!(replies, [Applied { id: 7, at_bin: 12 }, Applied { id: 8, at_bin: 13 }, Applied { id: 9, at_bin: 13 }]);
        // Tighter limits and a new fallback act on the next command pushed.
        let (mut lower, mut upper, mut vector) = ([0.0; MAX_CONTROL], [0.0; MAX_CONTROL], [0.0; MAX_CONTROL]);
        lower[..2].copy_from_slice(&[-0.2, 0.0]);
        upper[..2].copy_from_slice(&[0.2, 0.3]);
        vector[..2].copy_from_slice(&[0.1, 0.2]);
        q.commands.push((10, EmitterCommand::Arm)).unwrap();
        q.commands.push((11, EmitterCommand::SetLimits { lower, upper, max_step: 0.25 })).unwrap();
        q.commands.push((12, EmitterCommand::SetFallback { fallback: FallbackKind::Vector, vector })).unwrap();
        apply_commands(&q, 14, &mut core, &mut enabled);
        assert_eq!((core.safety().lower(), core.safety().upper(), core.safety().max_step()), (&[-0.2, 0.0][..], &[0.2, 0.3][..], 0.25));
        let mut u = [0.0; MAX_CONTROL];
        u[..2].copy_from_slice(&[5.0, 5.0]);
        let r = ControlResult { bin: 14, u, proposal: crate::events::Proposal::Command };
        assert_eq!(core.command(Pushed::Command, Some(&r), enabled), &[0.2, 0.25], "bounds, then the step from 0");
        assert_eq!(core.command(Pushed::MissedDeadline, None, enabled), &[0.1, 0.2], "the fallback vector");
    }

    /// The deadline protocol, case by case.
    #[test]
    fn decisions_for_on_time_late_early_skipped_and_missing_results() {
        let emit = |pushed, keep| Decision::Emit { pushed, keep };
        // on time: the result's command
        assert_eq!(decide(5, Some(&result(5, false)), 1.0, 2.0), emit(Pushed::Command, false));
        // on time, but the loop asks for the fallback (a gap)
        assert_eq!(decide(5, Some(&result(5, true)), 1.0, 2.0), emit(Pushed::RequestedFallback, false));
        // a result for a bin already pushed (it came after its deadline): dropped
        assert_eq!(decide(5, Some(&result(4, false)), 1.0, 2.0), Decision::Discard);
        // the loop skipped bin 5: the fallback now, the result kept for bin 6
        assert_eq!(decide(5, Some(&result(6, false)), 1.0, 2.0), emit(Pushed::MissedDeadline, true));
        // nothing yet, deadline ahead: wait; at or past the deadline: the fallback, a miss
        assert_eq!(decide(5, None, 1.0, 2.0), Decision::Wait);
        assert_eq!(decide(5, None, 2.0, 2.0), emit(Pushed::MissedDeadline, false));
        assert_eq!(decide(5, None, 9.0, 2.0), emit(Pushed::MissedDeadline, false));
    }

    /// One bin's result from the loop: absent (skipped, or too late to be sent), or visible to
    /// the emitter `arrival` seconds after the bin closed (after its deadline too: the
    /// emitter may be descheduled), asking for the fallback or not.
    fn results() -> impl Strategy<Value = Vec<Option<(f64, bool)>>> {
        prop::collection::vec(prop::option::weighted(0.8, (0.0f64..0.03, any::<bool>())), 1..300)
    }

    proptest! {
        /// Exactly one sample per bin, in order, whatever the results' arrival pattern; a
        /// bin's own result is used iff it was there by its deadline or before the emitter
        /// gave up on the bin; every other result is counted late, never pushed.
        #[test]
        fn exactly_one_sample_per_bin_in_order_for_any_arrival_pattern(plan in results()) {
            let (bin_s, deadline_s) = (0.01, 0.005);
            let deadline = |k: u64| (k + 1) as f64 * bin_s + deadline_s;
            // The loop's queue: results in bin order, each visible from its arrival time.
            let mut queue: std::collections::VecDeque<(f64, ControlResult)> = plan
                .iter()
                .enumerate()
                .filter_map(|(k, r)| r.map(|(a, fb)| ((k + 1) as f64 * bin_s + a, result(k as u64, fb))))
                .collect();
            let mut now = 0.0f64;
            let mut pending: Option<ControlResult> = None;
            let mut pushed: Vec<(u64, bool, Option<u64>)> = Vec::new(); // (bin, fallback, result used)
            let mut late = 0u64;
            for k in 0..plan.len() as u64 {
                let started = now;
                let mut steps = 0;
                loop {
                    steps += 1;
                    prop_assert!(steps < 10_000, "the emitter never decided bin {}", k);
                    let r = pending.take().or_else(|| match queue.front() {
                        Some((a, _)) if *a <= now => queue.pop_front().map(|(_, r)| r),
                        _ => None,
                    });
                    match decide(k, r.as_ref(), now, deadline(k)) {
                        Decision::Discard => late += 1,
                        Decision::Emit { pushed: p, keep } => {
                            let use_result = p != Pushed::MissedDeadline;
                            if keep { pending = r; }
                            pushed.push((k, p.fallback(), use_result.then(|| r.unwrap().bin)));
                            prop_assert!(now <= deadline(k).max(started), "bin {} pushed after its deadline", k);
                            break;
                        }
                        // Woken by the next result or the deadline, whichever is first.
                        Decision::Wait => now = queue.front().map_or(deadline(k), |(a, _)| a.min(deadline(k))),
                    }
                }
                now += 1e-6; // pushing takes time
            }
            prop_assert_eq!(pushed.len(), plan.len());
            for (i, (k, fallback, used)) in pushed.iter().enumerate() {
                prop_assert_eq!(*k, i as u64, "in order");
                if let Some(b) = used {
                    prop_assert_eq!(*b, *k, "only a bin's own result is used for it");
                    prop_assert_eq!(*fallback, plan[i].unwrap().1);
                } else {
                    prop_assert!(*fallback, "no result: the fallback");
                }
            }
            let used = pushed.iter().filter(|p| p.2.is_some()).count() as u64;
            let produced = plan.iter().filter(|r| r.is_some()).count() as u64;
            let left = queue.len() as u64 + pending.is_some() as u64;
            prop_assert_eq!(used + late + left, produced, "every result used, counted late, or still queued at the end");
        }
    }
}
