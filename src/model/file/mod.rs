//! The model file: safetensors with PyTorch `state_dict` tensor names (docs/model.md,
//! "Model file"), so a model trained in PyTorch can be written with
//! `safetensors.torch.save_file(model.state_dict(), path, metadata=...)` and loaded as is.
//!
//! Tensors (F32 or F64 on load; F64 on save so a round trip is exact). PyTorch `Linear`
//! weights are (out, in); matrices are stored row-major. `G` is each of `w_hh_generator`
//! (out d·d, row-major (d × d)), `w_xu_generator` (out d·m, row-major (d × m)) and
//! `b_generator` (out d):
//!
//! | name                              | shape      |                                     |
//! |-----------------------------------|------------|-------------------------------------|
//! | `decoder.G.0.weight`              | (h, e)     |                                     |
//! | `decoder.G.0.bias`                | (h)        |                                     |
//! | `decoder.G.2.weight`              | (out, h)   |                                     |
//! | `decoder.G.2.bias`                | (out)      |                                     |
//! | `observation.weight`              | (N, d)     | C                                   |
//! | `observation.bias`                | (N)        | d (log Hz)                          |
//! | `embedding.initial`               | (e)        | optional, default zeros             |
//! | `embedding.library`               | (T, e)     | optional, default empty             |
//! | `dynamics.process_noise`          | (d)        | optional, else metadata scalar      |
//! | `controller.0.weight` / `.0.bias` | (hp, 2d) / (hp) | optional as a group of four    |
//! | `controller.2.weight` / `.2.bias` | (m, hp) / (m)   |                                |
//! | `history.weight`                  | (N, B)     | optional with the next: the per-unit history term (history.rs) |
//! | `history.mean_count`              | (N)        | μ, counts per bin                   |
//!
//! Metadata (`__metadata__`, all values strings): required `n_units`, `latent_dim`,
//! `embed_dim`, `control_dim`, `hidden_dim`, `bin_s`, `alpha`; optional `format`
//! (must be `neuroloop-model` if present), `format_version` (must be `1` if present),
//! `process_noise` (default 1e-3, used when the tensor is absent), `initial_state_var`
//! (0.1), `log_rate_max` (7.0 ≈ 1100 Hz), `z_prior_sigma` (1.0), `policy_scale` (1.0),
//! `history_taus_s` (a JSON list of B time constants in seconds; required with `history.*`).
//! Other metadata keys are ignored; unknown tensor names are an error (a typo must not
//! silently drop weights).

use super::observation::LOG_RATE_MIN;
use super::{Dims, Generator, Hypernet, ModelParams, Policy};
use nalgebra::{DMatrix, DVector};
use safetensors::tensor::{Dtype, SafeTensorError, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Value of the `format` metadata key.
pub const FORMAT: &str = "neuroloop-model";
/// Value of the `format_version` metadata key.
pub const FORMAT_VERSION: &str = "1";

pub const DEFAULT_PROCESS_NOISE: f64 = 1e-3;
pub const DEFAULT_INITIAL_STATE_VAR: f64 = 0.1;
pub const DEFAULT_LOG_RATE_MAX: f64 = 7.0;
pub const DEFAULT_Z_PRIOR_SIGMA: f64 = 1.0;
pub const DEFAULT_POLICY_SCALE: f64 = 1.0;

const GENERATORS: [&str; 3] = ["w_hh_generator", "w_xu_generator", "b_generator"];
const CONTROLLER: [&str; 4] = ["controller.0.weight", "controller.0.bias", "controller.2.weight", "controller.2.bias"];
const HISTORY: [&str; 2] = ["history.weight", "history.mean_count"];

/// What can go wrong with a model file. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("model file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model file {path}: not a valid safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("model file {path}: missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor { path: PathBuf, name: String, expected: Vec<usize> },
    #[error("model file {path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    WrongShape { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("model file {path}: tensor `{name}` has dtype {dtype}, expected F32 or F64")]
    WrongDtype { path: PathBuf, name: String, dtype: String },
    #[error("model file {path}: tensor `{name}` holds non-finite values (NaN or ±inf)")]
    NonFinite { path: PathBuf, name: String },
    #[error("model file {path}: unknown tensors {names:?} (a typo? expected names follow PyTorch's state_dict: decoder.w_hh_generator.0.weight, observation.weight, controller.0.weight, …)")]
    UnknownTensors { path: PathBuf, names: Vec<String> },
    #[error("model file {path}: the controller (policy) needs all of {CONTROLLER:?} or none; missing {missing:?}")]
    PartialController { path: PathBuf, missing: Vec<String> },
    #[error("model file {path}: missing metadata key `{key}`")]
    MissingMetadata { path: PathBuf, key: String },
    #[error("model file {path}: metadata key `{key}` = {value:?}: {reason}")]
    BadMetadata { path: PathBuf, key: String, value: String, reason: String },
    #[error("model file {path}: invalid model: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Path reported by [`ModelParams::validate`] when no file is involved.
const IN_MEMORY: &str = "<in-memory model>";

struct Reader<'a> {
    path: &'a Path,
    st: SafeTensors<'a>,
}

