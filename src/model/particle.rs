//! Bootstrap particle filter for the latent state (docs/model.md, "Particle filter"): the
//! option for strongly nonlinear regimes, and the CPU reference of the GPU's particle
//! kernels (same Philox draws, same order of operations).
//!
//! Per bin k (Philox stream = k):
//! - propagate: x_p ← f(x_p, u; θ) + √q_i · normal_at(seed, k, p·d + i);
//! - weigh (with data): log w_p += Σ_i y_i log λ_pi − λ_pi, λ = Δ exp(clamped C x_p + d)
//!   (log y! is the same for every particle and cancels); normalise; ESS = 1 / Σ w_p²;
//! - estimate: x = Σ_p w_p x_p;
//! - resample (systematic) when ESS < `resample_ess`·P, with the single uniform
//!   uniform_at(seed, k + 2⁶³, 0): particle j copies the first p whose cumulative weight
//!   exceeds (j + u)/P; weights become uniform.
//!
//! Cost O(P·(d² + d·m + N·d)) per bin; allocation-free after [`ParticleFilter::new`].

use super::dynamics::step;
use super::observation::log_rates;
use super::{Dims, Theta};
use nalgebra::{DMatrix, DVector};
use neuroloop_kernels::philox;

/// Philox stream offset of the resampling uniform (bin k draws from stream k + 2⁶³).
pub const RESAMPLE_STREAM: u64 = 1 << 63;
/// Philox stream of the initial particle cloud.
pub const INIT_STREAM: u64 = (1 << 63) - 1;

/// `[model.particles]` in the rig file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParticleConfig {
    /// Number of particles P.
    pub count: usize,
    /// Philox seed of the process noise and the resampling draws.
    pub seed: u64,
    /// Resample when the effective sample size drops below this fraction of P.
    pub resample_ess: f64,
}

impl Default for ParticleConfig {
    fn default() -> Self {
        ParticleConfig { count: 1024, seed: 11, resample_ess: 0.5 }
    }
}

