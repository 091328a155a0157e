//! The per-bin model on the device: EKF predict, the observation reduction over units
//! (shared by the EKF update, the embedding gradient and the task-library scores), and the
//! one-cube update (information-form EKF update, embedding gradient and RMS step, task
//! identification, θ re-decode). Mirrors `src/model/` of the neuroloop crate, which is the
//! reference these kernels are tested against.

use crate::layout::*;
use crate::util::*;
use cubecl::prelude::*;

/// One cube. x_prev = x; x⁻ under θ (row 0 of XCAND) and under every library θ_j
/// (rows 1..=T); tanh(a); P⁻ = F P Fᵀ + diag(Q) (symmetrised); x = x⁻. Writes x⁻ to `out`
/// (a bin without data ends here).
#[cube(launch)]
pub fn predict_kernel(mem: &mut Array<f32>, bin: &Array<f32>, out: &mut Array<f32>, lay: &Array<u32>, cfg: &Array<f32>) {
    let t = UNIT_POS as usize;
    let nt = CUBE_DIM as usize;
    let Lay { n, d, m, ntask, thlen, flags, o_x, o_p, o_xcand, o_tanh, o_theta, o_libth, o_tmp, o_tmp2, o_q, o_xprev, .. } = Lay::read(lay);
    let alpha = cfg[CFG_ALPHA];

    // Candidates' predictions from the current mean.
    let mut r = t;
    while r < (ntask + 1) * d {
        let c = r / d;
        let i = r % d;
        let mut base = o_theta;
        if c > 0 {
            base = o_libth + (c - 1) * thlen;
        }
        let ta = dynamics_tanh(mem, base, mem, o_x, bin, n, i, d, m);
        let xi = mem[o_x + i];
        mem[o_xcand + c * d + i] = xi + alpha * (ta - xi);
        if c == 0 {
            mem[o_tanh + i] = ta;
        }
        r += nt;
    }
    sync_all();
    // tmp = F P, F = (1 − α) I + α diag(1 − tanh²a) W_hh (no covariance for particles).
    let mut dd = d * d;
    if (flags & FLAG_PARTICLES) != 0 {
        dd = 0;
    }
    let mut idx = t;
    while idx < dd {
        let i = idx / d;
        let j = idx % d;
        let ti = mem[o_tanh + i];
        let s = alpha * (1.0 - ti * ti);
        let mut v = (1.0 - alpha) * mem[o_p + i * d + j];
        for k in 0..d {
            v += s * mem[o_theta + i * d + k] * mem[o_p + k * d + j];
        }
        mem[o_tmp + idx] = v;
        idx += nt;
    }
    sync_all();
    // tmp2 = tmp Fᵀ + diag(Q).
    let mut idx2 = t;
    while idx2 < dd {
        let i = idx2 / d;
        let j = idx2 % d;
        let tj = mem[o_tanh + j];
        let s = alpha * (1.0 - tj * tj);
        let mut v = (1.0 - alpha) * mem[o_tmp + i * d + j];
        for k in 0..d {
            v += mem[o_tmp + i * d + k] * s * mem[o_theta + j * d + k];
        }
        if i == j {
            v += mem[o_q + i];
        }
        mem[o_tmp2 + idx2] = v;
        idx2 += nt;
    }
    sync_all();
    let mut idx3 = t;
    while idx3 < dd {
        let i = idx3 / d;
        let j = idx3 % d;
        mem[o_p + idx3] = 0.5 * (mem[o_tmp2 + i * d + j] + mem[o_tmp2 + j * d + i]);
        idx3 += nt;
    }
    let mut i = t;
    while i < d {
        mem[o_xprev + i] = mem[o_x + i];
        let xp = mem[o_xcand + i];
        mem[o_x + i] = xp;
        out[m + i] = xp;
        i += nt;
    }
}

