//! Discrete-time LQR on the linearisation of the dynamics at the current estimate
//! (docs/model.md, controller `lqr`): cheap and good for small rigs.
//!
//! Each bin: A = ∂f/∂x and B = ∂f/∂u at (x, ū), affine offset c = f(x, ū) − A x − B ū.
//! The steady-state control holding the target is u* = argmin ‖(I − A) x* − c − B u‖² + ε‖u‖²
//! (an m × m Cholesky solve); the feedback gain K comes from the discrete algebraic Riccati
//! equation (DARE) P = Q + AᵀPA − AᵀPB (R + BᵀPB)⁻¹ BᵀPA.
//! The command is u = clamp(u* − K (x − x*)).
//!
//! # Solving the DARE
//!
//! The fixed-point (value) iteration P ← Q + AᵀPA − AᵀPB (R + BᵀPB)⁻¹ BᵀPA contracts like
//! ρ(A − BK)² per step. With 1 ms bins the dynamics x' = x + α(−x + tanh(·)) have a small
//! α, so A ≈ I + Δ·J has eigenvalues within ~1e-3 of 1 and the closed loop is barely faster:
//! the fixed point needs thousands of iterations, and used to hit its `riccati_iterations`
//! cap (200) on every bin without converging, warm start or not.
//!
//! The per-bin solve is therefore:
//! 1. warm (a previous bin's P is held): ONE fixed-point step from that P
//!    ([`solve_dare_warm`] with one iteration). If it moves P by ≤ [`RICCATI_TOL`] (relative)
//!    the linearisation has barely moved and that P is kept. One step costs a fraction of one
//!    doubling (≈ 4d³ + 6d²m flops against ≈ 17d³); more warm steps would not pay: where the
//!    fixed point is slow (A ≈ I) each further step removes only a fraction 1 − ρ² ≈ 2e-3
//!    of the remaining error, and where it is fast the doubling converges in a handful of
//!    doublings anyway. (The change of one
//!    fixed-point step bounds the error only up to a factor 1/(1 − ρ²), the same criterion
//!    the warm-started fixed point always used; in steady state, where A does not change,
//!    the held P is the previous bin's converged doubling solution.)
//! 2. otherwise, or cold: the structure-preserving doubling algorithm
//!    ([`solve_dare_doubling`]) from scratch. Its k-th iterate is the Riccati recursion
//!    after 2^k steps, so it converges quadratically: tens of doublings even with
//!    eigenvalues at 1 − 1e-3 (16–19 in the tests' 1 kHz systems), at most
//!    min(`riccati_iterations`, [`MAX_DOUBLINGS`]). Its stopping test (relative change of
//!    the iterate ≤ tol) is a genuine error estimate, because the next change is
//!    quadratically smaller.
//! 3. if the doubling breaks down (a singular or non-finite W) or does not converge within
//!    its cap (no stabilising solution: an uncontrollable mode on or outside the unit
//!    circle), the old warm-started fixed-point iteration continues from step 1's P, up to
//!    `riccati_iterations` steps in all, exactly the solver used before the doubling; if its
//!    P is non-finite too, the command is feed-forward only (K = 0) and the next bin starts
//!    cold.
//!
//! [`Lqr::last_riccati_iterations`] reports all steps of a bin together (warm step,
//! doublings, fixed-point steps). Everything is allocation-free after construction.
//!
//! # Linearisation point
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
use crate::linalg::{gemm_nn, lu_factor_mut, lu_solve_mut, mul_into, spd_solve_mut};
use crate::model::{dynamics, Dims};
use nalgebra::{DMatrix, DVector};

/// Relative convergence tolerance of the Riccati solvers: stop when
/// max|P_{n+1} − P_n| ≤ tol · max(1, max|P_{n+1}|) (fixed-point step or doubling).
pub const RICCATI_TOL: f64 = 1e-10;

