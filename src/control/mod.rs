//! Controllers: pursue a latent objective (target latent state or target firing rates)
//! under actuation limits. `mppi` (default), `lqr`, `policy` (docs/model.md, "Controller").
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

pub use lqr::Lqr;
pub use mppi::Mppi;
pub use policy::PolicyController;

use crate::model::{Dims, ModelParams, Theta};
use nalgebra::allocator::Allocator;
use nalgebra::constraint::{SameNumberOfRows, ShapeConstraint};
use nalgebra::{Cholesky, DMatrix, DVector, DefaultAllocator, Dim, Dyn, Matrix, StorageMut};
use serde::{Deserialize, Serialize};

/// What the controller steers towards. Set in the rig file; can be changed while running.
#[derive(Debug, Clone, PartialEq)]
pub enum Objective {
    /// Target latent state x* (d).
    Latent(DVector<f64>),
    /// Target firing rates r* in Hz (N).
    Rates(DVector<f64>),
}

impl Objective {
    /// Checks lengths against the model and that every value is finite (rates ≥ 0).
    pub fn validate(&self, dims: &Dims) -> Result<(), String> {
        match self {
            Objective::Latent(x) => {
                if x.len() != dims.latent {
                    return Err(format!("latent objective has {} values, the model's latent dimension is {}", x.len(), dims.latent));
                }
                if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                    return Err(format!("latent objective value {i} is not finite"));
                }
            }
            Objective::Rates(r) => {
                if r.len() != dims.n_units {
                    return Err(format!("rate objective has {} values, the model has {} units", r.len(), dims.n_units));
                }
                if let Some(i) = r.iter().position(|v| !v.is_finite() || *v < 0.0) {
                    return Err(format!("rate objective value {i} must be finite and ≥ 0 Hz"));
                }
            }
        }
        Ok(())
    }
}

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
            return Err(format!("actuation limits have {}/{} values (lo/hi), the model has {m} control channels", self.lo.len(), self.hi.len()));
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
    /// LQR: maximum fixed-point iterations of the Riccati equation per bin (warm-started).
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

/// Rates below this (Hz) are raised to it before taking logs in the rate → latent
/// conversion, so a silent target unit does not pull x* to the log-rate floor.
pub const RATE_FLOOR_HZ: f64 = 0.1;

/// Relative ridge ρ / (tr(CᵀC)/d) of the rate → latent least squares.
const RATE_LS_RIDGE: f64 = 1e-6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetKind {
    None,
    Latent,
    Rates,
}

/// The objective a controller last saw and what it derived from it (see the module docs).
#[derive(Debug)]
pub struct ObjectiveTarget {
    kind: TargetKind,
    /// x* (d): the latent objective itself, or the least-squares conversion of the rates.
    pub latent: DVector<f64>,
    /// r* (N) in Hz when the objective is in rate space (zeros otherwise).
    pub rates: DVector<f64>,
    /// 1 / max(r*ᵢ, 1) (N), MPPI's per-unit normalisation of the rate error.
    pub rate_scale: DVector<f64>,
    /// Bumped whenever the target changes.
    pub generation: u64,
    ctc: DMatrix<f64>,
    log_target: DVector<f64>,
}

impl ObjectiveTarget {
    pub fn new(dims: &Dims) -> Self {
        ObjectiveTarget {
            kind: TargetKind::None,
            latent: DVector::zeros(dims.latent),
            rates: DVector::zeros(dims.n_units),
            rate_scale: DVector::zeros(dims.n_units),
            generation: 0,
            ctc: DMatrix::zeros(dims.latent, dims.latent),
            log_target: DVector::zeros(dims.n_units),
        }
    }

    /// Whether the current objective is in rate space.
    pub fn is_rates(&self) -> bool {
        self.kind == TargetKind::Rates
    }

    /// Brings the cache up to date with `obj`; returns whether it changed. O(N + d) when
    /// unchanged; O(N d² + d³) on a change of rate objective. Allocation-free.
    pub fn sync(&mut self, obj: &Objective, params: &ModelParams) -> bool {
        match obj {
            Objective::Latent(x) => {
                if self.kind == TargetKind::Latent && *x == self.latent {
                    return false;
                }
                assert_eq!(x.len(), self.latent.len(), "latent objective length ≠ latent dimension");
                self.latent.copy_from(x);
                self.rates.fill(0.0);
                self.rate_scale.fill(0.0);
                self.kind = TargetKind::Latent;
            }
            Objective::Rates(r) => {
                if self.kind == TargetKind::Rates && *r == self.rates {
                    return false;
                }
                assert_eq!(r.len(), self.rates.len(), "rate objective length ≠ number of units");
                self.rates.copy_from(r);
                for i in 0..r.len() {
                    self.rate_scale[i] = 1.0 / r[i].max(1.0);
                }
                self.kind = TargetKind::Rates;
                rates_to_latent(params, r, &mut self.ctc, &mut self.log_target, &mut self.latent);
            }
        }
        self.generation = self.generation.wrapping_add(1);
        true
    }
}

