//! Where everything lives on the device.
//!
//! One bin is a handful of launches over five buffers, so every kernel binds the same few
//! storage buffers (portable: WebGPU guarantees only 8 per shader stage):
//! - `mem` (f32): all weights and all filter / embedding / task-id / controller state and
//!   scratch, at offsets given by [`Layout`]; uploaded once, then resident;
//! - `bin` (f32): the per-bin upload (counts y_k, the emitted u_{k−1});
//! - `out` (f32): the per-bin read-back (u_k and the status vector);
//! - `lay` (u32): dimensions, flags and the offsets into `mem`, indexed by the constants
//!   below;
//! - `cfg` (f32): scalar constants of the model and controller, indexed by `CFG_*`.

use cubecl::prelude::*;

/// Threads per cube of every kernel (a power of two; WebGPU's default limit is 256).
pub const CUBE: usize = 256;

// ---- `lay` indices: dimensions and flags ----
pub const N: usize = 0;
pub const D: usize = 1;
pub const E: usize = 2;
pub const M: usize = 3;
pub const HID: usize = 4;
/// Task-library size T.
pub const T: usize = 5;
/// Task-id window W (bins).
pub const W: usize = 6;
/// MPPI horizon H.
pub const HOR: usize = 7;
/// MPPI samples K.
pub const K: usize = 8;
/// Number of unit chunks (cubes) of the observation reduction.
pub const CHUNKS: usize = 9;
/// Length of θ = (W_hh, W_xu, b): d² + d·m + d.
pub const THLEN: usize = 10;
/// Bit flags, `FLAG_*`.
pub const FLAGS: usize = 11;
/// Task-id cool-down (bins).
pub const MIN_SWITCH: usize = 12;
/// Philox key of the MPPI noise (seed low, high).
pub const KEY0: usize = 13;
pub const KEY1: usize = 14;
/// Particles P of the particle filter.
pub const NP: usize = 15;
/// Philox key of the particle filter (seed low, high).
pub const PKEY0: usize = 16;
pub const PKEY1: usize = 17;

pub const FLAG_EMBED: u32 = 1;
pub const FLAG_TASKID: u32 = 2;
pub const FLAG_RATES: u32 = 4;
/// The particle filter replaces the EKF.
pub const FLAG_PARTICLES: u32 = 8;

