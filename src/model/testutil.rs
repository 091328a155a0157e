//! Test helpers: deterministic random tensors and an independent Poisson sampler, all
//! drawn from the counter-based Philox generator (no `rand` crate).

use nalgebra::{DMatrix, DVector};
use neuroloop_kernels::philox::{normal_at, uniform_at};

pub fn randn_matrix(seed: u64, stream: u64, r: usize, c: usize, scale: f64) -> DMatrix<f64> {
    DMatrix::from_fn(r, c, |i, j| scale * normal_at(seed, stream, (i * c + j) as u64) as f64)
}

/// Uniform in [−scale, scale].
pub fn uniform_matrix(seed: u64, stream: u64, r: usize, c: usize, scale: f64) -> DMatrix<f64> {
    DMatrix::from_fn(r, c, |i, j| scale * (2.0 * uniform_at(seed, stream, (i * c + j) as u64) as f64 - 1.0))
}

pub fn randn_vector(seed: u64, stream: u64, n: usize, scale: f64) -> DVector<f64> {
    DVector::from_fn(n, |i, _| scale * normal_at(seed, stream, i as u64) as f64)
}

/// A sequential stream of draws on top of the counter-based generator.
pub struct Rng {
    seed: u64,
    stream: u64,
    index: u64,
}

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Self {
        Rng { seed, stream, index: 0 }
    }

    pub fn uniform(&mut self) -> f64 {
        self.index += 1;
        uniform_at(self.seed, self.stream, self.index) as f64
    }

    pub fn normal(&mut self) -> f64 {
        self.index += 1;
        normal_at(self.seed, self.stream, self.index) as f64
    }

    /// Poisson draw by Knuth's multiplication method (fine for the small per-bin means
    /// used in tests), or a rounded normal approximation above 50.
    pub fn poisson(&mut self, lambda: f64) -> f64 {
        if lambda > 50.0 {
            return (lambda + lambda.sqrt() * self.normal()).round().max(0.0);
        }
        let l = (-lambda).exp();
        let mut k = 0.0;
        let mut p = 1.0;
        loop {
            p *= self.uniform();
            if p <= l {
                return k;
            }
            k += 1.0;
        }
    }
}
