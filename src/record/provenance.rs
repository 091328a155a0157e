//! Where a recording comes from: neuroloop's version, the rig file and the model file with
//! their hashes, and the backend (in the file header and in every stream's desc).

use serde::Serialize;

/// Where a recording comes from (written into the file header and every stream's desc).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Provenance {
    pub neuroloop_version: String,
    pub rig_name: String,
    pub rig_path: String,
    pub rig_sha256: String,
    /// The rig file's text (so a recording says exactly what ran).
    #[serde(skip)]
    pub rig_toml: String,
    pub model: String,
    /// Empty for the simulator's built-in truth.
    pub model_sha256: String,
    pub backend: String,
}

impl Provenance {
    /// Hashes the rig file and the model file (when it is one).
    pub fn of(rig: &crate::rig::Rig, backend: &str) -> anyhow::Result<Provenance> {
        use anyhow::Context;
        let rig_bytes = std::fs::read(&rig.path).with_context(|| format!("cannot read the rig file {}", rig.path.display()))?;
        let (model, model_sha256) = match rig.model_path() {
            Some(p) => {
                let bytes = std::fs::read(&p).with_context(|| format!("cannot read the model file {}", p.display()))?;
                (p.display().to_string(), sha256_hex(&bytes))
            }
            None => ("the simulator's true model".to_string(), String::new()),
        };
        Ok(Provenance {
            neuroloop_version: env!("CARGO_PKG_VERSION").into(),
            rig_name: rig.name.clone(),
            rig_path: rig.path.display().to_string(),
            rig_sha256: sha256_hex(&rig_bytes),
            rig_toml: String::from_utf8_lossy(&rig_bytes).into_owned(),
            model,
            model_sha256,
            backend: backend.into(),
        })
    }

    pub(super) fn add_to(&self, info: &mut lsl::StreamInfo) {
        let mut n = info.desc().append_child("neuroloop");
        n.append_child_value("version", &self.neuroloop_version);
        n.append_child_value("rig", &self.rig_path);
        n.append_child_value("rig_sha256", &self.rig_sha256);
        n.append_child_value("model", &self.model);
        n.append_child_value("model_sha256", &self.model_sha256);
        n.append_child_value("backend", &self.backend);
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
