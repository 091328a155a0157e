//! The per-bin records the stages hand on: the loop's [`LoopBin`] and [`ControlResult`],
//! the emitter's [`Emitted`], the simulator's [`TruthBin`], and the loop's progress.
//! Plain data with no behaviour (`Copy` but for a loop command's objective), so that stages
//! and their observers (telemetry, recording, the control plane) share them without
//! importing each other; and the commands the control plane sends the loop and the emitter.

use crate::control::Objective;
use crate::rig::FallbackKind;
use crate::{MAX_CONTROL, MAX_EMBED, MAX_LATENT};
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::AtomicU64;

/// A command the emitter applies just before it pushes its next bin, so that it takes
/// effect at a known bin: the control plane's route to what acts on what goes out. Fixed
/// size, so queueing and applying one allocates nothing.
// Sized for the largest command on purpose: boxing it would allocate per command.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EmitterCommand {
    /// Open the enable gate.
    Arm,
    /// Close it: the safe zero goes out (rate-limited by the safety layer).
    Disarm,
    /// New bounds (m values each) and maximum step, already checked to lie within the rig
    /// file's (`control_plane::command`).
    SetLimits { lower: [f64; MAX_CONTROL], upper: [f64; MAX_CONTROL], max_step: f64 },
    /// A new fallback; `vector` (m values) is used by `Vector` only.
    SetFallback { fallback: FallbackKind, vector: [f64; MAX_CONTROL] },
}

/// A command the loop applies at the start of a bin, before the backend steps it. An
/// objective carries its target on the heap: it is built off the loop thread, and the
/// objective it replaces goes back on [`LoopQueues::retired`] to be freed there.
// Fixed-size limits on purpose: the loop must not free a boxed payload.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum LoopCommand {
    SetObjective(Objective),
    /// Hold the embedding on this library task (None: let task identification run).
    LockTask(Option<usize>),
    /// The bounds the controller plans within (m values each; the emitter's safety layer
    /// gets the same bounds as an [`EmitterCommand::SetLimits`]).
    SetLimits {
        lower: [f64; MAX_CONTROL],
        upper: [f64; MAX_CONTROL],
    },
}

/// The loop's command hand-offs (lock-free, preallocated).
pub struct LoopQueues {
    /// control plane → loop
    pub commands: ArrayQueue<(u64, LoopCommand)>,
    /// loop → control plane: the bin each command took effect at, or why the backend
    /// refused it.
    pub applied: ArrayQueue<(Applied, Option<&'static str>)>,
    /// loop → control plane: objectives replaced, to be dropped off the loop thread.
    pub retired: ArrayQueue<Objective>,
}

/// Commands a queue holds before they are applied (far more than an operator sends in a
/// bin).
pub const COMMAND_QUEUE: usize = 256;

impl Default for LoopQueues {
    fn default() -> Self {
        LoopQueues {
            commands: ArrayQueue::new(COMMAND_QUEUE),
            applied: ArrayQueue::new(COMMAND_QUEUE),
            retired: ArrayQueue::new(COMMAND_QUEUE),
        }
    }
}

/// Command `id` took effect at bin `at_bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub id: u64,
    pub at_bin: u64,
}

/// What the loop proposes for a bin: a command, or (two reasons) the fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proposal {
    /// The controller's command.
    Command,
    /// No live input (a stream gap longer than `stall_ms`): the model predicted only.
    Gap,
    /// Live input, but no usable command: the bin started past its deadline (the controller
    /// did not run), or the backend found the controller's result unusable (the GPU backend:
    /// not finite). A backend reports a usable command only for a bin with live input.
    NoCommand,
    /// The controller ran in time but had no usable command (a non-finite cost or command):
    /// the fallback, counted as a controller fault and said (report, dashboard, stderr).
    ControllerFault,
}

impl Proposal {
    /// The loop asks the emitter for the fallback.
    #[inline]
    pub fn wants_fallback(self) -> bool {
        self != Proposal::Command
    }
    pub fn has_data(self) -> bool {
        self != Proposal::Gap
    }
}

