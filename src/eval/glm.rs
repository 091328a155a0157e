//! A Poisson GLM with a log link, fitted by Newton's method (IRLS) with a ridge penalty:
//! the regression every baseline in [`super::baselines`] uses.
//!
//! minimise Σ_k (μ_k − y_k η_k) + ½ λ ‖w‖², η = b + Xw, μ = exp(η)
//!
//! The intercept b is not penalised. Newton steps with a backtracking line search; each
//! costs O(rows · p²), so callers keep p small (≤ ~64) and rows bounded ([`subsample`]).

use nalgebra::{DMatrix, DVector};

/// Exponent clamp: keeps μ finite for any feature values, and a silent unit's intercept
/// from running off to −∞.
const ETA_MIN: f64 = -25.0;
const ETA_MAX: f64 = 20.0;

/// A fitted GLM: the intercept and one weight per feature.
#[derive(Debug, Clone)]
pub struct PoissonGlm {
    pub intercept: f64,
    pub weights: DVector<f64>,
}

impl PoissonGlm {
    /// The expected count μ of one row of features.
    pub fn predict(&self, row: &[f64]) -> f64 {
        let eta = self.intercept + row.iter().zip(self.weights.iter()).map(|(a, b)| a * b).sum::<f64>();
        eta.clamp(ETA_MIN, ETA_MAX).exp()
    }
}

fn objective(x: &DMatrix<f64>, y: &[f64], b: f64, w: &DVector<f64>, ridge: f64, eta: &mut DVector<f64>) -> f64 {
    eta.copy_from(&(x * w));
    let mut f = 0.5 * ridge * w.norm_squared();
    for (k, e) in eta.iter_mut().enumerate() {
        *e = (*e + b).clamp(ETA_MIN, ETA_MAX);
        f += e.exp() - y[k] * *e;
    }
    f
}

/// Fit y (counts, one per row of `x`) on the features `x` (rows × p).
pub fn fit(x: &DMatrix<f64>, y: &[f64], ridge: f64) -> PoissonGlm {
    let (rows, p) = (x.nrows(), x.ncols());
    let total: f64 = y.iter().sum();
    let mut b = ((total / rows.max(1) as f64).max(1e-9)).ln().max(ETA_MIN);
    let mut w = DVector::zeros(p);
    if total <= 0.0 || rows == 0 {
        // A unit that never fired: the clamped floor, no weights to learn.
        return PoissonGlm { intercept: ETA_MIN, weights: w };
    }
    let mut eta = DVector::zeros(rows);
    let mut f = objective(x, y, b, &w, ridge, &mut eta);
    let mut weighted = DMatrix::zeros(rows, p + 1);
    for _ in 0..50 {
        // Gradient and Hessian over (b, w): [1 | X]ᵀ (μ − y), [1 | X]ᵀ diag μ [1 | X] + λ.
        let mut grad = DVector::zeros(p + 1);
        for k in 0..rows {
            let mu = eta[k].exp();
            let r = mu - y[k];
            let s = mu.sqrt();
            grad[0] += r;
            weighted[(k, 0)] = s;
            for j in 0..p {
                grad[j + 1] += r * x[(k, j)];
                weighted[(k, j + 1)] = s * x[(k, j)];
            }
        }
        for j in 0..p {
            grad[j + 1] += ridge * w[j];
        }
        let mut hess = weighted.tr_mul(&weighted);
        for j in 0..p {
            hess[(j + 1, j + 1)] += ridge;
        }
        hess[(0, 0)] += 1e-9;
        let step = match hess.clone().cholesky() {
            Some(c) => c.solve(&grad),
            None => {
                for j in 0..=p {
                    hess[(j, j)] += 1e-6 * (1.0 + hess[(j, j)]);
                }
                match hess.cholesky() {
                    Some(c) => c.solve(&grad),
                    None => break,
                }
            }
        };
        let decrease = grad.dot(&step);
        if !(decrease.is_finite()) || decrease < 1e-10 * (1.0 + f.abs()) {
            break;
        }
        // Backtracking line search on the penalised objective.
        let mut t = 1.0;
        let mut accepted = false;
        while t > 1e-8 {
            let nb = b - t * step[0];
            let nw = &w - t * step.rows(1, p);
            let nf = objective(x, y, nb, &nw, ridge, &mut eta);
            if nf.is_finite() && nf <= f - 1e-4 * t * decrease {
                b = nb;
                w = nw;
                f = nf;
                accepted = true;
                break;
            }
            t *= 0.5;
        }
        if !accepted {
            // Restore η for the current parameters and stop: no step decreases f.
            objective(x, y, b, &w, ridge, &mut eta);
            break;
        }
    }
    PoissonGlm { intercept: b, weights: w }
}

