//! Online embedding update (docs/model.md, "Online embedding update").
//!
//! Each bin, after the filter's update, the task embedding z takes one normalised
//! gradient-ascent step on the one-bin objective
//!
//!   L(z) = log p(y_k | x⁻(z)) − w · ½‖z‖²/σ_z²,   x⁻(z) = f(x_{k−1}, u_{k−1}; θ(z)),
//!
//! back-propagated through the Poisson likelihood, the dynamics and the hypernetwork (one
//! reverse pass), with RMSProp step normalisation and a trust region on ‖Δz‖. The prior
//! weight w ([`EmbeddingConfig::prior_weight`]) spreads the Gaussian prior over ~1/w bins:
//! with w = 1 (the literal per-bin objective) the prior's pull ‖z‖/σ_z² is counted in full
//! every bin and swamps one bin's likelihood gradient, dragging z to 0.
//! Everything per bin is allocation-free; buffers are sized in [`EmbeddingUpdater::new`].

use super::dynamics::step;
use super::hypernet::HypernetScratch;
use super::observation::{log_rates, poisson_loglik, unclamped};
use super::{Dims, ModelParams, Theta};
use nalgebra::DVector;

/// `[model.embedding]` in the rig file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingConfig {
    /// Step size η of the normalised ascent (per bin, in units of z).
    pub learning_rate: f64,
    /// RMSProp decay ρ of the running mean of g².
    pub rms_decay: f64,
    /// Largest ‖Δz‖ per bin.
    pub trust_radius: f64,
    /// Turn the online update on or off.
    pub enabled: bool,
    /// Weight w of the Gaussian prior term per bin (see the module docs); 1 is the literal
    /// per-bin objective, the default 0.01 spreads the prior over ~100 bins.
    pub prior_weight: f64,
}

/// The bin width the defaults of η, the trust radius and w are tuned at (10 ms).
pub const DEFAULTS_BIN_S: f64 = 0.01;

impl Default for EmbeddingConfig {
    fn default() -> Self {
        EmbeddingConfig { learning_rate: 0.02, rms_decay: 0.99, trust_radius: 0.05, enabled: true, prior_weight: 0.01 }
    }
}

impl EmbeddingConfig {
    /// The defaults for bins of `bin_s` seconds (docs/model.md, "Online embedding update"):
    /// below 10 ms, η and the trust radius scale with Δ / 10 ms, so z moves as fast per
    /// second as at 10 ms, and w with (Δ / 10 ms)². The one-bin likelihood's pull on z
    /// shrinks as Δ²: the prediction x⁻(z) moves by α ∝ Δ per bin and the counts it explains
    /// are ∝ Δ. A prior weighed by a fixed w per bin then swamps it at fine bins. Measured at
    /// 1 ms with `neuroloop filters`: w = 0.01 dragged z towards 0 (live latent R² 0.42
    /// against 0.83 offline with the true θ); the scaled w = 10⁻⁴ gives 0.82. At 10 ms and
    /// coarser, the 10 ms values. The rig file's own keys are taken as given (per bin).
    pub fn defaults_for_bin(bin_s: f64) -> EmbeddingConfig {
        let r = if bin_s.is_finite() && bin_s > 0.0 { (bin_s / DEFAULTS_BIN_S).min(1.0) } else { 1.0 };
        let d = EmbeddingConfig::default();
        EmbeddingConfig { learning_rate: d.learning_rate * r, trust_radius: d.trust_radius * r, prior_weight: d.prior_weight * r * r, ..d }
    }

    /// The documented ranges (README, "Rig file"): η in [0, 10], ρ in [0, 1), the trust
    /// radius in (0, 100], w in [0, 1000]. Out of range the update would turn z into NaN
    /// (ρ ≥ 1: v̂ divides by 1 − ρᵗ ≤ 0) or run away (η < 0 ascends the wrong way).
    /// Returns the offending key and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let check = |key: &'static str, v: f64, ok: bool, range: &str| {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err((key, format!("must be in {range}, got {v}")))
            }
        };
        check("learning_rate", self.learning_rate, (0.0..=10.0).contains(&self.learning_rate), "[0, 10]")?;
        check("rms_decay", self.rms_decay, (0.0..1.0).contains(&self.rms_decay), "[0, 1)")?;
        check("trust_radius", self.trust_radius, self.trust_radius > 0.0 && self.trust_radius <= 100.0, "(0, 100]")?;
        check("prior_weight", self.prior_weight, (0.0..=1000.0).contains(&self.prior_weight), "[0, 1000]")?;
        Ok(())
    }
}

/// RMSProp's ε in the step normalisation.
const RMS_EPS: f64 = 1e-8;

