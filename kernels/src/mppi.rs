//! MPPI on the device (mirrors `src/control/mppi.rs`): one thread per sampled control
//! sequence rolls the dynamics out over the horizon with Philox noise that is bit-for-bit
//! the CPU's (sample k, step h, channel j ↦ index (k·H + h)·m + j, stream = bin; sample 0
//! is the unperturbed nominal), then one cube forms the softmin weights, updates the
//! nominal sequence, emits u_k and shifts the warm start.

use crate::layout::*;
use crate::rng::normal_at;
use crate::util::*;
use cubecl::prelude::*;

/// u_nom[h, j] made feasible (non-finite → 0, then clamped).
#[cube]
fn nominal(mem: &Array<f32>, o_unom: usize, o_lo: usize, o_hi: usize, m: usize, h: usize, j: usize) -> f32 {
    let mut v = mem[o_unom + h * m + j];
    if !is_finite(v) {
        v = 0.0;
    }
    clampf(v, mem[o_lo + j], mem[o_hi + j])
}

/// Σ_i (exp(η_i(x)) − r*_i)² / max(r*_i, 1) at the latent state `mem[x..x + d]`,
/// compensated (Kahan): the softmin resolves cost differences of ~τ, so the N-unit sum
/// must keep its f32 precision.
#[cube]
fn rate_cost(mem: &Array<f32>, l: Lay, x: usize, lmax: f32) -> f32 {
    let Lay { n, d, o_c, o_dv, o_tgtr, o_rscale, .. } = l;
    let mut s = Kahan::new(0.0f32);
    for unit in 0..n {
        let err = f32::exp(log_rate(mem, o_c, o_dv, d, x, unit, lmax)) - mem[o_tgtr + unit];
        s.add(err * err * mem[o_rscale + unit]);
    }
    s.sum
}

/// Grid ⌈K·H / CUBE⌉ (rate objectives, after the rollouts): the rate cost of each sample
/// and step, rate_weight/N · Σ_i (exp(η_i(x_{k,h+1})) − r*_i)² / max(r*_i, 1).
#[cube(launch)]
pub fn mppi_rate_cost_kernel(mem: &mut Array<f32>, lay: &Array<u32>, cfg: &Array<f32>) {
    let q = ABSOLUTE_POS_X as usize;
    let l = Lay::read(lay);
    let Lay { d, hor, nk, o_xtraj, o_rcost, .. } = l;
    if q < nk * hor {
        let x = o_xtraj + q * d;
        mem[o_rcost + q] = cfg[CFG_RATE] * rate_cost(mem, l, x, cfg[CFG_LMAX]);
    }
}

/// Grid ⌈K / CUBE⌉ cubes: sample k's perturbations (clamped; ε' = v − U_h stored) and
/// cost S_k, rolled out from the filtered mean.
#[cube(launch)]
pub fn mppi_rollout_kernel(mem: &mut Array<f32>, lay: &Array<u32>, cfg: &Array<f32>, stream_lo: u32, stream_hi: u32) {
    let k = ABSOLUTE_POS_X as usize;
    let Lay { d, m, hor, nk, flags, key0, key1, o_lo, o_hi, o_tgtx, o_x, o_theta, o_unom, o_eps, o_costs, o_xs, o_vs, o_xtraj, .. } =
        Lay::read(lay);
    if k < nk {
        let rates = (flags & FLAG_RATES) != 0;
        let alpha = cfg[CFG_ALPHA];
        let noise = cfg[CFG_NOISE];
        let q_lat = cfg[CFG_QLAT];
        let r_ctl = cfg[CFG_RCTL];
        let vs = o_vs + k * m;
        // Two state slots per sample, used alternately (slot h % 2 holds x_h).
        let base = o_xs + k * 2 * d;
        for i in 0..d {
            mem[base + i] = mem[o_x + i];
        }
        let mut cost = 0.0f32;
        for h in 0..hor {
            let cur = base + (h % 2) * d;
            let nxt = base + ((h + 1) % 2) * d;
            let mut uru = 0.0f32;
            for j in 0..m {
                let nom = nominal(mem, o_unom, o_lo, o_hi, m, h, j);
                let idx = (k * hor + h) * m + j;
                let mut eps = 0.0f32;
                if k > 0 {
                    eps = noise * normal_at(key0, key1, stream_lo, stream_hi, idx as u32);
                }
                let v = clampf(nom + eps, mem[o_lo + j], mem[o_hi + j]);
                mem[o_eps + idx] = v - nom;
                mem[vs + j] = v;
                uru += v * v;
            }
            cost += r_ctl * uru;
            for i in 0..d {
                let ta = dynamics_tanh(mem, o_theta, mem, cur, mem, vs, i, d, m);
                let xi = mem[cur + i];
                mem[nxt + i] = xi + alpha * (ta - xi);
            }
            if rates {
                // The rate cost (N·d per step) is a separate, wider launch.
                let traj = o_xtraj + (k * hor + h) * d;
                for i in 0..d {
                    mem[traj + i] = mem[nxt + i];
                }
            } else {
                let mut s = 0.0f32;
                for i in 0..d {
                    let err = mem[nxt + i] - mem[o_tgtx + i];
                    s += err * err;
                }
                cost += q_lat * s;
            }
        }
        mem[o_costs + k] = cost;
    }
}

