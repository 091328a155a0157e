//! Synthetic ground-truth models for the built-in simulator and the tests.
//!
//! [`ModelParams::synthetic`] builds a complete model (hypernetwork, observation model,
//! task library, policy head) deterministically from a seed with the counter-based Philox
//! generator, so a simulated rig and a test can regenerate the exact same "brain".
//!
//! Construction: every generator's output is `base + task-specific variation`, where the
//! base is a hand-chosen well-behaved tensor and the variation is a random linear read-out
//! of the hidden ReLU layer, scaled to a chosen size and centred over the task library.
//! W_hh's base is W_HH_GAIN × a block rotation and its variation is shrunk until every task's
//! ‖W_hh‖₂ ≤ 0.97, which makes x ↦ tanh(W_hh x + W_xu u + b) a contraction: one stable fixed
//! point per task and input, with damped rotations around it. b varies strongly between
//! tasks (distinct fixed points) and W_xu is O(1) so inputs in [−1, 1] move the latent by
//! O(1) at steady state.

use super::hypernet::HypernetScratch;
use super::{Dims, Generator, Hypernet, ModelParams, Policy, Theta};
use nalgebra::{DMatrix, DVector};
use neuroloop_kernels::philox::{normal_at, uniform_at};

/// Norm of the library embeddings.
const TASK_NORM: f64 = 1.5;
/// Gain of W_hh's base rotation.
const W_HH_GAIN: f64 = 0.75;
/// Scale of W_xu's base entries.
const W_XU_SCALE: f64 = 0.35;
/// RMS spread of b over tasks.
const B_SPREAD: f64 = 0.35;
/// Latent time constant τ (s): α = Δ / τ.
const TAU_S: f64 = 0.2;
/// Process-noise variance per second of latent diffusion: Q = Q_PER_S · Δ. Chosen with
/// [`OBS_GAIN`] so the latent wanders visibly (stationary std ≈ 0.3) yet a 96-unit
/// population pins it down (filter R² > 0.9 with the true model).
const Q_PER_S: f64 = 0.3;
/// Scale of the observation weights: C ~ N(0, OBS_GAIN² / d).
const OBS_GAIN: f64 = 1.5;
/// Upper bound on ‖W_hh(z)‖₂ for every library task.
const MAX_W_HH_NORM: f64 = 0.97;

// Philox streams, one per tensor.
const S_LIBRARY: u64 = 1;
const S_PROBES: u64 = 2;
const S_GEN: u64 = 10; // + 10·generator + k
const S_ROT: u64 = 50;
const S_XU_BASE: u64 = 51;
const S_OBS_C: u64 = 60;
const S_OBS_D: u64 = 61;
const S_POLICY: u64 = 70;

fn randn_matrix(seed: u64, stream: u64, r: usize, c: usize, scale: f64) -> DMatrix<f64> {
    DMatrix::from_fn(r, c, |i, j| scale * normal_at(seed, stream, (i * c + j) as u64) as f64)
}

fn randn_vector(seed: u64, stream: u64, n: usize, scale: f64) -> DVector<f64> {
    DVector::from_fn(n, |i, _| scale * normal_at(seed, stream, i as u64) as f64)
}

fn relu_hidden(w1: &DMatrix<f64>, b1: &DVector<f64>, z: &DVector<f64>) -> DVector<f64> {
    (w1 * z + b1).map(|v| v.max(0.0))
}

/// Task embeddings: orthonormal directions (Gram–Schmidt on Gaussian draws) while they last,
/// then random directions, all of norm [`TASK_NORM`].
fn task_library(seed: u64, e: usize, n_tasks: usize) -> Vec<DVector<f64>> {
    let mut out: Vec<DVector<f64>> = Vec::with_capacity(n_tasks);
    for t in 0..n_tasks {
        let mut v = DVector::from_fn(e, |i, _| normal_at(seed, S_LIBRARY + 100 * t as u64, i as u64) as f64);
        if t < e {
            for prev in &out {
                let p = prev / TASK_NORM;
                v -= &p * p.dot(&v);
            }
        }
        let n = v.norm();
        out.push(if n > 1e-9 { v * (TASK_NORM / n) } else { DVector::from_element(e, TASK_NORM / (e as f64).sqrt()) });
    }
    out
}

/// One generator whose output over the task library is `base` on average, varying with z
/// by about `spread` (RMS per output) over embeddings of norm [`TASK_NORM`].
#[allow(clippy::too_many_arguments)]
fn generator(
    seed: u64,
    index: u64,
    w1: &DMatrix<f64>,
    b1: &DVector<f64>,
    centre_on: &[DVector<f64>],
    probes: &[DVector<f64>],
    base: &DVector<f64>,
    spread: f64,
) -> Generator {
    let h = w1.nrows();
    let out = base.len();
    let hid_probe: Vec<DVector<f64>> = probes.iter().map(|z| relu_hidden(w1, b1, z)).collect();
    let mean_probe = hid_probe.iter().fold(DVector::zeros(h), |a, v| a + v) / probes.len() as f64;
    let rms = (hid_probe.iter().map(|v| (v - &mean_probe).norm_squared()).sum::<f64>() / probes.len() as f64).sqrt();
    let w2 = randn_matrix(seed, S_GEN + 10 * index + 2, out, h, spread / rms.max(1e-9));
    let mean_centre = centre_on.iter().fold(DVector::zeros(h), |a, z| a + relu_hidden(w1, b1, z)) / centre_on.len() as f64;
    let b2 = base - &w2 * mean_centre;
    Generator { w1: w1.clone(), b1: b1.clone(), w2, b2 }
}

