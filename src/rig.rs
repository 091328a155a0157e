//! Rig files (TOML): everything that differs between rigs — streams, unit map, timing,
//! safety limits, model, backend, controller, objective — in one reviewed file.
//!
//! Unknown keys and out-of-range values are errors that name the key and the file.

use crate::control::ControllerConfig;
use crate::model::embedding::EmbeddingConfig;
use crate::model::particle::ParticleConfig;
use crate::model::taskid::TaskIdConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A rig file, parsed and validated.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rig {
    /// Human-readable rig name (used in stream names and reports).
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub timing: Timing,
    pub input: Input,
    pub units: UnitsConfig,
    #[serde(default)]
    pub output: Output,
    /// Optional only for an identification session (`[controller] kind = "probe"`).
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub controller: ControllerConfig,
    /// Required, except for an identification session (the probe pursues no objective).
    #[serde(default)]
    pub objective: Option<ObjectiveConfig>,
    pub safety: SafetyConfig,
    /// The built-in simulated rig; when present, `neuroloop run` starts it in-process.
    #[serde(default)]
    pub sim: Option<SimConfig>,
    /// Fault injection, for testing the deadline machinery on a real loop.
    #[serde(default)]
    pub fault: FaultConfig,
    /// Where the file was read from (not part of the file).
    #[serde(skip)]
    pub path: PathBuf,
}

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
    /// The LSL resolve predicate (XPath) for this input.
    pub fn predicate(&self) -> String {
        let mut parts = Vec::new();
        let ty = self.stream_type.clone().unwrap_or_else(|| match self.kind {
            InputKind::Events => "SpikeEvents".into(),
            InputKind::Counts => "SpikeCounts".into(),
        });
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
    /// Latent target (d values) or target rates in Hz (N values, or one value for all units).
    pub target: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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

/// Fault injection: make the model slow on purpose.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Every `slow_every`-th bin takes `slow_ms` extra compute time (0 = off).
    #[serde(default)]
    pub slow_every: u64,
    #[serde(default)]
    pub slow_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum RigError {
    #[error("cannot read rig file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("rig file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("rig file {path}: `{key}` {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

impl Rig {
    /// Read, parse and validate a rig file.
    pub fn load(path: &Path) -> Result<Rig, RigError> {
        let text = std::fs::read_to_string(path).map_err(|source| RigError::Io { path: path.into(), source })?;
        Rig::parse(&text, path)
    }

    /// Parse and validate a rig file's text; `path` names it in errors and resolves the
    /// paths it holds (the model file).
    pub fn parse(text: &str, path: &Path) -> Result<Rig, RigError> {
        let mut rig: Rig =
            toml::from_str(text).map_err(|e| RigError::Parse { path: path.into(), message: e.to_string() })?;
        rig.path = path.to_path_buf();
        rig.validate()?;
        Ok(rig)
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> RigError {
        RigError::Invalid { path: self.path.clone(), key: key.into(), message: message.into() }
    }

    /// Range checks that serde cannot express. Dimension checks against the model happen
    /// when the session starts ([`Rig::check_against_model`]).
    pub fn validate(&self) -> Result<(), RigError> {
        let t = &self.timing;
        if !(t.bin_ms.is_finite() && t.bin_ms >= 0.1 && t.bin_ms <= 1000.0) {
            return Err(self.invalid("timing.bin_ms", format!("must be between 0.1 and 1000 ms, got {}", t.bin_ms)));
        }
        if !(t.grace_ms.is_finite() && t.grace_ms >= 0.0 && t.grace_ms <= 10.0 * t.bin_ms) {
            return Err(self.invalid("timing.grace_ms", format!("must be between 0 and 10 bins, got {}", t.grace_ms)));
        }
        if !(t.deadline_ms.is_finite() && t.deadline_ms > 0.0 && t.deadline_ms < t.bin_ms) {
            return Err(self.invalid(
                "timing.deadline_ms",
                format!("must be > 0 and < timing.bin_ms ({}), got {}", t.bin_ms, t.deadline_ms),
            ));
        }
        if !(t.start_delay_ms.is_finite() && t.start_delay_ms >= 0.0) {
            return Err(self.invalid("timing.start_delay_ms", "must be ≥ 0"));
        }
        let i = &self.input;
        if !(i.resolve_timeout_s.is_finite() && i.resolve_timeout_s > 0.0) {
            return Err(self.invalid("input.resolve_timeout_s", "must be > 0"));
        }
        if !(i.stall_ms.is_finite() && i.stall_ms > 0.0) {
            return Err(self.invalid("input.stall_ms", "must be > 0"));
        }
        if !(16..=crate::MAX_RING_CAPACITY).contains(&i.ring_capacity) {
            return Err(self.invalid("input.ring_capacity", format!("must be in 16..={} spikes, got {}", crate::MAX_RING_CAPACITY, i.ring_capacity)));
        }
        let u = &self.units;
        match [u.channels.is_some(), u.map.is_some(), u.labels.is_some()].iter().filter(|b| **b).count() {
            0 => return Err(self.invalid("units", "needs `channels`, `map` or `labels`")),
            1 => {}
            _ => return Err(self.invalid("units", "give one of `channels`, `map` and `labels`, not several")),
        }
        match (&u.channels, &u.map) {
            (Some(0), _) => return Err(self.invalid("units.channels", "must be ≥ 1")),
            (_, Some(m)) if m.is_empty() => return Err(self.invalid("units.map", "must not be empty")),
            _ => {}
        }
        if u.merge_sorted && u.channels.is_none() {
            return Err(self.invalid("units.merge_sorted", "applies only with `channels` (sorted units of channel c ↦ model unit c)"));
        }
        if let Some(labels) = &u.labels {
            if self.input.kind != InputKind::Counts {
                return Err(self.invalid(
                    "units.labels",
                    "maps the channels of a counts stream by label; a spike-event stream's channels are (channel, unit), so use [units] channels or map",
                ));
            }
            if labels.is_empty() || labels.len() > crate::MAX_UNITS {
                return Err(self.invalid("units.labels", format!("has {} labels; give 1..={} (one per model unit)", labels.len(), crate::MAX_UNITS)));
            }
            let mut seen = std::collections::HashSet::new();
            for (i, l) in labels.iter().enumerate() {
                if l.trim().is_empty() {
                    return Err(self.invalid("units.labels", format!("entry {i} is empty")));
                }
                if l.trim() != l {
                    return Err(self.invalid("units.labels", format!("entry {i} '{l}' has leading or trailing spaces (labels are matched exactly)")));
                }
                if !seen.insert(l.as_str()) {
                    return Err(self.invalid("units.labels", format!("entry {i} '{l}' appears twice")));
                }
            }
        }
        if let Some(ch) = self.units.channels {
            if ch > crate::MAX_UNITS {
                return Err(self.invalid("units.channels", format!("must be in 1..={}, got {ch}", crate::MAX_UNITS)));
            }
        }
        if let Some(map) = &self.units.map {
            if map.len() > crate::MAX_UNITS {
                return Err(self.invalid("units.map", format!("has {} entries; at most {} model units", map.len(), crate::MAX_UNITS)));
            }
            let mut seen = std::collections::HashSet::new();
            for (i, pair) in map.iter().enumerate() {
                if pair[0] as usize >= crate::MAX_UNITS {
                    return Err(self.invalid("units.map", format!("entry {i} {pair:?}: channel must be < {}", crate::MAX_UNITS)));
                }
                if pair[1] as usize >= crate::units::MAX_SORTED_UNITS {
                    return Err(self.invalid("units.map", format!("entry {i} {pair:?}: unit must be < {}", crate::units::MAX_SORTED_UNITS)));
                }
                if !seen.insert(*pair) {
                    return Err(self.invalid("units.map", format!("entry {i} {:?} appears twice", pair)));
                }
            }
        }
        let s = &self.safety;
        if s.lower.is_empty() || s.upper.is_empty() {
            return Err(self.invalid("safety.lower/upper", "must not be empty"));
        }
        for (k, v) in s.lower.iter().chain(s.upper.iter()).enumerate() {
            if !v.is_finite() {
                return Err(self.invalid("safety.lower/upper", format!("value {k} is not finite")));
            }
        }
        if !(s.max_step.is_finite() && s.max_step > 0.0) {
            return Err(self.invalid("safety.max_step", format!("must be > 0, got {}", s.max_step)));
        }
        if s.fallback == FallbackKind::Vector && s.fallback_vector.is_none() {
            return Err(self.invalid("safety.fallback_vector", "is required when safety.fallback = \"vector\""));
        }
        if let Some(v) = &s.fallback_vector {
            if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                return Err(self.invalid("safety.fallback_vector", format!("value {j} is {}; it must be a finite command inside [lower, upper]", v[j])));
            }
        }
        // Lower ≤ upper where the lengths already agree; with broadcasting, once m is known
        // (Safety::from_rig).
        for (j, (lo, hi)) in s.lower.iter().zip(s.upper.iter()).enumerate() {
            if s.lower.len() == s.upper.len() && lo > hi {
                return Err(self.invalid("safety.lower", format!("channel {j}: lower {lo} > upper {hi}")));
            }
        }
        match &self.objective {
            None if !self.is_probe() => {
                return Err(self.invalid("objective", "is required (a [objective] table with kind and target); only kind = \"probe\" runs without one"))
            }
            None => {}
            Some(o) => {
                if o.target.is_empty() || o.target.iter().any(|v| !v.is_finite()) {
                    return Err(self.invalid("objective.target", "must be a non-empty list of finite numbers"));
                }
                if o.kind == ObjectiveKind::Rates && o.target.iter().any(|v| *v < 0.0) {
                    return Err(self.invalid("objective.target", "rates must be ≥ 0 Hz"));
                }
            }
        }
        if let (Some(labels), Some(m)) = (&self.output.control_labels, self.output.control_dim) {
            if labels.len() != m {
                return Err(self.invalid("output.control_dim", format!("is {m} but output.control_labels has {} labels", labels.len())));
            }
        }
        if let Some(m) = self.output.control_dim {
            if m == 0 || m > crate::MAX_CONTROL {
                return Err(self.invalid("output.control_dim", format!("must be in 1..={}, got {m}", crate::MAX_CONTROL)));
            }
        }
        if self.is_probe() {
            if self.control_dim().is_none() {
                return Err(self.invalid(
                    "output.control_dim",
                    "is needed by an identification session (kind = \"probe\" has no model to take m from): give output.control_dim or output.control_labels",
                ));
            }
            if self.model.path.is_some() {
                return Err(self.invalid("model.path", "an identification session (kind = \"probe\") runs without a model; remove model.path or choose another controller kind"));
            }
        }
        self.controller.validate().map_err(|m| self.invalid("controller", m))?;
        self.model.particles.validate().map_err(|m| self.invalid("model.particles", m))?;
        self.model.embedding.validate().map_err(|(key, m)| self.invalid(&format!("model.embedding.{key}"), m))?;
        self.model.task_id.validate().map_err(|(key, m)| self.invalid(&format!("model.task_id.{key}"), m))?;
        if let Some(sim) = &self.sim {
            if sim.n_units == 0 || sim.latent_dim == 0 || sim.embed_dim == 0 || sim.control_dim == 0 {
                return Err(self.invalid("sim", "n_units, latent_dim, embed_dim and control_dim must be ≥ 1"));
            }
            if sim.latent_dim > crate::MAX_LATENT || sim.embed_dim > crate::MAX_EMBED || sim.control_dim > crate::MAX_CONTROL {
                return Err(self.invalid(
                    "sim",
                    format!("latent_dim ≤ {}, embed_dim ≤ {}, control_dim ≤ {}", crate::MAX_LATENT, crate::MAX_EMBED, crate::MAX_CONTROL),
                ));
            }
            if sim.n_units > crate::MAX_UNITS {
                return Err(self.invalid("sim.n_units", format!("must be in 1..={}, got {}", crate::MAX_UNITS, sim.n_units)));
            }
            if sim.hidden_dim == 0 || sim.hidden_dim > crate::MAX_HIDDEN {
                return Err(self.invalid("sim.hidden_dim", format!("must be in 1..={}, got {}", crate::MAX_HIDDEN, sim.hidden_dim)));
            }
            if sim.tasks == 0 || sim.tasks > crate::MAX_TASKS {
                return Err(self.invalid("sim.tasks", format!("must be in 1..={}, got {}", crate::MAX_TASKS, sim.tasks)));
            }
            if !(sim.switch_every_s.is_finite() && sim.switch_every_s >= 0.0) {
                return Err(self.invalid("sim.switch_every_s", "must be ≥ 0"));
            }
        }
        if !(self.fault.slow_ms.is_finite() && self.fault.slow_ms >= 0.0) {
            return Err(self.invalid("fault.slow_ms", "must be ≥ 0"));
        }
        Ok(())
    }

    /// An identification session: the probe drives the rig, no model runs.
    pub fn is_probe(&self) -> bool {
        self.controller.kind == crate::control::ControllerKind::Probe
    }

    /// m as the rig file gives it (`output.control_dim`, else the number of
    /// `output.control_labels`), if it does.
    pub fn control_dim(&self) -> Option<usize> {
        self.output.control_dim.or(self.output.control_labels.as_ref().map(|l| l.len()))
    }

    /// The objective; an error naming the key when the rig file has none.
    pub fn objective(&self) -> Result<&ObjectiveConfig, RigError> {
        self.objective.as_ref().ok_or_else(|| self.invalid("objective", "is required for a model-based controller"))
    }

    /// The model path resolved against the rig file's folder.
    pub fn model_path(&self) -> Option<PathBuf> {
        self.model.path.as_ref().map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                self.path.parent().unwrap_or(Path::new(".")).join(p)
            }
        })
    }

    /// Expand a per-channel list that may be given as one value for all channels.
    pub fn broadcast(&self, key: &str, values: &[f64], len: usize) -> Result<Vec<f64>, RigError> {
        match values.len() {
            1 => Ok(vec![values[0]; len]),
            n if n == len => Ok(values.to_vec()),
            n => Err(self.invalid(key, format!("has {n} values; the model needs {len} (or 1 for all)"))),
        }
    }

    /// Checks that need the model's dimensions.
    pub fn check_against_model(&self, dims: &crate::model::Dims, n_mapped_units: usize) -> Result<(), RigError> {
        if n_mapped_units != dims.n_units {
            return Err(self.invalid(
                "units",
                format!("maps {n_mapped_units} model units but the model has {} units", dims.n_units),
            ));
        }
        if dims.latent > crate::MAX_LATENT || dims.embed > crate::MAX_EMBED || dims.control > crate::MAX_CONTROL {
            return Err(self.invalid(
                "model.path",
                format!(
                    "model dimensions d={} e={} m={} exceed neuroloop's limits d ≤ {}, e ≤ {}, m ≤ {}",
                    dims.latent, dims.embed, dims.control, crate::MAX_LATENT, crate::MAX_EMBED, crate::MAX_CONTROL
                ),
            ));
        }
        self.broadcast("safety.lower", &self.safety.lower, dims.control)?;
        self.broadcast("safety.upper", &self.safety.upper, dims.control)?;
        if let Some(v) = &self.safety.fallback_vector {
            if v.len() != dims.control {
                return Err(self.invalid("safety.fallback_vector", format!("has {} values; the model has m = {}", v.len(), dims.control)));
            }
        }
        let objective = self.objective()?;
        match objective.kind {
            ObjectiveKind::Latent if objective.target.len() != dims.latent => {
                return Err(self.invalid(
                    "objective.target",
                    format!("has {} values; a latent objective needs d = {}", objective.target.len(), dims.latent),
                ))
            }
            ObjectiveKind::Rates => {
                self.broadcast("objective.target", &objective.target, dims.n_units)?;
            }
            _ => {}
        }
        if let Some(m) = self.output.control_dim {
            if m != dims.control {
                return Err(self.invalid("output.control_dim", format!("is {m}; the model has m = {}", dims.control)));
            }
        }
        if let Some(labels) = &self.output.control_labels {
            if labels.len() != dims.control {
                return Err(self.invalid("output.control_labels", format!("has {} labels; the model has m = {}", labels.len(), dims.control)));
            }
        }
        Ok(())
    }
}
