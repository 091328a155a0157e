//! Point-process extended Kalman filter (Eden, Frank, Barbieri, Solo & Brown 2004) for the
//! latent state, in information form (docs/model.md, "Filter").
//!
//! Predict: x⁻ = f(x, u; θ), P⁻ = F P Fᵀ + diag(Q) with F = ∂f/∂x.
//! Update (one Newton / Laplace step from x⁻ on the Gaussian prior × Poisson likelihood):
//! J = (P⁻)⁻¹ + Cᵀ diag(λ) C, P = J⁻¹, x = x⁻ + P Cᵀ (y − λ), with λ = Δ exp(C x⁻ + d)
//! and units whose exponent is clamped masked out (their rate does not depend on x).
//! Cost O(N d² + d³) per bin; every buffer is allocated in [`PointProcessEkf::new`].

use super::dynamics::{jacobian_x, step};
use super::observation::{log_rates, poisson_loglik, unclamped};
use super::{Dims, Theta};
use crate::linalg::gemm_nn;
use nalgebra::{Cholesky, DMatrix, DVector, Dyn};

/// Number of jitter escalations tried before a matrix is declared hopeless.
const MAX_JITTER_TRIES: usize = 16;

/// Cholesky factor of the symmetric matrix `src`, computed in the buffer held by `slot`
/// (which is left empty, 0 × 0, until the caller puts the factor back with
/// `*slot = chol.unpack_dirty()`). If `src` is not numerically positive definite, a growing
/// multiple of the identity is added (jitter) until it is; if even that fails (non-finite
/// input), the identity is factored instead. Allocation-free. Returns the factor and
/// whether jitter (or the identity fallback) was needed.
pub(crate) fn cholesky_jittered(src: &DMatrix<f64>, slot: &mut DMatrix<f64>) -> (Cholesky<f64, Dyn>, bool) {
    let n = src.nrows();
    let mut m = std::mem::replace(slot, DMatrix::zeros(0, 0));
    let mut scale = 0.0f64;
    for i in 0..n {
        scale = scale.max(src[(i, i)].abs());
    }
    if !(scale.is_finite() && scale > 0.0) {
        scale = 1.0;
    }
    let mut jitter = 0.0;
    for attempt in 0..=MAX_JITTER_TRIES {
        m.copy_from(src);
        if attempt == MAX_JITTER_TRIES {
            m.fill_with_identity();
        } else {
            for i in 0..n {
                m[(i, i)] += jitter;
            }
        }
        let chol = Cholesky::new_unchecked(m);
        let l = chol.l_dirty();
        let mut ok = true;
        for j in 0..n {
            ok &= l[(j, j)] > 0.0;
            for i in j..n {
                ok &= l[(i, j)].is_finite();
            }
        }
        if ok {
            return (chol, attempt > 0);
        }
        m = chol.unpack_dirty();
        jitter = if jitter == 0.0 { 1e-12 * scale } else { jitter * 10.0 };
    }
    unreachable!("the identity is always positive definite")
}

/// (M + Mᵀ)/2 in place.
#[inline]
pub(crate) fn symmetrize(m: &mut DMatrix<f64>) {
    let n = m.nrows();
    for j in 0..n {
        for i in (j + 1)..n {
            let v = 0.5 * (m[(i, j)] + m[(j, i)]);
            m[(i, j)] = v;
            m[(j, i)] = v;
        }
    }
}

