//! Discrete-time LQR on the linearisation of the dynamics at the current estimate
//! (docs/model.md, controller `lqr`): cheap and good for small rigs.
//!
//! Each bin: A = ∂f/∂x and B = ∂f/∂u at (x, ū), affine offset c = f(x, ū) − A x − B ū.
//! The steady-state control holding the target is u* = argmin ‖(I − A) x* − c − B u‖² + ε‖u‖²
//! (an m × m Cholesky solve); the feedback gain K comes from the discrete
//! algebraic Riccati equation (DARE) solved by fixed-point iteration, warm-started from the
//! previous bin's solution so that a slowly varying linearisation costs a few iterations.
//! The command is u = clamp(u* − K (x − x*)).
//!
//! The linearisation point ū is the previous bin's (clamped) steady-state control u*, not
//! the last emitted command u_prev (which is used only on the first bin after a reset).
//! Near the target the u* formula is then a Newton step on the steady-state equation
//! x* = f(x*, u), which converges to the exact steady-state control. Linearising at u_prev
//! instead fails in closed loop: the feedback term saturates u_prev at a limit, tanh
//! saturates there, B ≈ 0, and the affine extrapolation of u* flips between the two limits
//! bin after bin (seen in `lqr_closed_loop_reaches_target` with limits ±2).
//!
//! Objectives in rate space use the least-squares latent target of
//! [`ObjectiveTarget`](super::ObjectiveTarget) (computed once per objective change).

use super::{ActuationLimits, ControlContext, ControllerConfig, Objective, ObjectiveTarget};
use crate::linalg::gemm_nn;
use crate::linalg::spd_solve_mut;
use crate::model::{dynamics, Dims};
use nalgebra::{DMatrix, DVector};

/// Relative convergence tolerance of the Riccati iteration: stop when
/// max|P_{n+1} − P_n| ≤ tol · max(1, max|P_{n+1}|).
pub const RICCATI_TOL: f64 = 1e-10;

/// Relative ridge ε of the steady-state control least squares (× mean diag of BᵀB).
const STEADY_STATE_RIDGE: f64 = 1e-6;

/// Scratch for [`solve_dare_warm`] and [`lqr_gain`] (d latent, m control).
#[derive(Debug, Clone)]
pub struct DareScratch {
    pa: DMatrix<f64>,
    pb: DMatrix<f64>,
    bpa: DMatrix<f64>,
    k: DMatrix<f64>,
    s: DMatrix<f64>,
    p_next: DMatrix<f64>,
}

impl DareScratch {
    pub fn new(d: usize, m: usize) -> Self {
        DareScratch {
            pa: DMatrix::zeros(d, d),
            pb: DMatrix::zeros(d, m),
            bpa: DMatrix::zeros(m, d),
            k: DMatrix::zeros(m, d),
            s: DMatrix::zeros(m, m),
            p_next: DMatrix::zeros(d, d),
        }
    }
}

/// Solves P = Q + AᵀPA − AᵀPB (R + BᵀPB)⁻¹ BᵀPA by fixed-point iteration from P = Q,
/// at most `iterations` times, stopping when the relative change is below `tol`.
/// Writes P into `p_out` (resized to d × d) and returns the number of iterations used.
/// Allocates its scratch; the per-bin path uses [`solve_dare_warm`].
pub fn solve_dare(
    a: &DMatrix<f64>,
    b: &DMatrix<f64>,
    q: &DMatrix<f64>,
    r: &DMatrix<f64>,
    iterations: usize,
    tol: f64,
    p_out: &mut DMatrix<f64>,
) -> usize {
    let mut scratch = DareScratch::new(a.nrows(), b.ncols());
    if p_out.shape() != q.shape() {
        *p_out = DMatrix::zeros(q.nrows(), q.ncols());
    }
    p_out.copy_from(q);
    solve_dare_warm(a, b, q, r, iterations, tol, p_out, &mut scratch)
}