/// x* = clip(argmin ‖C x − (ln max(r*, floor) − d)‖² + ρ‖x‖², −1, 1), allocation-free given
/// scratch `ctc` (d × d) and `log_target` (N).
pub fn rates_to_latent(
    params: &ModelParams,
    rates: &DVector<f64>,
    ctc: &mut DMatrix<f64>,
    log_target: &mut DVector<f64>,
    x_out: &mut DVector<f64>,
) {
    let c = &params.obs_c;
    let d = c.ncols();
    for i in 0..rates.len() {
        let eta = rates[i].max(RATE_FLOOR_HZ).ln().clamp(crate::model::observation::LOG_RATE_MIN, params.log_rate_max);
        log_target[i] = eta - params.obs_d[i];
    }
    x_out.gemv_tr(1.0, c, log_target, 0.0);
    let ok = spd_solve_mut(
        ctc,
        |m| {
            m.gemm_tr(1.0, c, c, 0.0);
            let mean_diag = (0..d).map(|i| m[(i, i)]).sum::<f64>() / d.max(1) as f64;
            let ridge = RATE_LS_RIDGE * mean_diag.max(1e-12);
            for i in 0..d {
                m[(i, i)] += ridge;
            }
        },
        x_out,
    );
    if !ok {
        x_out.fill(0.0);
    }
    x_out.apply(|v| *v = if v.is_finite() { v.clamp(-1.0, 1.0) } else { 0.0 });
}

/// Solves M X = rhs in place for a symmetric positive definite M that `fill` writes into
/// `buf`, factoring in `buf`'s storage (no allocation). If the factorisation fails, retries
/// with a growing ridge on the diagonal (relative to M's mean diagonal). Returns false
/// (rhs untouched) if even the largest ridge fails.
pub fn spd_solve_mut<R2: Dim, C2: Dim, S2: StorageMut<f64, R2, C2>>(
    buf: &mut DMatrix<f64>,
    fill: impl Fn(&mut DMatrix<f64>),
    rhs: &mut Matrix<f64, R2, C2, S2>,
) -> bool
where
    ShapeConstraint: SameNumberOfRows<R2, Dyn>,
    DefaultAllocator: Allocator<Dyn, Dyn>,
{
    const RIDGES: [f64; 6] = [0.0, 1e-12, 1e-10, 1e-8, 1e-6, 1e-3];
    let n = buf.nrows();
    for &rel in RIDGES.iter() {
        fill(buf);
        if rel > 0.0 {
            let mean_diag = (0..n).map(|i| buf[(i, i)].abs()).sum::<f64>() / n.max(1) as f64;
            let ridge = rel * mean_diag.max(1e-300) + rel * 1e-12;
            for i in 0..n {
                buf[(i, i)] += ridge;
            }
        }
        let m = std::mem::replace(buf, DMatrix::zeros(0, 0));
        let chol = Cholesky::new_unchecked(m);
        let l = chol.l_dirty();
        let ok = (0..n).all(|i| {
            let v = l[(i, i)];
            v.is_finite() && v > 0.0
        });
        if ok {
            chol.solve_mut(rhs);
        }
        *buf = chol.unpack_dirty();
        if ok {
            return true;
        }
    }
    false
}


#[cfg(test)]
pub(crate) mod test_util {
    //! Shared test fixtures and an allocation counter for the "no allocation per bin" rule.
    use super::*;
    use crate::model::{Generator, Hypernet};
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// Counts allocations made by the current thread (tests run on several threads).
    pub struct CountingAlloc;

    thread_local! {
        static ALLOCS: Cell<u64> = const { Cell::new(0) };
    }

