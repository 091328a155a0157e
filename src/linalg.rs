//! Small allocation-free linear-algebra helpers shared by the model and the controllers.

use nalgebra::DMatrix;

/// c = α·a·b + β·c computed column by column with `gemv` (allocation-free for any size,
/// unlike nalgebra's `gemm`, see the module docs).
#[inline]
pub fn gemm_nn(c: &mut DMatrix<f64>, alpha: f64, a: &DMatrix<f64>, b: &DMatrix<f64>, beta: f64) {
    assert_eq!(a.ncols(), b.nrows(), "gemm_nn: inner dimensions");
    assert_eq!((c.nrows(), c.ncols()), (a.nrows(), b.ncols()), "gemm_nn: output shape");
    for j in 0..b.ncols() {
        c.column_mut(j).gemv(alpha, a, &b.column(j), beta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_nn_matches_the_operator() {
        let a = DMatrix::from_fn(7, 9, |i, j| (i as f64 - 2.0 * j as f64).sin());
        let b = DMatrix::from_fn(9, 6, |i, j| (i as f64 * 0.3 + j as f64).cos());
        let mut c = DMatrix::from_element(7, 6, 1.0);
        gemm_nn(&mut c, 2.0, &a, &b, 0.5);
        let want = (&a * &b) * 2.0 + DMatrix::from_element(7, 6, 0.5);
        assert!((c - want).abs().max() < 1e-12);
    }
}