// ---- `lay` indices: offsets into `mem` ----
pub const O_W1: usize = 32; // (3h × e) generators' first layers, stacked [w_hh, w_xu, b]
pub const O_B1: usize = 33; // (3h)
pub const O_W2: usize = 34; // (thlen × h) second layers, rows stacked in θ order
pub const O_B2: usize = 35; // (thlen)
pub const O_C: usize = 36; // (N × d) row-major
pub const O_DV: usize = 37; // (N)
pub const O_Q: usize = 38; // (d) diag Q
pub const O_LIBTH: usize = 39; // (T × thlen) θ(z_j) of the library
pub const O_LIBZ: usize = 40; // (T × e)
pub const O_LO: usize = 41; // (m)
pub const O_HI: usize = 42; // (m)
pub const O_TGTX: usize = 43; // (d) x*
pub const O_TGTR: usize = 44; // (N) r* (Hz)
pub const O_RSCALE: usize = 45; // (N) 1 / max(r*, 1)
pub const O_X: usize = 46; // (d) filtered mean (x⁻ between predict and update)
pub const O_P: usize = 47; // (d × d)
pub const O_XPREV: usize = 48; // (d) mean before this bin's predict
pub const O_TANH: usize = 49; // (d) tanh(a) of this bin's predict
pub const O_XCAND: usize = 50; // ((T + 1) × d) x⁻ under θ (row 0) and each θ_j
pub const O_Z: usize = 51; // (e)
pub const O_THETA: usize = 52; // (thlen)
pub const O_PRE: usize = 53; // (3h) pre-activations of the last decode
pub const O_VRMS: usize = 54; // (e) RMSProp state
pub const O_ESCAL: usize = 55; // [decay_pow, steps]
pub const O_TWIN: usize = 56; // (T × W) candidates' score windows
pub const O_TCUR: usize = 57; // (W) current model's window
pub const O_TSCAL: usize = 58; // [head, filled, since_switch, active (−1 none)]
pub const O_UNOM: usize = 59; // (H × m) nominal sequence, index h·m + j
pub const O_UNOM2: usize = 60; // (H × m) scratch
pub const O_EPS: usize = 61; // (K × H × m)
pub const O_COSTS: usize = 62; // (K)
pub const O_XS: usize = 63; // (K × 2d) rollout scratch
pub const O_VS: usize = 64; // (K × m) rollout scratch
pub const O_WORK: usize = 65; // (d × d)
pub const O_PINV: usize = 66; // (d × d)
pub const O_TMP: usize = 67; // (d × d)
pub const O_TMP2: usize = 68; // (d × d)
pub const O_GZ: usize = 69; // (e)
pub const O_GH: usize = 70; // (3h)
pub const O_DLDA: usize = 71; // (d)
pub const O_PLL: usize = 72; // ((T + 1) × chunks) partial log-likelihoods
pub const O_PINFO: usize = 73; // (chunks × d²)
pub const O_PSCORE: usize = 74; // (chunks × d)
pub const O_HSUM: usize = 75; // (d²) Cᵀ diag(λ) C
pub const O_SSUM: usize = 76; // (d) Cᵀ (y − λ)
pub const O_LLC: usize = 77; // (T + 1) log-likelihood of each candidate
pub const O_PART: usize = 78; // (P × d) particles
pub const O_PART2: usize = 79; // (P × d) resampling scratch
pub const O_LOGW: usize = 80; // (P) log-weights, then normalised weights
pub const O_PSCAL: usize = 81; // [ess, resampled] of the last particle step
pub const O_PW: usize = 82; // (P) normalised weights
pub const O_PCUM: usize = 83; // (P) cumulative weights
pub const O_XTRAJ: usize = 84; // (K × H × d) rollout states x_{h+1} (rate objectives)
pub const O_RCOST: usize = 85; // (K × H) per-step rate costs
/// One past the last `lay` index.
pub const LAY_LEN: usize = 96;

/// Declares [`Lay`] and its reader from one table, so a field cannot drift from its slot.
macro_rules! lay_fields {
    ($($field:ident: $ty:ident = $slot:ident,)*) => {
        /// `lay` as a kernel reads it: every index above, named like its constant in lower
        /// case (T and K as `ntask` and `nk`: `t` and `k` are thread and loop indices).
        /// Kernels destructure what they use, `let Lay { d, o_x, .. } = Lay::read(lay);`.
        /// The loads of fields left out are dead, and the device's compiler drops them, but
        /// the WGSL still spells every one out: read it once per kernel and pass it down.
        #[derive(CubeType, Clone, Copy)]
        pub struct Lay {
            $(pub $field: $ty,)*
        }

        #[cube]
        impl Lay {
            pub fn read(lay: &Array<u32>) -> Lay {
                Lay { $($field: lay[$slot] as $ty,)* }
            }
        }
    };
}

