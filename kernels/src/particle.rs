//! The particle filter on the device (mirrors `src/model/particle.rs`): propagation and
//! weighing one thread per particle, then one cube normalises, estimates the mean,
//! and resamples systematically when the effective sample size is low.

use crate::layout::*;
use crate::rng::{normal_at, uniform_at};
use crate::util::*;
use cubecl::prelude::*;

/// Grid ⌈P / CUBE⌉: x_p ← f(x_p, u; θ) + √q ⊙ ε_p, ε from Philox (seed, stream = bin,
/// index p·d + i).
#[cube(launch)]
pub fn pf_propagate_kernel(mem: &mut Array<f32>, bin: &Array<f32>, lay: &Array<u32>, cfg: &Array<f32>, stream_lo: u32, stream_hi: u32) {
    let p = ABSOLUTE_POS_X as usize;
    let Lay { n, d, m, np, pkey0, pkey1, o_q, o_theta, o_part, o_part2, .. } = Lay::read(lay);
    if p < np {
        let alpha = cfg[CFG_ALPHA];
        let cur = o_part + p * d;
        let nxt = o_part2 + p * d;
        for i in 0..d {
            let ta = dynamics_tanh(mem, o_theta, mem, cur, bin, n, i, d, m);
            let xi = mem[cur + i];
            let noise = f32::sqrt(mem[o_q + i]) * normal_at(pkey0, pkey1, stream_lo, stream_hi, (p * d + i) as u32);
            mem[nxt + i] = xi + alpha * (ta - xi) + noise;
        }
        for i in 0..d {
            mem[cur + i] = mem[nxt + i];
        }
    }
}

/// Grid ⌈P / CUBE⌉: log w_p += Σ_i y_i log λ_pi − λ_pi.
#[cube(launch)]
pub fn pf_weigh_kernel(mem: &mut Array<f32>, bin: &Array<f32>, lay: &Array<u32>, cfg: &Array<f32>) {
    let p = ABSOLUTE_POS_X as usize;
    let Lay { n, d, np, o_c, o_dv, o_part, o_logw, .. } = Lay::read(lay);
    if p < np {
        let lmax = cfg[CFG_LMAX];
        let ln_bin = cfg[CFG_LNBIN];
        let x = o_part + p * d;
        // Σ_i y_i η_i − λ_i: the particle-independent Σ y_i log Δ is left out (it cancels
        // when the weights are normalised), and the sum is compensated (Kahan) so that a
        // thousand units do not cost the weights their f32 precision.
        let mut ll = Kahan::new(0.0f32);
        for u in 0..n {
            let eta = log_rate(mem, o_c, o_dv, d, x, u, lmax);
            ll.add(bin[u] * eta - f32::exp(eta + ln_bin));
        }
        mem[o_logw + p] = mem[o_logw + p] + ll.sum;
    }
}

/// One cube: normalise the weights, ESS, x = Σ w_p x_p; with data and ESS < frac·P,
/// systematic resampling with u = uniform_at(seed, bin + 2⁶³, 0). Writes x and the ESS to
/// `out`.
#[cube(launch)]
pub fn pf_resample_kernel(
    mem: &mut Array<f32>,
    out: &mut Array<f32>,
    lay: &Array<u32>,
    cfg: &Array<f32>,
    has_data: u32,
    stream_lo: u32,
    stream_hi: u32,
) {
    let t = UNIT_POS as usize;
    let nt = CUBE_DIM as usize;
    let Lay { d, e, m, np, pkey0, pkey1, o_x, o_part, o_part2, o_logw, o_pscal, o_pw, o_pcum, .. } = Lay::read(lay);
    let mut sh = SharedMemory::<f32>::new(CUBE);
    let uniform_lw = -f32::ln(f32::cast_from(np));

    let mut local_max = f32::new(-3.0e38);
    let mut p = t;
    while p < np {
        let l = mem[o_logw + p];
        if is_finite(l) && l > local_max {
            local_max = l;
        }
        p += nt;
    }
    let mx = block_max(&mut sh, local_max);
    let degenerate = !(mx > -BIG);
    let mut local_sum = 0.0f32;
    let mut p2 = t;
    while p2 < np {
        let l = mem[o_logw + p2];
        let mut w = 1.0f32;
        if !degenerate {
            w = 0.0;
            if is_finite(l) {
                w = f32::exp(l - mx);
            }
        }
        mem[o_pw + p2] = w;
        local_sum += w;
        p2 += nt;
    }
    let total = block_sum(&mut sh, local_sum);
    let mut local_sq = 0.0f32;
    let mut p3 = t;
    while p3 < np {
        let w = mem[o_pw + p3] / total;
        mem[o_pw + p3] = w;
        mem[o_logw + p3] = f32::ln(w);
        local_sq += w * w;
        p3 += nt;
    }
    let sq = block_sum(&mut sh, local_sq);
    let ess = 1.0 / sq;
    sync_all();
    let mut i = t;
    while i < d {
        let mut acc = 0.0f32;
        for q in 0..np {
            acc += mem[o_pw + q] * mem[o_part + q * d + i];
        }
        mem[o_x + i] = acc;
        out[m + i] = acc;
        i += nt;
    }
    let resample = has_data != 0 && ess < cfg[CFG_ESS_FRAC] * f32::cast_from(np);
    if t == 0 {
        mem[o_pscal] = ess;
        mem[o_pscal + 1] = 0.0;
        out[m + d + e + OUT_ESS] = ess;
        if resample {
            mem[o_pscal + 1] = 1.0;
            let mut c = 0.0f32;
            for q in 0..np {
                c += mem[o_pw + q];
                mem[o_pcum + q] = c;
            }
        }
    }
    sync_all();
    if resample {
        let u0 = uniform_at(pkey0, pkey1, stream_lo, stream_hi, 0u32);
        let mut j = t;
        while j < np {
            let pos = (f32::cast_from(j) + u0) / f32::cast_from(np);
            // First q with cum_q > pos (the last particle if rounding leaves none).
            let mut lo = 0usize;
            let mut hi = np - 1;
            while lo < hi {
                let mid = (lo + hi) / 2;
                if mem[o_pcum + mid] > pos {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            for k in 0..d {
                mem[o_part2 + j * d + k] = mem[o_part + lo * d + k];
            }
            j += nt;
        }
        sync_all();
        let mut q2 = t;
        while q2 < np * d {
            mem[o_part + q2] = mem[o_part2 + q2];
            q2 += nt;
        }
        let mut q3 = t;
        while q3 < np {
            mem[o_logw + q3] = uniform_lw;
            mem[o_pw + q3] = 1.0 / f32::cast_from(np);
            q3 += nt;
        }
    }
}
