//! Time on the local LSL clock, and the bin grid laid on it (docs/architecture.md).
//!
//! Bin k = [t0 + kΔ, t0 + (k+1)Δ). It closes at its end + grace; its control sample is
//! due at close + deadline.

use std::sync::OnceLock;
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

/// How a thread waits for a time on the local clock (issue 16: at 1 ms bins the way threads
/// wait costs more CPU than the work, and on a shared VM that CPU comes back as steal).
/// `neuroloop wakeups` measures each one. Every strategy is allocation-free and never
/// returns before its target (a NaN target returns at once, except for `SleepThenYield`,
/// which is [`sleep_until`] unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Wait {
    /// "sleep+yield": sleep to 150 µs before the target, then yield until it
    /// ([`sleep_until`]). Precise, but the yield loop keeps a core busy for the last 150 µs.
    #[default]
    #[serde(rename = "sleep+yield")]
    SleepThenYield,
    /// "sleep": `std::thread::sleep` to the target (again, for the rest, when the OS wakes
    /// the thread early); no spinning. Late by the OS's wake-up latency plus the timer slack
    /// (50 µs by default: see [`precise_timers`]).
    Sleep,
    /// "abs-sleep": `clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)` to the target
    /// ([`absolute_sleep_until`]): no drift from computing a relative duration, no spinning.
    #[serde(rename = "abs-sleep")]
    AbsoluteSleep,
    /// "spin": busy-wait with `core::hint::spin_loop`. The most precise where a core is free
    /// for it, and a whole core per waiting thread.
    Spin,
}

impl Wait {
    /// Every strategy, in the order `neuroloop wakeups` runs them.
    pub const ALL: [Wait; 4] = [Wait::SleepThenYield, Wait::Sleep, Wait::AbsoluteSleep, Wait::Spin];

    /// Wait until local-clock time `t` (never returns before it). Allocation-free.
    pub fn until(self, t: f64) {
        match self {
            Wait::SleepThenYield => sleep_until(t),
            Wait::Sleep => loop {
                let remaining = t - now();
                if !(remaining > 0.0) {
                    return;
                }
                std::thread::sleep(duration(remaining));
            },
            Wait::AbsoluteSleep => absolute_sleep_until(t),
            Wait::Spin => {
                while now() < t {
                    core::hint::spin_loop();
                }
            }
        }
    }

    /// The name in rig files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Wait::SleepThenYield => "sleep+yield",
            Wait::Sleep => "sleep",
            Wait::AbsoluteSleep => "abs-sleep",
            Wait::Spin => "spin",
        }
    }

    /// The strategy named `s` (see [`Wait::name`]).
    pub fn parse(s: &str) -> Result<Wait, String> {
        let s = s.trim();
        Wait::ALL.into_iter().find(|w| w.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Wait::ALL.iter().map(|w| w.name()).collect();
            format!("unknown wait strategy '{s}' (expected one of {})", names.join(", "))
        })
    }
}

/// A positive number of seconds as a Duration (an absurdly long one saturates).
#[inline]
fn duration(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
}

/// CLOCK_MONOTONIC now, in seconds.
#[inline]
fn monotonic_now() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The tightest of `n` readings of CLOCK_MONOTONIC − LSL clock, each bracketed by two
/// monotonic reads: (offset, bracket width), both in seconds.
fn offset_reading(n: usize) -> (f64, f64) {
    let mut best = (f64::NAN, f64::INFINITY);
    for _ in 0..n {
        let a = monotonic_now();
        let l = now();
        let b = monotonic_now();
        if b - a < best.1 {
            best = (0.5 * (a + b) - l, b - a);
        }
    }
    best
}

/// CLOCK_MONOTONIC − LSL clock (s), measured once per process: liblsl's `local_clock` is
/// `std::chrono::steady_clock`, which is CLOCK_MONOTONIC on Linux, so this is ~0. Checked
/// rather than assumed: two readings 1 ms apart must agree within 20 µs, or this is None and
/// [`absolute_sleep_until`] falls back to relative sleeps. The first call takes about 1 ms;
/// call it at start-up, off the hot path, to pay for it there.
pub fn lsl_monotonic_offset() -> Option<f64> {
    static OFFSET: OnceLock<Option<f64>> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        const TOLERANCE_S: f64 = 20e-6;
        let (first, w1) = offset_reading(32);
        std::thread::sleep(Duration::from_millis(1));
        let (second, w2) = offset_reading(32);
        let constant = w1 <= TOLERANCE_S && w2 <= TOLERANCE_S && (first - second).abs() <= TOLERANCE_S;
        (constant && first.is_finite()).then_some(0.5 * (first + second))
    })
}