/// The smallest mean cost gap the rate objective's relative temperature divides by.
pub const MIN_GAP: f32 = 1e-6;

/// One cube: softmin weights (non-finite costs weigh 0), nominal update, u_k into `out`,
/// warm-start shift (the last step repeats). Without any finite cost, OUT_FAULT is set (a
/// controller fault) and the nominal is reset to zero.
#[cube(launch)]
pub fn mppi_update_kernel(mem: &mut Array<f32>, out: &mut Array<f32>, lay: &Array<u32>, cfg: &Array<f32>) {
    let t = UNIT_POS as usize;
    let nt = CUBE_DIM as usize;
    let Lay { m, d, e, hor, nk, flags, o_lo, o_hi, o_unom, o_unom2, o_eps, o_costs, o_rcost, .. } = Lay::read(lay);
    let temp = cfg[CFG_TEMP];
    let mut sh = SharedMemory::<f32>::new(CUBE);

    let rates = (flags & FLAG_RATES) != 0;
    let mut local_min = 3.0e38f32;
    let mut k = t;
    while k < nk {
        let mut c = mem[o_costs + k];
        if rates {
            // Compensated: the softmin resolves cost differences of ~τ.
            let mut sum = Kahan::new(c);
            for h in 0..hor {
                sum.add(mem[o_rcost + k * hor + h]);
            }
            c = sum.sum;
            mem[o_costs + k] = c;
        }
        if is_finite(c) && c < local_min {
            local_min = c;
        }
        k += nt;
    }
    let s_min = block_min(&mut sh, local_min);
    let update = s_min < BIG;
    // Rate objectives: the temperature is relative to the samples' mean cost above the
    // best (as on the CPU, src/control/mppi.rs), so the rate cost's scale does not decide
    // how many samples carry weight.
    let mut tau = temp;
    if rates && update {
        let mut gap = 0.0f32;
        let mut cnt = 0.0f32;
        let mut k1 = t;
        while k1 < nk {
            let c = mem[o_costs + k1];
            if is_finite(c) {
                gap += c - s_min;
                cnt += 1.0;
            }
            k1 += nt;
        }
        let gap_sum = block_sum(&mut sh, gap);
        let count = block_sum(&mut sh, cnt);
        let mean_gap = gap_sum / f32::max(count, 1.0);
        tau = cfg[CFG_RATE_TEMP] * f32::max(mean_gap, MIN_GAP);
    }
    let mut local_sum = 0.0f32;
    let mut k2 = t;
    while k2 < nk {
        let c = mem[o_costs + k2];
        let mut wk = 0.0f32;
        if is_finite(c) && update {
            wk = f32::exp(-(c - s_min) / tau);
        }
        mem[o_costs + k2] = wk;
        local_sum += wk;
        k2 += nt;
    }
    let total = block_sum(&mut sh, local_sum);
    sync_all();
    let mut q = t;
    while q < hor * m {
        let h = q / m;
        let j = q % m;
        let nom = nominal(mem, o_unom, o_lo, o_hi, m, h, j);
        let mut v = nom;
        if update {
            let mut acc = 0.0f32;
            for k3 in 0..nk {
                acc += mem[o_costs + k3] * mem[o_eps + (k3 * hor + h) * m + j];
            }
            v = clampf(nom + acc / total, mem[o_lo + j], mem[o_hi + j]);
        }
        mem[o_unom2 + q] = v;
        q += nt;
    }
    sync_all();
    let mut q2 = t;
    while q2 < hor * m {
        let h = q2 / m;
        let j = q2 % m;
        // No rollout with a finite cost: no command (OUT_FAULT, which the backend turns into
        // the CPU reference's NaN command: a controller fault, the fallback goes out), and
        // the nominal starts again from zero — as src/control/mppi.rs does. (A NaN literal
        // is not WGSL: the shader would not compile.)
        if h == 0 {
            out[j] = nominal(mem, o_unom2, o_lo, o_hi, m, 0, j);
        }
        let mut src = h + 1;
        if src >= hor {
            src = hor - 1;
        }
        if update {
            mem[o_unom + q2] = mem[o_unom2 + src * m + j];
        } else {
            mem[o_unom + q2] = 0.0;
        }
        q2 += nt;
    }
    if t == 0 {
        let mut fault = 0.0f32;
        if !update {
            fault = 1.0;
        }
        out[m + d + e + OUT_FAULT] = fault;
    }
}
