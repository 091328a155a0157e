//! Model-predictive path integral control (docs/model.md, controller `mppi`, the default).
//!
//! Each bin: K sampled control sequences over a horizon of H bins around a nominal sequence
//! U (m × H), deterministic rollouts of the dynamics from the filtered mean, softmin
//! weights with temperature τ, a weighted update of U, output U₀, then U is shifted one bin
//! (the last step repeats) to warm-start the next bin.
//!
//! Noise is drawn from the counter-based Philox generator so that a GPU kernel can draw
//! the identical numbers: ε_{k,h,j} = noise_std · normal_at(seed, stream = bin,
//! index = (k·H + h)·m + j) for sample k, step h, channel j. Sample k = 0 is the unperturbed
//! nominal sequence (ε = 0; its indices are simply not drawn), so the update never does
//! worse than the nominal among what was sampled and τ → 0 degenerates gracefully.
//! Perturbed controls are clamped to the limits and the update uses the clamped
//! perturbation ε' = v − U_h.
//!
//! Cost of sample k, with x_{h+1} = f(x_h, v_{k,h}), x_0 = x:
//! - latent objective: S_k = Σ_h (x_{h+1} − x*)ᵀ Q_x (x_{h+1} − x*) + v_hᵀ R v_h;
//! - rate objective: S_k = Σ_h rate_weight/N · Σᵢ (λᵢ(x_{h+1}) − r*ᵢ)² / max(r*ᵢ, 1) + v_hᵀ R v_h,
//!   λ = exp(clamped log-rates) in Hz.
//!
//! Softmin weights w_k = exp(−(S_k − S_min)/τ'). For a latent objective τ' = τ
//! (`temperature`, cost units). For a rate objective τ' = τ_r · mean_k(S_k − S_min)
//! (`rate_temperature`, default 0.1): a temperature relative to how much the samples'
//! costs spread. The rate cost's scale depends on the population (Hz², summed over the
//! horizon) and spans tens of cost units between samples, so a fixed τ = 0.3 left ~8 of 128
//! samples with weight: the update followed single noisy samples, and the GPU (f32) and
//! CPU (f64) picked different ones and split within ~100 bins (tests/offline_loop.rs). The
//! relative temperature keeps the share of weighted samples the same whatever the scale.
//!
//! Work per bin O(K·H·(d² + d·m)) (+ K·H·N·d for rate objectives); all buffers preallocated.

use super::{ActuationLimits, ControlContext, ControllerConfig, Objective, ObjectiveTarget};
use crate::model::{dynamics, observation, Dims};
use nalgebra::{DMatrix, DVector};
use neuroloop_kernels::philox;

/// The MPPI controller with its nominal sequence and preallocated rollout buffers.
#[derive(Debug)]
pub struct Mppi {
    horizon: usize,
    samples: usize,
    temperature: f64,
    rate_temperature: f64,
    noise_std: f64,
    seed: u64,
    q_latent: f64,
    r_control: f64,
    rate_weight: f64,
    pub(super) target: ObjectiveTarget,
    /// Nominal sequence U, column h = U_h (m × H).
    u_nom: DMatrix<f64>,
    /// Perturbations, then clamped perturbations, at index (k·H + h)·m + j (K·H·m).
    eps: Vec<f64>,
    /// Sample costs, then softmin weights (K).
    costs: Vec<f64>,
    x_cur: DVector<f64>,
    x_next: DVector<f64>,
    tanh_a: DVector<f64>,
    v: DVector<f64>,
    eta: DVector<f64>,
}

/// Fills `out[i]` with `scale · normal_at(seed, stream, first + i)`, drawing Philox blocks
/// of four at a time (bit-identical to calling [`philox::normal_at`] per index).
pub fn fill_normals(seed: u64, stream: u64, first: u64, scale: f64, out: &mut [f64]) {
    let key = philox::key_from_seed(seed);
    let end = first + out.len() as u64;
    let mut idx = first;
    while idx < end {
        let block = idx / 4;
        let counter = [block as u32, (block >> 32) as u32, stream as u32, (stream >> 32) as u32];
        let z = philox::normal4(counter, key);
        let mut lane = (idx % 4) as usize;
        while lane < 4 && idx < end {
            out[(idx - first) as usize] = scale * z[lane] as f64;
            lane += 1;
            idx += 1;
        }
    }
}