impl<'a> Reader<'a> {
    fn has(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }

    /// Tensor `name` as row-major f64, checked against `expected` (None in a dimension:
    /// any size) and for finiteness. Returns the data and the actual shape.
    fn get(&mut self, name: &str, expected: &[Option<usize>]) -> Result<(Vec<f64>, Vec<usize>), ModelFileError> {
        let path = self.path.to_path_buf();
        let shape_for_msg = |exp: &[Option<usize>]| exp.iter().map(|v| v.unwrap_or(0)).collect::<Vec<_>>();
        let view = self.st.tensor(name).map_err(|_| ModelFileError::MissingTensor {
            path: path.clone(),
            name: name.to_string(),
            expected: shape_for_msg(expected),
        })?;
        let found = view.shape().to_vec();
        let matches = found.len() == expected.len() && found.iter().zip(expected).all(|(f, e)| e.is_none_or(|e| e == *f));
        if !matches {
            let exp = expected.iter().zip(found.iter().chain(std::iter::repeat(&0))).map(|(e, f)| e.unwrap_or(*f)).collect();
            return Err(ModelFileError::WrongShape { path, name: name.to_string(), expected: exp, found });
        }
        let data: Vec<f64> = match view.dtype() {
            Dtype::F32 => view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect(),
            Dtype::F64 => {
                view.data().chunks_exact(8).map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])).collect()
            }
            other => return Err(ModelFileError::WrongDtype { path, name: name.to_string(), dtype: format!("{other:?}") }),
        };
        if !data.iter().all(|v| v.is_finite()) {
            return Err(ModelFileError::NonFinite { path, name: name.to_string() });
        }
        Ok((data, found))
    }

    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<DMatrix<f64>, ModelFileError> {
        let (data, _) = self.get(name, &[Some(rows), Some(cols)])?;
        Ok(DMatrix::from_row_slice(rows, cols, &data))
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<DVector<f64>, ModelFileError> {
        let (data, _) = self.get(name, &[Some(len)])?;
        Ok(DVector::from_vec(data))
    }

    fn generator(&mut self, which: &str, e: usize, h: usize, out: usize) -> Result<Generator, ModelFileError> {
        Ok(Generator {
            w1: self.matrix(&format!("decoder.{which}.0.weight"), h, e)?,
            b1: self.vector(&format!("decoder.{which}.0.bias"), h)?,
            w2: self.matrix(&format!("decoder.{which}.2.weight"), out, h)?,
            b2: self.vector(&format!("decoder.{which}.2.bias"), out)?,
        })
    }
}

struct Meta<'a> {
    path: &'a Path,
    map: HashMap<String, String>,
}

impl Meta<'_> {
    fn parse<T: std::str::FromStr>(&self, key: &str, default: Option<T>) -> Result<T, ModelFileError>
    where
        T::Err: std::fmt::Display,
    {
        match self.map.get(key) {
            Some(v) => v.trim().parse::<T>().map_err(|e| ModelFileError::BadMetadata {
                path: self.path.to_path_buf(),
                key: key.to_string(),
                value: v.clone(),
                reason: e.to_string(),
            }),
            None => default.ok_or_else(|| ModelFileError::MissingMetadata { path: self.path.to_path_buf(), key: key.to_string() }),
        }
    }

    fn expect_value(&self, key: &str, want: &str) -> Result<(), ModelFileError> {
        match self.map.get(key) {
            Some(v) if v.trim() != want => Err(ModelFileError::BadMetadata {
                path: self.path.to_path_buf(),
                key: key.to_string(),
                value: v.clone(),
                reason: format!("expected {want:?}"),
            }),
            _ => Ok(()),
        }
    }
}

fn row_major(m: &DMatrix<f64>) -> Vec<f64> {
    let mut out = Vec::with_capacity(m.len());
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            out.push(m[(i, j)]);
        }
    }
    out
}