/// Grid (chunks, T + 1), CUBE threads: cube (chunk, c) evaluates candidate c's log-rates
/// on its chunk of units and writes the chunk's log-likelihood; for c = 0 (the current
/// model, i.e. the EKF's x⁻) also the chunk's Cᵀ diag(λ) C and Cᵀ (y − λ), clamped units
/// masked as in the CPU filter.
#[cube(launch)]
pub fn obs_reduce_kernel(mem: &mut Array<f32>, bin: &Array<f32>, lay: &Array<u32>, cfg: &Array<f32>) {
    let t = UNIT_POS as usize;
    let nt = CUBE_DIM as usize;
    let chunk = CUBE_POS_X as usize;
    let c = CUBE_POS_Y as usize;
    let Lay { n, d, chunks, o_c, o_dv, o_xcand, o_pll, o_pinfo, o_pscore, .. } = Lay::read(lay);
    let lmax = cfg[CFG_LMAX];
    let ln_bin = cfg[CFG_LNBIN];
    let o_xc = o_xcand + c * d;
    let mut sh = SharedMemory::<f32>::new(CUBE);
    let mut shw = SharedMemory::<f32>::new(CUBE);
    let mut shr = SharedMemory::<f32>::new(CUBE);

    let unit = chunk * nt + t;
    let mut ll = 0.0f32;
    let mut w = 0.0f32;
    let mut res = 0.0f32;
    if unit < n {
        let eta = log_rate(mem, o_c, o_dv, d, o_xc, unit, lmax);
        let log_lam = eta + ln_bin;
        let lam = f32::exp(log_lam);
        let y = bin[unit];
        ll = y * log_lam - lam - ln_factorial(y);
        if eta > LOG_RATE_MIN && eta < lmax {
            w = lam;
            res = y - lam;
        }
    }
    let total = block_sum(&mut sh, ll);
    if t == 0 {
        mem[o_pll + c * chunks + chunk] = total;
    }
    if c == 0 {
        shw[t] = w;
        shr[t] = res;
        sync_cube();
        let first = chunk * nt;
        let mut rows = nt;
        if first + rows > n {
            rows = n - first;
        }
        let o_info = o_pinfo + chunk * d * d;
        let o_score = o_pscore + chunk * d;
        let mut q = t;
        while q < d * d + d {
            let mut acc = 0.0f32;
            if q < d * d {
                let a = q / d;
                let b = q % d;
                for tt in 0..rows {
                    let row = o_c + (first + tt) * d;
                    acc += shw[tt] * mem[row + a] * mem[row + b];
                }
                mem[o_info + q] = acc;
            } else {
                let a = q - d * d;
                for tt in 0..rows {
                    acc += shr[tt] * mem[o_c + (first + tt) * d + a];
                }
                mem[o_score + a] = acc;
            }
            q += nt;
        }
    }
}

/// One cube, after `obs_reduce_kernel`: sums the chunks; EKF update in information form
/// (J = (P⁻)⁻¹ + Cᵀ diag(λ) C, P = J⁻¹, x = x⁻ + P Cᵀ (y − λ)); the embedding's gradient
/// (∇_z of log p(y | x⁻(z)) − w·½‖z‖²/σ², through the dynamics and the hypernetwork) and
/// its RMSProp step with trust region; task identification over the library windows;
/// θ re-decoded at the final z. Writes x, z, log-likelihood, ‖Δz‖ and the jump to `out`.
#[cube(launch)]
pub fn update_kernel(mem: &mut Array<f32>, bin: &Array<f32>, out: &mut Array<f32>, lay: &Array<u32>, cfg: &Array<f32>) {
    let t = UNIT_POS as usize;
    let nt = CUBE_DIM as usize;
    let l = Lay::read(lay);
    let Lay { d, e, m, ntask, chunks, flags, o_x, o_z, o_pll, o_pinfo, o_pscore, o_hsum, o_ssum, o_llc, .. } = l;
    let mut flag = SharedMemory::<f32>::new(4usize);

    // 1. Sum the chunks.
    let mut q = t;
    while q < d * d + d + ntask + 1 {
        if q < d * d {
            let mut acc = 0.0f32;
            for ch in 0..chunks {
                acc += mem[o_pinfo + ch * d * d + q];
            }
            mem[o_hsum + q] = acc;
        } else if q < d * d + d {
            let a = q - d * d;
            let mut acc = 0.0f32;
            for ch in 0..chunks {
                acc += mem[o_pscore + ch * d + a];
            }
            mem[o_ssum + a] = acc;
        } else {
            let c = q - d * d - d;
            let mut acc = 0.0f32;
            for ch in 0..chunks {
                acc += mem[o_pll + c * chunks + ch];
            }
            mem[o_llc + c] = acc;
        }
        q += nt;
    }
    sync_all();

    // 2. EKF update (the particle filter has already set x).
    if (flags & FLAG_PARTICLES) == 0 {
        ekf_update(mem, l, &mut flag);
    }
    let ll0 = mem[o_llc];

    // 3. Online embedding step.
    if (flags & FLAG_EMBED) != 0 {
        embedding_step(mem, bin, out, l, cfg);
    } else if t == 0 {
        out[m + d + e + OUT_STEP] = 0.0;
    }
    sync_all();

    // 4. Task identification (one thread: T·W adds).
    if t == 0 {
        out[m + d + e + OUT_JUMP] = -1.0;
        if (flags & FLAG_TASKID) != 0 && ntask > 0 && is_finite(ll0) {
            task_identify(mem, out, l, cfg, ll0);
        }
    }
    sync_all();

    // 5. θ at the final z, ready for the next bin.
    decode(mem, l);
    let mut k = t;
    while k < d + e {
        if k < d {
            out[m + k] = mem[o_x + k];
        } else {
            out[m + k] = mem[o_z + k - d];
        }
        k += nt;
    }
    if t == 0 {
        out[m + d + e + OUT_LL] = ll0;
    }
}