/// The online embedding optimiser and its scratch.
#[derive(Debug, Clone)]
pub struct EmbeddingUpdater {
    pub cfg: EmbeddingConfig,
    /// The last gradient g (e).
    pub grad: DVector<f64>,
    /// The last step Δz (e).
    pub delta: DVector<f64>,
    /// log p(y | x⁻(z)) from the last gradient evaluation.
    pub last_loglik: f64,
    /// Steps taken since construction / reset.
    pub steps: u64,
    v: DVector<f64>,
    decay_pow: f64,
    x_pred: DVector<f64>,
    tanh_a: DVector<f64>,
    eta: DVector<f64>,
    resid: DVector<f64>,
    dl_dx: DVector<f64>,
    dl_da: DVector<f64>,
    grad_theta: Theta,
}

impl EmbeddingUpdater {
    pub fn new(dims: &Dims, cfg: EmbeddingConfig) -> Self {
        let (n, d, e) = (dims.n_units, dims.latent, dims.embed);
        EmbeddingUpdater {
            cfg,
            grad: DVector::zeros(e),
            delta: DVector::zeros(e),
            last_loglik: 0.0,
            steps: 0,
            v: DVector::zeros(e),
            decay_pow: 1.0,
            x_pred: DVector::zeros(d),
            tanh_a: DVector::zeros(d),
            eta: DVector::zeros(n),
            resid: DVector::zeros(n),
            dl_dx: DVector::zeros(d),
            dl_da: DVector::zeros(d),
            grad_theta: Theta::zeros(dims),
        }
    }

    /// Forget the RMS statistics (e.g. after a task jump). Allocation-free.
    pub fn reset(&mut self) {
        self.v.fill(0.0);
        self.decay_pow = 1.0;
        self.steps = 0;
        self.grad.fill(0.0);
        self.delta.fill(0.0);
        self.last_loglik = 0.0;
    }

    /// g = ∇_z L(z) into `grad_z` (overwritten) (hot, allocation-free); returns
    /// log p(y | x⁻(z)).
    ///
    /// Preconditions: `theta` = θ(z) and `hyper_scratch` holds the forward pass of
    /// `params.hypernet.decode(z, theta, hyper_scratch)` at this same z (this function
    /// does not decode). `x_prev` = x_{k−1} (e.g. [`super::ekf::PointProcessEkf::x_prev`])
    /// and `u` the input applied over that step; `y` the counts of bin k.
    #[allow(clippy::too_many_arguments)]
    pub fn gradient(
        &mut self,
        params: &ModelParams,
        z: &DVector<f64>,
        theta: &Theta,
        x_prev: &DVector<f64>,
        u: &DVector<f64>,
        y: &[f64],
        hyper_scratch: &mut HypernetScratch,
        grad_z: &mut DVector<f64>,
    ) -> f64 {
        let lmax = params.log_rate_max;
        step(theta, params.alpha, x_prev, u, &mut self.x_pred, &mut self.tanh_a);
        log_rates(&params.obs_c, &params.obs_d, lmax, &self.x_pred, &mut self.eta);
        let ll = poisson_loglik(y, &self.eta, params.bin_s);
        // dL/dx⁻ = Cᵀ (y − λ), clamped units masked.
        for ((r, &eta), &yi) in self.resid.iter_mut().zip(self.eta.iter()).zip(y) {
            *r = if unclamped(eta, lmax) { yi - params.bin_s * eta.exp() } else { 0.0 };
        }
        self.dl_dx.gemv_tr(1.0, &params.obs_c, &self.resid, 0.0);
        // dL/da = α (1 − tanh² a) ⊙ dL/dx⁻.
        for i in 0..self.dl_da.len() {
            let t = self.tanh_a[i];
            self.dl_da[i] = params.alpha * (1.0 - t * t) * self.dl_dx[i];
        }
        // dL/dW_hh = dL/da x_prevᵀ, dL/dW_xu = dL/da uᵀ, dL/db = dL/da.
        self.grad_theta.w_hh.ger(1.0, &self.dl_da, x_prev, 0.0);
        if !u.is_empty() {
            self.grad_theta.w_xu.ger(1.0, &self.dl_da, u, 0.0);
        }
        self.grad_theta.b.copy_from(&self.dl_da);
        params.hypernet.backprop(z, &self.grad_theta, hyper_scratch, grad_z);
        let prior = self.cfg.prior_weight / (params.z_prior_sigma * params.z_prior_sigma);
        grad_z.axpy(-prior, z, 1.0);
        self.last_loglik = ll;
        ll
    }

