//! Building blocks shared by the kernels: barriers, block reductions, clamps, a Cholesky
//! inverse for one cube, and the hypernetwork decode.

use crate::layout::*;
use cubecl::prelude::*;

/// Stand-in for +∞ in reductions (WGSL has no infinity literal).
pub const BIG: f32 = 3.0e38;

/// A barrier for all threads of the cube that also orders their global-memory writes
/// (the one-cube kernels communicate through `mem`).
#[cube]
pub fn sync_all() {
    sync_storage();
    sync_cube();
}

#[cube]
pub fn is_finite(x: f32) -> bool {
    !(x.is_nan() || x.is_inf())
}

#[cube]
pub fn clampf(x: f32, lo: f32, hi: f32) -> f32 {
    let mut v = x;
    if v < lo {
        v = lo;
    }
    if v > hi {
        v = hi;
    }
    v
}

/// tanh that cannot overflow inside a device's exp-based implementation
/// (tanh(±15) rounds to ±1 in f32 anyway).
#[cube]
pub fn tanh_safe(x: f32) -> f32 {
    f32::tanh(clampf(x, -15.0, 15.0))
}

/// tanh(a_i) of the latent dynamics' row i, a = b + W_hh x + W_xu u, for the θ stored at
/// `mem[th..]` (W_hh d×d, W_xu d×m, b d), x at `x[x_at..]` and u at `u[u_at..]`. The step is
/// then x_i + α (tanh a_i − x_i) (src/model/dynamics.rs; same summation order).
#[cube]
pub fn dynamics_tanh(
    mem: &Array<f32>,
    th: usize,
    x: &Array<f32>,
    x_at: usize,
    u: &Array<f32>,
    u_at: usize,
    i: usize,
    d: usize,
    m: usize,
) -> f32 {
    let mut a = mem[th + d * d + d * m + i];
    for j in 0..d {
        a += mem[th + i * d + j] * x[x_at + j];
    }
    for j in 0..m {
        a += mem[th + d * d + i * m + j] * u[u_at + j];
    }
    tanh_safe(a)
}

/// η_unit(x) = d_unit + C_unit · x clamped to [LOG_RATE_MIN, lmax] (log Hz), for x at
/// `mem[x..x + d]` (src/model/observation.rs `log_rates`; same summation order).
#[cube]
pub fn log_rate(mem: &Array<f32>, o_c: usize, o_dv: usize, d: usize, x: usize, unit: usize, lmax: f32) -> f32 {
    let mut eta = mem[o_dv + unit];
    for j in 0..d {
        eta += mem[o_c + unit * d + j] * mem[x + j];
    }
    clampf(eta, LOG_RATE_MIN, lmax)
}

/// A compensated (Kahan) running sum: the softmin and the particle weights resolve
/// differences that a plain f32 sum over N units or H steps would round away.
#[derive(CubeType, Clone, Copy)]
pub struct Kahan {
    pub sum: f32,
    comp: f32,
}

#[cube]
impl Kahan {
    pub fn new(start: f32) -> Kahan {
        Kahan { sum: start, comp: 0.0f32 }
    }

    pub fn add(&mut self, x: f32) {
        let term = x - self.comp;
        let acc = self.sum + term;
        self.comp = (acc - self.sum) - term;
        self.sum = acc;
    }
}

/// Sum of `v` over the cube (CUBE_DIM a power of two, `sh` at least CUBE_DIM long).
#[cube]
pub fn block_sum(sh: &mut SharedMemory<f32>, v: f32) -> f32 {
    block_reduce(sh, v, false)
}

/// Minimum of `v` over the cube.
#[cube]
pub fn block_min(sh: &mut SharedMemory<f32>, v: f32) -> f32 {
    block_reduce(sh, v, true)
}

/// Tree reduction over the cube: the sum, or the minimum when `take_min`.
#[cube]
fn block_reduce(sh: &mut SharedMemory<f32>, v: f32, #[comptime] take_min: bool) -> f32 {
    let t = UNIT_POS as usize;
    sh[t] = v;
    sync_cube();
    let mut s = (CUBE_DIM / 2) as usize;
    while s > 0 {
        if t < s {
            let o = sh[t + s];
            if take_min {
                if o < sh[t] {
                    sh[t] = o;
                }
            } else {
                sh[t] = sh[t] + o;
            }
        }
        sync_cube();
        s /= 2;
    }
    let r = sh[0];
    sync_cube();
    r
}