/// At most `max` row indices of `rows`, evenly strided (deterministic): bounds a GLM's
/// cost on long recordings.
pub fn subsample<T: Copy>(rows: &[T], max: usize) -> Vec<T> {
    if rows.len() <= max {
        return rows.to_vec();
    }
    (0..max).map(|i| rows[i * rows.len() / max]).collect()
}

/// Column means and standard deviations of the given rows of `x` (a constant column gets
/// σ = 1, so standardising leaves it at 0).
pub fn standardiser(x: &DMatrix<f64>, rows: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let p = x.ncols();
    let nr = rows.len().max(1) as f64;
    let mut mean = vec![0.0; p];
    let mut sd = vec![0.0; p];
    for j in 0..p {
        mean[j] = rows.iter().map(|&r| x[(r, j)]).sum::<f64>() / nr;
        let var = rows.iter().map(|&r| (x[(r, j)] - mean[j]).powi(2)).sum::<f64>() / nr;
        sd[j] = if var > 1e-18 { var.sqrt() } else { 1.0 };
    }
    (mean, sd)
}

/// The rows of `x` picked by `rows`, each column standardised by (mean, sd).
pub fn standardised_rows(x: &DMatrix<f64>, rows: &[usize], mean: &[f64], sd: &[f64]) -> DMatrix<f64> {
    DMatrix::from_fn(rows.len(), x.ncols(), |i, j| (x[(rows[i], j)] - mean[j]) / sd[j])
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroloop_kernels::philox::normal_at;

    /// Poisson draws by inversion from Philox uniforms (deterministic).
    fn poisson(mu: f64, seed: u64, i: u64) -> f64 {
        let u = 0.5 * (1.0 + libm_erf(normal_at(seed, 7, i) as f64 / std::f64::consts::SQRT_2));
        let (mut k, mut p) = (0.0, (-mu).exp());
        let mut cdf = p;
        while u > cdf && k < 1000.0 {
            k += 1.0;
            p *= mu / k;
            cdf += p;
        }
        k
    }

    fn libm_erf(x: f64) -> f64 {
        // Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7): enough to turn a normal into a uniform.
        let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
        let y = 1.0
            - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t + 0.254_829_592) * t * (-x * x).exp();
        y.copysign(x)
    }

    #[test]
    fn recovers_the_weights_of_a_known_glm() {
        let rows = 20_000;
        let x = DMatrix::from_fn(rows, 2, |k, j| normal_at(3, j as u64, k as u64) as f64);
        let y: Vec<f64> = (0..rows).map(|k| poisson((-1.0 + 0.5 * x[(k, 0)] - 0.3 * x[(k, 1)]).exp(), 9, k as u64)).collect();
        let g = fit(&x, &y, 1e-6);
        assert!((g.intercept + 1.0).abs() < 0.05, "{g:?}");
        assert!((g.weights[0] - 0.5).abs() < 0.05, "{g:?}");
        assert!((g.weights[1] + 0.3).abs() < 0.05, "{g:?}");
    }

    #[test]
    fn a_silent_unit_gets_a_finite_floor_and_a_constant_column_is_harmless() {
        let x = DMatrix::from_fn(100, 2, |k, j| if j == 0 { 1.0 } else { k as f64 });
        let g = fit(&x, &[0.0; 100], 1.0);
        assert!(g.predict(&[1.0, 5.0]).is_finite() && g.predict(&[1.0, 5.0]) < 1e-9);
        let y: Vec<f64> = (0..100).map(|k| (k % 3) as f64).collect();
        let (mean, sd) = standardiser(&x, &(0..100).collect::<Vec<_>>());
        assert_eq!(sd[0], 1.0);
        let xs = standardised_rows(&x, &(0..100).collect::<Vec<_>>(), &mean, &sd);
        let g = fit(&xs, &y, 1.0);
        assert!(g.intercept.is_finite() && g.weights.iter().all(|w| w.is_finite()));
        assert!((g.predict(&[0.0, 0.0]) - 1.0).abs() < 0.1, "{g:?}");
    }

    #[test]
    fn subsample_is_even_and_bounded() {
        let rows: Vec<usize> = (0..10).collect();
        assert_eq!(subsample(&rows, 20), rows);
        assert_eq!(subsample(&rows, 5), vec![0, 2, 4, 6, 8]);
    }
}