impl Mppi {
    pub fn new(cfg: &ControllerConfig, dims: &Dims) -> Self {
        let (d, m, n) = (dims.latent, dims.control, dims.n_units);
        let (h, k) = (cfg.horizon, cfg.samples);
        Mppi {
            horizon: h,
            samples: k,
            temperature: cfg.temperature,
            rate_temperature: cfg.rate_temperature,
            noise_std: cfg.noise_std,
            seed: cfg.seed,
            q_latent: cfg.q_latent,
            r_control: cfg.r_control,
            rate_weight: cfg.rate_weight,
            target: ObjectiveTarget::new(dims),
            u_nom: DMatrix::zeros(m, h),
            eps: vec![0.0; k * h * m],
            costs: vec![0.0; k],
            x_cur: DVector::zeros(d),
            x_next: DVector::zeros(d),
            tanh_a: DVector::zeros(d),
            v: DVector::zeros(m),
            eta: DVector::zeros(n),
        }
    }

    /// Forgets the warm start (nominal sequence back to zero, clamped on the next bin).
    pub fn reset(&mut self) {
        self.u_nom.fill(0.0);
    }

    /// Softmin weights of the last bin's samples (unnormalised: the best has weight 1).
    pub fn weights(&self) -> &[f64] {
        &self.costs
    }

    /// The nominal sequence U (m × H) after the last bin's shift.
    pub fn nominal(&self) -> &DMatrix<f64> {
        &self.u_nom
    }

