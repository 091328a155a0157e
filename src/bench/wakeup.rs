//! `neuroloop wakeups`: what waiting costs (issue 16). For each wait strategy
//! ([`clock::Wait`]) and thread count, that many threads wake on one shared bin grid
//! (t0 + kΔ on the LSL clock, as the session's threads do), each with 1 ns timer slack
//! ([`clock::precise_timers`]). Per phase: the lateness of every wake-up (now − target) in an
//! hdrhistogram, early wake-ups (there must be none), each thread's CPU time
//! (CLOCK_THREAD_CPUTIME_ID) as a % of one core, and the machine's CPU steal (/proc/stat).
//! Writes wakeups.md and wakeups.json. See bench/README.md.

use super::{machine_summary, CpuTimes};
use crate::clock::{self, Wait};
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::path::PathBuf;

/// The most threads one phase may wake.
pub const MAX_THREADS: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct WakeupOptions {
    /// Δ of the grid (ms), > 0 and ≤ 1000.
    pub bin_ms: f64,
    /// Length of each phase (s), > 0 and ≤ 3600.
    pub seconds: f64,
    /// Thread counts, each 1..=64: one phase per strategy per count.
    pub threads: Vec<usize>,
    pub waits: Vec<Wait>,
    /// Output folder (created if missing).
    pub out: PathBuf,
    /// One progress line per phase.
    pub status_line: bool,
}

impl WakeupOptions {
    /// From the command line's text: `--threads 1,3`, `--waits all` or `--waits sleep,spin`.
    pub fn from_args(
        bin_ms: f64,
        seconds: f64,
        threads: &str,
        waits: &str,
        out: PathBuf,
        status_line: bool,
    ) -> anyhow::Result<WakeupOptions> {
        let o = WakeupOptions { bin_ms, seconds, threads: parse_threads(threads)?, waits: parse_waits(waits)?, out, status_line };
        o.validate()?;
        Ok(o)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.bin_ms > 0.0) || self.bin_ms > 1000.0 {
            bail!("--bin-ms {}: the grid's Δ must be more than 0 and at most 1000 ms", self.bin_ms);
        }
        if !(self.seconds > 0.0) || self.seconds > 3600.0 {
            bail!("--seconds {}: each phase must last more than 0 and at most 3600 s", self.seconds);
        }
        if self.threads.is_empty() {
            bail!("--threads names no thread count");
        }
        for (i, &n) in self.threads.iter().enumerate() {
            if !(1..=MAX_THREADS).contains(&n) {
                bail!("--threads: {n} is not a thread count from 1 to {MAX_THREADS}");
            }
            if self.threads[..i].contains(&n) {
                bail!("--threads: {n} is listed twice");
            }
        }
        if self.waits.is_empty() {
            bail!("--waits names no wait strategy (expected all, or some of {})", wait_names());
        }
        for (i, w) in self.waits.iter().enumerate() {
            if self.waits[..i].contains(w) {
                bail!("--waits: {} is listed twice", w.name());
            }
        }
        Ok(())
    }

    /// Grid points each thread waits for in a phase (after one unmeasured first wake-up).
    pub fn wakeups_per_thread(&self) -> u64 {
        ((self.seconds * 1e3 / self.bin_ms).round() as u64).max(1)
    }
}

fn wait_names() -> String {
    Wait::ALL.iter().map(|w| w.name()).collect::<Vec<_>>().join(", ")
}

/// Parses `--threads 1,3` (each 1..=64).
pub fn parse_threads(text: &str) -> anyhow::Result<Vec<usize>> {
    text.split(',')
        .map(|t| {
            let t = t.trim();
            match t.parse::<usize>() {
                Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
                _ => bail!("--threads: '{t}' is not a thread count from 1 to {MAX_THREADS} (expected a comma-separated list such as 1,3)"),
            }
        })
        .collect()
}

/// Parses `--waits all` or a comma-separated list of strategy names.
pub fn parse_waits(text: &str) -> anyhow::Result<Vec<Wait>> {
    if text.trim() == "all" {
        return Ok(Wait::ALL.to_vec());
    }
    text.split(',')
        .map(|t| {
            Wait::parse(t).map_err(|_| {
                anyhow::anyhow!(
                    "--waits: unknown wait strategy '{}' (expected all, or a comma-separated list of {})",
                    t.trim(),
                    wait_names()
                )
            })
        })
        .collect()
}