/// Maximum of `v` over the cube.
#[cube]
pub fn block_max(sh: &mut SharedMemory<f32>, v: f32) -> f32 {
    -block_min(sh, -v)
}

/// log(k!) for integer-valued k ≥ 0, as the CPU model computes it (exact sum below 16,
/// Stirling with two correction terms above).
#[cube]
pub fn ln_factorial(k: f32) -> f32 {
    let mut r = 0.0f32;
    if k >= 16.0 {
        let k1 = k + 1.0;
        r = (k1 - 0.5) * f32::ln(k1) - k1 + 0.918_938_5 + 1.0 / (12.0 * k1) - 1.0 / (360.0 * k1 * k1 * k1);
    } else if k >= 2.0 {
        let mut i = 2.0f32;
        while i <= k {
            r += f32::ln(i);
            i += 1.0;
        }
    }
    r
}

/// `mem[dst..]` = A⁻¹ for the symmetric positive-definite (n × n) `mem[src..]`, through a
/// Cholesky factor built in `mem[work..]`, by the whole cube. Like the CPU reference, a
/// matrix that is not numerically positive definite gets a growing multiple of the
/// identity added (jitter) until it is; after 16 tries the identity is inverted instead.
/// `flag` is a one-element shared scratch. Returns whether jitter was needed.
#[cube]
pub fn cholesky_inverse(mem: &mut Array<f32>, src: usize, work: usize, dst: usize, n: usize, flag: &mut SharedMemory<f32>) -> bool {
    let t = UNIT_POS as usize;
    let nt = CUBE_DIM as usize;
    let mut scale = 0.0f32;
    for i in 0..n {
        scale = f32::max(scale, f32::abs(mem[src + i * n + i]));
    }
    if !(is_finite(scale) && scale > 0.0) {
        scale = 1.0;
    }
    let mut jitter = 0.0f32;
    let mut attempt: u32 = 0;
    let mut jittered = false;
    let mut done = false;
    while !done {
        // work = src + jitter I (or I on the last try).
        let mut idx = t;
        while idx < n * n {
            let i = idx / n;
            let j = idx % n;
            let mut v = mem[src + idx];
            if attempt == 16 {
                v = 0.0;
            }
            if i == j {
                if attempt == 16 {
                    v = 1.0;
                } else {
                    v += jitter;
                }
            }
            mem[work + idx] = v;
            idx += nt;
        }
        sync_all();
        // Right-looking factorisation, lower triangle.
        for j in 0..n {
            if t == 0 {
                mem[work + j * n + j] = f32::sqrt(mem[work + j * n + j]);
            }
            sync_all();
            let ljj = mem[work + j * n + j];
            let mut i = j + 1 + t;
            while i < n {
                mem[work + i * n + j] = mem[work + i * n + j] / ljj;
                i += nt;
            }
            sync_all();
            let rest = n - j - 1;
            let mut q = t;
            while q < rest * rest {
                let i2 = j + 1 + q / rest;
                let k2 = j + 1 + q % rest;
                if k2 <= i2 {
                    mem[work + i2 * n + k2] = mem[work + i2 * n + k2] - mem[work + i2 * n + j] * mem[work + k2 * n + j];
                }
                q += nt;
            }
            sync_all();
        }
        if t == 0 {
            let mut ok = true;
            for j in 0..n {
                let djj = mem[work + j * n + j];
                if !(djj > 0.0) || !is_finite(djj) {
                    ok = false;
                }
                for i in j..n {
                    if !is_finite(mem[work + i * n + j]) {
                        ok = false;
                    }
                }
            }
            flag[0] = 0.0;
            if ok {
                flag[0] = 1.0;
            }
        }
        sync_all();
        if flag[0] > 0.5 || attempt >= 16 {
            done = true;
        } else {
            attempt += 1;
            jittered = true;
            // The CPU starts at 1e-12·scale in f64; in f32 anything below ~1e-7·scale is
            // lost in rounding, so the first useful step is taken directly.
            if jitter == 0.0 {
                jitter = 1e-6 * scale;
            } else {
                jitter *= 10.0;
            }
        }
        sync_all();
    }
    // Column c of A⁻¹ = L⁻ᵀ L⁻¹ e_c, one column per thread.
    let mut c = t;
    while c < n {
        for i in 0..n {
            let mut v = 0.0f32;
            if i == c {
                v = 1.0;
            }
            for k in 0..i {
                v -= mem[work + i * n + k] * mem[dst + k * n + c];
            }
            mem[dst + i * n + c] = v / mem[work + i * n + i];
        }
        let mut ii = n;
        while ii > 0 {
            let i = ii - 1;
            let mut v = mem[dst + i * n + c];
            for k in (i + 1)..n {
                v -= mem[work + k * n + i] * mem[dst + k * n + c];
            }
            mem[dst + i * n + c] = v / mem[work + i * n + i];
            ii -= 1;
        }
        c += nt;
    }
    sync_all();
    jittered
}

