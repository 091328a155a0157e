//! Controllers: pursue a latent objective (target latent state or target firing rates)
//! under actuation limits. `mppi` (default), `lqr`, `policy`, `probe` (docs/model.md).
//!
//! # How the objective reaches a controller
//!
//! [`Controller::compute`] takes the current [`Objective`] on every bin. Each controller
//! keeps an [`ObjectiveTarget`] cache holding a copy of the objective it last saw plus
//! everything derived from it (the latent target x* for LQR / policy, the per-unit rate
//! scales for MPPI). On each bin the cache compares the objective with its copy (O(N),
//! no allocation) and re-derives the target only when it changed, so the caller can simply
//! pass whatever objective is current and changing it while running is cheap and safe.
//! [`Controller::set_objective`] validates a new objective and primes the cache at once
//! (call it when the objective changes to keep the conversion off the next bin).
//!
//! A rate objective r* is turned into a latent target by regularised least squares on
//! the log-rates, x* = argmin ‖C x − (ln r* − d)‖² + ρ‖x‖², clipped to the box [−1, 1]^d
//! that the dynamics can reach (x' = x + α(tanh(·) − x) keeps |xᵢ| < 1 for 0 < α ≤ 1).
//! MPPI uses the rates directly in its cost instead.
//!
//! # Per-bin rule
//!
//! `compute` never allocates: all scratch is sized in `new`. nalgebra's `gemm`/`mul_to`
//! hand products whose four dimensions all exceed 5 to `matrixmultiply`, which allocates a
//! packing buffer on each call, so dense products here go through [`crate::linalg::gemm_nn`] (column-wise
//! `gemv`) and `gemm_tr` (column-wise `gemv_tr`) instead. The allocation-counting tests in
//! this module check it.

pub mod lqr;
pub mod mppi;
pub mod policy;
pub mod probe;

pub mod config;
pub mod objective;
#[cfg(test)]
pub(crate) mod test_util;

pub use config::{ActuationLimits, ControllerConfig, ControllerKind};
pub use lqr::Lqr;
pub use mppi::Mppi;
pub use objective::{rates_to_latent, Objective, ObjectiveTarget};
pub use policy::PolicyController;

use crate::model::{Dims, ModelParams, Theta};
use nalgebra::DVector;

/// What a controller sees on one bin.
pub struct ControlContext<'a> {
    /// C, d, α, log_rate_max, Δ, policy.
    pub params: &'a ModelParams,
    /// Current dynamics θ(z).
    pub theta: &'a Theta,
    /// Filtered latent mean x_k (d).
    pub x: &'a DVector<f64>,
    /// Last emitted command (m).
    pub u_prev: &'a DVector<f64>,
    /// Bin index (MPPI's RNG stream).
    pub bin: u64,
}

/// One of the three controllers.
// Created once per session and never moved per bin, so the variants' size difference is moot.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Controller {
    Mppi(Mppi),
    Lqr(Lqr),
    Policy(PolicyController),
}

impl Controller {
    /// Validates `cfg` and preallocates everything `compute` needs.
    /// `policy` needs policy weights in the model file.
    pub fn new(cfg: &ControllerConfig, dims: &Dims, params: &ModelParams) -> Result<Controller, String> {
        cfg.validate()?;
        if dims.control == 0 {
            return Err("the model has no control channels (m = 0): nothing to control".into());
        }
        if dims.latent == 0 {
            return Err("the model has latent dimension 0".into());
        }
        Ok(match cfg.kind {
            ControllerKind::Mppi => Controller::Mppi(Mppi::new(cfg, dims)),
            ControllerKind::Lqr => Controller::Lqr(Lqr::new(cfg, dims)),
            ControllerKind::Policy => Controller::Policy(PolicyController::new(dims, params)?),
            ControllerKind::Probe => {
                return Err("kind = \"probe\" runs without a model (an identification session), not as a model-based controller".into())
            }
        })
    }

    pub fn kind(&self) -> ControllerKind {
        match self {
            Controller::Mppi(_) => ControllerKind::Mppi,
            Controller::Lqr(_) => ControllerKind::Lqr,
            Controller::Policy(_) => ControllerKind::Policy,
        }
    }

    /// Validates a new objective and derives its target now (not per bin). Optional:
    /// `compute` notices a changed objective by itself.
    pub fn set_objective(&mut self, objective: &Objective, params: &ModelParams) -> Result<(), String> {
        objective.validate(&params.dims)?;
        self.target_mut().sync(objective, params);
        Ok(())
    }

    /// The control for this bin into `u_out` (m), within `limits`. Allocation-free.
    ///
    /// Panics if the objective's or `u_out`'s length does not match the model; validate
    /// objectives with [`Objective::validate`] (or use [`Controller::set_objective`]).
    pub fn compute(&mut self, ctx: &ControlContext, objective: &Objective, limits: &ActuationLimits, u_out: &mut DVector<f64>) {
        match self {
            Controller::Mppi(c) => c.compute(ctx, objective, limits, u_out),
            Controller::Lqr(c) => c.compute(ctx, objective, limits, u_out),
            Controller::Policy(c) => c.compute(ctx, objective, limits, u_out),
        }
    }