    /// One online step (hot, allocation-free): g = ∇L(z) (same preconditions as
    /// [`gradient`](Self::gradient)), z += η g / (√v̂ + ε) with RMSProp's bias-corrected v̂,
    /// ‖Δz‖ capped at the trust radius; then `theta` and `hyper_scratch` are re-decoded at
    /// the new z, so they are ready for the next bin's predict and step. Returns ‖Δz‖
    /// (0 when disabled or when the gradient is not finite, in which case nothing moves).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        params: &ModelParams,
        z: &mut DVector<f64>,
        theta: &mut Theta,
        x_prev: &DVector<f64>,
        u: &DVector<f64>,
        y: &[f64],
        hyper_scratch: &mut HypernetScratch,
    ) -> f64 {
        if !self.cfg.enabled {
            self.delta.fill(0.0);
            return 0.0;
        }
        let mut g = std::mem::replace(&mut self.grad, DVector::zeros(0));
        self.gradient(params, z, theta, x_prev, u, y, hyper_scratch, &mut g);
        self.grad = g;
        if !self.grad.iter().all(|v| v.is_finite()) {
            self.delta.fill(0.0);
            return 0.0;
        }
        let rho = self.cfg.rms_decay;
        self.steps += 1;
        self.decay_pow *= rho;
        let correction = 1.0 / (1.0 - self.decay_pow).max(1e-300);
        for k in 0..self.grad.len() {
            let g = self.grad[k];
            self.v[k] = rho * self.v[k] + (1.0 - rho) * g * g;
            let v_hat = self.v[k] * correction;
            self.delta[k] = self.cfg.learning_rate * g / (v_hat.sqrt() + RMS_EPS);
        }
        let mut norm = self.delta.norm();
        if norm > self.cfg.trust_radius {
            self.delta *= self.cfg.trust_radius / norm;
            norm = self.cfg.trust_radius;
        }
        *z += &self.delta;
        params.hypernet.decode(z, theta, hyper_scratch);
        norm
    }
}

#[cfg(test)]
mod tests {
    use super::super::ekf::PointProcessEkf;
    use super::super::testutil::{randn_vector, Rng};
    use super::*;

    /// The objective, computed independently with allocating code.
    fn objective(p: &ModelParams, cfg: &EmbeddingConfig, z: &DVector<f64>, x_prev: &DVector<f64>, u: &DVector<f64>, y: &[f64]) -> f64 {
        let th = p.theta_at(z);
        let a = &th.w_hh * x_prev + &th.w_xu * u + &th.b;
        let x_pred = x_prev + (a.map(f64::tanh) - x_prev) * p.alpha;
        let eta = (&p.obs_c * &x_pred + &p.obs_d).map(|v| v.clamp(super::super::observation::LOG_RATE_MIN, p.log_rate_max));
        poisson_loglik(y, &eta, p.bin_s) - cfg.prior_weight * 0.5 * z.norm_squared() / (p.z_prior_sigma * p.z_prior_sigma)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let dims = Dims { n_units: 20, latent: 3, embed: 4, control: 2, hidden: 6 };
        for seed in 0..4u64 {
            let mut p = ModelParams::synthetic(dims, 2, 0.01, seed);
            p.alpha = 0.3; // larger sensitivity than the default 0.1
            p.z_prior_sigma = 0.8;
            let cfg = EmbeddingConfig { prior_weight: 0.5, ..Default::default() };
            let z = randn_vector(seed, 40, dims.embed, 1.0);
            let x_prev = randn_vector(seed, 41, dims.latent, 0.5);
            let u = randn_vector(seed, 42, dims.control, 0.7);
            let mut rng = Rng::new(seed, 43);
            let y: Vec<f64> = (0..dims.n_units).map(|_| rng.poisson(2.0)).collect();
            let mut upd = EmbeddingUpdater::new(&dims, cfg.clone());
            let mut theta = Theta::zeros(&dims);
            let mut hs = HypernetScratch::new(&dims);
            p.hypernet.decode(&z, &mut theta, &mut hs);
            let mut g = DVector::zeros(dims.embed);
            let ll = upd.gradient(&p, &z, &theta, &x_prev, &u, &y, &mut hs, &mut g);
            let obj0 = objective(&p, &cfg, &z, &x_prev, &u, &y);
            let prior0 = cfg.prior_weight * 0.5 * z.norm_squared() / (p.z_prior_sigma * p.z_prior_sigma);
            assert!((ll - (obj0 + prior0)).abs() < 1e-9);
            let h = 1e-5;
            let scale = g.amax().max(1e-3);
            for k in 0..dims.embed {
                let mut zp = z.clone();
                zp[k] += h;
                let mut zm = z.clone();
                zm[k] -= h;
                let fd = (objective(&p, &cfg, &zp, &x_prev, &u, &y) - objective(&p, &cfg, &zm, &x_prev, &u, &y)) / (2.0 * h);
                assert!((fd - g[k]).abs() / scale < 1e-5, "seed {seed} k {k}: fd {fd} vs {}", g[k]);
            }
        }
    }