/// One Riccati evaluation's shared part: fills `s.pa` = PA, `s.bpa` = BᵀPA and `s.k` =
/// (R + BᵀPB)⁻¹ BᵀPA. Returns false if R + BᵀPB could not be factored.
fn gain_into_scratch(a: &DMatrix<f64>, b: &DMatrix<f64>, r: &DMatrix<f64>, p: &DMatrix<f64>, s: &mut DareScratch) -> bool {
    gemm_nn(&mut s.pa, 1.0, p, a, 0.0);
    gemm_nn(&mut s.pb, 1.0, p, b, 0.0);
    s.bpa.gemm_tr(1.0, b, &s.pa, 0.0);
    s.k.copy_from(&s.bpa);
    let pb = &s.pb;
    spd_solve_mut(
        &mut s.s,
        |m| {
            m.gemm_tr(1.0, b, pb, 0.0);
            *m += r;
            // Symmetrise against round-off in BᵀPB.
            let n = m.nrows();
            for i in 0..n {
                for j in 0..i {
                    let v = 0.5 * (m[(i, j)] + m[(j, i)]);
                    m[(i, j)] = v;
                    m[(j, i)] = v;
                }
            }
        },
        &mut s.k,
    )
}

/// [`solve_dare`] starting from the P already in `p` (a warm start); allocation-free.
/// Returns the iterations used. On a non-finite iterate or a failed factorisation it stops
/// early; the caller checks `p` for finiteness.
#[allow(clippy::too_many_arguments)]
pub fn solve_dare_warm(
    a: &DMatrix<f64>,
    b: &DMatrix<f64>,
    q: &DMatrix<f64>,
    r: &DMatrix<f64>,
    iterations: usize,
    tol: f64,
    p: &mut DMatrix<f64>,
    s: &mut DareScratch,
) -> usize {
    let d = p.nrows();
    for it in 1..=iterations {
        if !gain_into_scratch(a, b, r, p, s) {
            p.fill(f64::NAN);
            return it;
        }
        // P' = Q + Aᵀ(PA) − (BᵀPA)ᵀ K
        s.p_next.copy_from(q);
        s.p_next.gemm_tr(1.0, a, &s.pa, 1.0);
        s.p_next.gemm_tr(-1.0, &s.bpa, &s.k, 1.0);
        let mut diff: f64 = 0.0;
        let mut scale: f64 = 0.0;
        for i in 0..d {
            for j in 0..=i {
                let v = 0.5 * (s.p_next[(i, j)] + s.p_next[(j, i)]);
                s.p_next[(i, j)] = v;
                s.p_next[(j, i)] = v;
                diff = diff.max((v - p[(i, j)]).abs());
                scale = scale.max(v.abs());
            }
        }
        std::mem::swap(p, &mut s.p_next);
        if !diff.is_finite() || !scale.is_finite() {
            return it;
        }
        if diff <= tol * scale.max(1.0) {
            return it;
        }
    }
    iterations
}

/// K = (R + BᵀPB)⁻¹ BᵀPA into `k_out` (m × d); allocation-free. False if the factorisation failed.
pub fn lqr_gain(
    a: &DMatrix<f64>,
    b: &DMatrix<f64>,
    r: &DMatrix<f64>,
    p: &DMatrix<f64>,
    k_out: &mut DMatrix<f64>,
    s: &mut DareScratch,
) -> bool {
    let ok = gain_into_scratch(a, b, r, p, s);
    if ok {
        k_out.copy_from(&s.k);
    }
    ok
}

/// The LQR controller with its preallocated scratch and warm-started Riccati solution.
#[derive(Debug)]
pub struct Lqr {
    iterations: usize,
    pub(super) target: ObjectiveTarget,
    q: DMatrix<f64>,
    r: DMatrix<f64>,
    fx: DVector<f64>,
    tanh_a: DVector<f64>,
    a: DMatrix<f64>,
    b: DMatrix<f64>,
    c: DVector<f64>,
    p: DMatrix<f64>,
    p_warm: bool,
    k: DMatrix<f64>,
    dare: DareScratch,
    u_star: DVector<f64>,
    rhs: DVector<f64>,
    btb: DMatrix<f64>,
    dx: DVector<f64>,
    /// ū, the linearisation point (previous bin's clamped u*).
    u_lin: DVector<f64>,
    u_lin_valid: bool,
    last_iterations: usize,
}

