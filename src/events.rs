//! The per-bin records the stages hand on: the loop's [`BinRecord`] and [`ControlResult`],
//! the emitter's [`Emitted`], the simulator's [`TruthRecord`], and the loop's progress.
//! Plain `Copy` data with no behaviour, so that stages and their observers (telemetry,
//! recording, the control plane) share them without importing each other.

use crate::{MAX_CONTROL, MAX_EMBED, MAX_LATENT};
use std::sync::atomic::AtomicU64;

/// One bin as the loop saw it (telemetry, status stream, reports).
#[derive(Debug, Clone, Copy)]
pub struct BinRecord {
    pub bin: u64,
    /// When the loop started on the bin (local clock).
    pub started_at: f64,
    /// When the model and controller were done.
    pub done_at: f64,
    pub spikes: f64,
    pub late_spikes: u64,
    pub future_spikes: u64,
    pub has_data: bool,
    /// The loop started the bin before its deadline (so the controller ran).
    pub want_control: bool,
    /// The controller produced a usable command.
    pub control_valid: bool,
    /// The result reached the emitter before the deadline.
    pub on_time: bool,
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

/// The simulator's ground truth for one bin (same bin grid as the loop).
#[derive(Debug, Clone, Copy)]
pub struct TruthRecord {
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
}