    /// One bin; allocation-free.
    pub fn compute(&mut self, ctx: &ControlContext, objective: &Objective, limits: &ActuationLimits, u_out: &mut DVector<f64>) -> bool {
        self.target.sync(objective, ctx.params);
        let (h_len, k_len, m) = (self.horizon, self.samples, self.u_nom.nrows());
        let params = ctx.params;
        let rates = self.target.is_rates();
        let rate_coef = self.rate_weight / params.dims.n_units.max(1) as f64;

        // The nominal must itself be feasible (limits may have changed).
        for h in 0..h_len {
            for j in 0..m {
                self.u_nom[(j, h)] = limits.clamp(j, if self.u_nom[(j, h)].is_finite() { self.u_nom[(j, h)] } else { 0.0 });
            }
        }

        // Noise: sample 0 stays zero; samples 1.. use Philox indices (k·H + h)·m + j.
        let row = h_len * m;
        self.eps[..row].fill(0.0);
        fill_normals(self.seed, ctx.bin, row as u64, self.noise_std, &mut self.eps[row..]);

        // Rollouts.
        for k in 0..k_len {
            self.x_cur.copy_from(ctx.x);
            let mut cost = 0.0;
            for h in 0..h_len {
                let base = (k * h_len + h) * m;
                let mut uru = 0.0;
                for j in 0..m {
                    let nominal = self.u_nom[(j, h)];
                    let vj = limits.clamp(j, nominal + self.eps[base + j]);
                    self.eps[base + j] = vj - nominal;
                    self.v[j] = vj;
                    uru += vj * vj;
                }
                cost += self.r_control * uru;
                dynamics::step(ctx.theta, params.alpha, &self.x_cur, &self.v, &mut self.x_next, &mut self.tanh_a);
                if rates {
                    observation::log_rates(&params.obs_c, &params.obs_d, params.log_rate_max, &self.x_next, &mut self.eta);
                    let mut s = 0.0;
                    for i in 0..self.eta.len() {
                        let e = self.eta[i].exp() - self.target.rates[i];
                        s += e * e * self.target.rate_scale[i];
                    }
                    cost += rate_coef * s;
                } else {
                    let mut s = 0.0;
                    for i in 0..self.x_next.len() {
                        let e = self.x_next[i] - self.target.latent[i];
                        s += e * e;
                    }
                    cost += self.q_latent * s;
                }
                std::mem::swap(&mut self.x_cur, &mut self.x_next);
            }
            self.costs[k] = cost;
        }

        // Softmin weights (non-finite costs get weight 0).
        let s_min = self.costs.iter().copied().filter(|c| c.is_finite()).fold(f64::INFINITY, f64::min);
        if s_min.is_finite() {
            let tau = if rates {
                let (gap, count) = self.costs.iter().filter(|c| c.is_finite()).fold((0.0, 0.0), |(g, n), c| (g + (c - s_min), n + 1.0));
                self.rate_temperature * (gap / f64::max(count, 1.0)).max(neuroloop_kernels::mppi::MIN_GAP as f64)
            } else {
                self.temperature
            };
            let mut total = 0.0;
            for c in self.costs.iter_mut() {
                *c = if c.is_finite() { (-(*c - s_min) / tau).exp() } else { 0.0 };
                total += *c;
            }
            // total ≥ 1: the best sample has weight exp(0).
            for h in 0..h_len {
                for j in 0..m {
                    let mut acc = 0.0;
                    for k in 0..k_len {
                        acc += self.costs[k] * self.eps[(k * h_len + h) * m + j];
                    }
                    self.u_nom[(j, h)] = limits.clamp(j, self.u_nom[(j, h)] + acc / total);
                }
            }
        } else {
            // No rollout has a finite cost (an objective or a state the cost overflows on):
            // there is no command to give. Said, not hidden: the caller falls back, and the
            // nominal starts again from zero instead of repeating its last value forever.
            self.u_nom.fill(0.0);
            u_out.fill(f64::NAN);
            return false;
        }

        u_out.copy_from(&self.u_nom.column(0));
        let usable = u_out.iter().all(|v| v.is_finite());
        if usable {
            limits.clamp_in_place(u_out);
        } else {
            // (The next bin's start makes every non-finite nominal 0, as the kernel does.)
            u_out.fill(f64::NAN);
        }

        // Warm start: shift one bin, the last step repeats.
        for h in 0..h_len.saturating_sub(1) {
            for j in 0..m {
                self.u_nom[(j, h)] = self.u_nom[(j, h + 1)];
            }
        }
        usable
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{ControlContext, Controller, ControllerKind};
    use super::*;
    use crate::model::Theta;

    #[test]
    fn fill_normals_matches_normal_at() {
        let mut out = vec![0.0; 23];
        fill_normals(42, 7, 5, 0.5, &mut out);
        for (i, v) in out.iter().enumerate() {
            assert_eq!(*v, 0.5 * philox::normal_at(42, 7, 5 + i as u64) as f64);
        }
    }

    fn tiny() -> (crate::model::ModelParams, Theta, ActuationLimits) {
        // d = 1, m = 1: x' = x + α(−x + tanh(w x + g u + b)).
        let p = params(1, 1, 1, 0.5, DMatrix::from_element(1, 1, 1.0), DVector::from_element(1, 1.0));
        let theta =
            Theta { w_hh: DMatrix::from_element(1, 1, 0.4), w_xu: DMatrix::from_element(1, 1, 1.3), b: DVector::from_element(1, -0.1) };
        let limits = ActuationLimits { lo: DVector::from_element(1, -1.5), hi: DVector::from_element(1, 1.0) };
        (p, theta, limits)
    }

    fn one_step_cost(p: &crate::model::ModelParams, th: &Theta, x: f64, u: f64, xs: f64, q: f64, r: f64) -> f64 {
        let a = th.w_hh[(0, 0)] * x + th.w_xu[(0, 0)] * u + th.b[0];
        let x1 = x + p.alpha * (-x + a.tanh());
        q * (x1 - xs) * (x1 - xs) + r * u * u
    }

    #[test]
    fn mppi_matches_brute_force_one_step_optimum() {
        let (p, theta, limits) = tiny();
        let (x0, xs) = (0.2, 0.45);
        let cfg = ControllerConfig {
            kind: ControllerKind::Mppi,
            horizon: 1,
            samples: 4000,
            temperature: 1e-4,
            noise_std: 0.3,
            q_latent: 1.0,
            r_control: 0.05,
            ..Default::default()
        };
        // Brute force on a fine grid of [lo, hi].
        let (lo, hi) = (limits.lo[0], limits.hi[0]);
        let mut best = (f64::INFINITY, 0.0);
        for i in 0..=100_000 {
            let u = lo + (hi - lo) * i as f64 / 100_000.0;
            let c = one_step_cost(&p, &theta, x0, u, xs, cfg.q_latent, cfg.r_control);
            if c < best.0 {
                best = (c, u);
            }
        }
        assert!(best.1 > lo + 0.1 && best.1 < hi - 0.1, "optimum should be interior: {}", best.1);
        let mut ctrl = Controller::new(&cfg, &p.dims, &p).unwrap();
        let obj = Objective::Latent(DVector::from_element(1, xs));
        let x = DVector::from_element(1, x0);
        let u_prev = DVector::zeros(1);
        let mut u = DVector::zeros(1);
        for bin in 0..10 {
            let ctx = ControlContext { params: &p, theta: &theta, x: &x, u_prev: &u_prev, bin };
            ctrl.compute(&ctx, &obj, &limits, &mut u);
        }
        assert!((u[0] - best.1).abs() < 0.05, "MPPI u = {}, brute force u = {}", u[0], best.1);
    }

    #[test]
    fn mppi_brute_force_with_active_limit() {
        // Target out of reach: the optimum sits on the upper limit.
        let (p, theta, limits) = tiny();
        let cfg = ControllerConfig {
            kind: ControllerKind::Mppi,
            horizon: 1,
            samples: 4000,
            temperature: 1e-4,
            r_control: 0.01,
            ..Default::default()
        };
        let mut ctrl = Controller::new(&cfg, &p.dims, &p).unwrap();
        let obj = Objective::Latent(DVector::from_element(1, 0.95));
        let x = DVector::from_element(1, 0.0);
        let u_prev = DVector::zeros(1);
        let mut u = DVector::zeros(1);
        for bin in 0..10 {
            let ctx = ControlContext { params: &p, theta: &theta, x: &x, u_prev: &u_prev, bin };
            ctrl.compute(&ctx, &obj, &limits, &mut u);
            assert!(u[0] <= limits.hi[0] && u[0] >= limits.lo[0]);
        }
        assert!((u[0] - limits.hi[0]).abs() < 0.05, "u = {}", u[0]);
    }

    #[test]
    fn mppi_is_deterministic_per_seed_and_bin() {
        let (p, theta, target, limits) = reachable_model();
        let cfg = ControllerConfig { kind: ControllerKind::Mppi, samples: 64, horizon: 5, ..Default::default() };
        let obj = Objective::Latent(target);
        let x = DVector::from_vec(vec![0.1, 0.05]);
        let u_prev = DVector::zeros(2);
        let run = |bin: u64, seed: u64| {
            let mut ctrl = Controller::new(&ControllerConfig { seed, ..cfg.clone() }, &p.dims, &p).unwrap();
            let mut u = DVector::zeros(2);
            let ctx = ControlContext { params: &p, theta: &theta, x: &x, u_prev: &u_prev, bin };
            ctrl.compute(&ctx, &obj, &limits, &mut u);
            u
        };
        assert_eq!(run(3, 1), run(3, 1));
        assert_ne!(run(3, 1), run(4, 1));
        assert_ne!(run(3, 1), run(3, 2));
        // The noise itself differs between bins.
        let (mut a, mut b) = (vec![0.0; 16], vec![0.0; 16]);
        fill_normals(1, 3, 10, 1.0, &mut a);
        fill_normals(1, 4, 10, 1.0, &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn mppi_zero_noise_keeps_nominal() {
        let (p, theta, target, limits) = reachable_model();
        let cfg = ControllerConfig { kind: ControllerKind::Mppi, samples: 8, horizon: 4, noise_std: 0.0, ..Default::default() };
        let mut ctrl = Controller::new(&cfg, &p.dims, &p).unwrap();
        let x = DVector::zeros(2);
        let u_prev = DVector::zeros(2);
        let mut u = DVector::from_element(2, 9.0);
        let ctx = ControlContext { params: &p, theta: &theta, x: &x, u_prev: &u_prev, bin: 0 };
        ctrl.compute(&ctx, &Objective::Latent(target), &limits, &mut u);
        assert_eq!(u, DVector::zeros(2));
    }

    #[test]
    fn mppi_closed_loop_beats_open_loop() {
        let (p, theta, target, limits) = reachable_model();
        let cfg = ControllerConfig { kind: ControllerKind::Mppi, ..Default::default() };
        let mut ctrl = Controller::new(&cfg, &p.dims, &p).unwrap();
        let obj = Objective::Latent(target.clone());
        let x0 = DVector::zeros(2);
        let x = closed_loop(&mut ctrl, &p, &theta, &obj, &limits, &x0, 100);
        let err = (&x - &target).norm();
        let open = (open_loop(&p, &theta, &x0, 100) - &target).norm();
        assert!(err < 0.5 * open, "MPPI error {err}, open loop {open}");
        assert!(err < 0.1, "MPPI error {err}");
    }

    #[test]
    fn mppi_rate_objective_closed_loop() {
        let (p, theta, target, limits) = reachable_model();
        let mut eta = DVector::zeros(3);
        crate::model::observation::log_rates(&p.obs_c, &p.obs_d, p.log_rate_max, &target, &mut eta);
        let r_star = eta.map(f64::exp);
        let cfg = ControllerConfig { kind: ControllerKind::Mppi, rate_weight: 10.0, ..Default::default() };
        let mut ctrl = Controller::new(&cfg, &p.dims, &p).unwrap();
        let obj = Objective::Rates(r_star.clone());
        let x0 = DVector::zeros(2);
        let x = closed_loop(&mut ctrl, &p, &theta, &obj, &limits, &x0, 100);
        let rate_err = |x: &DVector<f64>| {
            let mut e = DVector::zeros(3);
            crate::model::observation::log_rates(&p.obs_c, &p.obs_d, p.log_rate_max, x, &mut e);
            (e.map(f64::exp) - &r_star).norm()
        };
        let open = open_loop(&p, &theta, &x0, 100);
        assert!(rate_err(&x) < 0.5 * rate_err(&open), "closed {} vs open {}", rate_err(&x), rate_err(&open));
    }

    #[test]
    fn mppi_compute_does_not_allocate() {
        let (d, m, n) = (8, 6, 10);
        let c = pseudo_random(n, d, 21, 0.5);
        let p = params(n, d, m, 0.3, c, DVector::from_element(n, 2.0));
        let theta = Theta { w_hh: pseudo_random(d, d, 22, 0.3), w_xu: pseudo_random(d, m, 23, 1.0), b: DVector::zeros(d) };
        let limits = ActuationLimits { lo: DVector::from_element(m, -1.0), hi: DVector::from_element(m, 1.0) };
        let cfg = ControllerConfig { kind: ControllerKind::Mppi, samples: 32, horizon: 6, ..Default::default() };
        let mut ctrl = Controller::new(&cfg, &p.dims, &p).unwrap();
        let x = DVector::from_element(d, 0.1);
        let u_prev = DVector::zeros(m);
        let mut u = DVector::zeros(m);
        let objs = [Objective::Latent(DVector::from_element(d, 0.2)), Objective::Rates(DVector::from_element(n, 10.0))];
        for obj in &objs {
            let before = allocations();
            for bin in 0..3 {
                let ctx = ControlContext { params: &p, theta: &theta, x: &x, u_prev: &u_prev, bin };
                ctrl.compute(&ctx, obj, &limits, &mut u);
            }
            ctrl.reset();
            assert_eq!(allocations(), before, "MPPI compute allocated");
            assert!(u.iter().all(|v| v.is_finite()));
        }
    }
}

#[cfg(test)]
mod timing {
    use super::super::test_util::*;
    use super::super::{ControlContext, Controller, ControllerConfig, ControllerKind, Objective};
    use super::*;
    use crate::model::Theta;

    /// `cargo test --release --lib control::mppi::timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn per_bin_time() {
        for &(d, m, n) in &[(8usize, 2usize, 96usize), (32, 4, 96), (64, 4, 96)] {
            let p = params(n, d, m, 0.3, pseudo_random(n, d, 1, 0.3), DVector::from_element(n, 2.0));
            let theta = Theta { w_hh: pseudo_random(d, d, 2, 0.2), w_xu: pseudo_random(d, m, 3, 1.0), b: DVector::zeros(d) };
            let limits = ActuationLimits { lo: DVector::from_element(m, -1.0), hi: DVector::from_element(m, 1.0) };
            let x = DVector::from_element(d, 0.1);
            let u_prev = DVector::zeros(m);
            let mut u = DVector::zeros(m);
            for kind in [ControllerKind::Mppi, ControllerKind::Lqr] {
                for obj in [Objective::Latent(DVector::from_element(d, 0.2)), Objective::Rates(DVector::from_element(n, 10.0))] {
                    let cfg = ControllerConfig { kind, ..Default::default() };
                    let mut ctrl = Controller::new(&cfg, &p.dims, &p).unwrap();
                    let reps = 50;
                    let t0 = std::time::Instant::now();
                    for bin in 0..reps {
                        let ctx = ControlContext { params: &p, theta: &theta, x: &x, u_prev: &u_prev, bin };
                        ctrl.compute(&ctx, &obj, &limits, &mut u);
                    }
                    let per = t0.elapsed().as_secs_f64() / reps as f64;
                    let rates = matches!(obj, Objective::Rates(_));
                    eprintln!("{kind:?} d={d} m={m} N={n} rates={rates}: {:.3} ms/bin", per * 1e3);
                }
            }
        }
    }
}
