//! Shared test fixtures of the controllers, and the allocation count for the "no allocation per bin" rule.

use super::*;
use crate::model::{Generator, Hypernet};
use nalgebra::DMatrix;

/// Allocations made by this thread so far (the library's unit tests run with
/// `hot::CountingAlloc` installed, lib.rs).
pub fn allocations() -> u64 {
    crate::hot::thread_allocations()
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
        history: None,
    }
}

/// A reproducible pseudo-random matrix, uniform in [−s, s] (the tests' one generator,
/// `model::testutil`).
pub fn pseudo_random(rows: usize, cols: usize, seed: u64, s: f64) -> DMatrix<f64> {
    crate::model::testutil::uniform_matrix(seed, 0, rows, cols, s)
}

/// A 2-d latent, 2-channel model where x* = (0.5, −0.3) is reachable
/// (u* = atanh(x*) − W_hh x* inside [−2, 2]) and u = 0 keeps x at 0.
pub fn reachable_model() -> (ModelParams, Theta, DVector<f64>, ActuationLimits) {
    let d = 2;
    let m = 2;
    let n = 3;
    let c = DMatrix::from_row_slice(n, d, &[1.0, 0.0, 0.0, 1.0, 0.7, -0.7]);
    let p = params(n, d, m, 0.2, c, DVector::from_element(n, 2.0));
    let theta = Theta { w_hh: DMatrix::from_row_slice(2, 2, &[0.3, -0.2, 0.1, 0.4]), w_xu: DMatrix::identity(2, 2), b: DVector::zeros(2) };
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