fn row_major(m: &DMatrix<f64>) -> DVector<f64> {
    DVector::from_iterator(m.len(), m.transpose().iter().copied())
}

impl ModelParams {
    /// A deterministic synthetic model (see the module docs). `n_tasks` library embeddings
    /// (the first is `z_init`; with `n_tasks == 0` the library is empty and `z_init` is a
    /// random embedding of the same norm). α = Δ / τ (τ = 200 ms), Q = 0.3 s⁻¹ · Δ.
    pub fn synthetic(dims: Dims, n_tasks: usize, bin_s: f64, seed: u64) -> ModelParams {
        let (n, d, e, m, h) = (dims.n_units, dims.latent, dims.embed, dims.control, dims.hidden);
        let library = task_library(seed, e, n_tasks);
        let z_init = match library.first() {
            Some(z) => z.clone(),
            None => task_library(seed ^ 0x5eed, e, 1).remove(0),
        };
        let probes: Vec<DVector<f64>> = (0..32u64)
            .map(|p| {
                let v = DVector::from_fn(e, |i, _| normal_at(seed, S_PROBES + 100 * p, i as u64) as f64);
                let nv = v.norm().max(1e-9);
                v * (TASK_NORM / nv)
            })
            .collect();
        let centre_on: Vec<DVector<f64>> = if library.is_empty() { vec![z_init.clone()] } else { library.clone() };

        // Bases. W_hh: W_HH_GAIN × block rotation (angles in [0.3, 0.8] rad), 0.5 on an odd tail.
        let mut w_hh_base = DMatrix::zeros(d, d);
        let mut i = 0;
        while i < d {
            if i + 1 < d {
                let ang = 0.3 + 0.5 * uniform_at(seed, S_ROT, i as u64) as f64;
                let (c, s) = (ang.cos(), ang.sin());
                w_hh_base[(i, i)] = W_HH_GAIN * c;
                w_hh_base[(i, i + 1)] = -W_HH_GAIN * s;
                w_hh_base[(i + 1, i)] = W_HH_GAIN * s;
                w_hh_base[(i + 1, i + 1)] = W_HH_GAIN * c;
                i += 2;
            } else {
                w_hh_base[(i, i)] = 0.5;
                i += 1;
            }
        }
        let w_xu_base = randn_matrix(seed, S_XU_BASE, d, m, W_XU_SCALE);

        // Shared-shape first layers (each generator has its own weights).
        let first = |k: u64| (randn_matrix(seed, S_GEN + 10 * k, h, e, 1.0), randn_vector(seed, S_GEN + 10 * k + 1, h, 0.5));
        let (w1_hh, b1_hh) = first(0);
        let (w1_xu, b1_xu) = first(1);
        let (w1_b, b1_b) = first(2);
        let gen_xu = generator(seed, 1, &w1_xu, &b1_xu, &centre_on, &probes, &row_major(&w_xu_base), 0.2);
        let gen_b = generator(seed, 2, &w1_b, &b1_b, &centre_on, &probes, &DVector::zeros(d), B_SPREAD);
        let mut spread_hh = 0.15;
        let gen_hh = loop {
            let g = generator(seed, 0, &w1_hh, &b1_hh, &centre_on, &probes, &row_major(&w_hh_base), spread_hh);
            let ok = centre_on.iter().all(|z| {
                let out = &g.w2 * relu_hidden(&g.w1, &g.b1, z) + &g.b2;
                let w = DMatrix::from_row_slice(d, d, out.as_slice());
                w.singular_values().max() <= MAX_W_HH_NORM
            });
            if ok || spread_hh < 1e-4 {
                break g;
            }
            spread_hh *= 0.8;
        };
        let hypernet = Hypernet { w_hh: gen_hh, w_xu: gen_xu, b: gen_b };

        let obs_c = randn_matrix(seed, S_OBS_C, n, d, OBS_GAIN / (d as f64).sqrt());
        let obs_d = DVector::from_fn(n, |i, _| (10.0 + 20.0 * uniform_at(seed, S_OBS_D, i as u64) as f64).ln());

        let hp = h.max(1);
        let policy = Policy {
            w1: randn_matrix(seed, S_POLICY, hp, 2 * d, 1.0 / ((2 * d) as f64).sqrt()),
            b1: randn_vector(seed, S_POLICY + 1, hp, 0.1),
            w2: randn_matrix(seed, S_POLICY + 2, m, hp, 1.0 / (hp as f64).sqrt()),
            b2: DVector::zeros(m),
            scale: 1.0,
        };

        ModelParams {
            dims,
            bin_s,
            alpha: (bin_s / TAU_S).min(1.0),
            process_noise: DVector::from_element(d, Q_PER_S * bin_s),
            initial_state_var: 0.1,
            log_rate_max: 7.0,
            obs_c,
            obs_d,
            hypernet,
            z_init,
            z_prior_sigma: 1.0,
            task_library: library,
            policy: Some(policy),
            history: None,
        }
    }

