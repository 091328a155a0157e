//! The rig file's sections, as serde reads them (defaults and the keys each takes).

use crate::model::embedding::EmbeddingConfig;
use crate::model::particle::ParticleConfig;
use crate::model::taskid::TaskIdConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Bin width Δ in milliseconds.
    pub bin_ms: f64,
    /// Transport allowance after a bin ends before it closes (ms).
    pub grace_ms: f64,
    /// Time after a bin closes by which its control sample is pushed (ms); < bin_ms.
    pub deadline_ms: f64,
    /// Delay between start-up and the first bin (ms), so streams are connected first.
    #[serde(default = "default_start_delay_ms")]
    pub start_delay_ms: f64,
    /// How the loop and the simulated rig wait for a bin to close: "sleep+yield" (sleep,
    /// then yield through the last 150 µs), "sleep", "abs-sleep" (clock_nanosleep to an
    /// absolute time) or "spin". See docs/timing.md and `neuroloop wakeups`.
    #[serde(default)]
    pub wait: crate::clock::Wait,
}
fn default_start_delay_ms() -> f64 {
    500.0
}

impl Timing {
    /// The session's bin grid starting at `t0` (local clock, s).
    pub fn grid(&self, t0: f64) -> crate::clock::BinGrid {
        crate::clock::BinGrid { t0, bin_s: self.bin_ms * 1e-3, grace_s: self.grace_ms * 1e-3, deadline_s: self.deadline_ms * 1e-3 }
    }

    /// Bins the binner holds open ahead of the one closing: the grace in bins plus a margin,
    /// at least 64 (spikes stamped further ahead are counted as future).
    pub fn lookahead_bins(&self) -> usize {
        64.max((self.grace_ms / self.bin_ms).ceil() as usize + 8)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// One sample per spike: column 0 = channel, column 1 (optional) = unit.
    Events,
    /// Regular-rate samples, one channel per unit, each the counts since the previous sample.
    Counts,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub kind: InputKind,
    /// Stream name to resolve (optional).
    #[serde(default)]
    pub name: Option<String>,
    /// Stream type to resolve; default `SpikeEvents` for events, `SpikeCounts` for counts.
    #[serde(default, rename = "type")]
    pub stream_type: Option<String>,
    /// Stream source_id to resolve (optional).
    #[serde(default)]
    pub source_id: Option<String>,
    /// How long to wait for the stream at start-up (s).
    #[serde(default = "default_resolve_timeout_s")]
    pub resolve_timeout_s: f64,
    /// No sample for this long marks the stream as gone: fallbacks are emitted until it returns (ms).
    #[serde(default = "default_stall_ms")]
    pub stall_ms: f64,
    /// Capacity of the ingest → loop ring, in spikes.
    #[serde(default = "default_ring_capacity")]
    pub ring_capacity: usize,
    /// For counts streams of type `SpikingRates`: values are rates in Hz, converted to
    /// counts with the stream's sample period. Set automatically from the stream type.
    #[serde(default)]
    pub values_are_rates: Option<bool>,
}
fn default_resolve_timeout_s() -> f64 {
    10.0
}
fn default_stall_ms() -> f64 {
    250.0
}
fn default_ring_capacity() -> usize {
    1 << 16
}

impl Input {
    /// The stream type to look for: the rig's `type`, else the convention for the kind
    /// (docs/streams.md).
    pub fn stream_type_or_default(&self) -> String {
        self.stream_type.clone().unwrap_or_else(|| match self.kind {
            InputKind::Events => "SpikeEvents".into(),
            InputKind::Counts => "SpikeCounts".into(),
        })
    }

    /// Whether a stream of `channels` channels at `srate` Hz fits this input and its unit
    /// map; Err says what does not (the caller names the stream). Live ingest and replay
    /// both check with it.
    pub fn check_stream_shape(&self, units: &crate::units::UnitMap, channels: usize, srate: f64) -> Result<(), String> {
        match self.kind {
            InputKind::Events if channels < 1 => Err("a spike-event stream needs ≥ 1 channel (channel[, unit])".into()),
            InputKind::Counts if !units.by_label() && channels != units.channels() => Err(format!(
                "wrong channel count: the rig's [units] maps {} channels, the stream has {channels}; fix [units] or select another stream",
                units.channels()
            )),
            InputKind::Counts if !(srate > 0.0) => Err("a counts stream must have a regular sampling rate".into()),
            _ => Ok(()),
        }
    }

