//! Time on the local LSL clock, and the bin grid laid on it (docs/architecture.md).
//!
//! Bin k = [t0 + kΔ, t0 + (k+1)Δ). It closes at its end + grace; its control sample is
//! due at close + deadline.

use std::time::Duration;

/// Seconds on the local LSL clock (`lsl::local_clock()`), the clock every timestamp in
/// neuroloop is mapped onto.
#[inline]
pub fn now() -> f64 {
    lsl::local_clock()
}

/// Sleep until local-clock time `t`. Sleeps coarsely, then yields through the last
/// stretch, because an OS sleep can overshoot by tens of µs (timer slack; bench/RESULTS.md
/// has this project's measurements). Allocation-free.
pub fn sleep_until(t: f64) {
    const SPIN_S: f64 = 150e-6;
    loop {
        let remaining = t - now();
        if remaining <= 0.0 {
            return;
        }
        if remaining > SPIN_S {
            std::thread::sleep(Duration::from_secs_f64(remaining - SPIN_S));
        } else {
            std::thread::yield_now();
        }
    }
}

/// Park the current thread until `t` or until unparked, whichever comes first (same
/// coarse-then-yield strategy as [`sleep_until`], but wakes early on `unpark`).
pub fn park_until(t: f64) {
    const SPIN_S: f64 = 150e-6;
    let remaining = t - now();
    if remaining > SPIN_S {
        std::thread::park_timeout(Duration::from_secs_f64(remaining - SPIN_S));
    } else if remaining > 0.0 {
        std::thread::yield_now();
    }
}

/// The bin grid on the local clock: bin k = [t0 + kΔ, t0 + (k+1)Δ), closed `grace_s` after
/// its end, its Control sample due `deadline_s` after that (docs/architecture.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BinGrid {
    /// Start of bin 0 (local clock, s).
    pub t0: f64,
    /// Δ (s).
    pub bin_s: f64,
    /// Time allowed for transport after a bin ends before it closes (s).
    pub grace_s: f64,
    /// Time after close by which the bin's control sample must be pushed (s).
    pub deadline_s: f64,
}

impl BinGrid {
    #[inline]
    pub fn bin_start(&self, k: u64) -> f64 {
        self.t0 + k as f64 * self.bin_s
    }
    #[inline]
    pub fn bin_end(&self, k: u64) -> f64 {
        self.t0 + (k + 1) as f64 * self.bin_s
    }
    #[inline]
    pub fn close(&self, k: u64) -> f64 {
        self.bin_end(k) + self.grace_s
    }
    #[inline]
    pub fn deadline(&self, k: u64) -> f64 {
        self.close(k) + self.deadline_s
    }
    /// The bin index containing local time `t` (negative before t0).
    #[inline]
    pub fn bin_of(&self, t: f64) -> i64 {
        ((t - self.t0) / self.bin_s).floor() as i64
    }
    /// The bin whose end is `ts` (Control, Status and bins samples are stamped so); see
    /// [`bin_ending_at`].
    #[inline]
    pub fn bin_ending_at(&self, ts: f64) -> i64 {
        bin_ending_at(ts, self.t0, self.bin_s)
    }
}

/// The bin of a grid (t0, Δ) whose end is `ts`, to the nearest bin; −1 for anything before
/// bin 0 (including a NaN stamp). Computed in f64 so an absurd stamp from a file saturates,
/// never overflows.
#[inline]
pub fn bin_ending_at(ts: f64, t0: f64, bin_s: f64) -> i64 {
    let k = ((ts - t0) / bin_s).round() - 1.0;
    if k.is_nan() {
        -1
    } else {
        k.max(-1.0) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_arithmetic() {
        let c = BinGrid { t0: 100.0, bin_s: 0.01, grace_s: 0.002, deadline_s: 0.003 };
        assert_eq!(c.bin_of(100.0), 0);
        assert_eq!(c.bin_of(100.0099), 0);
        assert_eq!(c.bin_of(100.0101), 1);
        assert_eq!(c.bin_of(99.999), -1);
        assert!((c.close(0) - 100.012).abs() < 1e-12);
        assert!((c.deadline(1) - 100.025).abs() < 1e-12);
    }

    #[test]
    fn bin_ending_at_is_total_over_absurd_stamps() {
        assert_eq!(bin_ending_at(0.010, 0.0, 0.010), 0);
        assert_eq!(bin_ending_at(0.0, 0.0, 0.010), -1);
        let c = BinGrid { t0: 100.0, bin_s: 0.01, grace_s: 0.002, deadline_s: 0.003 };
        assert_eq!(c.bin_ending_at(c.bin_end(41)), 41);
        // Far before bin 0, NaN and ±∞: before bin 0, never an overflow (a fuzzer found
        // `round() as i64 - 1` overflowing at i64::MIN).
        for ts in [-1e300, f64::NEG_INFINITY, f64::NAN] {
            assert_eq!(bin_ending_at(ts, 0.0, 0.010), -1, "{ts}");
        }
        assert_eq!(bin_ending_at(f64::INFINITY, 0.0, 0.010), i64::MAX);
        assert_eq!(bin_ending_at(1.0, 0.0, f64::NAN), -1);
    }

    #[test]
    fn sleep_until_is_not_early() {
        let t = now() + 0.003;
        sleep_until(t);
        assert!(now() >= t);
    }
}