impl Lqr {
    pub fn new(cfg: &ControllerConfig, dims: &Dims) -> Self {
        let (d, m) = (dims.latent, dims.control);
        Lqr {
            iterations: cfg.riccati_iterations,
            target: ObjectiveTarget::new(dims),
            q: DMatrix::identity(d, d) * cfg.q_latent,
            r: DMatrix::identity(m, m) * cfg.r_control,
            fx: DVector::zeros(d),
            tanh_a: DVector::zeros(d),
            a: DMatrix::zeros(d, d),
            b: DMatrix::zeros(d, m),
            c: DVector::zeros(d),
            p: DMatrix::zeros(d, d),
            p_warm: false,
            k: DMatrix::zeros(m, d),
            dare: DareScratch::new(d, m),
            u_star: DVector::zeros(m),
            rhs: DVector::zeros(d),
            btb: DMatrix::zeros(m, m),
            dx: DVector::zeros(d),
            u_lin: DVector::zeros(m),
            u_lin_valid: false,
            last_iterations: 0,
        }
    }

    /// Forgets the warm starts (Riccati solution and linearisation point).
    pub fn reset(&mut self) {
        self.p_warm = false;
        self.u_lin_valid = false;
    }

    /// Riccati iterations used on the last bin (diagnostics).
    pub fn last_riccati_iterations(&self) -> usize {
        self.last_iterations
    }

    /// The current feedback gain K (m × d).
    pub fn gain(&self) -> &DMatrix<f64> {
        &self.k
    }