    /// The LSL resolve predicate (XPath) for this input.
    pub fn predicate(&self) -> String {
        let mut parts = Vec::new();
        let ty = self.stream_type_or_default();
        parts.push(format!("type='{}'", ty));
        if let Some(n) = &self.name {
            parts.push(format!("name='{}'", n));
        }
        if let Some(s) = &self.source_id {
            parts.push(format!("source_id='{}'", s));
        }
        parts.join(" and ")
    }
}

/// How (channel, unit) pairs on the input stream map to model units. Exactly one of
/// `channels`, `map` and `labels`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UnitsConfig {
    /// Shorthand: channels 0..channels, unit 0 (unsorted) ↦ model units 0..channels.
    #[serde(default)]
    pub channels: Option<usize>,
    /// With `channels`: also map sorted units (c, u>0) onto model unit c.
    #[serde(default)]
    pub merge_sorted: bool,
    /// Explicit map: entry i = [channel, unit] ↦ model unit i.
    #[serde(default)]
    pub map: Option<Vec<[u32; 2]>>,
    /// By label (counts streams): entry i = a `desc/channels/channel/label` of the input
    /// stream ↦ model unit i, resolved when the stream connects, wherever the channel sits.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    #[serde(default = "default_control_name")]
    pub control_name: String,
    #[serde(default = "default_status_name")]
    pub status_name: String,
    /// Control channel labels (length m); default u0, u1, ...
    #[serde(default)]
    pub control_labels: Option<Vec<String>>,
    /// m, the number of control channels, for a session without a model (the probe);
    /// with a model, m comes from the model (and must match if given).
    #[serde(default)]
    pub control_dim: Option<usize>,
}
fn default_control_name() -> String {
    "neuroloop-control".into()
}
fn default_status_name() -> String {
    "neuroloop-status".into()
}
impl Output {
    /// The Control stream's channel labels: the rig's, else u0, u1, …
    pub fn control_labels_or_default(&self, m: usize) -> Vec<String> {
        self.control_labels.clone().unwrap_or_else(|| (0..m).map(|j| format!("u{j}")).collect())
    }
}