/// The filter: state, covariance and all per-bin scratch.
///
/// Per bin: [`predict`](Self::predict), then either [`update`](Self::update) (a bin with
/// data) or [`skip_update`](Self::skip_update) (a bin with no data, e.g. a stream gap).
/// Between `predict` and `update`/`skip_update`, `x`/`p` hold the prediction x⁻/P⁻.
#[derive(Debug, Clone)]
pub struct PointProcessEkf {
    /// Filtered mean (after `update`/`skip_update`), or x⁻ between predict and update.
    pub x: DVector<f64>,
    /// Filtered covariance, or P⁻ between predict and update. Symmetric positive definite.
    pub p: DMatrix<f64>,
    /// The mean before the last `predict` (x_{k−1}); the embedding update needs it.
    pub x_prev: DVector<f64>,
    /// The last prediction x⁻ = f(x_{k−1}, u; θ).
    pub x_pred: DVector<f64>,
    /// tanh(a) from the last predict, a = W_hh x_{k−1} + W_xu u + b.
    pub tanh_a: DVector<f64>,
    /// Clamped log-rates η = C x⁻ + d from the last update (log Hz).
    pub eta: DVector<f64>,
    /// How many times a covariance needed jitter to stay positive definite.
    pub jitter_events: u64,
    predicted: bool,
    f: DMatrix<f64>,
    ft: DMatrix<f64>,
    tmp: DMatrix<f64>,
    info: DMatrix<f64>,
    chol_slot: DMatrix<f64>,
    c_weighted: DMatrix<f64>,
    resid: DVector<f64>,
    score: DVector<f64>,
}

impl PointProcessEkf {
    pub fn new(dims: &Dims, initial_state_var: f64) -> Self {
        let (n, d) = (dims.n_units, dims.latent);
        PointProcessEkf {
            x: DVector::zeros(d),
            p: DMatrix::identity(d, d) * initial_state_var,
            x_prev: DVector::zeros(d),
            x_pred: DVector::zeros(d),
            tanh_a: DVector::zeros(d),
            eta: DVector::zeros(n),
            jitter_events: 0,
            predicted: false,
            f: DMatrix::zeros(d, d),
            ft: DMatrix::zeros(d, d),
            tmp: DMatrix::zeros(d, d),
            info: DMatrix::zeros(d, d),
            chol_slot: DMatrix::zeros(d, d),
            c_weighted: DMatrix::zeros(n, d),
            resid: DVector::zeros(n),
            score: DVector::zeros(d),
        }
    }

    /// Restart from mean `x0` and covariance `p0_var · I`. Allocation-free.
    pub fn reset(&mut self, x0: &DVector<f64>, p0_var: f64) {
        self.x.copy_from(x0);
        self.x_prev.copy_from(x0);
        self.x_pred.copy_from(x0);
        self.p.fill_with_identity();
        self.p *= p0_var;
        self.predicted = false;
    }

    /// Whether a `predict` is waiting for its `update`/`skip_update`.
    pub fn is_predicted(&self) -> bool {
        self.predicted
    }

    /// Time update (hot, allocation-free): x⁻ = f(x, u; θ), P⁻ = F P Fᵀ + diag(Q).
    /// Afterwards `x`/`p` hold x⁻/P⁻, `x_prev` the previous mean and `tanh_a` tanh(a).
    pub fn predict(&mut self, theta: &Theta, alpha: f64, q_diag: &DVector<f64>, u: &DVector<f64>) {
        self.x_prev.copy_from(&self.x);
        step(theta, alpha, &self.x_prev, u, &mut self.x_pred, &mut self.tanh_a);
        jacobian_x(theta, alpha, &self.tanh_a, &mut self.f);
        // gemm_nn, not mul_to: nalgebra's products allocate a packing buffer above 5×5.
        gemm_nn(&mut self.tmp, 1.0, &self.f, &self.p, 0.0);
        self.f.transpose_to(&mut self.ft);
        gemm_nn(&mut self.p, 1.0, &self.tmp, &self.ft, 0.0);
        for i in 0..q_diag.len() {
            self.p[(i, i)] += q_diag[i];
        }
        symmetrize(&mut self.p);
        self.x.copy_from(&self.x_pred);
        self.predicted = true;
    }

    /// A bin without data: the posterior is the prediction (x = x⁻, P = P⁻).
    pub fn skip_update(&mut self) {
        self.predicted = false;
    }