/// Information-form EKF update (whole cube): J = (P⁻)⁻¹ + Cᵀ diag(λ) C, P = J⁻¹,
/// x = x⁻ + P Cᵀ (y − λ), from the summed reduction.
#[cube]
fn ekf_update(mem: &mut Array<f32>, l: Lay, flag: &mut SharedMemory<f32>) {
    let t = UNIT_POS as usize;
    let nt = CUBE_DIM as usize;
    let Lay { d, o_x, o_p, o_hsum, o_ssum, o_pinv, o_work, o_tmp, .. } = l;
    cholesky_inverse(mem, o_p, o_work, o_pinv, d, flag);
    let mut idx = t;
    while idx < d * d {
        mem[o_tmp + idx] = mem[o_pinv + idx] + mem[o_hsum + idx];
        idx += nt;
    }
    sync_all();
    symmetrize(mem, o_tmp, d);
    cholesky_inverse(mem, o_tmp, o_work, o_p, d, flag);
    symmetrize(mem, o_p, d);
    // x = x⁻ + P s in place (x⁻ also stays in XCAND row 0).
    affine_rows(mem, o_p, o_x, o_ssum, o_x, d, d);
}

/// The embedding's gradient and RMSProp step (whole cube; see `update_kernel`).
#[cube]
fn embedding_step(mem: &mut Array<f32>, bin: &Array<f32>, out: &mut Array<f32>, l: Lay, cfg: &Array<f32>) {
    let t = UNIT_POS as usize;
    let nt = CUBE_DIM as usize;
    let Lay { n, d, e, m, hid, o_w1, o_w2, o_xprev, o_tanh, o_z, o_pre, o_vrms, o_escal, o_gz, o_gh, o_dlda, o_ssum, .. } = l;
    let alpha = cfg[CFG_ALPHA];

    // dL/da = α (1 − tanh² a) ⊙ Cᵀ (y − λ) (the same masked score the EKF used).
    let mut i = t;
    while i < d {
        let ta = mem[o_tanh + i];
        mem[o_dlda + i] = alpha * (1.0 - ta * ta) * mem[o_ssum + i];
        i += nt;
    }
    sync_all();
    // dL/d hidden_g = mask ⊙ W2_gᵀ dL/dθ_g with dL/dW_hh = dL/da x_prevᵀ, dL/dW_xu = dL/da uᵀ,
    // dL/db = dL/da.
    let mut r = t;
    while r < 3 * hid {
        let g = r / hid;
        let k = r % hid;
        let mut acc = 0.0f32;
        if mem[o_pre + r] > 0.0 {
            if g == 0 {
                for row in 0..d * d {
                    acc += mem[o_w2 + row * hid + k] * mem[o_dlda + row / d] * mem[o_xprev + row % d];
                }
            } else if g == 1 {
                for q in 0..d * m {
                    let row = d * d + q;
                    acc += mem[o_w2 + row * hid + k] * mem[o_dlda + q / m] * bin[n + q % m];
                }
            } else {
                for q in 0..d {
                    let row = d * d + d * m + q;
                    acc += mem[o_w2 + row * hid + k] * mem[o_dlda + q];
                }
            }
        }
        mem[o_gh + r] = acc;
        r += nt;
    }
    sync_all();
    let prior = cfg[CFG_PRIOR];
    let mut a = t;
    while a < e {
        let mut acc = 0.0f32;
        for r2 in 0..3 * hid {
            acc += mem[o_w1 + r2 * e + a] * mem[o_gh + r2];
        }
        mem[o_gz + a] = acc - prior * mem[o_z + a];
        a += nt;
    }
    sync_all();
    if t == 0 {
        let mut finite = true;
        for a2 in 0..e {
            if !is_finite(mem[o_gz + a2]) {
                finite = false;
            }
        }
        let mut norm = 0.0f32;
        if finite {
            let rho = cfg[CFG_RHO];
            let lr = cfg[CFG_LR];
            let decay = mem[o_escal] * rho;
            mem[o_escal] = decay;
            mem[o_escal + 1] = mem[o_escal + 1] + 1.0;
            let correction = 1.0 / f32::max(1.0 - decay, 1e-30);
            let mut sq = 0.0f32;
            for a3 in 0..e {
                let g = mem[o_gz + a3];
                let v = rho * mem[o_vrms + a3] + (1.0 - rho) * g * g;
                mem[o_vrms + a3] = v;
                let delta = lr * g / (f32::sqrt(v * correction) + 1e-8);
                mem[o_gz + a3] = delta;
                sq += delta * delta;
            }
            norm = f32::sqrt(sq);
            let trust = cfg[CFG_TRUST];
            let mut scale = 1.0f32;
            if norm > trust {
                scale = trust / norm;
                norm = trust;
            }
            for a4 in 0..e {
                mem[o_z + a4] = mem[o_z + a4] + mem[o_gz + a4] * scale;
            }
        }
        out[m + d + e + OUT_STEP] = norm;
    }
}

