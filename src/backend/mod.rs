//! Backends run the per-bin model and controller: filter → embedding update → task
//! identification → controller. `cpu` is the plain-Rust reference; GPU backends (cubecl)
//! implement the same trait.

pub mod cpu;
pub mod fault;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod gpu;
pub mod probe;

use crate::control::{ControllerConfig, Objective};
use crate::model::embedding::EmbeddingConfig;
use crate::model::filter::FilterChoice;
use crate::model::taskid::TaskIdConfig;
use crate::model::Dims;

/// What a backend is built from besides the model: the rig's settings, resolved and checked
/// against the model by the session (`session::backend_config`), which names the rig file
/// in its errors. A backend's own errors name only the setting.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub filter: FilterChoice,
    pub embedding: EmbeddingConfig,
    pub task_id: TaskIdConfig,
    pub controller: ControllerConfig,
    pub objective: Objective,
    /// The safety layer's bounds per control channel (the controller plans within them).
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    /// `kind = "monitor"`: the command of every bin (the rig's fallback vector; empty: zeros).
    pub hold: Vec<f64>,
}

/// What the loop hands the backend for one bin.
pub struct BinInput<'a> {
    pub bin: u64,
    /// Spike counts y_k (N).
    pub counts: &'a [f64],
    /// The command actually emitted for the previous bin (m): it drove x_k.
    pub u_prev: &'a [f64],
    /// False during a stream gap: predict only, no update, no control.
    pub has_data: bool,
    /// False when the bin's deadline has already passed: filter, but skip the controller.
    pub want_control: bool,
}

/// What the backend writes back (buffers sized once by [`BinOutput::new`]).
#[derive(Debug, Clone)]
pub struct BinOutput {
    /// Proposed command u_k (m), before the safety layer.
    pub u: Vec<f64>,
    pub control_valid: bool,
    /// The controller ran but had no usable command (a cost or a command that was not
    /// finite): the loop proposes the fallback and counts it (`controller_faults`).
    pub control_fault: bool,
    /// Filtered latent mean x_k (d).
    pub x: Vec<f64>,
    /// Current embedding z (e).
    pub z: Vec<f64>,
    /// Predictive log-likelihood log p(y_k | x_k⁻) (0 when no data).
    pub loglik: f64,
    /// Library task the embedding jumped to this bin, if any.
    pub task_jump: Option<usize>,
    /// ‖Δz‖ of this bin's online embedding step.
    pub embed_step: f64,
}

impl BinOutput {
    pub fn new(dims: &Dims) -> BinOutput {
        BinOutput {
            u: vec![0.0; dims.control],
            control_valid: false,
            control_fault: false,
            x: vec![0.0; dims.latent],
            z: vec![0.0; dims.embed],
            loglik: 0.0,
            task_jump: None,
            embed_step: 0.0,
        }
    }
}

/// What a backend counted over a run, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Bins whose device work failed (a GPU read-back error): each became a fallback, with
    /// x, z and the log-likelihood reported as NaN.
    pub device_errors: u64,
}

/// The per-bin model and controller. `step` runs on the loop thread, the hot path: it must
/// not lock, log or do I/O, and it must not allocate unless [`Backend::step_allocates`]
/// says so. The CPU and probe backends are allocation-free (tests/hot_path_alloc.rs runs
/// both under a counting allocator); the GPU backend is not (cubecl's client allocates
/// small host-side objects per launch and read-back).
pub trait Backend: Send {
    fn name(&self) -> &'static str;
    fn dims(&self) -> Dims;
    fn step(&mut self, input: &BinInput, out: &mut BinOutput);
    /// Change the controller's objective, effective from the next `step` (the loop applies
    /// control-plane commands between bins); hands back the objective it replaces, so that
    /// the loop can pass it on to be freed elsewhere. Held to the same allocation rule as
    /// `step`. An objective that does not fit the model is refused and handed back (the
    /// control plane checks it before it gets here).
    fn set_objective(&mut self, objective: Objective) -> Result<Objective, (Objective, &'static str)>;
    /// Hold the embedding on library task `task` (task identification and the online
    /// embedding update pause), or with None let them run again from there. Held to the
    /// same allocation rule as `step`.
    fn lock_task(&mut self, task: Option<usize>) -> Result<(), &'static str> {
        let _ = task;
        Err("this backend cannot hold a task")
    }
    /// The bounds the controller plans within (m values each); the emitter's safety layer
    /// enforces them on what goes out either way. Held to the same allocation rule as `step`.
    fn set_limits(&mut self, lower: &[f64], upper: &[f64]) {
        let _ = (lower, upper);
    }
    /// Whether [`Backend::lock_task`] is supported (the control plane refuses `lock_task`
    /// up front otherwise).
    fn can_lock_task(&self) -> bool {
        false
    }
    /// Whether `step` allocates (false: it is held to allocation-free by the tests).
    fn step_allocates(&self) -> bool {
        false
    }
    /// What the backend counted so far.
    fn stats(&self) -> BackendStats {
        BackendStats::default()
    }
}