/// Cap on the doublings of [`solve_dare_doubling`] per solve: 2^60 Riccati steps' worth,
/// far beyond any stabilisable problem (≈ 15 doublings at ρ = 1 − 1e-3, ≈ 25 at 1 − 1e-6).
pub const MAX_DOUBLINGS: usize = 60;

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
/// Writes P into `p_out` (resized to d × d) and returns the number of iterations used and
/// whether they converged. Allocates its scratch; the per-bin path uses [`solve_dare_warm`]
/// and [`solve_dare_doubling`].
pub fn solve_dare(
    a: &DMatrix<f64>,
    b: &DMatrix<f64>,
    q: &DMatrix<f64>,
    r: &DMatrix<f64>,
    iterations: usize,
    tol: f64,
    p_out: &mut DMatrix<f64>,
) -> (usize, bool) {
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
/// Returns the iterations used and whether the last one met the tolerance. On a non-finite
/// iterate or a failed factorisation it stops early and reports not converged (`p` is
/// then non-finite). Slow where A − BK has eigenvalues near the unit circle (it contracts
/// like ρ² per step); see [`solve_dare_doubling`].
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
) -> (usize, bool) {
    let d = p.nrows();
    for it in 1..=iterations {
        if !gain_into_scratch(a, b, r, p, s) {
            p.fill(f64::NAN);
            return (it, false);
        }
        // P' = Q + Aᵀ(PA) − (BᵀPA)ᵀ K
        s.p_next.copy_from(q);
        s.p_next.gemm_tr(1.0, a, &s.pa, 1.0);
        s.p_next.gemm_tr(-1.0, &s.bpa, &s.k, 1.0);
        let mut diff: f64 = 0.0;
        let mut scale: f64 = 0.0;
        let mut finite = true;
        for i in 0..d {
            for j in 0..=i {
                let v = 0.5 * (s.p_next[(i, j)] + s.p_next[(j, i)]);
                s.p_next[(i, j)] = v;
                s.p_next[(j, i)] = v;
                diff = diff.max((v - p[(i, j)]).abs());
                scale = scale.max(v.abs());
                // `f64::max` drops a NaN; track finiteness separately.
                finite &= v.is_finite();
            }
        }
        std::mem::swap(p, &mut s.p_next);
        if !finite || !diff.is_finite() || !scale.is_finite() {
            return (it, false);
        }
        if diff <= tol * scale.max(1.0) {
            return (it, true);
        }
    }
    (iterations, false)
}

/// Scratch for [`solve_dare_doubling`] (d latent, m control); allocation-free after `new`.
#[derive(Debug, Clone)]
pub struct DoublingScratch {
    /// A_k, and A_{k+1} being formed.
    ak: DMatrix<f64>,
    ak_next: DMatrix<f64>,
    /// G_k = (dual) control weight, H_k → P.
    g: DMatrix<f64>,
    h: DMatrix<f64>,
    /// W = I + G_k H_k and then its LU factors, with the pivots.
    w: DMatrix<f64>,
    perm: Vec<usize>,
    /// W⁻¹ A_k and W⁻¹ G_k.
    wa: DMatrix<f64>,
    wg: DMatrix<f64>,
    t1: DMatrix<f64>,
    t2: DMatrix<f64>,
    /// R (factored in place) and R⁻¹ Bᵀ.
    r: DMatrix<f64>,
    rinv_bt: DMatrix<f64>,
}

impl DoublingScratch {
    pub fn new(d: usize, m: usize) -> Self {
        let dd = || DMatrix::zeros(d, d);
        DoublingScratch {
            ak: dd(),
            ak_next: dd(),
            g: dd(),
            h: dd(),
            w: dd(),
            perm: vec![0; d],
            wa: dd(),
            wg: dd(),
            t1: dd(),
            t2: dd(),
            r: DMatrix::zeros(m, m),
            rinv_bt: DMatrix::zeros(m, d),
        }
    }
}

/// Symmetrises `m` in place from its two triangles; returns max|m|, or +∞ if an entry is
/// not finite (`f64::max` would drop a NaN).
fn symmetrise(m: &mut DMatrix<f64>) -> f64 {
    let n = m.nrows();
    let mut scale: f64 = 0.0;
    let mut finite = true;
    for j in 0..n {
        for i in j..n {
            let v = 0.5 * (m[(i, j)] + m[(j, i)]);
            m[(i, j)] = v;
            m[(j, i)] = v;
            scale = scale.max(v.abs());
            finite &= v.is_finite();
        }
    }
    if finite {
        scale
    } else {
        f64::INFINITY
    }
}

