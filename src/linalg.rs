//! Small allocation-free linear-algebra helpers shared by the model and the controllers.

use nalgebra::allocator::Allocator;
use nalgebra::constraint::{SameNumberOfRows, ShapeConstraint};
use nalgebra::{Cholesky, DMatrix, DefaultAllocator, Dim, Dyn, Matrix, StorageMut};

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

/// Solves M X = rhs in place for a symmetric positive definite M that `fill` writes into
/// `buf`, factoring in `buf`'s storage (no allocation). If the factorisation fails, retries
/// with a growing ridge on the diagonal (relative to M's mean diagonal). Returns false
/// (rhs untouched) if even the largest ridge fails.
pub fn spd_solve_mut<R2: Dim, C2: Dim, S2: StorageMut<f64, R2, C2>>(
    buf: &mut DMatrix<f64>,
    fill: impl Fn(&mut DMatrix<f64>),
    rhs: &mut Matrix<f64, R2, C2, S2>,
) -> bool
where
    ShapeConstraint: SameNumberOfRows<R2, Dyn>,
    DefaultAllocator: Allocator<Dyn, Dyn>,
{
    const RIDGES: [f64; 6] = [0.0, 1e-12, 1e-10, 1e-8, 1e-6, 1e-3];
    let n = buf.nrows();
    for &rel in RIDGES.iter() {
        fill(buf);
        if rel > 0.0 {
            let mean_diag = (0..n).map(|i| buf[(i, i)].abs()).sum::<f64>() / n.max(1) as f64;
            let ridge = rel * mean_diag.max(1e-300) + rel * 1e-12;
            for i in 0..n {
                buf[(i, i)] += ridge;
            }
        }
        let m = std::mem::replace(buf, DMatrix::zeros(0, 0));
        let chol = Cholesky::new_unchecked(m);
        let l = chol.l_dirty();
        let ok = (0..n).all(|i| {
            let v = l[(i, i)];
            v.is_finite() && v > 0.0
        });
        if ok {
            chol.solve_mut(rhs);
        }
        *buf = chol.unpack_dirty();
        if ok {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::DVector;

    #[test]
    fn gemm_nn_matches_the_operator() {
        let a = DMatrix::from_fn(7, 9, |i, j| (i as f64 - 2.0 * j as f64).sin());
        let b = DMatrix::from_fn(9, 6, |i, j| (i as f64 * 0.3 + j as f64).cos());
        let mut c = DMatrix::from_element(7, 6, 1.0);
        gemm_nn(&mut c, 2.0, &a, &b, 0.5);
        let want = (&a * &b) * 2.0 + DMatrix::from_element(7, 6, 0.5);
        assert!((c - want).abs().max() < 1e-12);
    }

    #[test]
    fn spd_solve_recovers_from_singular_matrix() {
        let mut buf = DMatrix::zeros(2, 2);
        let mut rhs = DVector::from_vec(vec![1.0, 1.0]);
        // Rank one: [[1,1],[1,1]]; the ridge makes it solvable.
        assert!(spd_solve_mut(&mut buf, |m| m.fill(1.0), &mut rhs));
        assert!(rhs.iter().all(|v| v.is_finite()));
        assert_eq!(buf.shape(), (2, 2));
        let mut rhs = DVector::from_vec(vec![2.0, 3.0]);
        assert!(spd_solve_mut(&mut buf, |m| m.copy_from(&DMatrix::from_row_slice(2, 2, &[2.0, 0.0, 0.0, 3.0])), &mut rhs));
        assert!((rhs[0] - 1.0).abs() < 1e-12 && (rhs[1] - 1.0).abs() < 1e-12);
    }
}
