//! The E-step: the model's own point-process EKF forward, then a Rauch–Tung–Striebel
//! smoother backward, over one contiguous run of bins. The smoothed means and covariances
//! give the expected complete-data log-likelihood the M-step maximises (Laplace-EM).

use crate::model::dynamics::{jacobian_x, step};
use crate::model::ekf::PointProcessEkf;
use crate::model::{ModelParams, Theta};
use nalgebra::{DMatrix, DVector};

/// One run of bins [start, end) of a file, with its inputs and per-bin dynamics.
pub struct Segment<'a> {
    /// bins × N counts of the whole file.
    pub counts: &'a [f64],
    /// bins × m inputs of the whole file.
    pub inputs: &'a [f64],
    pub has_data: &'a [bool],
    /// Library index of each bin's task (the θ that moves x into that bin).
    pub task: &'a [usize],
    /// The history term's log-rate offsets of the whole file (bins × N), added to d.
    pub offsets: Option<&'a [f64]>,
    pub start: usize,
    pub end: usize,
}

/// Filter and smoother output for one segment, indexed from the segment's start.
pub struct Smoothed {
    pub d: usize,
    /// Filtered means x_k (len × d) and one-step predictions x⁻_k (x⁻ of the first bin is
    /// the prior mean).
    pub x_filt: Vec<f64>,
    pub x_pred: Vec<f64>,
    /// Smoothed means and covariances (len × d, len × d × d).
    pub m: Vec<f64>,
    pub p: Vec<f64>,
    /// diag E[(x_{k+1} − F x_k)(…)ᵀ] minus its mean part, per transition k → k+1
    /// ((len − 1) × d): the covariance term of the expected dynamics residual.
    pub resid_cov: Vec<f64>,
    /// Σ log p(y_k | x⁻_k) over the bins with data.
    pub predictive_loglik: f64,
}

fn inverse_spd(a: &DMatrix<f64>) -> DMatrix<f64> {
    match a.clone().cholesky() {
        Some(c) => c.inverse(),
        None => a.clone().pseudo_inverse(1e-12).unwrap_or_else(|_| DMatrix::identity(a.nrows(), a.ncols())),
    }
}

/// How the forward pass updates on each bin's spikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// The live loop's point-process EKF: one Newton step from x⁻ (what `run` filters with).
    Live,
    /// The Laplace update: Newton to the posterior mode (at most this many steps), robust to
    /// bursts far from the prediction; the fit's E-step.
    Laplace(usize),
}

/// Newton steps of the E-step's Laplace update.
pub const E_STEP_NEWTON: usize = 6;

/// Run the EKF and the RTS smoother over `seg` with `thetas[task]` for each transition.
pub fn smooth(params: &ModelParams, thetas: &[Theta], seg: &Segment, update: Update) -> Smoothed {
    let (n, d, m) = (params.dims.n_units, params.dims.latent, params.dims.control);
    let len = seg.end - seg.start;
    let mut ekf = PointProcessEkf::new(&params.dims, params.initial_state_var);
    ekf.reset(&DVector::zeros(d), params.initial_state_var);
    let mut x_filt = vec![0.0; len * d];
    let mut x_pred = vec![0.0; len * d];
    let mut p_filt: Vec<DMatrix<f64>> = Vec::with_capacity(len);
    let mut p_pred: Vec<DMatrix<f64>> = Vec::with_capacity(len);
    // F of transition i → i+1, evaluated at the filtered mean x_i.
    let mut jac: Vec<DMatrix<f64>> = Vec::with_capacity(len);
    let mut u = DVector::zeros(m);
    let mut f = DMatrix::zeros(d, d);
    let mut ll = 0.0;
    let mut d_eff = params.obs_d.clone();
    for i in 0..len {
        let k = seg.start + i;
        if i > 0 {
            u.as_mut_slice().copy_from_slice(&seg.inputs[(k - 1) * m..k * m]);
            let theta = &thetas[seg.task[k]];
            ekf.predict(theta, params.alpha, &params.process_noise, &u);
            jacobian_x(theta, params.alpha, &ekf.tanh_a, &mut f);
            jac.push(f.clone());
        }
        x_pred[i * d..(i + 1) * d].copy_from_slice(ekf.x.as_slice());
        p_pred.push(ekf.p.clone());
        if seg.has_data[k] {
            let y = &seg.counts[k * n..(k + 1) * n];
            if let Some(o) = seg.offsets {
                for i in 0..n {
                    d_eff[i] = params.obs_d[i] + o[k * n + i];
                }
            }
            ll += match update {
                Update::Live => ekf.update(&params.obs_c, &d_eff, params.log_rate_max, params.bin_s, y),
                Update::Laplace(steps) => ekf.update_laplace(&params.obs_c, &d_eff, params.log_rate_max, params.bin_s, y, steps),
            };
        } else {
            ekf.skip_update();
        }
        x_filt[i * d..(i + 1) * d].copy_from_slice(ekf.x.as_slice());
        p_filt.push(ekf.p.clone());
    }
    // Backward pass.
    let mut m_s = x_filt.clone();
    let mut p_s: Vec<DMatrix<f64>> = p_filt.clone();
    let mut resid_cov = vec![0.0; len.saturating_sub(1) * d];
    for i in (0..len.saturating_sub(1)).rev() {
        let fi = &jac[i];
        let gain = &p_filt[i] * fi.transpose() * inverse_spd(&p_pred[i + 1]);
        let dm = DVector::from_column_slice(&m_s[(i + 1) * d..(i + 2) * d]) - DVector::from_column_slice(&x_pred[(i + 1) * d..(i + 2) * d]);
        let mi = DVector::from_column_slice(&x_filt[i * d..(i + 1) * d]) + &gain * dm;
        m_s[i * d..(i + 1) * d].copy_from_slice(mi.as_slice());
        let pi = &p_filt[i] + &gain * (&p_s[i + 1] - &p_pred[i + 1]) * gain.transpose();
        let pi = (&pi + pi.transpose()) * 0.5;
        // Cov(x_{i+1}, x_i | all) = P^s_{i+1} Jᵀ.
        let cross = &p_s[i + 1] * gain.transpose();
        let r = &p_s[i + 1] - &cross * fi.transpose() - fi * cross.transpose() + fi * &pi * fi.transpose();
        for j in 0..d {
            resid_cov[i * d + j] = r[(j, j)].max(0.0);
        }
        p_s[i] = pi;
    }
    let mut p = vec![0.0; len * d * d];
    for (i, pm) in p_s.iter().enumerate() {
        for a in 0..d {
            for b in 0..d {
                p[i * d * d + a * d + b] = pm[(a, b)];
            }
        }
    }
    Smoothed { d, x_filt, x_pred, m: m_s, p, resid_cov, predictive_loglik: ll }
}

/// f(x, u; θ) for a batch (the dynamics residual, for the closed-form Q).
pub fn dynamics_residual_sq(params: &ModelParams, theta: &Theta, x: &[f64], u: &[f64], x_next: &[f64], out: &mut [f64]) {
    let (d, m) = (params.dims.latent, params.dims.control);
    let xv = DVector::from_column_slice(&x[..d]);
    let uv = DVector::from_column_slice(&u[..m]);
    let mut fx = DVector::zeros(d);
    let mut t = DVector::zeros(d);
    step(theta, params.alpha, &xv, &uv, &mut fx, &mut t);
    for j in 0..d {
        out[j] = (x_next[j] - fx[j]).powi(2);
    }
}