/// The same safetensors bytes with the JSON header's keys (and the metadata's) in sorted
/// order, re-padded to 8 bytes. Data offsets are relative to the data section, so they
/// stay valid.
fn canonical_header(raw: &[u8]) -> Result<Vec<u8>, String> {
    use std::collections::BTreeMap;
    if raw.len() < 8 {
        return Err("serialized file shorter than its header length".into());
    }
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let header = raw.get(8..8 + n).ok_or("header length beyond the end")?;
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let obj = value.as_object().ok_or("header is not a JSON object")?;
    let mut sorted: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
    for (k, v) in obj {
        let v = match v.as_object() {
            Some(inner) => serde_json::to_value(inner.iter().collect::<BTreeMap<_, _>>()).map_err(|e| e.to_string())?,
            None => v.clone(),
        };
        sorted.insert(k, v);
    }
    let mut json = serde_json::to_vec(&sorted).map_err(|e| e.to_string())?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + raw.len() - 8 - n);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&raw[8 + n..]);
    Ok(out)
}

/// One tensor to write: name, shape, row-major values.
pub(crate) type NamedTensor = (String, Vec<usize>, Vec<f64>);

impl ModelParams {
    /// Load and validate a model file (see the module docs for the schema).
    pub fn load(path: &Path) -> Result<ModelParams, ModelFileError> {
        let bytes = std::fs::read(path).map_err(|source| ModelFileError::Io { path: path.to_path_buf(), source })?;
        ModelParams::from_bytes(&bytes, path)
    }

    /// Decode and validate a model file's bytes; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<ModelParams, ModelFileError> {
        let format_err = |e: SafeTensorError| ModelFileError::Format { path: path.to_path_buf(), message: e.to_string() };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(format_err)?;
        let st = SafeTensors::deserialize(bytes).map_err(format_err)?;
        let meta = Meta { path, map: header.metadata().clone().unwrap_or_default() };
        meta.expect_value("format", FORMAT)?;
        meta.expect_value("format_version", FORMAT_VERSION)?;
        // Dimensions bounded before any shape is computed from them (d·d, d·m).
        let dim = |key: &str, max: usize| -> Result<usize, ModelFileError> {
            let v: usize = meta.parse(key, None)?;
            if v > max {
                return Err(ModelFileError::BadMetadata {
                    path: path.to_path_buf(),
                    key: key.into(),
                    value: v.to_string(),
                    reason: format!("must be ≤ {max} (neuroloop's limit)"),
                });
            }
            Ok(v)
        };
        let dims = Dims {
            n_units: dim("n_units", crate::MAX_UNITS)?,
            latent: dim("latent_dim", crate::MAX_LATENT)?,
            embed: dim("embed_dim", crate::MAX_EMBED)?,
            control: dim("control_dim", crate::MAX_CONTROL)?,
            hidden: dim("hidden_dim", crate::MAX_HIDDEN)?,
        };
        let bin_s: f64 = meta.parse("bin_s", None)?;
        let alpha: f64 = meta.parse("alpha", None)?;
        let process_noise_scalar: f64 = meta.parse("process_noise", Some(DEFAULT_PROCESS_NOISE))?;
        let initial_state_var: f64 = meta.parse("initial_state_var", Some(DEFAULT_INITIAL_STATE_VAR))?;
        let log_rate_max: f64 = meta.parse("log_rate_max", Some(DEFAULT_LOG_RATE_MAX))?;
        let z_prior_sigma: f64 = meta.parse("z_prior_sigma", Some(DEFAULT_Z_PRIOR_SIGMA))?;
        let policy_scale: f64 = meta.parse("policy_scale", Some(DEFAULT_POLICY_SCALE))?;

        // Unknown names first: a typo shows up as itself, not only as a missing tensor.
        let (n, d, e, m, h) = (dims.n_units, dims.latent, dims.embed, dims.control, dims.hidden);
        let mut known: BTreeSet<String> = BTreeSet::new();
        for g in GENERATORS {
            for t in ["0.weight", "0.bias", "2.weight", "2.bias"] {
                known.insert(format!("decoder.{g}.{t}"));
            }
        }
        for k in ["observation.weight", "observation.bias", "embedding.initial", "embedding.library", "dynamics.process_noise"]
            .into_iter()
            .chain(CONTROLLER)
            .chain(HISTORY)
        {
            known.insert(k.to_string());
        }
        let unknown: Vec<String> = st.names().into_iter().filter(|s| !known.contains(*s)).cloned().collect();
        if !unknown.is_empty() {
            let mut names = unknown;
            names.sort();
            return Err(ModelFileError::UnknownTensors { path: path.to_path_buf(), names });
        }