    #[test]
    fn step_respects_trust_region_and_redecodes() {
        let dims = Dims { n_units: 30, latent: 3, embed: 3, control: 2, hidden: 8 };
        let p = ModelParams::synthetic(dims, 2, 0.01, 5);
        let cfg = EmbeddingConfig { learning_rate: 1.0, trust_radius: 0.01, ..Default::default() };
        let mut upd = EmbeddingUpdater::new(&dims, cfg);
        let mut z = p.z_init.clone();
        let mut theta = p.theta_at(&z);
        let mut hs = HypernetScratch::new(&dims);
        p.hypernet.decode(&z, &mut theta, &mut hs);
        let x_prev = DVector::from_element(dims.latent, 0.2);
        let u = DVector::from_element(dims.control, 0.5);
        let y = vec![3.0; dims.n_units];
        let z0 = z.clone();
        let moved = upd.step(&p, &mut z, &mut theta, &x_prev, &u, &y, &mut hs);
        assert!((moved - 0.01).abs() < 1e-12);
        assert!(((&z - &z0).norm() - 0.01).abs() < 1e-12);
        assert_eq!(theta, p.theta_at(&z));
        // Disabled: nothing moves.
        upd.cfg.enabled = false;
        let z1 = z.clone();
        assert_eq!(upd.step(&p, &mut z, &mut theta, &x_prev, &u, &y, &mut hs), 0.0);
        assert_eq!(z, z1);
    }

    #[test]
    fn config_parses_from_toml_with_defaults() {
        let cfg: EmbeddingConfig = toml::from_str("learning_rate = 0.05\n").unwrap();
        assert_eq!(cfg.learning_rate, 0.05);
        assert_eq!(cfg.trust_radius, EmbeddingConfig::default().trust_radius);
        assert!(toml::from_str::<EmbeddingConfig>("learning_rat = 0.05\n").is_err());
    }

    /// Closed loop: data from the true task embedding, filter + online steps from a wrong
    /// start; z approaches the truth.
    #[test]
    fn online_steps_approach_the_true_embedding() {
        let dims = Dims { n_units: 96, latent: 4, embed: 3, control: 2, hidden: 16 };
        let p = ModelParams::synthetic(dims, 3, 0.01, 21);
        let z_true = p.task_library[1].clone();
        let theta_true = p.theta_at(&z_true);
        let (n, d, m) = (dims.n_units, dims.latent, dims.control);
        let mut z = &z_true + randn_vector(21, 77, dims.embed, 1.0).normalize() * 0.8;
        let d0 = (&z - &z_true).norm();
        let mut theta = p.theta_at(&z);
        let mut hs = HypernetScratch::new(&dims);
        p.hypernet.decode(&z, &mut theta, &mut hs);
        let mut upd = EmbeddingUpdater::new(&dims, EmbeddingConfig::default());
        let mut ekf = PointProcessEkf::new(&dims, p.initial_state_var);
        let mut rng = Rng::new(21, 78);
        let (mut x, mut next, mut t) = (DVector::zeros(d), DVector::zeros(d), DVector::zeros(d));
        let mut eta = DVector::zeros(n);
        let mut y = vec![0.0; n];
        let mut u = DVector::zeros(m);
        let bins = 6000;
        let mut dist_tail = 0.0;
        for k in 0..bins {
            step(&theta_true, p.alpha, &x, &u, &mut next, &mut t);
            for i in 0..d {
                next[i] += p.process_noise[i].sqrt() * rng.normal();
            }
            x.copy_from(&next);
            log_rates(&p.obs_c, &p.obs_d, p.log_rate_max, &x, &mut eta);
            for i in 0..n {
                y[i] = rng.poisson(p.bin_s * eta[i].exp());
            }
            ekf.predict(&theta, p.alpha, &p.process_noise, &u);
            ekf.update(&p.obs_c, &p.obs_d, p.log_rate_max, p.bin_s, &y);
            upd.step(&p, &mut z, &mut theta, &ekf.x_prev, &u, &y, &mut hs);
            if k % 50 == 0 {
                for j in 0..m {
                    u[j] = 2.0 * rng.uniform() - 1.0;
                }
            }
            if k >= bins - 1000 {
                dist_tail += (&z - &z_true).norm() / 1000.0;
            }
        }
        assert!(dist_tail < 0.5 * d0, "distance {d0} → {dist_tail}");
    }
}