/// When the loop's result for a bin was ready, against the bin's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Done before the deadline: handed to the emitter.
    OnTime,
    /// Started before the deadline (the controller ran), done after it: dropped.
    FinishedLate,
    /// Started after the deadline: the model ran, the controller did not; dropped.
    StartedLate,
}

impl Delivery {
    /// The controller ran (the bin started before its deadline).
    pub fn wanted_control(self) -> bool {
        self != Delivery::StartedLate
    }
    pub fn on_time(self) -> bool {
        self == Delivery::OnTime
    }
}

/// What the emitter pushed for a bin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The loop's command (through the safety layer).
    Command,
    /// The fallback, because the loop asked for it (its result came in time).
    RequestedFallback,
    /// The fallback at the deadline: no result for the bin came in time (a deadline miss).
    MissedDeadline,
}

impl Pushed {
    pub fn fallback(self) -> bool {
        self != Pushed::Command
    }
    pub fn deadline_miss(self) -> bool {
        self == Pushed::MissedDeadline
    }
}

/// One bin as the loop saw it (telemetry, status stream, reports).
#[derive(Debug, Clone, Copy)]
pub struct LoopBin {
    pub bin: u64,
    /// When the loop started on the bin (local clock).
    pub started_at: f64,
    /// When the model and controller were done.
    pub done_at: f64,
    pub spikes: f64,
    pub late_spikes: u64,
    pub future_spikes: u64,
    pub proposal: Proposal,
    pub delivery: Delivery,
    /// The bin whose emitted command was u_prev (None: none yet, e.g. bin 0); replay repeats it.
    pub u_prev_from: Option<u64>,
    pub loglik: f64,
    /// Task identification jumped to this library task on this bin.
    pub task_jump: Option<u32>,
    pub embed_step: f64,
    pub x: [f64; MAX_LATENT],
    pub z: [f64; MAX_EMBED],
    pub u: [f64; MAX_CONTROL],
}

impl LoopBin {
    pub fn has_data(&self) -> bool {
        self.proposal.has_data()
    }
}

/// The loop's answer for one bin.
#[derive(Debug, Clone, Copy)]
pub struct ControlResult {
    pub bin: u64,
    pub u: [f64; MAX_CONTROL],
    pub proposal: Proposal,
}

/// What was pushed for one bin.
#[derive(Debug, Clone, Copy)]
pub struct Emitted {
    pub bin: u64,
    pub u: [f64; MAX_CONTROL],
    pub pushed: Pushed,
    /// The enable gate was on.
    pub enabled: bool,
    /// Local time the sample was pushed.
    pub pushed_at: f64,
}

/// One bin's records joined by telemetry (either side may be missing when its queue was
/// full, or when the emitter ran far behind): what the recorder's timing stream is
/// written from, so the recording and the report account each bin the same way.
#[derive(Debug, Clone, Copy)]
pub struct JoinedBin {
    pub bin: u64,
    pub loop_bin: Option<LoopBin>,
    pub emitted: Option<Emitted>,
}

/// The simulator's ground truth for one bin (same bin grid as the loop).
#[derive(Debug, Clone, Copy)]
pub struct TruthBin {
    pub bin: u64,
    pub x: [f64; MAX_LATENT],
    pub z: [f64; MAX_EMBED],
    pub task: usize,
}

/// The loop's progress, for the control plane and the report.
#[derive(Debug, Default)]
pub struct LoopStatus {
    /// Bins processed so far.
    pub bins_done: AtomicU64,
    /// Spikes stamped before the session's first bin (never binned; see `Binner::before_start`).
    pub pre_session_spikes: AtomicU64,
    /// Spikes handed on after the last bin closed (set once ingest has stopped).
    pub after_end_spikes: AtomicU64,
    /// Bins whose controller had no usable command ([`Proposal::ControllerFault`]).
    pub controller_faults: AtomicU64,
    /// The first such bin + 1 (0: none yet), for the notice.
    pub first_controller_fault: AtomicU64,
}