/// Sleep until local-clock time `t` with `clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`
/// (restarted after a signal), then finish with short sleeps or yields should it wake before
/// `t` on the LSL clock (the offset is measured to within a µs or so). Falls back to relative
/// sleeps ([`Wait::Sleep`]) where the LSL clock is not CLOCK_MONOTONIC plus a constant (see
/// [`lsl_monotonic_offset`]). Allocation-free.
pub fn absolute_sleep_until(t: f64) {
    let Some(offset) = lsl_monotonic_offset() else {
        return Wait::Sleep.until(t);
    };
    if !(t - now() > 0.0) {
        return;
    }
    let ts = timespec_at(t + offset);
    loop {
        // SAFETY: `ts` is a valid timespec; with TIMER_ABSTIME the remainder pointer is unused
        // and may be null. The return value is an error number, not -1 and errno.
        let rc = unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut()) };
        if rc != libc::EINTR {
            break;
        }
    }
    // Early (offset rounding, or an error from clock_nanosleep): short sleeps, then yields.
    loop {
        let remaining = t - now();
        if !(remaining > 0.0) {
            return;
        }
        if remaining > 20e-6 {
            std::thread::sleep(duration(remaining));
        } else {
            std::thread::yield_now();
        }
    }
}

/// Seconds on CLOCK_MONOTONIC as a timespec, rounded up to the next ns so that the sleep
/// cannot end early by rounding (a far-future time is clamped to ~30 000 years).
fn timespec_at(s: f64) -> libc::timespec {
    let s = s.clamp(0.0, 1e12);
    let mut sec = s.floor();
    let mut nsec = ((s - sec) * 1e9).ceil();
    if nsec >= 1e9 {
        sec += 1.0;
        nsec = 0.0;
    }
    libc::timespec { tv_sec: sec as libc::time_t, tv_nsec: nsec as libc::c_long }
}

/// Set the calling thread's timer slack to 1 ns (`prctl(PR_SET_TIMERSLACK, 1)`): by default
/// the kernel may defer every timer wake-up of a normal thread by up to 50 µs to batch them.
/// (SCHED_FIFO threads get no slack anyway.) Returns whether the kernel accepted it.
pub fn precise_timers() -> bool {
    // SAFETY: PR_SET_TIMERSLACK takes one unsigned long and touches only the calling
    // thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) == 0 }
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

    /// Every strategy: never early, not wildly late (50 ms: a loaded CI machine must pass),
    /// and no allocation (the counting allocator of the library's tests).
    #[test]
    fn every_wait_is_never_early_nor_wildly_late() {
        precise_timers();
        for w in Wait::ALL {
            w.until(now() + 1e-4); // first use: abs-sleep measures its clock offset
            for _ in 0..3 {
                let allocations = crate::hot::thread_allocations();
                let t = now() + 0.003;
                w.until(t);
                let woke = now();
                assert_eq!(crate::hot::thread_allocations(), allocations, "{} allocated", w.name());
                assert!(woke >= t, "{} woke {:.1} µs early", w.name(), (t - woke) * 1e6);
                assert!(woke - t < 0.050, "{} woke {:.1} ms late", w.name(), (woke - t) * 1e3);
            }
            // A target in the past (or NaN, except sleep+yield) returns at once.
            let t = now() - 1.0;
            w.until(t);
            if w != Wait::SleepThenYield {
                w.until(f64::NAN);
            }
        }
    }

    #[test]
    fn the_lsl_clock_is_monotonic_plus_a_constant() {
        // liblsl's local_clock is steady_clock = CLOCK_MONOTONIC: abs-sleep is really absolute.
        let offset = lsl_monotonic_offset().expect("the LSL clock should be CLOCK_MONOTONIC plus a constant on Linux");
        assert!(offset.is_finite());
        assert_eq!(lsl_monotonic_offset(), Some(offset), "measured once");
    }

    #[test]
    fn timespec_rounds_up_and_clamps() {
        let ts = timespec_at(12.000_000_000_4);
        assert_eq!((ts.tv_sec, ts.tv_nsec), (12, 1));
        let ts = timespec_at(3.999_999_999_9);
        assert_eq!((ts.tv_sec, ts.tv_nsec), (4, 0));
        assert_eq!(timespec_at(f64::INFINITY).tv_sec, 1_000_000_000_000);
    }

    #[test]
    fn precise_timers_is_accepted() {
        std::thread::spawn(|| assert!(precise_timers())).join().unwrap();
    }

    #[test]
    fn wait_names_parse_and_round_trip() {
        for w in Wait::ALL {
            assert_eq!(Wait::parse(w.name()), Ok(w));
            assert_eq!(Wait::parse(&format!(" {} ", w.name())), Ok(w));
        }
        assert_eq!(Wait::default(), Wait::SleepThenYield);
        let e = Wait::parse("nap").unwrap_err();
        assert!(e.contains("'nap'"), "{e}");
        for w in Wait::ALL {
            assert!(e.contains(w.name()), "{e}");
        }
        assert!(Wait::parse("").is_err());
    }

    #[test]
    fn wait_serde_round_trips_through_toml() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Cfg {
            wait: Wait,
        }
        for w in Wait::ALL {
            let text = toml::to_string(&Cfg { wait: w }).unwrap();
            assert_eq!(text.trim(), format!("wait = \"{}\"", w.name()));
            assert_eq!(toml::from_str::<Cfg>(&text).unwrap(), Cfg { wait: w });
        }
        assert!(toml::from_str::<Cfg>("wait = \"absolute-sleep\"").is_err());
        assert!(toml::from_str::<Cfg>("wait = \"yield\"").is_err());
    }
}