/// Task identification (one thread), as `TaskIdentifier::score` + `jumped_to` on the CPU:
/// push this bin's candidate scores into the circular windows, re-sum, and jump to the
/// best candidate when its window beats the current model's by the margin after the
/// cool-down. A jump sets z = library[j] and forgets the RMS statistics.
#[cube]
fn task_identify(mem: &mut Array<f32>, out: &mut Array<f32>, l: Lay, cfg: &Array<f32>, ll0: f32) {
    let Lay { d, e, m, ntask, w, min_switch, o_libz, o_z, o_vrms, o_escal, o_twin, o_tcur, o_tscal, o_llc, .. } = l;
    let head = usize::cast_from(mem[o_tscal]);
    let mut filled = usize::cast_from(mem[o_tscal + 1]);
    let mut since = mem[o_tscal + 2];
    let active = mem[o_tscal + 3];
    for j in 0..ntask {
        let mut ll = mem[o_llc + 1 + j];
        if !is_finite(ll) {
            ll = f32::new(-1.0e30);
        }
        mem[o_twin + j * w + head] = ll;
    }
    mem[o_tcur + head] = ll0;
    mem[o_tscal] = f32::cast_from((head + 1) % w);
    if filled < w {
        filled += 1;
    }
    mem[o_tscal + 1] = f32::cast_from(filled);
    // Saturate where f32 still counts exactly.
    if since < 16_000_000.0 {
        since += 1.0;
    }
    mem[o_tscal + 2] = since;
    let mut current = 0.0f32;
    for k in 0..w {
        current += mem[o_tcur + k];
    }
    let mut best = 0usize;
    let mut best_sum = f32::new(-3.0e38);
    for j in 0..ntask {
        let mut s = 0.0f32;
        for k in 0..w {
            s += mem[o_twin + j * w + k];
        }
        if j == 0 || s > best_sum {
            best = j;
            best_sum = s;
        }
    }
    if filled >= w && since >= f32::cast_from(min_switch) && f32::cast_from(best) != active && best_sum - current > cfg[CFG_MARGIN] {
        for k in 0..w {
            mem[o_tcur + k] = mem[o_twin + best * w + k];
        }
        mem[o_tscal + 2] = 0.0;
        mem[o_tscal + 3] = f32::cast_from(best);
        for a in 0..e {
            mem[o_z + a] = mem[o_libz + best * e + a];
            mem[o_vrms + a] = 0.0;
        }
        mem[o_escal] = 1.0;
        mem[o_escal + 1] = 0.0;
        out[m + d + e + OUT_JUMP] = f32::cast_from(best);
    }
}
