//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
//!
//! Counter-based: the draw for (key, counter) is a pure function, so a CPU loop and a GPU
//! thread that name the same counter get the same numbers, in any order, with no state.
//! Known-answer vectors from the Random123 distribution are checked in the tests.

// Multipliers and Weyl key increments (shared with the kernels' rounds in crate::rng).
pub(crate) const M0: u32 = 0xD251_1F53;
pub(crate) const M1: u32 = 0xCD9E_8D57;
pub(crate) const W0: u32 = 0x9E37_79B9;
pub(crate) const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = (a as u64) * (b as u64);
    ((p >> 32) as u32, p as u32)
}

/// Ten rounds of Philox4x32 on `counter` under `key`.
#[inline]
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// A u32 mapped to the open interval (0, 1) in f32 precision (never 0, so ln() is finite).
#[inline(always)]
pub fn u32_to_open01(x: u32) -> f32 {
    // 24 significant bits, centred in their cell.
    ((x >> 8) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

/// Four standard-normal draws (Box–Muller on the four words of one Philox block), in f32
/// so that the GPU kernels can reproduce them exactly.
#[inline]
pub fn normal4(counter: [u32; 4], key: [u32; 2]) -> [f32; 4] {
    let r = philox4x32(counter, key);
    let (a0, a1) = box_muller(u32_to_open01(r[0]), u32_to_open01(r[1]));
    let (b0, b1) = box_muller(u32_to_open01(r[2]), u32_to_open01(r[3]));
    [a0, a1, b0, b1]
}

#[inline(always)]
fn box_muller(u1: f32, u2: f32) -> (f32, f32) {
    let radius = (-2.0 * u1.ln()).sqrt();
    let angle = core::f32::consts::TAU * u2;
    (radius * angle.cos(), radius * angle.sin())
}

/// Key from a 64-bit seed.
#[inline]
pub fn key_from_seed(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// The block counter (index / 4 low, index / 4 high, stream low, stream high) and the lane
/// (index % 4) of the draw at (stream, index).
#[inline(always)]
fn counter_and_lane(stream: u64, index: u64) -> ([u32; 4], usize) {
    let block = index / 4;
    ([block as u32, (block >> 32) as u32, stream as u32, (stream >> 32) as u32], (index % 4) as usize)
}

/// A standard-normal draw addressed by (seed, stream, index) (`counter_and_lane`).
#[inline]
pub fn normal_at(seed: u64, stream: u64, index: u64) -> f32 {
    let (counter, lane) = counter_and_lane(stream, index);
    normal4(counter, key_from_seed(seed))[lane]
}

/// A uniform draw in (0, 1) addressed by (seed, stream, index), like [`normal_at`].
#[inline]
pub fn uniform_at(seed: u64, stream: u64, index: u64) -> f32 {
    let (counter, lane) = counter_and_lane(stream, index);
    u32_to_open01(philox4x32(counter, key_from_seed(seed))[lane])
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer tests from Random123's kat_vectors (philox4x32_10).
    #[test]
    fn known_answers() {
        assert_eq!(philox4x32([0, 0, 0, 0], [0, 0]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32([0xffffffff; 4], [0xffffffff, 0xffffffff]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn normals_have_unit_moments() {
        let n = 200_000u64;
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        for i in 0..n {
            let x = normal_at(7, 3, i) as f64;
            s += x;
            s2 += x * x;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    #[test]
    fn streams_differ() {
        assert_ne!(normal_at(1, 0, 0), normal_at(1, 1, 0));
        assert_ne!(normal_at(1, 0, 0), normal_at(2, 0, 0));
        assert_eq!(normal_at(1, 5, 9), normal_at(1, 5, 9));
    }
}
