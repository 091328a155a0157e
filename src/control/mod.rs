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
            return Err(
                "the model has no control channels (m = 0, fitted without an input): nothing to control; run it with kind = \"monitor\""
                    .into(),
            );
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
            ControllerKind::Monitor => return Err("kind = \"monitor\" runs no controller".into()),
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
    /// Returns false when there is no usable command (a cost or a command that is not
    /// finite): `u_out` is then NaN, and the caller falls back and counts it — a controller
    /// never hides such a bin behind a clamped or repeated command.
    ///
    /// Panics if the objective's or `u_out`'s length does not match the model; validate
    /// objectives with [`Objective::validate`] (or use [`Controller::set_objective`]).
    pub fn compute(&mut self, ctx: &ControlContext, objective: &Objective, limits: &ActuationLimits, u_out: &mut DVector<f64>) -> bool {
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

    /// Every controller, driven with extreme but finite objectives (inside the accepted
    /// bounds and far beyond them: 1e200, ±f64::MAX, 1e300 Hz) and extreme states, either
    /// gives a finite command inside the limits or says it has none (false, u = NaN) — it
    /// never hands on a clamped stand-in for a non-finite computation.
    #[test]
    fn extreme_objectives_and_states_give_a_command_or_a_visible_fault() {
        use proptest::prelude::*;
        let (p, theta, _, limits) = reachable_model();
        let mut policy_p = p.clone();
        policy_p.policy = Some(crate::model::Policy {
            w1: pseudo_random(8, 4, 3, 1.0),
            b1: DVector::zeros(8),
            w2: pseudo_random(2, 8, 4, 1.0),
            b2: DVector::zeros(2),
            scale: 1.5,
        });
        let magnitude = prop_oneof![Just(0.0), -10.0..10.0f64, Just(1e150), Just(-1e200), Just(f64::MAX), Just(-f64::MAX), Just(1e300)];
        let runner_cfg = ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() };
        proptest!(runner_cfg, |(kind in 0usize..3, rates in any::<bool>(), t0 in magnitude.clone(), t1 in magnitude.clone(),
                               x0 in magnitude.clone(), x1 in magnitude, bins in 1usize..4)| {
            let cfg = ControllerConfig {
                kind: [ControllerKind::Mppi, ControllerKind::Lqr, ControllerKind::Policy][kind],
                samples: 16,
                horizon: 5,
                ..Default::default()
            };
            let params = if kind == 2 { &policy_p } else { &p };
            let mut ctrl = Controller::new(&cfg, &params.dims, params).unwrap();
            let objective = if rates {
                Objective::Rates(DVector::from_vec(vec![t0.abs(), t1.abs(), 5.0]))
            } else {
                Objective::Latent(DVector::from_vec(vec![t0, t1]))
            };
            let x = DVector::from_vec(vec![x0, x1]);
            let u_prev = DVector::zeros(2);
            let mut u = DVector::zeros(2);
            for bin in 0..bins {
                let ctx = ControlContext { params, theta: &theta, x: &x, u_prev: &u_prev, bin: bin as u64 };
                let usable = ctrl.compute(&ctx, &objective, &limits, &mut u);
                if usable {
                    for j in 0..2 {
                        prop_assert!(u[j].is_finite() && u[j] >= limits.lo[j] && u[j] <= limits.hi[j], "{:?} bin {bin}: u = {u}", cfg.kind);
                    }
                } else {
                    prop_assert!(u.iter().all(|v| v.is_nan()), "{:?}: a fault must not carry a command: {u}", cfg.kind);
                }
            }
        });
    }

    /// The case that froze MPPI: a latent target of 1e200 makes every rollout's cost
    /// infinite. It used to repeat its last nominal command forever with the gate on; now
    /// every such bin is a fault (the loop falls back and counts it).
    #[test]
    fn an_objective_every_cost_overflows_on_is_a_fault_every_bin_not_a_frozen_command() {
        let (p, theta, target, limits) = reachable_model();
        let mut ctrl = Controller::new(&ControllerConfig { samples: 32, horizon: 8, ..Default::default() }, &p.dims, &p).unwrap();
        let x = DVector::zeros(2);
        let u_prev = DVector::zeros(2);
        let mut u = DVector::zeros(2);
        // A few good bins first: the nominal holds a non-zero command.
        for bin in 0..5 {
            let ctx = ControlContext { params: &p, theta: &theta, x: &x, u_prev: &u_prev, bin };
            assert!(ctrl.compute(&ctx, &Objective::Latent(target.clone()), &limits, &mut u));
        }
        assert!(u.amax() > 0.0);
        for bin in 5..20 {
            let ctx = ControlContext { params: &p, theta: &theta, x: &x, u_prev: &u_prev, bin };
            assert!(!ctrl.compute(&ctx, &Objective::Latent(DVector::from_vec(vec![1e200, 0.0])), &limits, &mut u), "bin {bin}");
            assert!(u.iter().all(|v| v.is_nan()));
        }
        // Back to a sane objective: commands again, from a fresh nominal.
        let ctx = ControlContext { params: &p, theta: &theta, x: &x, u_prev: &u_prev, bin: 20 };
        assert!(ctrl.compute(&ctx, &Objective::Latent(target), &limits, &mut u));
        assert!(u.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn counting_allocator_sees_allocations() {
        let before = allocations();
        let v: Vec<u8> = Vec::with_capacity(16);
        assert!(allocations() > before);
        drop(v);
    }
}
