//! Poisson observations: y_i ~ Poisson(Δ · exp(cᵢᵀx + dᵢ)), exponent clamped above.

use nalgebra::{DMatrix, DVector};

/// Lower clamp on the log-rate (log Hz); keeps λ > 0 so log λ stays finite.
pub const LOG_RATE_MIN: f64 = -20.0;

/// Clamped log-rates η = clamp(C x + d) (log Hz) into `out` (N).
#[inline]
pub fn log_rates(c: &DMatrix<f64>, d: &DVector<f64>, log_rate_max: f64, x: &DVector<f64>, out: &mut DVector<f64>) {
    out.copy_from(d);
    out.gemv(1.0, c, x, 1.0);
    out.apply(|v| *v = v.clamp(LOG_RATE_MIN, log_rate_max));
}

/// Whether unit i's exponent is inside the clamp (the gradient of a clamped rate is zero).
#[inline]
pub fn unclamped(eta: f64, log_rate_max: f64) -> bool {
    eta > LOG_RATE_MIN && eta < log_rate_max
}

/// Poisson log-likelihood Σᵢ yᵢ log λᵢ − λᵢ − log yᵢ! with λᵢ = Δ exp(ηᵢ).
#[inline]
pub fn poisson_loglik(y: &[f64], eta: &DVector<f64>, bin_s: f64) -> f64 {
    let log_bin = bin_s.ln();
    let mut ll = 0.0;
    for i in 0..y.len() {
        let log_lambda = eta[i] + log_bin;
        ll += y[i] * log_lambda - log_lambda.exp() - ln_factorial(y[i]);
    }
    ll
}

/// log(k!) for a non-negative integer-valued k (exact sum for small k, Stirling above).
#[inline]
pub fn ln_factorial(k: f64) -> f64 {
    if k < 2.0 {
        return 0.0;
    }
    if k < 16.0 {
        let mut s = 0.0;
        let mut i = 2.0;
        while i <= k {
            s += f64::ln(i);
            i += 1.0;
        }
        return s;
    }
    // Stirling with two correction terms: error < 1e-10 for k ≥ 16.
    let k1 = k + 1.0;
    (k1 - 0.5) * k1.ln() - k1 + 0.5 * (2.0 * std::f64::consts::PI).ln() + 1.0 / (12.0 * k1) - 1.0 / (360.0 * k1 * k1 * k1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_factorial_is_exact_enough() {
        let mut exact = 0.0;
        for k in 1..60 {
            exact += (k as f64).ln();
            assert!((ln_factorial(k as f64) - exact).abs() < 1e-8, "k={k}");
        }
    }

    #[test]
    fn loglik_matches_direct_poisson() {
        let c = DMatrix::from_row_slice(2, 1, &[1.0, -0.5]);
        let d = DVector::from_vec(vec![3.0, 2.0]);
        let x = DVector::from_vec(vec![0.3]);
        let mut eta = DVector::zeros(2);
        log_rates(&c, &d, 8.0, &x, &mut eta);
        let y = [2.0, 0.0];
        let bin = 0.01;
        let l0 = bin * (3.3f64).exp();
        let l1 = bin * (1.85f64).exp();
        let direct = (l0.powi(2) * (-l0).exp() / 2.0).ln() + (-l1);
        assert!((poisson_loglik(&y, &eta, bin) - direct).abs() < 1e-12);
    }
}