        let mut r = Reader { path, st };
        let hypernet = Hypernet {
            w_hh: r.generator("w_hh_generator", e, h, d * d)?,
            w_xu: r.generator("w_xu_generator", e, h, d * m)?,
            b: r.generator("b_generator", e, h, d)?,
        };
        let obs_c = r.matrix("observation.weight", n, d)?;
        let obs_d = r.vector("observation.bias", n)?;
        let z_init = if r.has("embedding.initial") { r.vector("embedding.initial", e)? } else { DVector::zeros(e) };
        let task_library = if r.has("embedding.library") {
            let (data, shape) = r.get("embedding.library", &[None, Some(e)])?;
            (0..shape[0]).map(|t| DVector::from_row_slice(&data[t * e..(t + 1) * e])).collect()
        } else {
            Vec::new()
        };
        let process_noise = if r.has("dynamics.process_noise") {
            r.vector("dynamics.process_noise", d)?
        } else {
            DVector::from_element(d, process_noise_scalar)
        };
        let present: Vec<&str> = CONTROLLER.iter().copied().filter(|k| r.has(k)).collect();
        let policy = if present.is_empty() {
            None
        } else if present.len() < CONTROLLER.len() {
            let missing = CONTROLLER.iter().filter(|k| !present.contains(k)).map(|k| k.to_string()).collect();
            return Err(ModelFileError::PartialController { path: path.to_path_buf(), missing });
        } else {
            let (w1, shape) = r.get("controller.0.weight", &[None, Some(2 * d)])?;
            let hp = shape[0];
            Some(Policy {
                w1: DMatrix::from_row_slice(hp, 2 * d, &w1),
                b1: r.vector("controller.0.bias", hp)?,
                w2: r.matrix("controller.2.weight", m, hp)?,
                b2: r.vector("controller.2.bias", m)?,
                scale: policy_scale,
            })
        };
        let history = if HISTORY.iter().any(|k| r.has(k)) {
            let bad = |reason: String| ModelFileError::BadMetadata {
                path: path.to_path_buf(),
                key: "history_taus_s".into(),
                value: meta.map.get("history_taus_s").cloned().unwrap_or_default(),
                reason,
            };
            let taus_text = meta.map.get("history_taus_s").ok_or_else(|| ModelFileError::MissingMetadata {
                path: path.to_path_buf(),
                key: "history_taus_s (the history term's time constants, with history.weight)".into(),
            })?;
            let taus_s: Vec<f64> = serde_json::from_str(taus_text).map_err(|e| bad(format!("expected a JSON list of seconds: {e}")))?;
            if taus_s.is_empty() || taus_s.len() > super::history::MAX_BASIS {
                return Err(bad(format!("lists {} time constants; 1..={} are allowed", taus_s.len(), super::history::MAX_BASIS)));
            }
            Some(super::history::History {
                weight: r.matrix("history.weight", n, taus_s.len())?,
                mean_count: r.vector("history.mean_count", n)?,
                taus_s,
            })
        } else {
            None
        };
        let params = ModelParams {
            dims,
            bin_s,
            alpha,
            process_noise,
            initial_state_var,
            log_rate_max,
            obs_c,
            obs_d,
            hypernet,
            z_init,
            z_prior_sigma,
            task_library,
            policy,
            history,
        };
        params.validate_at(path)?;
        Ok(params)
    }

    /// Write the model file (F64 tensors, all metadata keys).
    pub fn save(&self, path: &Path) -> Result<(), ModelFileError> {
        self.save_with_metadata(path, &[])
    }

    /// Write the model file with extra metadata entries (e.g. a fit's provenance). The
    /// bytes depend only on the model and the entries: the JSON header's keys are sorted
    /// (safetensors writes its metadata map in hash order), so the same model gives the same
    /// file.
    pub fn save_with_metadata(&self, path: &Path, extra: &[(String, String)]) -> Result<(), ModelFileError> {
        self.validate_at(path)?;
        let fmt_err = |message: String| ModelFileError::Format { path: path.to_path_buf(), message };
        let tensors = self.named_tensors();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
            tensors.into_iter().map(|(name, shape, data)| (name, shape, data.iter().flat_map(|v| v.to_le_bytes()).collect())).collect();
        let views = bytes
            .iter()
            .map(|(name, shape, b)| TensorView::new(Dtype::F64, shape.clone(), b).map(|v| (name.clone(), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fmt_err(format!("{e:?}")))?;
        let mut meta = self.metadata();
        for (k, v) in extra {
            meta.insert(k.clone(), v.clone());
        }
        let raw = safetensors::serialize(views, &Some(meta)).map_err(|e| fmt_err(format!("{e:?}")))?;
        let out = canonical_header(&raw).map_err(fmt_err)?;
        // Whole or not at all: a full disk or a crash leaves any previous model at the path.
        crate::outfile::write_atomic(path, &out).map_err(|source| ModelFileError::Io { path: path.to_path_buf(), source })
    }

    /// Check dimensions, shapes, finiteness and the ranges of the constants.
    pub fn validate(&self) -> Result<(), ModelFileError> {
        self.validate_at(Path::new(IN_MEMORY))
    }

    /// The metadata `save` writes.
    pub(crate) fn metadata(&self) -> HashMap<String, String> {
        let d = &self.dims;
        let mut m = HashMap::new();
        m.insert("format".into(), FORMAT.into());
        m.insert("format_version".into(), FORMAT_VERSION.into());
        m.insert("n_units".into(), d.n_units.to_string());
        m.insert("latent_dim".into(), d.latent.to_string());
        m.insert("embed_dim".into(), d.embed.to_string());
        m.insert("control_dim".into(), d.control.to_string());
        m.insert("hidden_dim".into(), d.hidden.to_string());
        m.insert("bin_s".into(), self.bin_s.to_string());
        m.insert("alpha".into(), self.alpha.to_string());
        m.insert("initial_state_var".into(), self.initial_state_var.to_string());
        m.insert("log_rate_max".into(), self.log_rate_max.to_string());
        m.insert("z_prior_sigma".into(), self.z_prior_sigma.to_string());
        if let Some(p) = &self.policy {
            m.insert("policy_scale".into(), p.scale.to_string());
        }
        if let Some(h) = &self.history {
            m.insert("history_taus_s".into(), serde_json::to_string(&h.taus_s).unwrap_or_default());
        }
        m
    }

    /// The tensors `save` writes, by name, row-major.
    pub(crate) fn named_tensors(&self) -> Vec<NamedTensor> {
        let mut t: Vec<NamedTensor> = Vec::new();
        let mat = |name: &str, m: &DMatrix<f64>| (name.to_string(), vec![m.nrows(), m.ncols()], row_major(m));
        let vec_ = |name: &str, v: &DVector<f64>| (name.to_string(), vec![v.len()], v.as_slice().to_vec());
        for (g, gen) in GENERATORS.iter().zip([&self.hypernet.w_hh, &self.hypernet.w_xu, &self.hypernet.b]) {
            t.push(mat(&format!("decoder.{g}.0.weight"), &gen.w1));
            t.push(vec_(&format!("decoder.{g}.0.bias"), &gen.b1));
            t.push(mat(&format!("decoder.{g}.2.weight"), &gen.w2));
            t.push(vec_(&format!("decoder.{g}.2.bias"), &gen.b2));
        }
        t.push(mat("observation.weight", &self.obs_c));
        t.push(vec_("observation.bias", &self.obs_d));
        t.push(vec_("embedding.initial", &self.z_init));
        if !self.task_library.is_empty() {
            let e = self.dims.embed;
            let data = self.task_library.iter().flat_map(|z| z.iter().copied()).collect();
            t.push(("embedding.library".to_string(), vec![self.task_library.len(), e], data));
        }
        t.push(vec_("dynamics.process_noise", &self.process_noise));
        if let Some(p) = &self.policy {
            t.push(mat("controller.0.weight", &p.w1));
            t.push(vec_("controller.0.bias", &p.b1));
            t.push(mat("controller.2.weight", &p.w2));
            t.push(vec_("controller.2.bias", &p.b2));
        }
        if let Some(h) = &self.history {
            t.push(mat("history.weight", &h.weight));
            t.push(vec_("history.mean_count", &h.mean_count));
        }
        t
    }

    fn validate_at(&self, path: &Path) -> Result<(), ModelFileError> {
        let invalid = |reason: String| Err(ModelFileError::Invalid { path: path.to_path_buf(), reason });
        let dims = &self.dims;
        if dims.n_units == 0 || dims.latent == 0 || dims.embed == 0 || dims.hidden == 0 {
            return invalid(format!("n_units, latent_dim, embed_dim and hidden_dim must be ≥ 1 (got {dims:?})"));
        }
        let scalar = |key: &str, v: f64, ok: bool, want: &str| -> Result<(), ModelFileError> {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(ModelFileError::BadMetadata { path: path.to_path_buf(), key: key.into(), value: v.to_string(), reason: want.into() })
            }
        };
        scalar("bin_s", self.bin_s, self.bin_s > 0.0, "must be > 0 (seconds)")?;
        scalar("alpha", self.alpha, self.alpha > 0.0 && self.alpha <= 1.0, "must be in (0, 1]")?;
        scalar("initial_state_var", self.initial_state_var, self.initial_state_var > 0.0, "must be > 0")?;
        scalar("log_rate_max", self.log_rate_max, self.log_rate_max > LOG_RATE_MIN, "must be > the lower clamp (−20)")?;
        scalar("z_prior_sigma", self.z_prior_sigma, self.z_prior_sigma > 0.0, "must be > 0")?;
        if let Some(p) = &self.policy {
            scalar("policy_scale", p.scale, true, "must be finite")?;
        }
        if dims.n_units > crate::MAX_UNITS
            || dims.latent > crate::MAX_LATENT
            || dims.embed > crate::MAX_EMBED
            || dims.control > crate::MAX_CONTROL
            || dims.hidden > crate::MAX_HIDDEN
        {
            return invalid(format!(
                "dimensions {dims:?} exceed neuroloop's limits (N ≤ {}, d ≤ {}, e ≤ {}, m ≤ {}, h ≤ {})",
                crate::MAX_UNITS,
                crate::MAX_LATENT,
                crate::MAX_EMBED,
                crate::MAX_CONTROL,
                crate::MAX_HIDDEN
            ));
        }
        if self.task_library.len() > crate::MAX_TASKS {
            return invalid(format!("embedding.library holds {} tasks; at most {}", self.task_library.len(), crate::MAX_TASKS));
        }
        let (n, d, e, m, h) = (dims.n_units, dims.latent, dims.embed, dims.control, dims.hidden);
        let mut expected: Vec<(String, Vec<usize>)> = Vec::new();
        for (g, out) in GENERATORS.iter().zip([d * d, d * m, d]) {
            expected.push((format!("decoder.{g}.0.weight"), vec![h, e]));
            expected.push((format!("decoder.{g}.0.bias"), vec![h]));
            expected.push((format!("decoder.{g}.2.weight"), vec![out, h]));
            expected.push((format!("decoder.{g}.2.bias"), vec![out]));
        }
        expected.push(("observation.weight".into(), vec![n, d]));
        expected.push(("observation.bias".into(), vec![n]));
        expected.push(("embedding.initial".into(), vec![e]));
        expected.push(("embedding.library".into(), vec![self.task_library.len(), e]));
        expected.push(("dynamics.process_noise".into(), vec![d]));
        if let Some(p) = &self.policy {
            let hp = p.w1.nrows();
            expected.push(("controller.0.weight".into(), vec![hp, 2 * d]));
            expected.push(("controller.0.bias".into(), vec![hp]));
            expected.push(("controller.2.weight".into(), vec![m, hp]));
            expected.push(("controller.2.bias".into(), vec![m]));
        }
        let mut lib_ok = true;
        for z in &self.task_library {
            lib_ok &= z.len() == e;
        }
        let found: HashMap<String, (Vec<usize>, Vec<f64>)> = if lib_ok {
            self.named_tensors().into_iter().map(|(name, shape, data)| (name, (shape, data))).collect()
        } else {
            return Err(ModelFileError::WrongShape {
                path: path.to_path_buf(),
                name: "embedding.library".into(),
                expected: vec![self.task_library.len(), e],
                found: vec![self.task_library.len(), self.task_library.iter().map(|z| z.len()).find(|&l| l != e).unwrap_or(0)],
            });
        };
        for (name, shape) in expected {
            let Some((fshape, data)) = found.get(&name) else {
                continue; // optional tensors (library) that are absent
            };
            if *fshape != shape {
                return Err(ModelFileError::WrongShape { path: path.to_path_buf(), name, expected: shape, found: fshape.clone() });
            }
            if !data.iter().all(|v| v.is_finite()) {
                return Err(ModelFileError::NonFinite { path: path.to_path_buf(), name });
            }
        }
        if self.process_noise.iter().any(|&q| q < 0.0) {
            return invalid("dynamics.process_noise must be ≥ 0".into());
        }
        if let Some(h) = &self.history {
            h.check(n).or_else(|reason| invalid(format!("the history term: {reason}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