    unsafe impl GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            System.alloc(layout)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            System.realloc(ptr, layout, new_size)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            System.alloc_zeroed(layout)
        }
    }

    #[global_allocator]
    static GLOBAL: CountingAlloc = CountingAlloc;

    /// Allocations made by this thread so far.
    pub fn allocations() -> u64 {
        ALLOCS.with(|c| c.get())
    }

    fn empty_gen(e: usize, out: usize) -> Generator {
        Generator { w1: DMatrix::zeros(1, e), b1: DVector::zeros(1), w2: DMatrix::zeros(out, 1), b2: DVector::zeros(out) }
    }

    /// Model parameters with the given C, d and α (hypernetwork zeroed; θ is supplied separately).
    pub fn params(n: usize, d: usize, m: usize, alpha: f64, obs_c: DMatrix<f64>, obs_d: DVector<f64>) -> ModelParams {
        let dims = Dims { n_units: n, latent: d, embed: 1, control: m, hidden: 1 };
        ModelParams {
            dims,
            bin_s: 0.01,
            alpha,
            process_noise: DVector::from_element(d, 1e-4),
            initial_state_var: 0.1,
            log_rate_max: 8.0,
            obs_c,
            obs_d,
            hypernet: Hypernet { w_hh: empty_gen(1, d * d), w_xu: empty_gen(1, d * m), b: empty_gen(1, d) },
            z_init: DVector::zeros(1),
            z_prior_sigma: 1.0,
            task_library: vec![],
            policy: None,
        }
    }

    /// A reproducible pseudo-random matrix in [−s, s] (no RNG crate needed).
    pub fn pseudo_random(rows: usize, cols: usize, seed: u64, s: f64) -> DMatrix<f64> {
        DMatrix::from_fn(rows, cols, |i, j| {
            let k = (seed * 1_000_003 + (i * 7919 + j * 104_729) as u64) as f64;
            s * (k * 0.618_033_988_749_895).fract().mul_add(2.0, -1.0)
        })
    }

    /// A 2-d latent, 2-channel model where x* = (0.5, −0.3) is reachable
    /// (u* = atanh(x*) − W_hh x* inside [−2, 2]) and u = 0 keeps x at 0.
    pub fn reachable_model() -> (ModelParams, Theta, DVector<f64>, ActuationLimits) {
        let d = 2;
        let m = 2;
        let n = 3;
        let c = DMatrix::from_row_slice(n, d, &[1.0, 0.0, 0.0, 1.0, 0.7, -0.7]);
        let p = params(n, d, m, 0.2, c, DVector::from_element(n, 2.0));
        let theta = Theta {
            w_hh: DMatrix::from_row_slice(2, 2, &[0.3, -0.2, 0.1, 0.4]),
            w_xu: DMatrix::identity(2, 2),
            b: DVector::zeros(2),
        };
        let target = DVector::from_vec(vec![0.5, -0.3]);
        let limits = ActuationLimits { lo: DVector::from_element(m, -2.0), hi: DVector::from_element(m, 2.0) };
        (p, theta, target, limits)
    }

    /// Runs the deterministic dynamics in closed loop for `steps` bins; returns the final x.
    pub fn closed_loop(
        ctrl: &mut Controller,
        p: &ModelParams,
        theta: &Theta,
        objective: &Objective,
        limits: &ActuationLimits,
        x0: &DVector<f64>,
        steps: usize,
    ) -> DVector<f64> {
        let mut x = x0.clone();
        let mut x_next = x.clone();
        let mut tanh_a = x.clone();
        let mut u = DVector::zeros(p.dims.control);
        let mut u_prev = DVector::zeros(p.dims.control);
        for bin in 0..steps {
            let ctx = ControlContext { params: p, theta, x: &x, u_prev: &u_prev, bin: bin as u64 };
            ctrl.compute(&ctx, objective, limits, &mut u);
            for j in 0..u.len() {
                assert!(u[j] >= limits.lo[j] && u[j] <= limits.hi[j], "u outside limits");
            }
            crate::model::dynamics::step(theta, p.alpha, &x, &u, &mut x_next, &mut tanh_a);
            std::mem::swap(&mut x, &mut x_next);
            u_prev.copy_from(&u);
        }
        x
    }

    /// Open loop with u = 0 for comparison.
    pub fn open_loop(p: &ModelParams, theta: &Theta, x0: &DVector<f64>, steps: usize) -> DVector<f64> {
        let mut x = x0.clone();
        let mut x_next = x.clone();
        let mut tanh_a = x.clone();
        let u = DVector::zeros(p.dims.control);
        for _ in 0..steps {
            crate::model::dynamics::step(theta, p.alpha, &x, &u, &mut x_next, &mut tanh_a);
            std::mem::swap(&mut x, &mut x_next);
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

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
    fn spd_solve_recovers_from_singular_matrix() {
        let mut buf = DMatrix::zeros(2, 2);
        let mut rhs = DVector::from_vec(vec![1.0, 1.0]);
        // Rank one: [[1,1],[1,1]]; the ridge makes it solvable.
        assert!(spd_solve_mut(&mut buf, |m| m.fill(1.0), &mut rhs));
        assert!(rhs.iter().all(|v| v.is_finite()));
        assert_eq!(buf.shape(), (2, 2));
        let mut rhs = DVector::from_vec(vec![2.0, 3.0]);
        assert!(spd_solve_mut(&mut buf, |m| m.copy_from(&DMatrix::from_row_slice(2, 2, &[2.0, 0.0, 0.0, 3.0])), &mut rhs));
        assert!((rhs[0] - 1.0).abs() < 1e-12 && (rhs[1] - 1.0).abs() < 1e-12);
    }


    #[test]
    fn counting_allocator_sees_allocations() {
        let before = allocations();
        let v: Vec<u8> = Vec::with_capacity(16);
        assert!(allocations() > before);
        drop(v);
    }
}
