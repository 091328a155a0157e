//! Rig files (TOML): everything that differs between rigs — streams, unit map, timing,
//! safety limits, model, backend, controller, objective — in one reviewed file.
//!
//! Unknown keys and out-of-range values are errors that name the key and the file.

use crate::control::ControllerConfig;
use crate::model::embedding::EmbeddingConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod sections;
mod validate;
pub use sections::*;

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
    /// The control plane: dashboard, HTTP API, LSL Markers commands.
    #[serde(default)]
    pub control: ControlConfig,
    /// Opt-in real-time scheduling, CPU affinity and locked memory for the session's
    /// threads (docs/timing.md); off by default.
    #[serde(default)]
    pub realtime: crate::realtime::RealtimeConfig,
    /// Where the file was read from (not part of the file).
    #[serde(skip)]
    pub path: PathBuf,
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
        let mut rig: Rig = toml::from_str(text).map_err(|e| RigError::Parse { path: path.into(), message: e.to_string() })?;
        rig.path = path.to_path_buf();
        rig.validate()?;
        rig.scale_embedding_defaults(text);
        Ok(rig)
    }

    /// `[model.embedding]` keys the file leaves out take the defaults for its Δ
    /// ([`EmbeddingConfig::defaults_for_bin`]); the keys it sets stay as written.
    fn scale_embedding_defaults(&mut self, text: &str) {
        let table: Option<toml::Table> = text.parse().ok();
        let section = table.as_ref().and_then(|t| t.get("model")).and_then(|m| m.get("embedding")).and_then(|e| e.as_table());
        let set = |key: &str| section.is_some_and(|s| s.contains_key(key));
        let scaled = EmbeddingConfig::defaults_for_bin(self.timing.bin_ms * 1e-3);
        let e = &mut self.model.embedding;
        if !set("learning_rate") {
            e.learning_rate = scaled.learning_rate;
        }
        if !set("trust_radius") {
            e.trust_radius = scaled.trust_radius;
        }
        if !set("prior_weight") {
            e.prior_weight = scaled.prior_weight;
        }
    }

    pub(crate) fn invalid(&self, key: &str, message: impl Into<String>) -> RigError {
        RigError::Invalid { path: self.path.clone(), key: key.into(), message: message.into() }
    }

    /// The source_id prefix of every stream neuroloop publishes or records for this rig
    /// (Control; Status, the recording's own streams append a suffix).
    pub fn source_id(&self) -> String {
        format!("neuroloop-{}", self.name)
    }

    /// An identification session: the probe drives the rig, no model runs.
    pub fn is_probe(&self) -> bool {
        self.controller.kind == crate::control::ControllerKind::Probe
    }

    /// A monitoring session: the model filters and identifies the task, nothing is controlled.
    pub fn is_monitor(&self) -> bool {
        self.controller.kind == crate::control::ControllerKind::Monitor
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
        self.model.path.as_ref().map(|p| if p.is_absolute() { p.clone() } else { self.path.parent().unwrap_or(Path::new(".")).join(p) })
    }

    /// Expand a per-channel list that may be given as one value for all channels.
    pub fn broadcast(&self, key: &str, values: &[f64], len: usize) -> Result<Vec<f64>, RigError> {
        match values.len() {
            1 => Ok(vec![values[0]; len]),
            n if n == len => Ok(values.to_vec()),
            n => Err(self.invalid(key, format!("has {n} values; the model needs {len} (or 1 for all)"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> (String, PathBuf) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rigs").join(name);
        (std::fs::read_to_string(&path).unwrap(), path)
    }

    #[test]
    fn embedding_keys_left_out_take_the_defaults_for_the_bin_width() {
        // 1 ms bins, no [model.embedding] keys: η and the trust radius a tenth, w a hundredth.
        let (text, path) = shipped("sim-1khz.toml");
        assert!(!text.contains("[model.embedding]"), "the test assumes the 1 kHz rig sets no embedding keys");
        let e = Rig::parse(&text, &path).unwrap().model.embedding;
        let d = EmbeddingConfig::default();
        assert!((e.learning_rate - d.learning_rate / 10.0).abs() < 1e-15, "{e:?}");
        assert!((e.trust_radius - d.trust_radius / 10.0).abs() < 1e-15, "{e:?}");
        assert!((e.prior_weight - d.prior_weight / 100.0).abs() < 1e-15, "{e:?}");
        assert_eq!((e.rms_decay, e.enabled), (d.rms_decay, d.enabled));
        // A key the file sets is taken as written; the others still scale.
        let with = text.replace("[model.task_id]", "[model.embedding]\nprior_weight = 0.01\n\n[model.task_id]");
        let e = Rig::parse(&with, &path).unwrap().model.embedding;
        assert_eq!(e.prior_weight, 0.01);
        assert!((e.learning_rate - d.learning_rate / 10.0).abs() < 1e-15, "{e:?}");
        // At 10 ms (and coarser) the defaults are the 10 ms ones.
        let (text, path) = shipped("sim-utah96.toml");
        let coarse = text.replace("bin_ms = 10.0 ", "bin_ms = 50.0 ");
        assert_ne!(coarse, text);
        for t in [&text, &coarse] {
            let e = Rig::parse(t, &path).unwrap().model.embedding;
            assert_eq!((e.learning_rate, e.trust_radius, e.prior_weight), (0.02, 0.05, d.prior_weight), "{e:?}");
        }
    }
}