/// `mem[dst + i]` = `mem[b + i]` + Σ_j A_ij `mem[x + j]` for the rows i < `rows` of the
/// row-major (rows × cols) A at `mem[a..]`, by the whole cube. `dst` may be `b` (each
/// thread reads only its own rows of it), not `x` or A.
#[cube]
pub fn affine_rows(mem: &mut Array<f32>, a: usize, b: usize, x: usize, dst: usize, rows: usize, cols: usize) {
    let t = UNIT_POS as usize;
    let nt = CUBE_DIM as usize;
    let mut i = t;
    while i < rows {
        let mut v = mem[b + i];
        for j in 0..cols {
            v += mem[a + i * cols + j] * mem[x + j];
        }
        mem[dst + i] = v;
        i += nt;
    }
    sync_all();
}

/// (A + Aᵀ)/2 in place for the (n × n) `mem[at..]`, by the whole cube.
#[cube]
pub fn symmetrize(mem: &mut Array<f32>, at: usize, n: usize) {
    let t = UNIT_POS as usize;
    let nt = CUBE_DIM as usize;
    let mut idx = t;
    while idx < n * n {
        let i = idx / n;
        let j = idx % n;
        if i > j {
            let v = 0.5 * (mem[at + i * n + j] + mem[at + j * n + i]);
            mem[at + i * n + j] = v;
            mem[at + j * n + i] = v;
        }
        idx += nt;
    }
    sync_all();
}

/// θ(z) into `mem[O_THETA..]` and the pre-activations into `mem[O_PRE..]`, from the
/// embedding at `mem[O_Z..]`, by the whole cube. Generator g ∈ {W_hh, W_xu, b} is
/// `Linear(e→h) → ReLU → Linear(h→·)`; θ's rows r < d² come from g = 0, then d·m rows from
/// g = 1, then d rows from g = 2.
#[cube]
pub fn decode(mem: &mut Array<f32>, l: Lay) {
    let t = UNIT_POS as usize;
    let nt = CUBE_DIM as usize;
    let Lay { d, e, m, hid, thlen, o_w1, o_b1, o_w2, o_b2, o_z, o_theta, o_pre, .. } = l;
    affine_rows(mem, o_w1, o_b1, o_z, o_pre, 3 * hid, e);
    let mut row = t;
    while row < thlen {
        let mut g = 2usize;
        if row < d * d {
            g = 0;
        } else if row < d * d + d * m {
            g = 1;
        }
        let mut v = mem[o_b2 + row];
        for k in 0..hid {
            v += mem[o_w2 + row * hid + k] * f32::max(mem[o_pre + g * hid + k], 0.0);
        }
        mem[o_theta + row] = v;
        row += nt;
    }
    sync_all();
}

/// One-cube kernel: θ = decode(z) (start-up, and the kernel tests).
#[cube(launch)]
pub fn decode_kernel(mem: &mut Array<f32>, lay: &Array<u32>) {
    decode(mem, Lay::read(lay));
}

/// Copies `src[0..len]` into `mem[at..at + len]` (uploads into the resident buffer).
#[cube(launch)]
pub fn copy_into_kernel(src: &Array<f32>, mem: &mut Array<f32>, at: u32, len: u32) {
    let i = ABSOLUTE_POS_X;
    if i < len {
        mem[(at + i) as usize] = src[i as usize];
    }
}