lay_fields! {
    n: usize = N,
    d: usize = D,
    e: usize = E,
    m: usize = M,
    hid: usize = HID,
    ntask: usize = T,
    w: usize = W,
    hor: usize = HOR,
    nk: usize = K,
    chunks: usize = CHUNKS,
    thlen: usize = THLEN,
    flags: u32 = FLAGS,
    min_switch: u32 = MIN_SWITCH,
    key0: u32 = KEY0,
    key1: u32 = KEY1,
    np: usize = NP,
    pkey0: u32 = PKEY0,
    pkey1: u32 = PKEY1,
    o_w1: usize = O_W1,
    o_b1: usize = O_B1,
    o_w2: usize = O_W2,
    o_b2: usize = O_B2,
    o_c: usize = O_C,
    o_dv: usize = O_DV,
    o_q: usize = O_Q,
    o_libth: usize = O_LIBTH,
    o_libz: usize = O_LIBZ,
    o_lo: usize = O_LO,
    o_hi: usize = O_HI,
    o_tgtx: usize = O_TGTX,
    o_tgtr: usize = O_TGTR,
    o_rscale: usize = O_RSCALE,
    o_x: usize = O_X,
    o_p: usize = O_P,
    o_xprev: usize = O_XPREV,
    o_tanh: usize = O_TANH,
    o_xcand: usize = O_XCAND,
    o_z: usize = O_Z,
    o_theta: usize = O_THETA,
    o_pre: usize = O_PRE,
    o_vrms: usize = O_VRMS,
    o_escal: usize = O_ESCAL,
    o_twin: usize = O_TWIN,
    o_tcur: usize = O_TCUR,
    o_tscal: usize = O_TSCAL,
    o_unom: usize = O_UNOM,
    o_unom2: usize = O_UNOM2,
    o_eps: usize = O_EPS,
    o_costs: usize = O_COSTS,
    o_xs: usize = O_XS,
    o_vs: usize = O_VS,
    o_work: usize = O_WORK,
    o_pinv: usize = O_PINV,
    o_tmp: usize = O_TMP,
    o_tmp2: usize = O_TMP2,
    o_gz: usize = O_GZ,
    o_gh: usize = O_GH,
    o_dlda: usize = O_DLDA,
    o_pll: usize = O_PLL,
    o_pinfo: usize = O_PINFO,
    o_pscore: usize = O_PSCORE,
    o_hsum: usize = O_HSUM,
    o_ssum: usize = O_SSUM,
    o_llc: usize = O_LLC,
    o_part: usize = O_PART,
    o_part2: usize = O_PART2,
    o_logw: usize = O_LOGW,
    o_pscal: usize = O_PSCAL,
    o_pw: usize = O_PW,
    o_pcum: usize = O_PCUM,
    o_xtraj: usize = O_XTRAJ,
    o_rcost: usize = O_RCOST,
}

// ---- `bin` offsets (fixed by N) ----
// counts at 0..N, u_prev at N..N+m.

// ---- `out` offsets ----
// u at 0..m, x at m..m+d, z at m+d..m+d+e, then OUT_* after that base.
pub const OUT_LL: usize = 0;
pub const OUT_STEP: usize = 1;
pub const OUT_JUMP: usize = 2;
pub const OUT_ESS: usize = 3;
/// 1 when MPPI had no rollout with a finite cost (no command: a controller fault), else 0.
pub const OUT_FAULT: usize = 4;
pub const OUT_TAIL: usize = 5;

// ---- `cfg` indices ----
pub const CFG_ALPHA: usize = 0;
pub const CFG_BIN_S: usize = 1;
pub const CFG_LMAX: usize = 2;
pub const CFG_LR: usize = 3;
pub const CFG_RHO: usize = 4;
pub const CFG_TRUST: usize = 5;
/// prior_weight / σ_z².
pub const CFG_PRIOR: usize = 6;
pub const CFG_MARGIN: usize = 7;
pub const CFG_TEMP: usize = 8;
pub const CFG_NOISE: usize = 9;
pub const CFG_QLAT: usize = 10;
pub const CFG_RCTL: usize = 11;
/// rate_weight / N.
pub const CFG_RATE: usize = 12;
/// ln Δ.
pub const CFG_LNBIN: usize = 13;
/// Resample when ESS < this fraction of P.
pub const CFG_ESS_FRAC: usize = 14;
/// MPPI's relative temperature for rate objectives.
pub const CFG_RATE_TEMP: usize = 15;
pub const CFG_LEN: usize = 16;

/// Lower clamp on log-rates (log Hz), as in the CPU model (`observation::LOG_RATE_MIN`).
pub const LOG_RATE_MIN: f32 = -20.0;

/// Dimensions of one model on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub n: usize,
    pub d: usize,
    pub e: usize,
    pub m: usize,
    pub hidden: usize,
    pub tasks: usize,
    pub window: usize,
    pub horizon: usize,
    pub samples: usize,
    pub particles: usize,
}