/// Solves P = Q + AᵀPA − AᵀPB (R + BᵀPB)⁻¹ BᵀPA by the structure-preserving doubling
/// algorithm (SDA; Chu, Fan, Lin & Wang 2004). With G = B R⁻¹ Bᵀ, A₀ = A, G₀ = G, H₀ = Q:
///
/// W = I + G_k H_k,  A_{k+1} = A_k W⁻¹ A_k,  G_{k+1} = G_k + A_k W⁻¹ G_k A_kᵀ,
/// H_{k+1} = H_k + A_kᵀ H_k W⁻¹ A_k.
///
/// H_k is the Riccati recursion from P = 0 after 2^k steps (the 2^k-horizon cost), so H_k
/// → P quadratically (error ~ ρ(A − BK)^{2^{k+1}}) however close the closed loop is to the
/// unit circle. Stops after the first doubling with max|H_{k+1} − H_k| ≤ tol ·
/// max(1, max|H_{k+1}|), at most `max_doublings`; needs Q symmetric positive semi-definite
/// and R symmetric positive definite. Allocation-free (LU of W with partial pivoting, R
/// by Cholesky).
///
/// Returns (doublings used, converged). Converged: `p_out` = P (symmetrised). Not converged
/// within the cap (e.g. no stabilising solution): `p_out` holds the last H_k. A breakdown
/// (W singular to working precision, R not factorable, a non-finite iterate) stops at once
/// with `p_out` filled with NaN.
#[allow(clippy::too_many_arguments)]
pub fn solve_dare_doubling(
    a: &DMatrix<f64>,
    b: &DMatrix<f64>,
    q: &DMatrix<f64>,
    r: &DMatrix<f64>,
    max_doublings: usize,
    tol: f64,
    p_out: &mut DMatrix<f64>,
    s: &mut DoublingScratch,
) -> (usize, bool) {
    let d = a.nrows();
    assert_eq!((s.ak.nrows(), s.rinv_bt.nrows()), (d, b.ncols()), "solve_dare_doubling: scratch dimensions");
    // G = B R⁻¹ Bᵀ
    s.rinv_bt.tr_copy_from(b);
    if !spd_solve_mut(&mut s.r, |m| m.copy_from(r), &mut s.rinv_bt) {
        p_out.fill(f64::NAN);
        return (0, false);
    }
    gemm_nn(&mut s.g, 1.0, b, &s.rinv_bt, 0.0);
    symmetrise(&mut s.g);
    s.ak.copy_from(a);
    s.h.copy_from(q);
    symmetrise(&mut s.h);
    let mut used = 0;
    let mut converged = false;
    for k in 1..=max_doublings {
        used = k;
        // W = I + G H, factored.
        mul_into(&mut s.w, &s.g, false, &s.h, false);
        for i in 0..d {
            s.w[(i, i)] += 1.0;
        }
        if !lu_factor_mut(&mut s.w, &mut s.perm) {
            p_out.fill(f64::NAN);
            return (k, false);
        }
        s.wa.copy_from(&s.ak);
        lu_solve_mut(&s.w, &s.perm, &mut s.wa);
        s.wg.copy_from(&s.g);
        lu_solve_mut(&s.w, &s.perm, &mut s.wg);
        // A' = A W⁻¹A
        mul_into(&mut s.ak_next, &s.ak, false, &s.wa, false);
        // G' = G + (A W⁻¹G) Aᵀ
        mul_into(&mut s.t1, &s.ak, false, &s.wg, false);
        mul_into(&mut s.t2, &s.t1, false, &s.ak, true);
        s.g += &s.t2;
        symmetrise(&mut s.g);
        // H' = H + Aᵀ (H W⁻¹A); the increment is symmetric positive semi-definite.
        mul_into(&mut s.t1, &s.h, false, &s.wa, false);
        mul_into(&mut s.t2, &s.ak, true, &s.t1, false);
        let diff = symmetrise(&mut s.t2);
        s.h += &s.t2;
        let scale = symmetrise(&mut s.h);
        std::mem::swap(&mut s.ak, &mut s.ak_next);
        if !(diff.is_finite() && scale.is_finite() && s.g.iter().chain(s.ak.iter()).all(|v| v.is_finite())) {
            p_out.fill(f64::NAN);
            return (k, false);
        }
        if diff <= tol * scale.max(1.0) {
            converged = true;
            break;
        }
    }
    p_out.copy_from(&s.h);
    (used, converged)
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
    /// The doubling's output (swapped into `p` when it converges).
    p_doubling: DMatrix<f64>,
    k: DMatrix<f64>,
    dare: DareScratch,
    doubling: DoublingScratch,
    u_star: DVector<f64>,
    rhs: DVector<f64>,
    btb: DMatrix<f64>,
    dx: DVector<f64>,
    /// ū, the linearisation point (previous bin's clamped u*).
    u_lin: DVector<f64>,
    u_lin_valid: bool,
    last_iterations: usize,
    last_solver: RiccatiSolver,
}