    /// Clears warm starts (MPPI's nominal sequence, LQR's Riccati solution).
    pub fn reset(&mut self) {
        match self {
            Controller::Mppi(c) => c.reset(),
            Controller::Lqr(c) => c.reset(),
            Controller::Policy(_) => {}
        }
    }

    fn target_mut(&mut self) -> &mut ObjectiveTarget {
        match self {
            Controller::Mppi(c) => &mut c.target,
            Controller::Lqr(c) => &mut c.target,
            Controller::Policy(c) => &mut c.target,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use serde::Deserialize;

    #[test]
    fn config_defaults_and_minimal_toml() {
        #[derive(Deserialize)]
        struct Rig {
            controller: ControllerConfig,
        }
        let rig: Rig = toml::from_str("[controller]\nkind = \"lqr\"\n").unwrap();
        assert_eq!(rig.controller.kind, ControllerKind::Lqr);
        assert_eq!(rig.controller.horizon, 25);
        assert_eq!(rig.controller.samples, 256);
        assert_eq!(rig.controller.riccati_iterations, 200);
        rig.controller.validate().unwrap();
        let full = "[controller]\nkind = \"mppi\"\nhorizon = 10\nsamples = 64\ntemperature = 0.5\nnoise_std = 0.2\nseed = 7\nq_latent = 2.0\nr_control = 0.1\nrate_weight = 3.0\nriccati_iterations = 50\n";
        let rig: Rig = toml::from_str(full).unwrap();
        assert_eq!(rig.controller.samples, 64);
        assert_eq!(rig.controller.seed, 7);
        // Round trip through TOML.
        let s = toml::to_string(&rig.controller).unwrap();
        let back: ControllerConfig = toml::from_str(&s).unwrap();
        assert_eq!(back, rig.controller);
        assert!(toml::from_str::<Rig>("[controller]\nkind = \"mppi\"\nhorizn = 3\n").is_err());
        assert!(toml::from_str::<Rig>("[controller]\nkind = \"pid\"\n").is_err());
    }

    #[test]
    fn config_validate_names_the_key() {
        let bad: Vec<(&str, ControllerConfig)> = vec![
            ("samples", ControllerConfig { samples: 0, ..Default::default() }),
            ("horizon", ControllerConfig { horizon: 0, ..Default::default() }),
            ("temperature", ControllerConfig { temperature: 0.0, ..Default::default() }),
            ("noise_std", ControllerConfig { noise_std: -1.0, ..Default::default() }),
            ("r_control", ControllerConfig { r_control: 0.0, ..Default::default() }),
            ("q_latent", ControllerConfig { q_latent: -0.1, ..Default::default() }),
            ("rate_weight", ControllerConfig { rate_weight: f64::NAN, ..Default::default() }),
            ("riccati_iterations", ControllerConfig { riccati_iterations: 0, ..Default::default() }),
        ];
        for (key, cfg) in bad {
            let e = cfg.validate().unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        }
        ControllerConfig::default().validate().unwrap();
    }

    #[test]
    fn policy_without_weights_is_an_error() {
        let (p, _, _, _) = reachable_model();
        let cfg = ControllerConfig { kind: ControllerKind::Policy, ..Default::default() };
        let e = Controller::new(&cfg, &p.dims, &p).unwrap_err();
        assert!(e.contains("policy"), "{e}");
    }

    #[test]
    fn objective_validation() {
        let (p, _, _, _) = reachable_model();
        assert!(Objective::Latent(DVector::zeros(2)).validate(&p.dims).is_ok());
        assert!(Objective::Latent(DVector::zeros(3)).validate(&p.dims).is_err());
        assert!(Objective::Rates(DVector::from_element(3, 5.0)).validate(&p.dims).is_ok());
        assert!(Objective::Rates(DVector::from_element(3, -1.0)).validate(&p.dims).is_err());
        let lim = ActuationLimits { lo: DVector::from_element(2, 1.0), hi: DVector::from_element(2, 0.0) };
        assert!(lim.validate(2).is_err());
    }

    #[test]
    fn rate_objective_converts_to_the_latent_that_produces_it() {
        let (p, _, _, _) = reachable_model();
        let x_true = DVector::from_vec(vec![0.4, -0.25]);
        let mut eta = DVector::zeros(3);
        crate::model::observation::log_rates(&p.obs_c, &p.obs_d, p.log_rate_max, &x_true, &mut eta);
        let rates = eta.map(f64::exp);
        let mut t = ObjectiveTarget::new(&p.dims);
        assert!(t.sync(&Objective::Rates(rates.clone()), &p));
        assert!(t.is_rates());
        assert!((&t.latent - &x_true).amax() < 1e-5, "{}", t.latent);
        // Unchanged objective: no recomputation.
        let g = t.generation;
        assert!(!t.sync(&Objective::Rates(rates), &p));
        assert_eq!(t.generation, g);
        assert!(t.sync(&Objective::Latent(x_true.clone()), &p));
        assert_eq!(t.latent, x_true);
    }

    #[test]
    fn counting_allocator_sees_allocations() {
        let before = allocations();
        let v: Vec<u8> = Vec::with_capacity(16);
        assert!(allocations() > before);
        drop(v);
    }
}