    /// One bin; allocation-free.
    pub fn compute(&mut self, ctx: &ControlContext, objective: &Objective, limits: &ActuationLimits, u_out: &mut DVector<f64>) {
        self.target.sync(objective, ctx.params);
        let alpha = ctx.params.alpha;
        let x = ctx.x;

        // Linearise at (x, ū).
        if !self.u_lin_valid {
            self.u_lin.copy_from(ctx.u_prev);
        }
        limits.clamp_in_place(&mut self.u_lin);
        dynamics::step(ctx.theta, alpha, x, &self.u_lin, &mut self.fx, &mut self.tanh_a);
        dynamics::jacobian_x(ctx.theta, alpha, &self.tanh_a, &mut self.a);
        dynamics::jacobian_u(ctx.theta, alpha, &self.tanh_a, &mut self.b);
        // c = f(x, ū) − A x − B ū
        self.c.copy_from(&self.fx);
        self.c.gemv(-1.0, &self.a, x, 1.0);
        self.c.gemv(-1.0, &self.b, &self.u_lin, 1.0);

        // Steady state: (BᵀB + εI) u* = Bᵀ((I − A) x* − c).
        let xs = &self.target.latent;
        self.rhs.copy_from(xs);
        self.rhs.gemv(-1.0, &self.a, xs, 1.0);
        self.rhs -= &self.c;
        self.u_star.gemv_tr(1.0, &self.b, &self.rhs, 0.0);
        let b = &self.b;
        let ok = spd_solve_mut(
            &mut self.btb,
            |m| {
                m.gemm_tr(1.0, b, b, 0.0);
                let n = m.nrows();
                let mean_diag = (0..n).map(|i| m[(i, i)]).sum::<f64>() / n as f64;
                let eps = STEADY_STATE_RIDGE * mean_diag + 1e-12;
                for i in 0..n {
                    m[(i, i)] += eps;
                }
            },
            &mut self.u_star,
        );
        if !ok || self.u_star.iter().any(|v| !v.is_finite()) {
            self.u_star.copy_from(&self.u_lin);
        }
        self.u_lin.copy_from(&self.u_star);
        limits.clamp_in_place(&mut self.u_lin);
        self.u_lin_valid = true;

        // Gain from the DARE, warm-started.
        if !self.p_warm {
            self.p.copy_from(&self.q);
        }
        self.last_iterations =
            solve_dare_warm(&self.a, &self.b, &self.q, &self.r, self.iterations, RICCATI_TOL, &mut self.p, &mut self.dare);
        let p_ok = self.p.iter().all(|v| v.is_finite());
        let k_ok =
            p_ok && lqr_gain(&self.a, &self.b, &self.r, &self.p, &mut self.k, &mut self.dare) && self.k.iter().all(|v| v.is_finite());
        if k_ok {
            self.p_warm = true;
        } else {
            // Diverged (e.g. an unstabilisable linearisation): fall back to feed-forward only
            // and restart the Riccati iteration from Q next bin.
            self.p_warm = false;
            self.k.fill(0.0);
        }

        // u = clamp(u* − K (x − x*))
        self.dx.copy_from(x);
        self.dx -= &self.target.latent;
        u_out.copy_from(&self.u_star);
        u_out.gemv(-1.0, &self.k, &self.dx, 1.0);
        limits.clamp_in_place(u_out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{Controller, ControllerKind};
    use super::*;
    use crate::model::Theta;

    fn scalar_p(a: f64, q: f64, r: f64) -> f64 {
        // b = 1: p² + p(r − q − a²r) − q r = 0, positive root.
        let s = q + (a * a - 1.0) * r;
        (s + (s * s + 4.0 * q * r).sqrt()) / 2.0
    }

    #[test]
    fn dare_scalar_golden_ratio() {
        let one = DMatrix::from_element(1, 1, 1.0);
        let mut p = DMatrix::zeros(1, 1);
        let it = solve_dare(&one, &one, &one, &one, 200, 1e-14, &mut p);
        let phi = (1.0 + 5f64.sqrt()) / 2.0;
        assert!((p[(0, 0)] - phi).abs() < 1e-10, "P = {} after {it}", p[(0, 0)]);
        assert!(it < 200);
        let mut k = DMatrix::zeros(1, 1);
        let mut s = DareScratch::new(1, 1);
        assert!(lqr_gain(&one, &one, &one, &p, &mut k, &mut s));
        assert!((k[(0, 0)] - phi / (1.0 + phi)).abs() < 1e-10);
    }

    #[test]
    fn dare_decoupled_matches_scalar_formula() {
        let (a1, a2) = (0.9, 1.2);
        let a = DMatrix::from_diagonal(&DVector::from_vec(vec![a1, a2]));
        let i2 = DMatrix::identity(2, 2);
        let mut p = DMatrix::zeros(2, 2);
        solve_dare(&a, &i2, &i2, &i2, 500, 1e-14, &mut p);
        let (p1, p2) = (scalar_p(a1, 1.0, 1.0), scalar_p(a2, 1.0, 1.0));
        assert!((p[(0, 0)] - p1).abs() < 1e-9, "{p}");
        assert!((p[(1, 1)] - p2).abs() < 1e-9, "{p}");
        assert!(p[(0, 1)].abs() < 1e-12 && p[(1, 0)].abs() < 1e-12);
        // The fixed point satisfies the DARE itself.
        let k = (&i2 + &p).try_inverse().unwrap() * &p * &a;
        let resid = &i2 + a.transpose() * &p * &a - a.transpose() * &p * (&i2 + &p).try_inverse().unwrap() * &p * &a - &p;
        assert!(resid.amax() < 1e-9);
        let mut k2 = DMatrix::zeros(2, 2);
        let mut s = DareScratch::new(2, 2);
        lqr_gain(&a, &i2, &i2, &p, &mut k2, &mut s);
        assert!((k - &k2).amax() < 1e-9);
        assert!((k2[(0, 0)] - a1 * p1 / (1.0 + p1)).abs() < 1e-9);
        // A non-identity weighting: q = 2, r = 0.5 on a scalar.
        let mut p = DMatrix::zeros(1, 1);
        solve_dare(
            &DMatrix::from_element(1, 1, 1.1),
            &DMatrix::from_element(1, 1, 1.0),
            &DMatrix::from_element(1, 1, 2.0),
            &DMatrix::from_element(1, 1, 0.5),
            500,
            1e-14,
            &mut p,
        );
        assert!((p[(0, 0)] - scalar_p(1.1, 2.0, 0.5)).abs() < 1e-9);
    }

    #[test]
    fn dare_random_satisfies_equation() {
        let d = 8;
        let m = 3;
        let a = DMatrix::identity(d, d) * 0.9 + pseudo_random(d, d, 5, 0.1);
        let b = pseudo_random(d, m, 6, 1.0);
        let q = DMatrix::identity(d, d);
        let r = DMatrix::identity(m, m) * 0.1;
        let mut p = DMatrix::zeros(d, d);
        let it = solve_dare(&a, &b, &q, &r, 1000, 1e-13, &mut p);
        assert!(it < 1000);
        let s = (&r + b.transpose() * &p * &b).try_inverse().unwrap();
        let resid = &q + a.transpose() * &p * &a - a.transpose() * &p * &b * s * b.transpose() * &p * &a - &p;
        assert!(resid.amax() < 1e-8, "{}", resid.amax());
    }

    #[test]
    fn lqr_closed_loop_reaches_target() {
        let (p, theta, target, limits) = reachable_model();
        let cfg = ControllerConfig { kind: ControllerKind::Lqr, ..Default::default() };
        let mut ctrl = Controller::new(&cfg, &p.dims, &p).unwrap();
        let obj = Objective::Latent(target.clone());
        let x0 = DVector::zeros(2);
        let x = closed_loop(&mut ctrl, &p, &theta, &obj, &limits, &x0, 200);
        let err = (&x - &target).norm();
        assert!(err < 0.05, "LQR error {err}, x = {x}");
        let open = (open_loop(&p, &theta, &x0, 200) - &target).norm();
        assert!(open > 0.05, "u = 0 should not reach the target ({open})");
    }

    #[test]
    fn lqr_rate_objective_reaches_rates() {
        let (p, theta, target, limits) = reachable_model();
        let mut eta = DVector::zeros(3);
        crate::model::observation::log_rates(&p.obs_c, &p.obs_d, p.log_rate_max, &target, &mut eta);
        let obj = Objective::Rates(eta.map(f64::exp));
        let cfg = ControllerConfig { kind: ControllerKind::Lqr, ..Default::default() };
        let mut ctrl = Controller::new(&cfg, &p.dims, &p).unwrap();
        ctrl.set_objective(&obj, &p).unwrap();
        let x = closed_loop(&mut ctrl, &p, &theta, &obj, &limits, &DVector::zeros(2), 200);
        assert!((&x - &target).norm() < 0.05, "{x}");
    }

    #[test]
    fn lqr_respects_tight_limits_and_resets() {
        let (p, theta, target, _) = reachable_model();
        let limits = ActuationLimits { lo: DVector::from_element(2, -0.1), hi: DVector::from_element(2, 0.1) };
        let cfg = ControllerConfig { kind: ControllerKind::Lqr, ..Default::default() };
        let mut ctrl = Controller::new(&cfg, &p.dims, &p).unwrap();
        let obj = Objective::Latent(target);
        closed_loop(&mut ctrl, &p, &theta, &obj, &limits, &DVector::zeros(2), 20);
        ctrl.reset();
        closed_loop(&mut ctrl, &p, &theta, &obj, &limits, &DVector::zeros(2), 5);
    }

    #[test]
    fn lqr_compute_does_not_allocate() {
        // d = 8 > 5 so that nalgebra's gemm would reach matrixmultiply (which allocates).
        let (d, m, n) = (8, 6, 10);
        let c = pseudo_random(n, d, 11, 0.5);
        let p = params(n, d, m, 0.3, c, DVector::from_element(n, 2.0));
        let theta = Theta {
            w_hh: pseudo_random(d, d, 12, 0.3),
            w_xu: pseudo_random(d, m, 13, 1.0),
            b: pseudo_random(d, 1, 14, 0.1).column(0).into(),
        };
        let limits = ActuationLimits { lo: DVector::from_element(m, -1.0), hi: DVector::from_element(m, 1.0) };
        let cfg = ControllerConfig { kind: ControllerKind::Lqr, ..Default::default() };
        let mut ctrl = Controller::new(&cfg, &p.dims, &p).unwrap();
        let x = pseudo_random(d, 1, 15, 0.3).column(0).into_owned();
        let u_prev = DVector::zeros(m);
        let mut u = DVector::zeros(m);
        let objs = [Objective::Latent(DVector::from_element(d, 0.2)), Objective::Rates(DVector::from_element(n, 10.0))];
        for obj in &objs {
            let ctx = ControlContext { params: &p, theta: &theta, x: &x, u_prev: &u_prev, bin: 0 };
            let before = allocations();
            for _ in 0..3 {
                ctrl.compute(&ctx, obj, &limits, &mut u);
            }
            ctrl.reset();
            ctrl.compute(&ctx, obj, &limits, &mut u);
            assert_eq!(allocations(), before, "LQR compute allocated");
            assert!(u.iter().all(|v| v.is_finite()));
        }
    }
}