    /// Measurement update with spike counts `y` (N) (hot, allocation-free). Returns the
    /// predictive log-likelihood log p(y | x⁻) = Σ yᵢ log λᵢ − λᵢ − log yᵢ! at x⁻.
    pub fn update(&mut self, c: &DMatrix<f64>, d: &DVector<f64>, log_rate_max: f64, bin_s: f64, y: &[f64]) -> f64 {
        let (n, dl) = (c.nrows(), c.ncols());
        log_rates(c, d, log_rate_max, &self.x, &mut self.eta);
        let ll = poisson_loglik(y, &self.eta, bin_s);
        // Weights λᵢ and residuals yᵢ − λᵢ, zero for clamped units.
        for j in 0..dl {
            for i in 0..n {
                self.c_weighted[(i, j)] = 0.0;
            }
        }
        for i in 0..n {
            let eta = self.eta[i];
            if unclamped(eta, log_rate_max) {
                let lam = bin_s * eta.exp();
                self.resid[i] = y[i] - lam;
                for j in 0..dl {
                    self.c_weighted[(i, j)] = lam * c[(i, j)];
                }
            } else {
                self.resid[i] = 0.0;
            }
        }
        // J = (P⁻)⁻¹ + Cᵀ diag(λ) C.
        let (chol, jittered) = cholesky_jittered(&self.p, &mut self.chol_slot);
        self.info.fill_with_identity();
        chol.solve_mut(&mut self.info);
        self.chol_slot = chol.unpack_dirty();
        self.info.gemm_tr(1.0, &self.c_weighted, c, 1.0);
        symmetrize(&mut self.info);
        // P = J⁻¹, x = x⁻ + J⁻¹ Cᵀ (y − λ).
        let (chol2, jittered2) = cholesky_jittered(&self.info, &mut self.chol_slot);
        self.p.fill_with_identity();
        chol2.solve_mut(&mut self.p);
        self.score.gemv_tr(1.0, c, &self.resid, 0.0);
        chol2.solve_mut(&mut self.score);
        self.chol_slot = chol2.unpack_dirty();
        self.x += &self.score;
        symmetrize(&mut self.p);
        self.jitter_events += jittered as u64 + jittered2 as u64;
        self.predicted = false;
        ll
    }

    /// The Laplace update (offline: the fit's E-step; allocates): Newton's method to the mode
    /// of log p(y | x) + log N(x; x⁻, P⁻), each step damped so the log posterior never falls,
    /// at most `iterations` steps, then P = (P⁻⁻¹ + Cᵀ diag λ(x) C)⁻¹ at the mode. One step
    /// without damping is [`update`](Self::update). Where a burst of spikes puts the mode far
    /// from x⁻, the single step overshoots (exp is steep) and the filter can diverge; the
    /// mode does not. Returns the predictive log-likelihood at x⁻, as `update`.
    pub fn update_laplace(
        &mut self,
        c: &DMatrix<f64>,
        d: &DVector<f64>,
        log_rate_max: f64,
        bin_s: f64,
        y: &[f64],
        iterations: usize,
    ) -> f64 {
        log_rates(c, d, log_rate_max, &self.x, &mut self.eta);
        let ll = poisson_loglik(y, &self.eta, bin_s);
        let (prior_info, jittered) = {
            let (chol, j) = cholesky_jittered(&self.p, &mut self.chol_slot);
            let inv = chol.inverse();
            self.chol_slot = chol.unpack_dirty();
            (inv, j)
        };
        let x0 = self.x.clone();
        let mut eta = DVector::zeros(c.nrows());
        let log_post = |x: &DVector<f64>, eta: &mut DVector<f64>| {
            log_rates(c, d, log_rate_max, x, eta);
            let dx = x - &x0;
            poisson_loglik(y, eta, bin_s) - 0.5 * dx.dot(&(&prior_info * &dx))
        };
        let mut x = x0.clone();
        let mut f = log_post(&x, &mut eta);
        for _ in 0..iterations.max(1) {
            let (lam, resid) = weights(&eta, y, bin_s, log_rate_max);
            let grad = c.tr_mul(&resid) - &prior_info * (&x - &x0);
            let mut info = &prior_info + c.tr_mul(&DMatrix::from_fn(c.nrows(), c.ncols(), |i, j| lam[i] * c[(i, j)]));
            symmetrize(&mut info);
            let Some(chol) = info.clone().cholesky() else { break };
            let step = chol.solve(&grad);
            let mut t = 1.0;
            let mut moved = false;
            while t >= 1.0 / 64.0 {
                let cand = &x + &step * t;
                let fc = log_post(&cand, &mut eta);
                if fc.is_finite() && fc >= f {
                    x = cand;
                    f = fc;
                    moved = true;
                    break;
                }
                t *= 0.5;
            }
            if !moved {
                log_post(&x, &mut eta);
                break;
            }
            if (step.norm() * t) < 1e-9 {
                break;
            }
        }
        // The covariance at the mode.
        let (lam, _) = weights(&eta, y, bin_s, log_rate_max);
        let mut info = &prior_info + c.tr_mul(&DMatrix::from_fn(c.nrows(), c.ncols(), |i, j| lam[i] * c[(i, j)]));
        symmetrize(&mut info);
        let (chol2, jittered2) = cholesky_jittered(&info, &mut self.chol_slot);
        self.p = chol2.inverse();
        self.chol_slot = chol2.unpack_dirty();
        symmetrize(&mut self.p);
        self.x = x;
        self.jitter_events += jittered as u64 + jittered2 as u64;
        self.predicted = false;
        ll
    }
}

