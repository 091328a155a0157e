//! The loop's per-bin decision without threads, queues or a clock: the live loop thread
//! (`runloop::run`) and `neuroloop replay` both drive it, so a recording replays through the
//! code that ran live. The deadline protocol is written down in docs/architecture.md.

use crate::backend::{Backend, BinInput, BinOutput};
use crate::binning::BinTally;
use crate::control::Objective;
use crate::events::{ControlResult, Delivery, LoopBin, LoopCommand, Proposal};
use crate::model::Dims;
use crate::{MAX_CONTROL, MAX_EMBED, MAX_LATENT};

/// The controller runs only for a bin started before its deadline.
#[inline]
pub fn wants_control(started_at: f64, deadline: f64) -> bool {
    started_at < deadline
}

/// When the bin's result was ready, against its deadline.
#[inline]
pub fn delivery(want_control: bool, done_at: f64, deadline: f64) -> Delivery {
    if !want_control {
        Delivery::StartedLate
    } else if done_at < deadline {
        Delivery::OnTime
    } else {
        Delivery::FinishedLate
    }
}

/// What the loop proposes from the bin's input and the backend's output.
#[inline]
pub fn proposal(has_data: bool, control_valid: bool, control_fault: bool) -> Proposal {
    match (has_data, control_valid, control_fault) {
        (false, _, _) => Proposal::Gap,
        (true, true, _) => Proposal::Command,
        (true, false, true) => Proposal::ControllerFault,
        (true, false, false) => Proposal::NoCommand,
    }
}

/// One bin of the loop: what it knew when it started the bin.
#[derive(Debug, Clone, Copy)]
pub struct BinStart {
    pub bin: u64,
    pub started_at: f64,
    /// Live input (no gap longer than `stall_ms`).
    pub has_data: bool,
    /// The bin started before its deadline (live: [`wants_control`]; replay: as recorded).
    pub want_control: bool,
    /// The bin whose emitted command is `u_prev` (None: none yet).
    pub u_prev_from: Option<u64>,
}

/// The backend and its output buffer, preallocated: [`LoopCore::step`] allocates nothing
/// unless the backend does (`Backend::step_allocates`).
pub struct LoopCore {
    backend: Box<dyn Backend>,
    out: BinOutput,
    dims: Dims,
}

impl LoopCore {
    pub fn new(backend: Box<dyn Backend>) -> LoopCore {
        let dims = backend.dims();
        LoopCore { out: BinOutput::new(&dims), backend, dims }
    }