    /// θ(z), allocating (for set-up code and tests; the per-bin path uses
    /// [`super::Hypernet::decode`] with preallocated buffers).
    pub fn theta_at(&self, z: &DVector<f64>) -> Theta {
        let mut theta = Theta::zeros(&self.dims);
        let mut scratch = HypernetScratch::new(&self.dims);
        self.hypernet.decode(z, &mut theta, &mut scratch);
        theta
    }
}

#[cfg(test)]
mod tests {
    use super::super::dynamics::step;
    use super::super::observation::log_rates;
    use super::super::testutil::Rng;
    use super::*;

    fn dims() -> Dims {
        Dims { n_units: 96, latent: 4, embed: 3, control: 2, hidden: 16 }
    }

    fn steady_state(p: &ModelParams, theta: &Theta, u: &DVector<f64>) -> (DVector<f64>, f64) {
        let d = p.dims.latent;
        let (mut x, mut next, mut t) = (DVector::zeros(d), DVector::zeros(d), DVector::zeros(d));
        let mut last_move = 0.0;
        for _ in 0..1500 {
            step(theta, p.alpha, &x, u, &mut next, &mut t);
            last_move = (&next - &x).norm();
            x.copy_from(&next);
        }
        (x, last_move)
    }

    #[test]
    fn deterministic_in_seed() {
        let a = ModelParams::synthetic(dims(), 3, 0.01, 7);
        let b = ModelParams::synthetic(dims(), 3, 0.01, 7);
        let c = ModelParams::synthetic(dims(), 3, 0.01, 8);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.z_init, a.task_library[0]);
        assert!((a.alpha - 0.05).abs() < 1e-15);
        let none = ModelParams::synthetic(dims(), 0, 0.02, 7);
        assert!(none.task_library.is_empty());
        assert!((none.alpha - 0.1).abs() < 1e-15);
    }

    #[test]
    fn rates_are_plausible_and_tasks_differ() {
        let dims = dims();
        for seed in 1u64..=4 {
            let p = ModelParams::synthetic(dims, 3, 0.01, seed);
            let (n, d, m) = (dims.n_units, dims.latent, dims.control);
            // Every task: a contraction with a stable fixed point; control moves it by O(1).
            let mut fixed = Vec::new();
            for z in &p.task_library {
                let theta = p.theta_at(z);
                assert!(theta.w_hh.singular_values().max() <= MAX_W_HH_NORM + 1e-12);
                let (x0, mv) = steady_state(&p, &theta, &DVector::zeros(m));
                assert!(mv < 1e-6, "seed {seed}: not settled ({mv})");
                let mut spread = 0.0f64;
                for j in 0..m {
                    let mut up = DVector::zeros(m);
                    up[j] = 1.0;
                    let (xp, _) = steady_state(&p, &theta, &up);
                    up[j] = -1.0;
                    let (xm, _) = steady_state(&p, &theta, &up);
                    spread = spread.max((&xp - &xm).norm());
                }
                assert!(spread > 0.5, "seed {seed}: control moves the latent by only {spread}");
                fixed.push(x0);
            }
            for a in 0..fixed.len() {
                for b in (a + 1)..fixed.len() {
                    let dist = (&fixed[a] - &fixed[b]).norm();
                    assert!(dist > 0.3, "seed {seed}: tasks {a} and {b} settle {dist} apart");
                }
            }
            // A 2000-bin noisy run under task 0 with a random slowly changing input.
            let theta = p.theta_at(&p.z_init);
            let mut rng = Rng::new(seed, 9);
            let (mut x, mut next, mut t) = (DVector::zeros(d), DVector::zeros(d), DVector::zeros(d));
            let mut eta = DVector::zeros(n);
            let mut counts = vec![0.0; n];
            let mut u = DVector::zeros(m);
            let bins = 2000;
            for k in 0..bins {
                if k % 100 == 0 {
                    for j in 0..m {
                        u[j] = 2.0 * rng.uniform() - 1.0;
                    }
                }
                step(&theta, p.alpha, &x, &u, &mut next, &mut t);
                for i in 0..d {
                    next[i] += p.process_noise[i].sqrt() * rng.normal();
                }
                x.copy_from(&next);
                log_rates(&p.obs_c, &p.obs_d, p.log_rate_max, &x, &mut eta);
                for i in 0..n {
                    counts[i] += rng.poisson(p.bin_s * eta[i].exp());
                }
            }
            let mut total = 0.0;
            for (i, c) in counts.iter().enumerate() {
                let hz = c / (bins as f64 * p.bin_s);
                assert!((1.0..=300.0).contains(&hz), "seed {seed}: unit {i} fires at {hz} Hz");
                total += hz;
            }
            let mean = total / n as f64;
            assert!((10.0..=40.0).contains(&mean), "seed {seed}: population mean {mean} Hz");
        }
    }
}