/// Lateness percentiles of a phase, all its threads together (µs).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Lateness {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Lateness {
    fn of(h: &Histogram<u64>) -> Option<Lateness> {
        let us = |ns: u64| ns as f64 * 1e-3;
        (!h.is_empty()).then(|| Lateness {
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() * 1e-3,
        })
    }
}

/// One phase: one strategy, one thread count.
#[derive(Debug, Clone, Serialize)]
pub struct WakeupRow {
    pub wait: Wait,
    pub threads: usize,
    /// Measured wake-ups, all threads together.
    pub wakeups: u64,
    /// Wake-ups before their target (must be 0).
    pub early: u64,
    /// Wake-ups more than one bin late (the next target had passed already).
    pub later_than_a_bin: u64,
    /// None only if every wake-up was early.
    pub lateness_us: Option<Lateness>,
    /// CPU time per thread as a % of one core: the mean over the phase's threads, and the most.
    pub cpu_percent_per_thread: f64,
    pub cpu_percent_max: f64,
    /// The machine's CPU steal over the phase (% of all CPU time; 0 where not reported).
    pub steal_percent: f64,
    /// Whether every thread got 1 ns timer slack.
    pub precise_timers: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct WakeupReport {
    pub machine: String,
    pub bin_ms: f64,
    /// Length of each phase (s).
    pub seconds: f64,
    /// CLOCK_MONOTONIC − LSL clock (µs) abs-sleep sleeps with; None: it fell back to relative sleeps.
    pub lsl_monotonic_offset_us: Option<f64>,
    pub rows: Vec<WakeupRow>,
}

/// What one waking thread measured.
struct ThreadResult {
    lateness: Histogram<u64>,
    wakeups: u64,
    early: u64,
    later_than_a_bin: u64,
    cpu_s: f64,
    wall_s: f64,
    precise_timers: bool,
    /// Allocations in the waking loop (0 unless a counting allocator is installed: tests).
    #[cfg_attr(not(test), allow(dead_code, reason = "only the tests install the counting allocator that makes it count"))]
    allocations: u64,
}

/// Lateness in ns, 1 ns .. 10 s at 3 significant digits (preallocated: recording never allocates).
fn lateness_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("histogram bounds")
}

/// CPU time of the calling thread (s).
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is the calling thread's.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// One thread of a phase: wake at t0 (unmeasured), then at t0 + kΔ for k = 1..=n.
fn wake(wait: Wait, t0: f64, bin_s: f64, n: u64) -> ThreadResult {
    let precise_timers = clock::precise_timers();
    let mut lateness = lateness_histogram();
    let (mut early, mut later_than_a_bin) = (0, 0);
    wait.until(t0);
    let allocations = crate::hot::thread_allocations();
    let cpu0 = thread_cpu_s();
    let wall0 = clock::now();
    for k in 1..=n {
        let target = t0 + k as f64 * bin_s;
        wait.until(target);
        let late = clock::now() - target;
        if late < 0.0 {
            early += 1;
        } else {
            lateness.saturating_record((late * 1e9).round() as u64);
            if late > bin_s {
                later_than_a_bin += 1;
            }
        }
    }
    let wall_s = clock::now() - wall0;
    let cpu_s = thread_cpu_s() - cpu0;
    let allocations = crate::hot::thread_allocations() - allocations;
    ThreadResult { lateness, wakeups: n, early, later_than_a_bin, cpu_s, wall_s, precise_timers, allocations }
}