    pub fn dims(&self) -> Dims {
        self.dims
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn into_backend(self) -> Box<dyn Backend> {
        self.backend
    }

    /// Applies a control-plane command between bins (the live loop before it steps the bin
    /// the command takes effect at; replay from the recording's commands stream). Returns
    /// the objective to free off the loop thread (the one replaced, or a refused one) and
    /// whether the backend took the command (nothing changed when it refused). Allocates
    /// only if the backend's `step` does.
    pub fn apply(&mut self, command: LoopCommand) -> (Option<Objective>, Result<(), &'static str>) {
        match command {
            LoopCommand::SetObjective(objective) => match self.backend.set_objective(objective) {
                Ok(old) => (Some(old), Ok(())),
                Err((refused, why)) => (Some(refused), Err(why)),
            },
            LoopCommand::LockTask(task) => (None, self.backend.lock_task(task)),
            LoopCommand::SetLimits { lower, upper } => {
                let m = self.dims.control;
                self.backend.set_limits(&lower[..m], &upper[..m]);
                (None, Ok(()))
            }
        }
    }

    /// The backend's output for the last bin stepped.
    pub fn output(&self) -> &BinOutput {
        &self.out
    }

    /// Run bin `s.bin` through the backend: filter, embedding update, task identification,
    /// and the controller when the bin started in time. Returns the result for the emitter.
    pub fn step(&mut self, s: &BinStart, counts: &[f64], u_prev: &[f64]) -> ControlResult {
        let input = BinInput { bin: s.bin, counts, u_prev, has_data: s.has_data, want_control: s.want_control };
        self.backend.step(&input, &mut self.out);
        // The recorded `control_valid` is derived from the proposal (schema::timing_row).
        debug_assert!(s.has_data || !self.out.control_valid, "a backend reported a command for a bin without live input");
        let mut result = ControlResult {
            bin: s.bin,
            u: [0.0; MAX_CONTROL],
            proposal: proposal(s.has_data, self.out.control_valid, self.out.control_fault),
        };
        result.u[..self.dims.control].copy_from_slice(&self.out.u);
        result
    }

    /// The record of the bin just stepped, finished at `done_at` with `delivery`.
    pub fn loop_bin(&self, s: &BinStart, result: &ControlResult, tally: &BinTally, done_at: f64, delivery: Delivery) -> LoopBin {
        let out = &self.out;
        let mut rec = LoopBin {
            bin: s.bin,
            started_at: s.started_at,
            done_at,
            spikes: tally.spikes,
            late_spikes: tally.late_spikes,
            future_spikes: tally.future_spikes,
            proposal: result.proposal,
            delivery,
            u_prev_from: s.u_prev_from,
            loglik: out.loglik,
            task_jump: out.task_jump.map(|j| j as u32),
            embed_step: out.embed_step,
            x: [0.0; MAX_LATENT],
            z: [0.0; MAX_EMBED],
            u: result.u,
        };
        rec.x[..self.dims.latent].copy_from_slice(&out.x);
        rec.z[..self.dims.embed].copy_from_slice(&out.z);
        rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Objective;
    use crate::emit::{decide, Decision, EmitCore};
    use crate::events::Pushed;
    use crate::safety::Safety;

    /// A backend whose command is 0.1·bin, whose controller gives no usable command on one
    /// bin, and has a fault (a non-finite command) on another.
    struct Fake {
        dims: Dims,
        invalid_on: u64,
        fault_on: u64,
    }

    impl Backend for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn dims(&self) -> Dims {
            self.dims
        }
        fn step(&mut self, input: &BinInput, out: &mut BinOutput) {
            out.u[0] = 0.1 * input.bin as f64;
            out.x[0] = input.counts[0];
            out.control_valid = input.has_data && input.want_control && input.bin != self.invalid_on;
            out.control_fault = out.control_valid && input.bin == self.fault_on;
            if out.control_fault {
                out.control_valid = false;
                out.u[0] = f64::NAN;
            }
        }
        fn set_objective(&mut self, objective: Objective) -> Result<Objective, (Objective, &'static str)> {
            Err((objective, "no objective"))
        }
    }

    /// One bin through the loop's core and the emitter's, as the two threads run them: the
    /// result reaches the emitter iff it was delivered on time, else the emitter gives up at
    /// the deadline.
    fn one_bin(core: &mut LoopCore, emit: &mut EmitCore, k: u64, has_data: bool, started_at: f64, done_at: f64) -> (LoopBin, Pushed, f64) {
        let deadline = 1.0;
        let start =
            BinStart { bin: k, started_at, has_data, want_control: wants_control(started_at, deadline), u_prev_from: k.checked_sub(1) };
        let result = core.step(&start, &[3.0], &[0.0]);
        let delivery = delivery(start.want_control, done_at, deadline);
        let rec = core.loop_bin(&start, &result, &BinTally::default(), done_at, delivery);
        let offered = delivery.on_time().then_some(&result);
        let now = if offered.is_some() { done_at } else { deadline };
        let Decision::Emit { pushed, keep: false } = decide(k, offered, now, deadline) else { panic!("bin {k}: the emitter must push it") };
        let u = emit.command(pushed, offered, true)[0];
        (rec, pushed, u)
    }

    /// The deadline protocol across both cores, case by case (docs/architecture.md).
    #[test]
    fn on_time_late_started_late_gap_and_no_command_bins() {
        let dims = Dims { n_units: 1, latent: 1, embed: 0, control: 1, hidden: 0 };
        let mut core = LoopCore::new(Box::new(Fake { dims, invalid_on: 4, fault_on: 7 }));
        // Bounds ±10 and a step of at most 1 per bin; the fallback holds the last command.
        let mut emit = EmitCore::new(Safety::for_tests(1, -10.0, 10.0, 1.0), 1);
        // (bin, has_data, started, done) → (proposal, delivery, pushed, command)
        let table = [
            ("on time", 1, true, 0.2, 0.5, Proposal::Command, Delivery::OnTime, Pushed::Command, 0.1),
            ("finished late", 2, true, 0.2, 1.5, Proposal::Command, Delivery::FinishedLate, Pushed::MissedDeadline, 0.1),
            ("started late", 3, true, 1.2, 1.3, Proposal::NoCommand, Delivery::StartedLate, Pushed::MissedDeadline, 0.1),
            ("no usable command", 4, true, 0.2, 0.5, Proposal::NoCommand, Delivery::OnTime, Pushed::RequestedFallback, 0.1),
            ("gap", 5, false, 0.2, 0.5, Proposal::Gap, Delivery::OnTime, Pushed::RequestedFallback, 0.1),
            ("on time again", 6, true, 0.2, 0.5, Proposal::Command, Delivery::OnTime, Pushed::Command, 0.6000000000000001),
            // The controller's command is NaN: the fallback (hold) goes out, never the NaN.
            (
                "controller fault",
                7,
                true,
                0.2,
                0.5,
                Proposal::ControllerFault,
                Delivery::OnTime,
                Pushed::RequestedFallback,
                0.6000000000000001,
            ),
        ];
        for (what, k, has_data, started, done, proposal, delivery, pushed, u) in table {
            let (rec, p, cmd) = one_bin(&mut core, &mut emit, k, has_data, started, done);
            assert_eq!((rec.proposal, rec.delivery, p), (proposal, delivery, pushed), "{what} (bin {k})");
            assert_eq!(cmd, u, "{what} (bin {k}): the command pushed");
            assert_eq!((rec.bin, rec.x[0], rec.u_prev_from), (k, 3.0, Some(k - 1)), "{what}: the record");
        }
    }

    /// Early and skipped bins, the emitter's side: a result for a later bin (the loop skipped
    /// bin k) makes bin k a miss and is kept for its own bin; one for an earlier bin is late.
    #[test]
    fn skipped_and_early_results() {
        let dims = Dims { n_units: 1, latent: 1, embed: 0, control: 1, hidden: 0 };
        let mut core = LoopCore::new(Box::new(Fake { dims, invalid_on: u64::MAX, fault_on: u64::MAX }));
        let mut emit = EmitCore::new(Safety::for_tests(1, -10.0, 10.0, 1.0), 1);
        let start = BinStart { bin: 8, started_at: 0.0, has_data: true, want_control: true, u_prev_from: Some(6) };
        let r8 = core.step(&start, &[1.0], &[0.0]);
        // Bin 7 was skipped: its turn comes with bin 8's result waiting.
        assert_eq!(decide(7, Some(&r8), 0.5, 1.0), Decision::Emit { pushed: Pushed::MissedDeadline, keep: true });
        assert_eq!(emit.command(Pushed::MissedDeadline, None, true), &[0.0]);
        assert_eq!(decide(8, Some(&r8), 0.5, 2.0), Decision::Emit { pushed: Pushed::Command, keep: false });
        assert_eq!(emit.command(Pushed::Command, Some(&r8), true), &[0.8]);
        // Bin 8's result seen again at bin 9 (it came after its deadline): discarded.
        assert_eq!(decide(9, Some(&r8), 0.5, 3.0), Decision::Discard);
    }
}
