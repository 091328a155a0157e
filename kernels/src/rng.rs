//! Philox4x32-10 inside kernels: the same counter-based draws as [`crate::philox`], so a
//! GPU thread that names (seed, stream, index) gets the number the CPU reference got.
//!
//! Integer work (the ten rounds) is exact on every device; the Box–Muller transform is
//! f32 `ln`/`sqrt`/`cos`/`sin`, which devices round within a few ulp of the CPU's.

use crate::philox::{M0, M1, W0, W1};
use cubecl::prelude::*;

/// Counter and key of one Philox block.
#[derive(CubeType, Clone, Copy)]
pub struct Block {
    pub c0: u32,
    pub c1: u32,
    pub c2: u32,
    pub c3: u32,
}

/// Ten rounds of Philox4x32 on (c0, c1, c2, c3) under (k0, k1).
#[cube]
pub fn philox4x32(counter: Block, key0: u32, key1: u32) -> Block {
    let mut c0 = counter.c0;
    let mut c1 = counter.c1;
    let mut c2 = counter.c2;
    let mut c3 = counter.c3;
    let mut k0 = key0;
    let mut k1 = key1;
    #[unroll]
    for round in 0..10u32 {
        if round > 0 {
            k0 += W0;
            k1 += W1;
        }
        let hi0 = u32::mul_hi(M0, c0);
        let lo0 = M0 * c0;
        let hi1 = u32::mul_hi(M1, c2);
        let lo1 = M1 * c2;
        let n0 = hi1 ^ c1 ^ k0;
        let n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    Block { c0, c1, c2, c3 }
}

/// A u32 mapped to (0, 1) in f32 (24 significant bits, centred in their cell).
#[cube]
pub fn u32_to_open01(x: u32) -> f32 {
    (f32::cast_from(x >> 8) + 0.5) * (1.0 / 16_777_216.0)
}

/// Word `lane` (0..4) of a block.
#[cube]
fn word(b: Block, lane: u32) -> u32 {
    let mut w = b.c3;
    if lane == 0 {
        w = b.c0;
    } else if lane == 1 {
        w = b.c1;
    } else if lane == 2 {
        w = b.c2;
    }
    w
}

/// The Philox block of draw `index` of a stream: counter (index / 4, 0, stream lo,
/// stream hi), as [`crate::philox`] for index < 2³⁴.
#[cube]
fn block_at(key0: u32, key1: u32, stream_lo: u32, stream_hi: u32, index: u32) -> Block {
    philox4x32(Block { c0: index / 4, c1: 0u32, c2: stream_lo, c3: stream_hi }, key0, key1)
}

/// The standard-normal draw at (seed key, stream, index), identical to
/// [`crate::philox::normal_at`] for index < 2³⁴: Box–Muller on words (0, 1) and (2, 3) of
/// its block, lane index % 4.
// `%` is what cubecl translates for the device; `is_multiple_of` is not.
#[allow(clippy::manual_is_multiple_of)]
#[cube]
pub fn normal_at(key0: u32, key1: u32, stream_lo: u32, stream_hi: u32, index: u32) -> f32 {
    let r = block_at(key0, key1, stream_lo, stream_hi, index);
    let lane = index % 4;
    let pair = lane / 2;
    let u1 = u32_to_open01(word(r, pair * 2));
    let u2 = u32_to_open01(word(r, pair * 2 + 1));
    let radius = f32::sqrt(-2.0 * f32::ln(u1));
    let angle = 6.283_185_5 * u2;
    let mut v = radius * f32::sin(angle);
    if lane % 2 == 0 {
        v = radius * f32::cos(angle);
    }
    v
}

/// The uniform draw in (0, 1) at (seed key, stream, index), identical to
/// [`crate::philox::uniform_at`].
#[cube]
pub fn uniform_at(key0: u32, key1: u32, stream_lo: u32, stream_hi: u32, index: u32) -> f32 {
    let r = block_at(key0, key1, stream_lo, stream_hi, index);
    u32_to_open01(word(r, index % 4))
}

/// Test kernel: out[i] = normal_at(.., first + i) for i < n (and uniforms into `uni`).
#[cube(launch)]
pub fn draw_kernel(out: &mut Array<f32>, uni: &mut Array<f32>, key0: u32, key1: u32, stream_lo: u32, stream_hi: u32, first: u32, n: u32) {
    let i = ABSOLUTE_POS_X;
    if i < n {
        out[i as usize] = normal_at(key0, key1, stream_lo, stream_hi, first + i);
        uni[i as usize] = uniform_at(key0, key1, stream_lo, stream_hi, first + i);
    }
}