/// Runs one phase: `threads` threads on one grid.
fn phase(wait: Wait, threads: usize, bin_s: f64, n: u64) -> anyhow::Result<WakeupRow> {
    let cpu_at_start = CpuTimes::now();
    // Time to start every thread before the first (unmeasured) wake-up.
    let t0 = clock::now() + 0.020 + 1e-3 * threads as f64;
    let handles = (0..threads)
        .map(|i| std::thread::Builder::new().name(format!("wakeup-{i}")).spawn(move || wake(wait, t0, bin_s, n)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot start the waking threads")?;
    let mut results = Vec::with_capacity(threads);
    for h in handles {
        results.push(h.join().map_err(|p| anyhow::anyhow!("a waking thread panicked: {}", crate::panic_message(p.as_ref())))?);
    }
    let steal_percent = cpu_at_start.steal_percent_since();
    let mut lateness = lateness_histogram();
    for r in &results {
        lateness.add(&r.lateness).expect("same bounds");
    }
    let cpu: Vec<f64> = results.iter().map(|r| if r.wall_s > 0.0 { 100.0 * r.cpu_s / r.wall_s } else { 0.0 }).collect();
    Ok(WakeupRow {
        wait,
        threads,
        wakeups: results.iter().map(|r| r.wakeups).sum(),
        early: results.iter().map(|r| r.early).sum(),
        later_than_a_bin: results.iter().map(|r| r.later_than_a_bin).sum(),
        lateness_us: Lateness::of(&lateness),
        cpu_percent_per_thread: cpu.iter().sum::<f64>() / cpu.len() as f64,
        cpu_percent_max: cpu.iter().copied().fold(0.0, f64::max),
        steal_percent,
        precise_timers: results.iter().all(|r| r.precise_timers),
    })
}

/// Runs every (strategy, thread count) phase once and writes wakeups.md and wakeups.json;
/// returns the report and the table.
pub fn run(o: &WakeupOptions) -> anyhow::Result<(WakeupReport, String)> {
    o.validate()?;
    std::fs::create_dir_all(&o.out).with_context(|| format!("cannot create the output folder {}", o.out.display()))?;
    let (md, json) = (o.out.join("wakeups.md"), o.out.join("wakeups.json"));
    crate::ensure_writable(&md, "table")?;
    crate::ensure_writable(&json, "JSON report")?;
    let offset = clock::lsl_monotonic_offset(); // measured here, not in the first abs-sleep phase
    let (bin_s, n) = (o.bin_ms * 1e-3, o.wakeups_per_thread());
    let total = o.waits.len() * o.threads.len();
    let mut rows = Vec::with_capacity(total);
    for &wait in &o.waits {
        for &threads in &o.threads {
            let row = phase(wait, threads, bin_s, n)?;
            if o.status_line {
                let l = row.lateness_us.as_ref();
                eprintln!(
                    "[wakeups {}/{total}] {} × {threads} thread{}: {} wake-ups, lateness p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs, \
                     early {}, CPU {:.1} % per thread, steal {:.1} %",
                    rows.len() + 1,
                    wait.name(),
                    if threads == 1 { "" } else { "s" },
                    row.wakeups,
                    l.map_or(f64::NAN, |l| l.p50_us),
                    l.map_or(f64::NAN, |l| l.p99_us),
                    l.map_or(f64::NAN, |l| l.max_us),
                    row.early,
                    row.cpu_percent_per_thread,
                    row.steal_percent
                );
            }
            rows.push(row);
        }
    }
    let report = WakeupReport {
        machine: machine_summary(),
        bin_ms: o.bin_ms,
        seconds: o.seconds,
        lsl_monotonic_offset_us: offset.map(|s| s * 1e6),
        rows,
    };
    let table = table(&report);
    crate::outfile::write_output(&md, table.as_bytes(), "table")?;
    crate::outfile::write_output(&json, serde_json::to_string_pretty(&report)?.as_bytes(), "JSON report")?;
    Ok((report, table))
}

/// The phases as a Markdown table.
pub fn table(r: &WakeupReport) -> String {
    let mut s = format!(
        "### Wake-ups on a {} ms grid · {} s per phase · {}\n\n\
         | wait | threads | wake-ups | lateness p50 µs | p99 µs | p99.9 µs | max µs | early | CPU % per thread | steal % |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        r.bin_ms, r.seconds, r.machine
    );
    for row in &r.rows {
        let l = |f: fn(&Lateness) -> f64| row.lateness_us.as_ref().map_or("–".into(), |l| format!("{:.1}", f(l)));
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |\n",
            row.wait.name(),
            row.threads,
            row.wakeups,
            l(|l| l.p50_us),
            l(|l| l.p99_us),
            l(|l| l.p999_us),
            l(|l| l.max_us),
            row.early,
            row.cpu_percent_per_thread,
            row.steal_percent
        );
    }
    s += "\nlateness: wake-up − grid target on the LSL clock, every thread of a phase together · CPU %: of one core, the mean \
          over the phase's threads (CLOCK_THREAD_CPUTIME_ID) · steal: the whole machine's, from /proc/stat, over the phase";
    if r.rows.iter().all(|row| row.precise_timers) {
        s += " · timer slack 1 ns in every thread";
    } else {
        s += " · timer slack could not be set to 1 ns in some threads (prctl refused)";
    }
    s += &match r.lsl_monotonic_offset_us {
        Some(o) => format!(" · abs-sleep: LSL clock = CLOCK_MONOTONIC {} {:.3} µs\n", if o < 0.0 { "+" } else { "−" }, o.abs()),
        None => " · abs-sleep: the LSL clock is not CLOCK_MONOTONIC plus a constant here, so it slept relatively\n".into(),
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(out: PathBuf) -> WakeupOptions {
        WakeupOptions {
            bin_ms: 1.0,
            seconds: 0.2,
            threads: vec![1],
            waits: vec![Wait::SleepThenYield, Wait::AbsoluteSleep],
            out,
            status_line: false,
        }
    }

    #[test]
    fn parses_threads_and_waits() {
        assert_eq!(parse_threads("1,3").unwrap(), vec![1, 3]);
        assert_eq!(parse_threads(" 64 ").unwrap(), vec![64]);
        for bad in ["0", "65", "x", "1,,3", "-1", ""] {
            let e = parse_threads(bad).unwrap_err().to_string();
            assert!(e.starts_with("--threads:") && e.contains("1 to 64"), "{bad}: {e}");
        }
        assert_eq!(parse_waits("all").unwrap(), Wait::ALL.to_vec());
        assert_eq!(parse_waits("sleep+yield, abs-sleep").unwrap(), vec![Wait::SleepThenYield, Wait::AbsoluteSleep]);
        let e = parse_waits("sleep,nap").unwrap_err().to_string();
        assert!(e.contains("'nap'") && e.contains("all"), "{e}");
        for w in Wait::ALL {
            assert!(e.contains(w.name()), "{e}");
        }
    }

    #[test]
    fn validates_ranges() {
        let ok = options(PathBuf::from("unused"));
        ok.validate().unwrap();
        assert_eq!(ok.wakeups_per_thread(), 200);
        let bad = |f: fn(&mut WakeupOptions), key: &str| {
            let mut o = ok.clone();
            f(&mut o);
            let e = o.validate().unwrap_err().to_string();
            assert!(e.starts_with(key), "{e}");
        };
        bad(|o| o.bin_ms = 0.0, "--bin-ms");
        bad(|o| o.bin_ms = f64::NAN, "--bin-ms");
        bad(|o| o.bin_ms = 1000.5, "--bin-ms");
        bad(|o| o.seconds = -1.0, "--seconds");
        bad(|o| o.seconds = 3601.0, "--seconds");
        bad(|o| o.threads = vec![], "--threads");
        bad(|o| o.threads = vec![65], "--threads");
        bad(|o| o.threads = vec![1, 1], "--threads");
        bad(|o| o.waits = vec![], "--waits");
        bad(|o| o.waits = vec![Wait::Spin, Wait::Spin], "--waits");
        let e = WakeupOptions::from_args(1.0, 10.0, "1,3", "snooze", PathBuf::from("x"), false).unwrap_err().to_string();
        assert!(e.contains("snooze") && e.contains("abs-sleep"), "{e}");
        assert_eq!(WakeupOptions::from_args(1.0, 10.0, "1,3", "all", PathBuf::from("x"), true).unwrap().waits, Wait::ALL.to_vec());
    }

    #[test]
    fn waking_loop_does_not_allocate() {
        for w in Wait::ALL {
            let r = wake(w, clock::now() + 1e-3, 1e-3, 20);
            assert_eq!((r.wakeups, r.early, r.allocations), (20, 0, 0), "{}", w.name());
            assert_eq!(r.lateness.len(), 20);
        }
    }

    #[test]
    fn short_run_counts_and_writes() {
        let dir = tempfile::tempdir().unwrap();
        let o = options(dir.path().join("wakeups"));
        let (report, table) = run(&o).unwrap();
        assert_eq!(report.rows.len(), 2);
        for (row, wait) in report.rows.iter().zip(&o.waits) {
            assert_eq!((row.wait, row.threads), (*wait, 1));
            assert_eq!(row.wakeups, 200);
            assert_eq!(row.early, 0);
            assert!(row.lateness_us.is_some());
        }
        assert!(table.contains("| sleep+yield | 1 | 200 |") && table.contains("| abs-sleep | 1 | 200 |"), "{table}");
        assert_eq!(std::fs::read_to_string(o.out.join("wakeups.md")).unwrap(), table);
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(o.out.join("wakeups.json")).unwrap()).unwrap();
        assert_eq!(json["rows"][1]["wait"], "abs-sleep");
        assert_eq!(json["rows"][0]["early"], 0);
    }
}