impl ParticleConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.count == 0 || self.count > 1 << 20 {
            return Err(format!("count = {} must be between 1 and 1048576", self.count));
        }
        if !(0.0..=1.0).contains(&self.resample_ess) {
            return Err(format!("resample_ess = {} must be in [0, 1]", self.resample_ess));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct ParticleFilter {
    pub cfg: ParticleConfig,
    d: usize,
    /// Particles, row-major (P × d): particle p at p·d..(p+1)·d.
    pub particles: Vec<f64>,
    /// Normalised log-weights (P).
    pub logw: Vec<f64>,
    /// Normalised weights of the last weighing (P).
    pub weights: Vec<f64>,
    /// Posterior mean (after `update` / `skip_update`).
    pub x: DVector<f64>,
    /// The mean before the last `predict` (x_{k−1}).
    pub x_prev: DVector<f64>,
    /// Effective sample size of the last weighing.
    pub ess: f64,
    /// Whether the last update resampled.
    pub resampled: bool,
    scratch: Vec<f64>,
    cur: DVector<f64>,
    next: DVector<f64>,
    tanh_a: DVector<f64>,
    v: DVector<f64>,
    eta: DVector<f64>,
    normals: Vec<f64>,
}

impl ParticleFilter {
    /// P particles around x0 with variance p0_var (Philox stream [`INIT_STREAM`]).
    pub fn new(dims: &Dims, cfg: ParticleConfig, x0: &DVector<f64>, p0_var: f64) -> Self {
        let (d, np) = (dims.latent, cfg.count.max(1));
        let mut particles = vec![0.0; np * d];
        crate::control::mppi::fill_normals(cfg.seed, INIT_STREAM, 0, p0_var.sqrt(), &mut particles);
        for p in 0..np {
            for i in 0..d {
                particles[p * d + i] += x0[i];
            }
        }
        let mut pf = ParticleFilter {
            d,
            particles,
            logw: vec![-(np as f64).ln(); np],
            weights: vec![1.0 / np as f64; np],
            x: x0.clone(),
            x_prev: x0.clone(),
            ess: np as f64,
            resampled: false,
            scratch: vec![0.0; np * d],
            cur: DVector::zeros(d),
            next: DVector::zeros(d),
            tanh_a: DVector::zeros(d),
            v: DVector::zeros(dims.control),
            eta: DVector::zeros(dims.n_units),
            normals: vec![0.0; np * d],
            cfg,
        };
        pf.mean_from_weights();
        pf
    }

    pub fn len(&self) -> usize {
        self.logw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.logw.is_empty()
    }

    /// Propagates every particle through the dynamics with process noise (bin `bin`'s
    /// Philox stream). Allocation-free.
    pub fn predict(&mut self, theta: &Theta, alpha: f64, q_diag: &DVector<f64>, u: &DVector<f64>, bin: u64) {
        let d = self.d;
        self.x_prev.copy_from(&self.x);
        self.v.copy_from(u);
        crate::control::mppi::fill_normals(self.cfg.seed, bin, 0, 1.0, &mut self.normals);
        for p in 0..self.len() {
            self.cur.copy_from_slice(&self.particles[p * d..(p + 1) * d]);
            step(theta, alpha, &self.cur, &self.v, &mut self.next, &mut self.tanh_a);
            for i in 0..d {
                self.particles[p * d + i] = self.next[i] + q_diag[i].sqrt() * self.normals[p * d + i];
            }
        }
    }

    /// A bin without data: the estimate is the weighted mean of the propagated particles.
    pub fn skip_update(&mut self) {
        self.normalise();
        self.mean_from_weights();
        self.resampled = false;
    }

    /// Weighs the particles by the counts `y`, estimates, and resamples if the ESS is low.
    /// Allocation-free.
    pub fn update(&mut self, c: &DMatrix<f64>, dv: &DVector<f64>, log_rate_max: f64, bin_s: f64, y: &[f64], bin: u64) {
        let d = self.d;
        let ln_bin = bin_s.ln();
        for p in 0..self.len() {
            self.cur.copy_from_slice(&self.particles[p * d..(p + 1) * d]);
            log_rates(c, dv, log_rate_max, &self.cur, &mut self.eta);
            let mut ll = 0.0;
            for i in 0..y.len() {
                let log_lambda = self.eta[i] + ln_bin;
                ll += y[i] * log_lambda - log_lambda.exp();
            }
            self.logw[p] += ll;
        }
        self.normalise();
        self.mean_from_weights();
        self.resampled = false;
        let np = self.len();
        if self.ess < self.cfg.resample_ess * np as f64 {
            let u0 = philox::uniform_at(self.cfg.seed, bin.wrapping_add(RESAMPLE_STREAM), 0) as f64;
            let mut p = 0usize;
            let mut cum = self.weights[0];
            for j in 0..np {
                let pos = (j as f64 + u0) / np as f64;
                while cum <= pos && p + 1 < np {
                    p += 1;
                    cum += self.weights[p];
                }
                self.scratch[j * d..(j + 1) * d].copy_from_slice(&self.particles[p * d..(p + 1) * d]);
            }
            std::mem::swap(&mut self.particles, &mut self.scratch);
            self.logw.fill(-(np as f64).ln());
            self.weights.fill(1.0 / np as f64);
            self.resampled = true;
        }
    }

    /// weights = softmax(logw), logw renormalised, ESS.
    fn normalise(&mut self) {
        let mx = self.logw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !mx.is_finite() {
            // Every particle impossible (or NaN): start again from uniform weights.
            let np = self.len();
            self.logw.fill(-(np as f64).ln());
            self.weights.fill(1.0 / np as f64);
            self.ess = np as f64;
            return;
        }
        let mut s = 0.0;
        for (w, &l) in self.weights.iter_mut().zip(&self.logw) {
            *w = (l - mx).exp();
            s += *w;
        }
        let mut sq = 0.0;
        for (w, l) in self.weights.iter_mut().zip(self.logw.iter_mut()) {
            *w /= s;
            *l = w.ln();
            sq += *w * *w;
        }
        self.ess = 1.0 / sq;
    }

    fn mean_from_weights(&mut self) {
        let d = self.d;
        self.x.fill(0.0);
        for p in 0..self.len() {
            for i in 0..d {
                self.x[i] += self.weights[p] * self.particles[p * d + i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::Rng;
    use super::super::ModelParams;
    use super::*;

    #[test]
    fn systematic_resampling_copies_by_cumulative_weight() {
        let dims = Dims { n_units: 3, latent: 1, embed: 1, control: 1, hidden: 2 };
        let cfg = ParticleConfig { count: 4, seed: 5, resample_ess: 1.0 };
        let mut pf = ParticleFilter::new(&dims, cfg, &DVector::zeros(1), 1.0);
        pf.particles = vec![10.0, 20.0, 30.0, 40.0];
        // Weights 0.1, 0.6, 0.0, 0.3 as log-weights; zero counts leave them as they are.
        pf.logw = vec![0.1f64.ln(), 0.6f64.ln(), f64::NEG_INFINITY, 0.3f64.ln()];
        let c = DMatrix::zeros(3, 1);
        let dv = DVector::from_element(3, -30.0); // λ ≈ 0: the counts carry no information
        pf.update(&c, &dv, 8.0, 0.01, &[0.0, 0.0, 0.0], 9);
        assert!(pf.resampled);
        let u0 = philox::uniform_at(5, 9 + RESAMPLE_STREAM, 0) as f64;
        let cum = [0.1, 0.7, 0.7, 1.0];
        for j in 0..4 {
            let pos = (j as f64 + u0) / 4.0;
            let a = cum.iter().position(|&c| c > pos).unwrap();
            assert_eq!(pf.particles[j], [10.0, 20.0, 30.0, 40.0][a], "particle {j} (pos {pos})");
        }
        assert!(pf.particles.iter().all(|&p| p != 30.0), "a zero-weight particle survived");
        assert!((pf.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn tracks_the_latent_state_like_the_ekf() {
        let dims = Dims { n_units: 96, latent: 4, embed: 3, control: 2, hidden: 16 };
        let p = ModelParams::synthetic(dims, 1, 0.01, 3);
        let theta = p.theta_at(&p.z_init);
        let cfg = ParticleConfig { count: 512, ..ParticleConfig::default() };
        let mut pf = ParticleFilter::new(&dims, cfg, &DVector::zeros(4), p.initial_state_var);
        let mut rng = Rng::new(3, 9);
        let (mut x, mut next, mut t) = (DVector::zeros(4), DVector::zeros(4), DVector::zeros(4));
        let mut eta = DVector::zeros(96);
        let u = DVector::zeros(2);
        let (mut se, mut var, mut mean) = (0.0, 0.0, DVector::<f64>::zeros(4));
        let mut ekf = super::super::ekf::PointProcessEkf::new(&dims, p.initial_state_var);
        let mut se_ekf = 0.0;
        let bins = 2000;
        let mut truth = Vec::new();
        for k in 0..bins {
            step(&theta, p.alpha, &x, &u, &mut next, &mut t);
            for i in 0..4 {
                x[i] = next[i] + p.process_noise[i].sqrt() * rng.normal();
            }
            log_rates(&p.obs_c, &p.obs_d, p.log_rate_max, &x, &mut eta);
            let y: Vec<f64> = eta.iter().map(|&e| rng.poisson(p.bin_s * e.exp())).collect();
            pf.predict(&theta, p.alpha, &p.process_noise, &u, k);
            pf.update(&p.obs_c, &p.obs_d, p.log_rate_max, p.bin_s, &y, k);
            ekf.predict(&theta, p.alpha, &p.process_noise, &u);
            ekf.update(&p.obs_c, &p.obs_d, p.log_rate_max, p.bin_s, &y);
            assert!((pf.weights.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            assert!(pf.ess >= 1.0 - 1e-9 && pf.ess <= 512.0 + 1e-9);
            if k >= 200 {
                se += (&pf.x - &x).norm_squared();
                se_ekf += (&ekf.x - &x).norm_squared();
                truth.push(x.clone());
                mean += &x;
            }
        }
        mean /= truth.len() as f64;
        for x in &truth {
            var += (x - &mean).norm_squared();
        }
        let (r2, r2_ekf) = (1.0 - se / var, 1.0 - se_ekf / var);
        assert!(r2 > 0.7 && r2 > r2_ekf - 0.05, "particle filter R² {r2:.3}, EKF {r2_ekf:.3} on the same data");
    }
}
