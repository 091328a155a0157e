//! The rig file's `[controller]` section and the actuation limits a controller respects.

use super::probe;
use nalgebra::DVector;
use serde::{Deserialize, Serialize};

/// Per-channel actuation bounds the controller must respect (the safety layer clamps again).
#[derive(Debug, Clone, PartialEq)]
pub struct ActuationLimits {
    pub lo: DVector<f64>,
    pub hi: DVector<f64>,
}

impl ActuationLimits {
    #[inline]
    pub fn clamp(&self, j: usize, v: f64) -> f64 {
        v.clamp(self.lo[j], self.hi[j])
    }

    /// Checks there are `m` finite bounds with lo ≤ hi.
    pub fn validate(&self, m: usize) -> Result<(), String> {
        if self.lo.len() != m || self.hi.len() != m {
            return Err(format!(
                "actuation limits have {}/{} values (lo/hi), the model has {m} control channels",
                self.lo.len(),
                self.hi.len()
            ));
        }
        for j in 0..m {
            if !(self.lo[j].is_finite() && self.hi[j].is_finite() && self.lo[j] <= self.hi[j]) {
                return Err(format!("actuation limits for channel {j}: need finite lo ≤ hi, got [{}, {}]", self.lo[j], self.hi[j]));
            }
        }
        Ok(())
    }

    /// Clamps every channel of `u` in place; a non-finite value becomes the clamp of 0.
    #[inline]
    pub fn clamp_in_place(&self, u: &mut DVector<f64>) {
        for j in 0..u.len() {
            let v = if u[j].is_finite() { u[j] } else { 0.0 };
            u[j] = self.clamp(j, v);
        }
    }
}

/// Which controller runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ControllerKind {
    #[default]
    Mppi,
    Lqr,
    Policy,
    /// Excitation for an identification session: no model, no objective (probe.rs).
    Probe,
    /// No control: the model filters, identifies the task and monitors; the Control stream
    /// (where the model has inputs) carries the rig's fallback command every bin. The kind
    /// for a model fitted without stimulation (m = 0), and for watching any model.
    Monitor,
}

/// The rig file's `[controller]` table. Every key but `kind` is optional; keys that the
/// chosen kind does not use are accepted and ignored.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// "mppi" | "lqr" | "policy".
    pub kind: ControllerKind,
    /// MPPI horizon H (bins).
    pub horizon: usize,
    /// MPPI sample count K (sample 0 is always the unperturbed nominal sequence).
    pub samples: usize,
    /// MPPI softmin temperature τ (cost units) for a latent objective.
    pub temperature: f64,
    /// MPPI softmin temperature for a rate objective, relative to the samples' mean cost
    /// above the best (mppi.rs).
    pub rate_temperature: f64,
    /// MPPI exploration noise std per control channel.
    pub noise_std: f64,
    /// MPPI Philox seed.
    pub seed: u64,
    /// State cost weight: Q_x = q_latent · I.
    pub q_latent: f64,
    /// Control cost weight: R = r_control · I.
    pub r_control: f64,
    /// Weight on the rate error when the objective is in rate space (MPPI); the cost is
    /// rate_weight / N · Σᵢ (λᵢ(x) − r*ᵢ)² / max(r*ᵢ, 1), λ in Hz.
    pub rate_weight: f64,
    /// LQR: cap on the Riccati solve per bin (`control::lqr` module docs). A bin whose
    /// linearisation barely moved costs one warm fixed-point step; otherwise the doubling
    /// algorithm runs, at most min(riccati_iterations, 60) doublings (≈ 15–25 converge even
    /// with 1 ms bins, where A ≈ I). Only if it breaks down or does not converge (no
    /// stabilising solution) does the warm-started fixed-point iteration run, at most
    /// riccati_iterations steps including that first warm step.
    pub riccati_iterations: usize,
    /// `[controller.probe]`: the excitation of an identification session (kind = "probe").
    pub probe: probe::ProbeConfig,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            kind: ControllerKind::Mppi,
            horizon: 25,
            samples: 256,
            temperature: 0.3,
            rate_temperature: 0.1,
            noise_std: 0.5,
            seed: 1,
            q_latent: 1.0,
            r_control: 0.01,
            rate_weight: 1.0,
            riccati_iterations: 200,
            probe: probe::ProbeConfig::default(),
        }
    }
}

/// Largest MPPI rollout (samples × horizon) per bin: its buffers hold this many × m values.
pub const MAX_ROLLOUT_STEPS: usize = 1 << 20;

impl ControllerConfig {
    /// Rejects out-of-range values, naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        fn finite(key: &str, v: f64) -> Result<(), String> {
            if v.is_finite() {
                Ok(())
            } else {
                Err(format!("controller.{key} must be finite, got {v}"))
            }
        }
        if self.horizon < 1 || self.horizon > 10_000 {
            return Err(format!("controller.horizon must be in 1..=10000, got {}", self.horizon));
        }
        if self.samples < 1 || self.samples > 1 << 20 {
            return Err(format!("controller.samples must be in 1..=1048576, got {}", self.samples));
        }
        // The rollout buffers hold samples × horizon × m values: bound them before they exist.
        if self.samples * self.horizon > MAX_ROLLOUT_STEPS {
            return Err(format!(
                "controller.samples × controller.horizon = {} × {} exceeds {MAX_ROLLOUT_STEPS} rollout steps per bin",
                self.samples, self.horizon
            ));
        }
        finite("temperature", self.temperature)?;
        if self.temperature <= 0.0 {
            return Err(format!("controller.temperature must be > 0, got {}", self.temperature));
        }
        finite("rate_temperature", self.rate_temperature)?;
        if self.rate_temperature <= 0.0 {
            return Err(format!("controller.rate_temperature must be > 0, got {}", self.rate_temperature));
        }
        finite("noise_std", self.noise_std)?;
        if self.noise_std < 0.0 {
            return Err(format!("controller.noise_std must be ≥ 0, got {}", self.noise_std));
        }
        finite("q_latent", self.q_latent)?;
        if self.q_latent < 0.0 {
            return Err(format!("controller.q_latent must be ≥ 0, got {}", self.q_latent));
        }
        finite("r_control", self.r_control)?;
        if self.r_control <= 0.0 {
            return Err(format!("controller.r_control must be > 0, got {}", self.r_control));
        }
        finite("rate_weight", self.rate_weight)?;
        if self.rate_weight < 0.0 {
            return Err(format!("controller.rate_weight must be ≥ 0, got {}", self.rate_weight));
        }
        if self.riccati_iterations < 1 || self.riccati_iterations > 100_000 {
            return Err(format!("controller.riccati_iterations must be in 1..=100000, got {}", self.riccati_iterations));
        }
        self.probe.validate()?;
        Ok(())
    }
}
