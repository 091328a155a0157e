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

/// out = op(a) · op(b), where op transposes when the flag is set; allocation-free for any
/// size (nalgebra's `gemm` reaches matrixmultiply, which allocates). `out` must already
/// have the product's shape.
pub fn mul_into(out: &mut DMatrix<f64>, a: &DMatrix<f64>, a_transposed: bool, b: &DMatrix<f64>, b_transposed: bool) {
    let (ar, ac) = if a_transposed { (a.ncols(), a.nrows()) } else { (a.nrows(), a.ncols()) };
    let (br, bc) = if b_transposed { (b.ncols(), b.nrows()) } else { (b.nrows(), b.ncols()) };
    assert_eq!(ac, br, "mul_into: inner dimensions");
    assert_eq!((out.nrows(), out.ncols()), (ar, bc), "mul_into: output shape");
    match (a_transposed, b_transposed) {
        (false, false) => gemm_nn(out, 1.0, a, b, 0.0),
        (true, false) => out.gemm_tr(1.0, a, b, 0.0),
        (false, true) => {
            // Column j of a·bᵀ is Σₖ a[:, k] b[j, k]: axpys down contiguous columns.
            out.fill(0.0);
            for k in 0..ac {
                let ak = a.column(k);
                for j in 0..bc {
                    let bjk = b[(j, k)];
                    if bjk != 0.0 {
                        out.column_mut(j).axpy(bjk, &ak, 1.0);
                    }
                }
            }
        }
        (true, true) => {
            // (aᵀ bᵀ)[i, j] = Σₖ a[k, i] b[j, k]
            for j in 0..bc {
                for i in 0..ar {
                    let ai = a.column(i);
                    let mut acc = 0.0;
                    for k in 0..ac {
                        acc += ai[k] * b[(j, k)];
                    }
                    out[(i, j)] = acc;
                }
            }
        }
    }
}

/// Factors the square matrix in `lu` in place as P M = L U (Gaussian elimination with
/// partial pivoting; L unit lower triangular below the diagonal, U on and above it).
/// `perm[k]` records the row swapped with row k at step k (LAPACK's ipiv, 0-based);
/// `perm.len()` must be the order n. Allocation-free. Returns false if M is singular to
/// working precision (a pivot ≤ n·ε·max|M|) or has a non-finite entry; `lu` is then
/// partially factored and must not be used.
pub fn lu_factor_mut(lu: &mut DMatrix<f64>, perm: &mut [usize]) -> bool {
    let n = lu.nrows();
    assert_eq!(lu.ncols(), n, "lu_factor_mut: square matrix");
    assert_eq!(perm.len(), n, "lu_factor_mut: permutation length");
    let mut scale: f64 = 0.0;
    for v in lu.iter() {
        if !v.is_finite() {
            return false;
        }
        scale = scale.max(v.abs());
    }
    let threshold = n as f64 * f64::EPSILON * scale;
    for k in 0..n {
        // Pivot: the largest |entry| of column k on or below the diagonal.
        let mut piv = k;
        let mut best = lu[(k, k)].abs();
        for i in k + 1..n {
            let v = lu[(i, k)].abs();
            if v > best {
                best = v;
                piv = i;
            }
        }
        perm[k] = piv;
        if !(best > threshold) {
            return false;
        }
        if piv != k {
            lu.swap_rows(k, piv);
        }
        let inv = 1.0 / lu[(k, k)];
        for i in k + 1..n {
            lu[(i, k)] *= inv;
        }
        for j in k + 1..n {
            let ukj = lu[(k, j)];
            if ukj != 0.0 {
                for i in k + 1..n {
                    let lik = lu[(i, k)];
                    lu[(i, j)] -= lik * ukj;
                }
            }
        }
    }
    true
}