impl Default for Output {
    fn default() -> Self {
        Output { control_name: default_control_name(), status_name: default_status_name(), control_labels: None, control_dim: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Cpu,
    Wgpu,
    Cuda,
}

impl BackendKind {
    /// The name rig files and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// The backend a rig file or command line names.
    pub fn parse(name: &str) -> Option<BackendKind> {
        [BackendKind::Cpu, BackendKind::Wgpu, BackendKind::Cuda].into_iter().find(|b| b.name() == name)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model file (safetensors), relative to the rig file. Omit in a simulated rig to use
    /// the simulator's true model.
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default = "default_backend")]
    pub backend: BackendKind,
    #[serde(default)]
    pub embedding: EmbeddingConfig,
    #[serde(default)]
    pub task_id: TaskIdConfig,
    /// Latent-state filter: the point-process EKF (default) or a particle filter.
    #[serde(default)]
    pub filter: FilterKind,
    #[serde(default)]
    pub particles: ParticleConfig,
}

impl ModelConfig {
    /// The filter the backend runs, with its settings.
    pub fn filter_choice(&self) -> crate::model::filter::FilterChoice {
        match self.filter {
            FilterKind::Ekf => crate::model::filter::FilterChoice::Ekf,
            FilterKind::Particles => crate::model::filter::FilterChoice::Particles(self.particles.clone()),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: None,
            backend: default_backend(),
            embedding: EmbeddingConfig::default(),
            task_id: TaskIdConfig::default(),
            filter: FilterKind::default(),
            particles: ParticleConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterKind {
    #[default]
    Ekf,
    Particles,
}

fn default_backend() -> BackendKind {
    BackendKind::Cpu
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveKind {
    Latent,
    Rates,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveConfig {
    pub kind: ObjectiveKind,
    /// Latent target (d values, each within ±10) or target rates in Hz (N values, or one
    /// value for all units, each within [0, max_rate_hz]).
    pub target: Vec<f64>,
    /// The highest rate target (Hz) this rig accepts, here and from the control plane
    /// (default 1000).
    #[serde(default)]
    pub max_rate_hz: Option<f64>,
}

impl ObjectiveConfig {
    pub fn max_rate_hz(&self) -> f64 {
        self.max_rate_hz.unwrap_or(crate::control::objective::DEFAULT_MAX_RATE_HZ)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FallbackKind {
    /// Repeat the last emitted command.
    Hold,
    /// Emit zeros.
    Zero,
    /// Emit `fallback_vector`.
    Vector,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    /// Lower bound per control channel (m values, or one for all).
    pub lower: Vec<f64>,
    /// Upper bound per control channel (m values, or one for all).
    pub upper: Vec<f64>,
    /// Maximum change of any channel between consecutive bins.
    pub max_step: f64,
    /// The enable gate: when false the loop runs but only the safe zero command is emitted.
    #[serde(default = "default_true")]
    pub enabled: bool,
    pub fallback: FallbackKind,
    #[serde(default)]
    pub fallback_vector: Option<Vec<f64>>,
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SimOutput {
    Events,
    Counts,
}

/// The built-in simulated rig: a ground-truth population of the model class.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    pub seed: u64,
    pub n_units: usize,
    pub latent_dim: usize,
    pub embed_dim: usize,
    pub control_dim: usize,
    #[serde(default = "default_hidden")]
    pub hidden_dim: usize,
    /// Number of task embeddings in the library.
    pub tasks: usize,
    /// Switch to the next task every this many seconds (0 = never).
    #[serde(default)]
    pub switch_every_s: f64,
    pub output: SimOutput,
    /// Stream name the simulator publishes (type SpikeEvents / SpikeCounts).
    #[serde(default = "default_sim_stream")]
    pub stream_name: String,
    /// Alternate open-loop and closed-loop blocks of this many bins (0 = always closed),
    /// to measure tracking error with and without control in the same run.
    #[serde(default)]
    pub open_loop_block_bins: u64,
    /// Simulate a dropout: the spike stream vanishes from the network for bins [from, to).
    #[serde(default)]
    pub dropout_bins: Option<[u64; 2]>,
}
fn default_hidden() -> usize {
    16
}
fn default_sim_stream() -> String {
    "neuroloop-sim".into()
}

/// Fault injection: make the model slow, or its controller fail, on purpose.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Every `slow_every`-th bin takes `slow_ms` extra compute time (0 = off).
    #[serde(default)]
    pub slow_every: u64,
    #[serde(default)]
    pub slow_ms: f64,
    /// Every `controller_fault_every`-th bin the controller's command is NaN, as when a
    /// cost overflows (0 = off): the loop must fall back, count it and say so.
    #[serde(default)]
    pub controller_fault_every: u64,
}

/// The control plane (`neuroloop run`; docs/control.md): the HTTP server with the dashboard
/// and the API, and the LSL Markers inlet for commands.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Off: no control plane (as `--no-control`).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address the HTTP server listens on (`--control` overrides). Off loopback it needs a
    /// bearer token.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The environment variable the bearer token is read from.
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// A file holding the bearer token (relative to the rig file), when the variable is not
    /// set. The token itself never goes in the rig file.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The LSL Markers stream commands arrive on (type `Markers`, one string channel;
    /// default `neuroloop-commands-<rig name>`); replies go out on `<name>-replies`.
    #[serde(default)]
    pub markers_name: Option<String>,
    /// Operator commands taken per second (bursts of twice as many); more get HTTP 429.
    #[serde(default = "default_commands_per_s")]
    pub max_commands_per_s: f64,
}

impl ControlConfig {
    /// The Markers stream commands arrive on, for rig `rig_name`.
    pub fn markers_name_or_default(&self, rig_name: &str) -> String {
        self.markers_name.clone().unwrap_or_else(|| format!("neuroloop-commands-{rig_name}"))
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            enabled: true,
            listen: default_listen(),
            token_env: default_token_env(),
            token_file: None,
            markers_name: None,
            max_commands_per_s: default_commands_per_s(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:7878".into()
}
fn default_token_env() -> String {
    "NEUROLOOP_TOKEN".into()
}
fn default_commands_per_s() -> f64 {
    crate::control_plane::dispatch::DEFAULT_RATE_PER_S
}