/// λᵢ and yᵢ − λᵢ at the clamped log-rates `eta`, zero for clamped units (their gradient).
fn weights(eta: &DVector<f64>, y: &[f64], bin_s: f64, log_rate_max: f64) -> (DVector<f64>, DVector<f64>) {
    let n = eta.len();
    let mut lam = DVector::zeros(n);
    let mut resid = DVector::zeros(n);
    for i in 0..n {
        if unclamped(eta[i], log_rate_max) {
            lam[i] = bin_s * eta[i].exp();
            resid[i] = y[i] - lam[i];
        }
    }
    (lam, resid)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{randn_matrix, randn_vector, Rng};
    use super::*;

    fn dims(n: usize, d: usize, m: usize) -> Dims {
        Dims { n_units: n, latent: d, embed: 1, control: m, hidden: 1 }
    }

    #[test]
    fn update_is_one_newton_step_from_the_prediction() {
        let (n, d, m) = (12, 3, 2);
        let dims = dims(n, d, m);
        let theta = Theta { w_hh: randn_matrix(1, 0, d, d, 0.6), w_xu: randn_matrix(1, 1, d, m, 0.5), b: randn_vector(1, 2, d, 0.3) };
        let c = randn_matrix(1, 3, n, d, 0.7);
        let mut dd = randn_vector(1, 4, n, 0.5).add_scalar(3.0);
        dd[5] = 20.0; // clamped above: masked out
        let lmax = 7.0;
        let bin = 0.01;
        let q = DVector::from_element(d, 2e-3);
        let u = randn_vector(1, 5, m, 1.0);
        let y: Vec<f64> = (0..n).map(|i| (i % 3) as f64).collect();

        let mut ekf = PointProcessEkf::new(&dims, 0.1);
        let x0 = randn_vector(1, 6, d, 0.5);
        ekf.reset(&x0, 0.1);
        ekf.p[(0, 1)] = 0.02;
        ekf.p[(1, 0)] = 0.02;
        ekf.predict(&theta, 0.2, &q, &u);
        let xm = ekf.x.clone();
        let pm = ekf.p.clone();
        let ll = ekf.update(&c, &dd, lmax, bin, &y);

        // Independent dense computation.
        let eta = (&c * &xm + &dd).map(|v| v.clamp(super::super::observation::LOG_RATE_MIN, lmax));
        let mut hess = pm.clone().try_inverse().unwrap();
        let mut grad = DVector::zeros(d);
        let mut ll_ref = 0.0;
        for i in 0..n {
            let lam = bin * eta[i].exp();
            ll_ref += y[i] * lam.ln() - lam - super::super::observation::ln_factorial(y[i]);
            if i == 5 {
                assert!(eta[i] >= lmax);
                continue;
            }
            let ci = c.row(i).transpose();
            hess += &ci * ci.transpose() * lam;
            grad += &ci * (y[i] - lam);
        }
        let p_ref = hess.try_inverse().unwrap();
        let x_ref = &xm + &p_ref * &grad;
        assert!((ll - ll_ref).abs() < 1e-10, "{ll} vs {ll_ref}");
        assert!((&ekf.x - &x_ref).amax() < 1e-10, "{} vs {}", ekf.x, x_ref);
        assert!((&ekf.p - &p_ref).amax() < 1e-10);
        assert_eq!(ekf.p, ekf.p.transpose());
    }

    #[test]
    fn predict_covariance_matches_linearisation() {
        let (n, d, m) = (4, 3, 1);
        let dims = dims(n, d, m);
        let q = DVector::from_vec(vec![1e-3, 2e-3, 3e-3]);
        let alpha = 0.3;
        let u = DVector::from_vec(vec![0.0]);
        let p0 = DMatrix::from_row_slice(3, 3, &[0.2, 0.05, 0.0, 0.05, 0.1, 0.01, 0.0, 0.01, 0.3]);

        // (1) Near-linear regime: tiny W, b = 0, tiny x, so F = (1 − α) I + α W.
        let w = randn_matrix(2, 0, d, d, 1e-4);
        let theta = Theta { w_hh: w.clone(), w_xu: DMatrix::zeros(d, m), b: DVector::zeros(d) };
        let mut ekf = PointProcessEkf::new(&dims, 0.1);
        ekf.reset(&DVector::from_element(d, 1e-4), 0.1);
        ekf.p.copy_from(&p0);
        ekf.predict(&theta, alpha, &q, &u);
        let f_lin = DMatrix::identity(d, d) * (1.0 - alpha) + &w * alpha;
        let p_ref = &f_lin * &p0 * f_lin.transpose() + DMatrix::from_diagonal(&q);
        assert!((&ekf.p - &p_ref).amax() < 1e-12);

        // (2) Nonlinear regime: F from central finite differences of the dynamics.
        let theta = Theta { w_hh: randn_matrix(2, 1, d, d, 0.8), w_xu: randn_matrix(2, 2, d, m, 0.8), b: randn_vector(2, 3, d, 0.4) };
        let x0 = randn_vector(2, 4, d, 0.6);
        let u = DVector::from_vec(vec![0.7]);
        ekf.reset(&x0, 0.1);
        ekf.p.copy_from(&p0);
        ekf.predict(&theta, alpha, &q, &u);
        let h = 1e-6;
        let (mut fp, mut fm, mut t) = (DVector::zeros(d), DVector::zeros(d), DVector::zeros(d));
        let mut f_fd = DMatrix::zeros(d, d);
        for j in 0..d {
            let mut xp = x0.clone();
            xp[j] += h;
            let mut xm = x0.clone();
            xm[j] -= h;
            step(&theta, alpha, &xp, &u, &mut fp, &mut t);
            step(&theta, alpha, &xm, &u, &mut fm, &mut t);
            f_fd.set_column(j, &((&fp - &fm) / (2.0 * h)));
        }
        let p_ref = &f_fd * &p0 * f_fd.transpose() + DMatrix::from_diagonal(&q);
        assert!((&ekf.p - &p_ref).amax() < 1e-8);
        assert_eq!(ekf.x_prev, x0);
        step(&theta, alpha, &x0, &u, &mut fp, &mut t);
        assert_eq!(ekf.x, fp);
        // No data: the posterior is the prediction.
        ekf.skip_update();
        assert!(!ekf.is_predicted());
        assert_eq!(ekf.x, fp);
        assert!((&ekf.p - &p_ref).amax() < 1e-8);
    }

    #[test]
    fn cholesky_jitter_recovers_from_indefinite_input() {
        let src = DMatrix::from_row_slice(2, 2, &[1.0, 1.0, 1.0, 1.0 - 1e-17]);
        let mut slot = DMatrix::zeros(2, 2);
        let (chol, jittered) = cholesky_jittered(&src, &mut slot);
        let l = chol.l();
        assert!(jittered);
        assert!((&l * l.transpose() - &src).amax() < 1e-6);
        slot = chol.unpack_dirty();
        assert_eq!(slot.shape(), (2, 2));
        let bad = DMatrix::from_element(2, 2, f64::NAN);
        let (chol, _) = cholesky_jittered(&bad, &mut slot);
        assert_eq!(chol.l(), DMatrix::identity(2, 2));
    }

    #[test]
    fn tracks_a_simulated_latent() {
        // d = 2, N = 40, 10 ms bins, rates ≈ 20–40 Hz, a slowly rotating latent driven by a
        // known input so that it explores a wide range.
        let (n, d, m) = (40, 2, 2);
        let dims = dims(n, d, m);
        let bin = 0.01;
        let alpha = 0.1;
        let (cs, sn) = (0.3f64.cos(), 0.3f64.sin());
        let theta = Theta {
            w_hh: DMatrix::from_row_slice(2, 2, &[0.9 * cs, -0.9 * sn, 0.9 * sn, 0.9 * cs]),
            w_xu: DMatrix::from_row_slice(2, 2, &[0.8, 0.0, 0.0, 0.8]),
            b: DVector::zeros(2),
        };
        let c = randn_matrix(11, 0, n, d, 0.7);
        let dd = DVector::from_fn(n, |i, _| (20.0 + 20.0 * (i as f64) / (n as f64)).ln());
        let q: DVector<f64> = DVector::from_element(d, 1e-3);
        let lmax = 7.0;
        let mut rng = Rng::new(11, 1);
        let mut x_true = DVector::zeros(d);
        let (mut x_next, mut t) = (DVector::zeros(d), DVector::zeros(d));
        let mut ekf = PointProcessEkf::new(&dims, 0.1);
        let mut eta = DVector::zeros(n);
        let mut y = vec![0.0; n];
        let mut u = DVector::zeros(m);
        let (mut truth, mut est) = (Vec::new(), Vec::new());
        let bins = 2000;
        for k in 0..bins {
            // Known input: a slow square wave on each channel, different periods.
            u[0] = if (k / 150) % 2 == 0 { 0.8 } else { -0.8 };
            u[1] = if (k / 230) % 2 == 0 { 0.8 } else { -0.8 };
            step(&theta, alpha, &x_true, &u, &mut x_next, &mut t);
            for i in 0..d {
                x_next[i] += q[i].sqrt() * rng.normal();
            }
            x_true.copy_from(&x_next);
            log_rates(&c, &dd, lmax, &x_true, &mut eta);
            for i in 0..n {
                y[i] = rng.poisson(bin * eta[i].exp());
            }
            ekf.predict(&theta, alpha, &q, &u);
            ekf.update(&c, &dd, lmax, bin, &y);
            if k >= 100 {
                truth.push(x_true.clone());
                est.push(ekf.x.clone());
            }
        }
        for j in 0..d {
            let mean = truth.iter().map(|v| v[j]).sum::<f64>() / truth.len() as f64;
            let ss_tot: f64 = truth.iter().map(|v| (v[j] - mean).powi(2)).sum();
            let ss_res: f64 = truth.iter().zip(&est).map(|(a, b)| (a[j] - b[j]).powi(2)).sum();
            let r2 = 1.0 - ss_res / ss_tot;
            assert!(r2 >= 0.8, "dim {j}: R² = {r2}");
        }
        assert_eq!(ekf.jitter_events, 0);
    }
}