/// Solves M X = rhs in place with the factors of [`lu_factor_mut`]; allocation-free.
pub fn lu_solve_mut(lu: &DMatrix<f64>, perm: &[usize], rhs: &mut DMatrix<f64>) {
    let n = lu.nrows();
    assert_eq!(rhs.nrows(), n, "lu_solve_mut: right-hand side rows");
    assert_eq!(perm.len(), n, "lu_solve_mut: permutation length");
    for (k, &p) in perm.iter().enumerate() {
        if p != k {
            rhs.swap_rows(k, p);
        }
    }
    for c in 0..rhs.ncols() {
        let mut x = rhs.column_mut(c);
        // L y = P b (unit diagonal), then U x = y.
        for k in 0..n {
            let xk = x[k];
            if xk != 0.0 {
                for i in k + 1..n {
                    x[i] -= lu[(i, k)] * xk;
                }
            }
        }
        for k in (0..n).rev() {
            let xk = x[k] / lu[(k, k)];
            x[k] = xk;
            if xk != 0.0 {
                for i in 0..k {
                    x[i] -= lu[(i, k)] * xk;
                }
            }
        }
    }
}

/// Solves M X = rhs in place for a general square M written into `lu`, which is
/// overwritten by its LU factors (partial pivoting; `perm` as in [`lu_factor_mut`]).
/// Allocation-free. Returns false (rhs untouched) if M is singular to working precision or
/// non-finite, and false (rhs overwritten) if the solution is non-finite.
pub fn solve_general_mut(lu: &mut DMatrix<f64>, perm: &mut [usize], rhs: &mut DMatrix<f64>) -> bool {
    if !lu_factor_mut(lu, perm) {
        return false;
    }
    lu_solve_mut(lu, perm, rhs);
    rhs.iter().all(|v| v.is_finite())
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
    #[test]
    fn mul_into_matches_the_operator_for_every_transpose() {
        let a = DMatrix::from_fn(7, 9, |i, j| (i as f64 - 2.0 * j as f64).sin());
        let b = DMatrix::from_fn(9, 6, |i, j| (i as f64 * 0.3 + j as f64).cos());
        let at = a.transpose();
        let bt = b.transpose();
        let want = &a * &b;
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut out = DMatrix::from_element(7, 6, f64::NAN);
            mul_into(&mut out, if ta { &at } else { &a }, ta, if tb { &bt } else { &b }, tb);
            assert!((&out - &want).amax() < 1e-12, "({ta}, {tb}): {}", (&out - &want).amax());
        }
    }

    #[test]
    fn solve_general_matches_nalgebra_lu_and_rejects_singular() {
        let mut perm = [0; 9];
        for (seed, n, k) in [(1u64, 1usize, 1usize), (2, 3, 2), (3, 6, 6), (4, 9, 4)] {
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            };
            // Non-symmetric, not diagonally dominant: pivoting matters.
            let m = DMatrix::from_fn(n, n, |_, _| next());
            let rhs = DMatrix::from_fn(n, k, |_, _| next());
            let want = m.clone().lu().solve(&rhs).unwrap();
            let mut lu = m.clone();
            let mut x = rhs.clone();
            assert!(solve_general_mut(&mut lu, &mut perm[..n], &mut x));
            let err = (&x - &want).amax() / want.amax();
            assert!(err < 1e-10, "n = {n}: relative error {err}");
            assert!((&m * &x - &rhs).amax() < 1e-10);
        }
        // A zero leading entry needs a row swap.
        let mut lu = DMatrix::from_row_slice(2, 2, &[0.0, 1.0, 1.0, 0.0]);
        let mut x = DMatrix::from_row_slice(2, 1, &[2.0, 3.0]);
        assert!(solve_general_mut(&mut lu, &mut perm[..2], &mut x));
        assert_eq!((x[(0, 0)], x[(1, 0)]), (3.0, 2.0));
        // Singular: rank 2 of 3 (the pivot is round-off, not exactly zero), and exactly zero.
        let rhs = DMatrix::from_element(3, 1, 1.0);
        for m in [DMatrix::from_row_slice(3, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]), DMatrix::zeros(3, 3)] {
            let mut lu = m.clone();
            let mut x = rhs.clone();
            assert!(!solve_general_mut(&mut lu, &mut perm[..3], &mut x), "{m}");
            assert_eq!(x, rhs, "rhs untouched on failure");
        }
        let mut lu = DMatrix::from_row_slice(2, 2, &[1.0, f64::NAN, 0.0, 1.0]);
        assert!(!solve_general_mut(&mut lu, &mut perm[..2], &mut DMatrix::from_element(2, 1, 1.0)));
    }
}