/// Which stage of [`Lqr`]'s Riccati solve produced the last bin's P (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RiccatiSolver {
    /// One fixed-point step from the previous bin's P met the tolerance.
    WarmStep,
    /// The doubling algorithm converged.
    Doubling,
    /// The doubling broke down or did not converge; the fixed-point iteration ran (its P
    /// may be unconverged, or non-finite, in which case K = 0).
    FixedPoint,
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
            p_doubling: DMatrix::zeros(d, d),
            k: DMatrix::zeros(m, d),
            dare: DareScratch::new(d, m),
            doubling: DoublingScratch::new(d, m),
            u_star: DVector::zeros(m),
            rhs: DVector::zeros(d),
            btb: DMatrix::zeros(m, m),
            dx: DVector::zeros(d),
            u_lin: DVector::zeros(m),
            u_lin_valid: false,
            last_iterations: 0,
            last_solver: RiccatiSolver::Doubling,
        }
    }

    /// Forgets the warm starts (Riccati solution and linearisation point).
    pub fn reset(&mut self) {
        self.p_warm = false;
        self.u_lin_valid = false;
    }

    /// Riccati steps used on the last bin (diagnostics): the warm fixed-point step, the
    /// doublings and any fallback fixed-point steps together (module docs).
    pub fn last_riccati_iterations(&self) -> usize {
        self.last_iterations
    }

    /// The stage of the solve that produced the last bin's P (diagnostics).
    pub fn last_riccati_solver(&self) -> RiccatiSolver {
        self.last_solver
    }

    /// The current feedback gain K (m × d).
    pub fn gain(&self) -> &DMatrix<f64> {
        &self.k
    }

    /// Solves the DARE at the current (A, B) into `self.p`; returns the steps used.
    /// Allocation-free. `self.p` may be non-finite afterwards (the caller falls back).
    fn solve_riccati(&mut self) -> usize {
        let mut warm_steps = 0;
        if self.p_warm {
            let (n, converged) = solve_dare_warm(&self.a, &self.b, &self.q, &self.r, 1, RICCATI_TOL, &mut self.p, &mut self.dare);
            warm_steps = n;
            if converged {
                self.last_solver = RiccatiSolver::WarmStep;
                return warm_steps;
            }
        }
        let cap = self.iterations.min(MAX_DOUBLINGS);
        let (doublings, converged) =
            solve_dare_doubling(&self.a, &self.b, &self.q, &self.r, cap, RICCATI_TOL, &mut self.p_doubling, &mut self.doubling);
        if converged {
            std::mem::swap(&mut self.p, &mut self.p_doubling);
            self.last_solver = RiccatiSolver::Doubling;
            return warm_steps + doublings;
        }
        // Breakdown or no convergence within the cap: the fixed point as before the doubling
        // existed, continuing from the warm step (or from Q), `iterations` steps in all.
        let mut rest = self.iterations.saturating_sub(warm_steps);
        if !self.p_warm || !self.p.iter().all(|v| v.is_finite()) {
            self.p.copy_from(&self.q);
            rest = self.iterations;
        }
        let (n, _) = solve_dare_warm(&self.a, &self.b, &self.q, &self.r, rest, RICCATI_TOL, &mut self.p, &mut self.dare);
        self.last_solver = RiccatiSolver::FixedPoint;
        warm_steps + doublings + n
    }

    /// One bin; allocation-free.
    pub fn compute(&mut self, ctx: &ControlContext, objective: &Objective, limits: &ActuationLimits, u_out: &mut DVector<f64>) -> bool {
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

        // Gain from the DARE (module docs): one warm fixed-point step, else doubling, else
        // the fixed point.
        self.last_iterations = self.solve_riccati();
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
        if u_out.iter().any(|v| !v.is_finite()) {
            // No command to give (a state or target the linearisation overflows on): said,
            // not clamped into a constant; the next bin starts the linearisation afresh.
            u_out.fill(f64::NAN);
            self.u_lin_valid = false;
            self.p_warm = false;
            return false;
        }
        limits.clamp_in_place(u_out);
        true
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
        let (it, converged) = solve_dare(&one, &one, &one, &one, 200, 1e-14, &mut p);
        let phi = (1.0 + 5f64.sqrt()) / 2.0;
        assert!((p[(0, 0)] - phi).abs() < 1e-10, "P = {} after {it}", p[(0, 0)]);
        assert!(it < 200 && converged);
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
        let (it, converged) = solve_dare(&a, &b, &q, &r, 1000, 1e-13, &mut p);
        assert!(it < 1000 && converged);
        let s = (&r + b.transpose() * &p * &b).try_inverse().unwrap();
        let resid = &q + a.transpose() * &p * &a - a.transpose() * &p * &b * s * b.transpose() * &p * &a - &p;
        assert!(resid.amax() < 1e-8, "{}", resid.amax());
    }

    /// max|Q + AᵀPA − AᵀPB (R + BᵀPB)⁻¹ BᵀPA − P| / max|P| (allocating; tests only).
    fn dare_residual(a: &DMatrix<f64>, b: &DMatrix<f64>, q: &DMatrix<f64>, r: &DMatrix<f64>, p: &DMatrix<f64>) -> f64 {
        let s = (r + b.transpose() * p * b).try_inverse().unwrap();
        let resid = q + a.transpose() * p * a - a.transpose() * p * b * s * b.transpose() * p * a - p;
        resid.amax() / p.amax()
    }

    fn doubling(
        a: &DMatrix<f64>,
        b: &DMatrix<f64>,
        q: &DMatrix<f64>,
        r: &DMatrix<f64>,
        cap: usize,
        tol: f64,
    ) -> (DMatrix<f64>, usize, bool) {
        let mut p = DMatrix::zeros(a.nrows(), a.nrows());
        let mut s = DoublingScratch::new(a.nrows(), b.ncols());
        let (n, converged) = solve_dare_doubling(a, b, q, r, cap, tol, &mut p, &mut s);
        (p, n, converged)
    }

    #[test]
    fn doubling_agrees_with_the_fixed_point_and_the_scalar_formula() {
        // Scalars (b = 1) against the closed form, stable to unstable, incl. a = 1 − 1e-3.
        for &(a, q, r) in &[(0.5, 1.0, 1.0), (0.999, 1.0, 0.01), (1.0, 1.0, 1.0), (1.1, 2.0, 0.5), (-1.5, 1.0, 0.1), (0.0, 3.0, 1.0)] {
            let m = |v: f64| DMatrix::from_element(1, 1, v);
            let (p, n, converged) = doubling(&m(a), &m(1.0), &m(q), &m(r), MAX_DOUBLINGS, 1e-14);
            let want = scalar_p(a, q, r);
            assert!(converged && n < 20, "a = {a}: {n} doublings, converged {converged}");
            assert!((p[(0, 0)] - want).abs() <= 1e-12 * want, "a = {a}: P = {} vs {want}", p[(0, 0)]);
        }
        // Random well-conditioned cases against the converged fixed point.
        for (seed, d, m) in [(21u64, 2usize, 1usize), (22, 4, 2), (23, 8, 3), (24, 5, 5)] {
            let a = DMatrix::identity(d, d) * 0.8 + pseudo_random(d, d, seed, 0.3);
            let b = pseudo_random(d, m, seed + 100, 1.0);
            let l = pseudo_random(d, d, seed + 200, 0.5);
            let q = DMatrix::identity(d, d) * 0.5 + &l * l.transpose();
            let r = DMatrix::identity(m, m) * 0.2;
            let mut p_fp = DMatrix::zeros(d, d);
            let (it, fp_converged) = solve_dare(&a, &b, &q, &r, 100_000, 1e-15, &mut p_fp);
            assert!(fp_converged, "seed {seed}: fixed point not converged after {it}");
            let (p, n, converged) = doubling(&a, &b, &q, &r, MAX_DOUBLINGS, RICCATI_TOL);
            assert!(converged && n < 15, "seed {seed}: {n} doublings");
            let rel = (&p - &p_fp).amax() / p_fp.amax();
            assert!(rel < 1e-8, "seed {seed}: doubling vs fixed point {rel:e}");
            assert!(dare_residual(&a, &b, &q, &r, &p) < 1e-10);
            assert_eq!(p, p.transpose(), "P symmetric");
        }
        // The k-th doubling is the Riccati recursion after 2^k steps from P = 0, i.e. 2^k − 1
        // fixed-point steps from Q (tol = 0 runs every step).
        let (d, m) = (4, 2);
        let a = DMatrix::identity(d, d) * 0.95 + pseudo_random(d, d, 31, 0.2);
        let b = pseudo_random(d, m, 32, 1.0);
        let q = DMatrix::identity(d, d);
        let r = DMatrix::identity(m, m) * 0.1;
        for k in 1..=6 {
            let (p, n, converged) = doubling(&a, &b, &q, &r, k, 0.0);
            assert_eq!((n, converged), (k, false));
            let mut p_fp = DMatrix::zeros(d, d);
            solve_dare(&a, &b, &q, &r, (1 << k) - 1, 0.0, &mut p_fp);
            let rel = (&p - &p_fp).amax() / p_fp.amax();
            assert!(rel < 1e-12, "k = {k}: {rel:e}");
        }
    }

    /// A slow continuous-time system sampled at 1 ms: A = I + Δ·J, B = Δ·B_c.
    fn one_khz_system() -> (DMatrix<f64>, DMatrix<f64>, DMatrix<f64>, DMatrix<f64>) {
        let dt = 1e-3;
        // One unstable mode (eigenvalue ≈ +0.27) and a stable oscillatory pair (≈ −0.54 ± 0.95i).
        let j = DMatrix::from_row_slice(3, 3, &[-0.5, 1.0, 0.0, -1.0, -0.5, 0.5, 0.0, 0.3, 0.2]);
        let a = DMatrix::identity(3, 3) + j * dt;
        let b = DMatrix::from_column_slice(3, 1, &[1.0, 0.5, -0.3]) * dt;
        let q = DMatrix::identity(3, 3);
        let r = DMatrix::identity(1, 1) * 0.01;
        (a, b, q, r)
    }

    #[test]
    fn doubling_converges_where_the_fixed_point_crawls() {
        let (a, b, q, r) = one_khz_system();
        let cap = ControllerConfig::default().riccati_iterations;
        let mut p_fp = DMatrix::zeros(3, 3);
        let (it, converged) = solve_dare(&a, &b, &q, &r, cap, RICCATI_TOL, &mut p_fp);
        assert!(!converged && it == cap, "the fixed point converged in {it} ≤ {cap}");
        let fp_resid = dare_residual(&a, &b, &q, &r, &p_fp);
        assert!(fp_resid > 1e-3, "fixed point after {cap}: residual {fp_resid:e}");

        let (p, n, converged) = doubling(&a, &b, &q, &r, MAX_DOUBLINGS, RICCATI_TOL);
        let resid = dare_residual(&a, &b, &q, &r, &p);
        eprintln!("1 kHz system: fixed point residual {fp_resid:e} after {cap}; doubling {n} steps, residual {resid:e}");
        assert!(converged && n < 40, "{n} doublings, converged {converged}");
        assert!(resid < 1e-8, "residual {resid:e}");
        // Stabilising: the closed loop A − BK is inside the unit circle.
        let mut k = DMatrix::zeros(1, 3);
        assert!(lqr_gain(&a, &b, &r, &p, &mut k, &mut DareScratch::new(3, 1)));
        let rho = (&a - &b * &k).complex_eigenvalues().iter().map(|z| z.norm()).fold(0.0, f64::max);
        assert!(rho < 1.0, "closed-loop spectral radius {rho}");
        // The fixed point does get there, eventually.
        let mut p_long = DMatrix::zeros(3, 3);
        let (it_long, converged) = solve_dare(&a, &b, &q, &r, 1_000_000, RICCATI_TOL, &mut p_long);
        eprintln!("fixed point to tolerance: {it_long} iterations (ρ = {rho})");
        assert!(converged && it_long > 10 * cap);
        assert!((&p - &p_long).amax() / p.amax() < 1e-6);
    }

    #[test]
    fn doubling_reports_breakdown_and_non_convergence() {
        // An uncontrollable mode at 1 (with cost): no stabilising solution; H doubles.
        let a = DMatrix::identity(2, 2);
        let b = DMatrix::from_column_slice(2, 1, &[1.0, 0.0]);
        let (q, r) = (DMatrix::identity(2, 2), DMatrix::identity(1, 1));
        let (p, n, converged) = doubling(&a, &b, &q, &r, 20, RICCATI_TOL);
        assert_eq!((n, converged), (20, false));
        assert!(p.iter().all(|v| v.is_finite()) && p[(1, 1)] > 1e5, "{p}");
        // An uncontrollable unstable mode overflows: a breakdown, P = NaN.
        let a = DMatrix::from_diagonal(&DVector::from_vec(vec![0.5, 3.0]));
        let (p, n, converged) = doubling(&a, &b, &q, &r, MAX_DOUBLINGS, RICCATI_TOL);
        assert!(!converged && n < MAX_DOUBLINGS && p.iter().all(|v| v.is_nan()), "{n}: {p}");
        // A non-finite input.
        let a = DMatrix::from_element(2, 2, f64::NAN);
        let (p, _, converged) = doubling(&a, &b, &q, &r, MAX_DOUBLINGS, RICCATI_TOL);
        assert!(!converged && p.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn lqr_at_1khz_solves_each_bin_and_keeps_a_converged_warm_start() {
        // α = 1e-3: A = (1 − α) I + α diag(sech²) W_hh has every eigenvalue within ~1e-3 of 1
        // (W_hh has eigenvalues 1.18 and 1.01 ± 0.38i: slightly unstable open loop).
        let (d, m, n) = (3, 1, 4);
        let p = params(n, d, m, 1e-3, pseudo_random(n, d, 41, 0.5), DVector::from_element(n, 2.0));
        let theta = Theta {
            w_hh: DMatrix::from_row_slice(3, 3, &[1.2, 0.4, 0.0, -0.4, 0.9, 0.3, 0.1, 0.0, 1.1]),
            w_xu: DMatrix::from_column_slice(3, 1, &[1.0, 0.5, -0.3]),
            b: DVector::zeros(3),
        };
        let limits = ActuationLimits { lo: DVector::from_element(m, -5.0), hi: DVector::from_element(m, 5.0) };
        let cfg = ControllerConfig { kind: ControllerKind::Lqr, ..Default::default() };
        let mut lqr = Lqr::new(&cfg, &p.dims);
        let obj = Objective::Latent(DVector::from_element(d, 0.1));
        let x = DVector::from_vec(vec![0.2, -0.1, 0.05]);
        let u_prev = DVector::zeros(m);
        let mut u = DVector::zeros(m);
        let ctx = ControlContext { params: &p, theta: &theta, x: &x, u_prev: &u_prev, bin: 0 };
        let mut solvers = vec![];
        for _ in 0..30 {
            lqr.compute(&ctx, &obj, &limits, &mut u);
            solvers.push((lqr.last_riccati_solver(), lqr.last_riccati_iterations()));
            // Every bin's P solves its own DARE (the old fixed point stopped at its cap of 200).
            assert!(dare_residual(&lqr.a, &lqr.b, &lqr.q, &lqr.r, &lqr.p) < 1e-8, "{solvers:?}");
        }
        let (first, n_first) = solvers[0];
        assert!(first == RiccatiSolver::Doubling && n_first < 40, "{solvers:?}");
        // x is fixed, so once ū has settled the linearisation stops moving: one warm step.
        assert_eq!(*solvers.last().unwrap(), (RiccatiSolver::WarmStep, 1), "{solvers:?}");
        assert!(solvers.iter().all(|&(s, n)| s != RiccatiSolver::FixedPoint && n <= 1 + 40), "{solvers:?}");
        // The gain is the one of the exact solution.
        let mut k = DMatrix::zeros(m, d);
        let (p_ref, _, _) = doubling(&lqr.a, &lqr.b, &lqr.q, &lqr.r, MAX_DOUBLINGS, 1e-15);
        lqr_gain(&lqr.a, &lqr.b, &lqr.r, &p_ref, &mut k, &mut DareScratch::new(d, m));
        assert!((&k - lqr.gain()).amax() <= 1e-8 * k.amax(), "{k} vs {}", lqr.gain());
    }

    #[test]
    fn lqr_falls_back_to_the_fixed_point_without_a_stabilising_solution() {
        // B = 0 and A = 0.7 I + 0.3 W_hh with an eigenvalue 1.01: A^(2^k) overflows in the
        // doubling (a breakdown); the fixed point then runs its 200 steps and K = 0.
        let (d, m, n) = (2, 1, 3);
        let p = params(n, d, m, 0.3, pseudo_random(n, d, 51, 0.5), DVector::from_element(n, 2.0));
        let theta = Theta {
            w_hh: DMatrix::from_diagonal(&DVector::from_vec(vec![(1.01 - 0.7) / 0.3, 0.5])),
            w_xu: DMatrix::zeros(d, m),
            b: DVector::zeros(d),
        };
        let limits = ActuationLimits { lo: DVector::from_element(m, -1.0), hi: DVector::from_element(m, 1.0) };
        let cfg = ControllerConfig { kind: ControllerKind::Lqr, ..Default::default() };
        let mut lqr = Lqr::new(&cfg, &p.dims);
        let obj = Objective::Latent(DVector::zeros(d));
        let (x, u_prev) = (DVector::zeros(d), DVector::zeros(m));
        let mut u = DVector::zeros(m);
        let ctx = ControlContext { params: &p, theta: &theta, x: &x, u_prev: &u_prev, bin: 0 };
        lqr.compute(&ctx, &obj, &limits, &mut u);
        let before = allocations();
        let mut runs = [(RiccatiSolver::Doubling, 0); 3];
        for run in runs.iter_mut() {
            lqr.compute(&ctx, &obj, &limits, &mut u);
            *run = (lqr.last_riccati_solver(), lqr.last_riccati_iterations());
        }
        assert_eq!(allocations(), before, "the fallback allocated");
        for (solver, steps) in runs {
            assert_eq!(solver, RiccatiSolver::FixedPoint);
            assert!(steps > cfg.riccati_iterations && steps <= cfg.riccati_iterations + MAX_DOUBLINGS, "{steps}");
        }
        assert!(lqr.gain().iter().all(|&v| v == 0.0) && u.iter().all(|v| v.is_finite()));
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
            let mut solvers = [None; 4];
            let solver = |c: &Controller| match c {
                Controller::Lqr(l) => Some(l.last_riccati_solver()),
                _ => None,
            };
            let before = allocations();
            for s in solvers.iter_mut().take(3) {
                ctrl.compute(&ctx, obj, &limits, &mut u);
                *s = solver(&ctrl);
            }
            ctrl.reset();
            ctrl.compute(&ctx, obj, &limits, &mut u);
            solvers[3] = solver(&ctrl);
            assert_eq!(allocations(), before, "LQR compute allocated");
            assert!(u.iter().all(|v| v.is_finite()));
            // The cold bins (first, after the reset) ran the doubling; none fell back.
            assert_eq!((solvers[0], solvers[3]), (Some(RiccatiSolver::Doubling), Some(RiccatiSolver::Doubling)));
            assert!(!solvers.contains(&Some(RiccatiSolver::FixedPoint)), "{solvers:?}");
        }
    }
}
