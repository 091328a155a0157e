//! Latent dynamics x' = x + α(−x + tanh(W_hh x + W_xu u + b)) and its Jacobians.

use super::Theta;
use nalgebra::{DMatrix, DVector};

/// One step of the deterministic dynamics. Writes f(x, u) into `out` and tanh(a) into
/// `tanh_a` (a = W_hh x + W_xu u + b), which the Jacobians and gradients reuse.
/// Allocation-free; `out` must not alias `x`.
#[inline]
pub fn step(theta: &Theta, alpha: f64, x: &DVector<f64>, u: &DVector<f64>, out: &mut DVector<f64>, tanh_a: &mut DVector<f64>) {
    tanh_a.copy_from(&theta.b);
    tanh_a.gemv(1.0, &theta.w_hh, x, 1.0);
    if !u.is_empty() {
        tanh_a.gemv(1.0, &theta.w_xu, u, 1.0);
    }
    tanh_a.apply(|v| *v = v.tanh());
    for i in 0..x.len() {
        out[i] = x[i] + alpha * (tanh_a[i] - x[i]);
    }
}

/// F = ∂f/∂x = (1 − α) I + α diag(1 − tanh²a) W_hh.
pub fn jacobian_x(theta: &Theta, alpha: f64, tanh_a: &DVector<f64>, out: &mut DMatrix<f64>) {
    let d = tanh_a.len();
    for i in 0..d {
        let s = alpha * (1.0 - tanh_a[i] * tanh_a[i]);
        for j in 0..d {
            out[(i, j)] = s * theta.w_hh[(i, j)];
        }
        out[(i, i)] += 1.0 - alpha;
    }
}

/// G = ∂f/∂u = α diag(1 − tanh²a) W_xu.
pub fn jacobian_u(theta: &Theta, alpha: f64, tanh_a: &DVector<f64>, out: &mut DMatrix<f64>) {
    let d = tanh_a.len();
    for i in 0..d {
        let s = alpha * (1.0 - tanh_a[i] * tanh_a[i]);
        for j in 0..theta.w_xu.ncols() {
            out[(i, j)] = s * theta.w_xu[(i, j)];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn theta() -> Theta {
        Theta {
            w_hh: DMatrix::from_row_slice(2, 2, &[0.5, -0.3, 0.2, 0.9]),
            w_xu: DMatrix::from_row_slice(2, 1, &[1.0, -0.5]),
            b: DVector::from_vec(vec![0.1, -0.2]),
        }
    }

    #[test]
    fn jacobians_match_finite_differences() {
        let th = theta();
        let alpha = 0.3;
        let x = DVector::from_vec(vec![0.4, -0.7]);
        let u = DVector::from_vec(vec![0.25]);
        let (mut fx, mut t) = (DVector::zeros(2), DVector::zeros(2));
        step(&th, alpha, &x, &u, &mut fx, &mut t);
        let mut jx = DMatrix::zeros(2, 2);
        let mut ju = DMatrix::zeros(2, 1);
        jacobian_x(&th, alpha, &t, &mut jx);
        jacobian_u(&th, alpha, &t, &mut ju);
        let h = 1e-6;
        let (mut f2, mut t2) = (DVector::zeros(2), DVector::zeros(2));
        for j in 0..2 {
            let mut xp = x.clone();
            xp[j] += h;
            step(&th, alpha, &xp, &u, &mut f2, &mut t2);
            for i in 0..2 {
                assert!(((f2[i] - fx[i]) / h - jx[(i, j)]).abs() < 1e-5);
            }
        }
        let up = DVector::from_vec(vec![0.25 + h]);
        step(&th, alpha, &x, &up, &mut f2, &mut t2);
        for i in 0..2 {
            assert!(((f2[i] - fx[i]) / h - ju[(i, 0)]).abs() < 1e-5);
        }
    }
}