impl Shape {
    pub fn theta_len(&self) -> usize {
        self.d * self.d + self.d * self.m + self.d
    }
    pub fn chunks(&self) -> usize {
        self.n.div_ceil(CUBE).max(1)
    }
    pub fn out_len(&self) -> usize {
        self.m + self.d + self.e + OUT_TAIL
    }
    pub fn bin_len(&self) -> usize {
        self.n + self.m
    }
}

/// Offsets of every region of `mem`, laid out one after another.
#[derive(Debug, Clone)]
pub struct Layout {
    pub shape: Shape,
    /// `lay` as uploaded (dimensions, flags, offsets).
    pub lay: Vec<u32>,
    /// Total f32s in `mem`.
    pub mem_len: usize,
}

impl Layout {
    pub fn new(shape: Shape) -> Layout {
        let s = shape;
        let (n, d, e, m, h) = (s.n, s.d, s.e, s.m, s.hidden);
        let (t, w, k) = (s.tasks, s.window.max(1), s.samples.max(1));
        let hor = s.horizon.max(1);
        let np = s.particles.max(1);
        let th = s.theta_len();
        let ch = s.chunks();
        let sizes: [(usize, usize); 54] = [
            (O_W1, 3 * h * e),
            (O_B1, 3 * h),
            (O_W2, th * h),
            (O_B2, th),
            (O_C, n * d),
            (O_DV, n),
            (O_Q, d),
            (O_LIBTH, t * th),
            (O_LIBZ, t * e),
            (O_LO, m),
            (O_HI, m),
            (O_TGTX, d),
            (O_TGTR, n),
            (O_RSCALE, n),
            (O_X, d),
            (O_P, d * d),
            (O_XPREV, d),
            (O_TANH, d),
            (O_XCAND, (t + 1) * d),
            (O_Z, e),
            (O_THETA, th),
            (O_PRE, 3 * h),
            (O_VRMS, e),
            (O_ESCAL, 2),
            (O_TWIN, t * w),
            (O_TCUR, w),
            (O_TSCAL, 4),
            (O_UNOM, hor * m),
            (O_UNOM2, hor * m),
            (O_EPS, k * hor * m),
            (O_COSTS, k),
            (O_XS, k * 2 * d),
            (O_VS, k * m),
            (O_WORK, d * d),
            (O_PINV, d * d),
            (O_TMP, d * d),
            (O_TMP2, d * d),
            (O_GZ, e),
            (O_GH, 3 * h),
            (O_DLDA, d),
            (O_PLL, (t + 1) * ch),
            (O_PINFO, ch * d * d),
            (O_PSCORE, ch * d),
            (O_HSUM, d * d),
            (O_SSUM, d),
            (O_LLC, t + 1),
            (O_PART, np * d),
            (O_PART2, np * d),
            (O_LOGW, np),
            (O_PSCAL, 2),
            (O_PW, np),
            (O_PCUM, np),
            // MPPI's trajectories for the rate costs: always there (K·H·(d+1), small), so an
            // objective can switch between latent and rate space without a new layout.
            (O_XTRAJ, k * hor * d),
            (O_RCOST, k * hor),
        ];
        let mut lay = vec![0u32; LAY_LEN];
        let mut at = 0usize;
        for (slot, len) in sizes {
            lay[slot] = at as u32;
            // Keep every region 4-aligned (vector loads, tidy dumps).
            at += len.div_ceil(4) * 4;
        }
        lay[N] = n as u32;
        lay[D] = d as u32;
        lay[E] = e as u32;
        lay[M] = m as u32;
        lay[HID] = h as u32;
        lay[T] = t as u32;
        lay[W] = w as u32;
        lay[HOR] = hor as u32;
        lay[K] = k as u32;
        lay[CHUNKS] = ch as u32;
        lay[THLEN] = th as u32;
        lay[NP] = np as u32;
        Layout { shape, lay, mem_len: at }
    }

    /// Offset of region `slot` (an `O_*` constant) in `mem`.
    pub fn at(&self, slot: usize) -> usize {
        self.lay[slot] as usize
    }
}
