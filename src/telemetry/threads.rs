//! Which thread the machine's time went to: the kernel's own accounting of every thread of
//! this process (`/proc/self/task/*/schedstat`: time on a CPU, time runnable but waiting
//! for one, times scheduled), read by the session's main thread once a second while the
//! loop runs and reported as the difference between the first and the last reading.
//!
//! A thread whose run-queue wait per wake-up is large is one that woke and found its CPU
//! taken; a thread with a large share of a core is one that took it. liblsl's own threads
//! take the name of the thread that created them, so threads are merged by name.
//! Nothing here runs on the loop or the emitter; on a kernel without schedstat the section
//! is left out of the report.

use serde::Serialize;
use std::collections::BTreeMap;

/// One thread's counters at one moment (`schedstat`: ns on a CPU, ns waiting on a run
/// queue, times it was scheduled in).
#[derive(Debug, Clone, PartialEq)]
struct ThreadSample {
    name: String,
    cpu_ns: u64,
    wait_ns: u64,
    slices: u64,
}

/// Every thread of this process at one moment, by thread id.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    at_s: f64,
    threads: BTreeMap<u64, ThreadSample>,
}

/// The threads of one name over the measured window (the report's `threads`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ThreadUsage {
    /// The thread's name (`neuroloop-loop`, …; liblsl's threads carry their creator's).
    pub name: String,
    /// Threads of that name that ran in the window.
    pub threads: usize,
    /// Time on a CPU, in % of one core over the window.
    pub cpu_percent: f64,
    /// Time runnable but waiting for a CPU, per time scheduled in (µs): how long a wake-up
    /// of this thread waited, on average, for its CPU to be free.
    pub runqueue_wait_us: f64,
    /// Times scheduled in, per bin of the window.
    pub wakeups_per_bin: f64,
}

/// The report's `threads` section.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ThreadsSummary {
    /// Length of the window between the first and the last reading (s).
    pub window_s: f64,
    /// By CPU share, largest first.
    pub by_name: Vec<ThreadUsage>,
}

impl ThreadsSummary {
    /// Several sessions' (a bench's rounds) as one: per name, the mean over the sessions
    /// it ran in.
    pub fn mean_of<'a>(parts: impl IntoIterator<Item = &'a ThreadsSummary>) -> Option<ThreadsSummary> {
        let parts: Vec<&ThreadsSummary> = parts.into_iter().collect();
        if parts.is_empty() {
            return None;
        }
        let mut sums: BTreeMap<&str, (usize, ThreadUsage)> = BTreeMap::new();
        for u in parts.iter().flat_map(|p| &p.by_name) {
            let (n, acc) = sums.entry(u.name.as_str()).or_insert_with(|| {
                (0, ThreadUsage { name: u.name.clone(), threads: 0, cpu_percent: 0.0, runqueue_wait_us: 0.0, wakeups_per_bin: 0.0 })
            });
            *n += 1;
            acc.threads = acc.threads.max(u.threads);
            acc.cpu_percent += u.cpu_percent;
            acc.runqueue_wait_us += u.runqueue_wait_us;
            acc.wakeups_per_bin += u.wakeups_per_bin;
        }
        let by_name = largest_first(sums.into_values().map(|(n, mut u)| {
            let n = n as f64;
            u.cpu_percent /= n;
            u.runqueue_wait_us /= n;
            u.wakeups_per_bin /= n;
            u
        }));
        Some(ThreadsSummary { window_s: parts.iter().map(|p| p.window_s).sum(), by_name })
    }

    /// A markdown table, largest CPU share first.
    pub fn markdown_table(&self) -> String {
        let mut s = String::from(
            "| thread | threads | % of a core | run-queue wait per wake-up µs | wake-ups per bin |\n|---|---:|---:|---:|---:|\n",
        );
        for u in &self.by_name {
            s += &format!("| {} | {} | {:.1} | {:.1} | {:.2} |\n", u.name, u.threads, u.cpu_percent, u.runqueue_wait_us, u.wakeups_per_bin);
        }
        s
    }
}

/// The summary's order: largest CPU share first.
fn largest_first(usage: impl Iterator<Item = ThreadUsage>) -> Vec<ThreadUsage> {
    let mut v: Vec<ThreadUsage> = usage.collect();
    v.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent));
    v
}

/// Parses one `schedstat` line: "cpu_ns wait_ns slices".
fn parse_schedstat(text: &str) -> Option<(u64, u64, u64)> {
    let mut it = text.split_ascii_whitespace().map(|f| f.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

impl Snapshot {
    /// Reads every thread of this process; threads that exit while it reads are skipped.
    /// None where the kernel has no per-thread schedstat.
    pub fn take() -> Option<Snapshot> {
        let at_s = crate::clock::now();
        let mut threads = BTreeMap::new();
        for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else { continue };
            let dir = entry.path();
            let (Ok(stat), Ok(name)) = (std::fs::read_to_string(dir.join("schedstat")), std::fs::read_to_string(dir.join("comm"))) else {
                continue;
            };
            let Some((cpu_ns, wait_ns, slices)) = parse_schedstat(&stat) else { continue };
            threads.insert(tid, ThreadSample { name: name.trim().to_string(), cpu_ns, wait_ns, slices });
        }
        (!threads.is_empty()).then_some(Snapshot { at_s, threads })
    }

    /// What each name of thread did between `self` (earlier) and `later`, over `bins` bins.
    /// A thread started in between counts from zero; one that exited in between is not seen.
    pub fn usage_until(&self, later: &Snapshot, bins: u64) -> ThreadsSummary {
        let window_s = (later.at_s - self.at_s).max(1e-9);
        let mut merged: BTreeMap<&str, (usize, u64, u64, u64)> = BTreeMap::new();
        for (tid, now) in &later.threads {
            let before = self.threads.get(tid).filter(|b| b.name == now.name);
            let (c0, w0, s0) = before.map_or((0, 0, 0), |b| (b.cpu_ns, b.wait_ns, b.slices));
            let (dc, dw, ds) = (now.cpu_ns.saturating_sub(c0), now.wait_ns.saturating_sub(w0), now.slices.saturating_sub(s0));
            if ds == 0 {
                continue; // did not run in the window
            }
            let e = merged.entry(now.name.as_str()).or_default();
            *e = (e.0 + 1, e.1 + dc, e.2 + dw, e.3 + ds);
        }
        let by_name = largest_first(merged.into_iter().map(|(name, (threads, cpu, wait, slices))| ThreadUsage {
            name: name.to_string(),
            threads,
            cpu_percent: 100.0 * cpu as f64 * 1e-9 / window_s,
            runqueue_wait_us: wait as f64 * 1e-3 / slices as f64,
            wakeups_per_bin: slices as f64 / bins.max(1) as f64,
        }));
        ThreadsSummary { window_s, by_name }
    }
}

/// The first and the latest reading of a session, taken by its main thread.
#[derive(Debug, Default)]
pub struct ThreadWatch {
    first: Option<(Snapshot, u64)>,
    last: Option<(Snapshot, u64)>,
    next_at_s: f64,
}

impl ThreadWatch {
    /// How often the main thread reads the counters: rarely, as each reading is some fifty
    /// small file reads on the loop's machine.
    pub const EVERY_S: f64 = 1.0;

    /// Takes a reading if one is due; `bins_done` is the loop's bin count at that moment.
    pub fn poll(&mut self, bins_done: u64) {
        let now = crate::clock::now();
        if now < self.next_at_s {
            return;
        }
        self.next_at_s = now + Self::EVERY_S;
        let Some(s) = Snapshot::take() else { return };
        if self.first.is_none() {
            self.first = Some((s, bins_done));
        } else {
            self.last = Some((s, bins_done));
        }
    }

    /// The window between the first and the latest reading; None with fewer than two.
    pub fn summary(&self) -> Option<ThreadsSummary> {
        let ((a, ka), (b, kb)) = (self.first.as_ref()?, self.last.as_ref()?);
        Some(a.usage_until(b, kb.saturating_sub(*ka)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, cpu_ns: u64, wait_ns: u64, slices: u64) -> ThreadSample {
        ThreadSample { name: name.into(), cpu_ns, wait_ns, slices }
    }

    #[test]
    fn schedstat_lines_parse_and_bad_ones_do_not() {
        assert_eq!(parse_schedstat("1530000 20000 14\n"), Some((1_530_000, 20_000, 14)));
        assert_eq!(parse_schedstat("12 x 3"), None);
        assert_eq!(parse_schedstat("12 3"), None);
    }

    #[test]
    fn usage_is_the_difference_merged_by_name() {
        let a = Snapshot {
            at_s: 10.0,
            threads: BTreeMap::from([(1, sample("loop", 1_000_000, 0, 10)), (2, sample("emit", 0, 0, 5)), (3, sample("idle", 7, 7, 7))]),
        };
        let b = Snapshot {
            at_s: 12.0,
            threads: BTreeMap::from([
                (1, sample("loop", 201_000_000, 2_000_000, 1010)), // 0.2 s on a CPU in 2 s, 1000 slices
                (2, sample("emit", 10_000_000, 1_000_000, 505)),
                (3, sample("idle", 7, 7, 7)),                    // did not run: left out
                (4, sample("emit", 10_000_000, 1_000_000, 500)), // started in the window
            ]),
        };
        let s = a.usage_until(&b, 2000);
        assert!((s.window_s - 2.0).abs() < 1e-12);
        assert_eq!(s.by_name.len(), 2);
        let (lp, em) = (&s.by_name[0], &s.by_name[1]);
        assert_eq!((lp.name.as_str(), lp.threads), ("loop", 1));
        assert!((lp.cpu_percent - 10.0).abs() < 1e-9);
        assert!((lp.runqueue_wait_us - 2.0).abs() < 1e-9);
        assert!((lp.wakeups_per_bin - 0.5).abs() < 1e-12);
        assert_eq!((em.name.as_str(), em.threads), ("emit", 2));
        assert!((em.cpu_percent - 1.0).abs() < 1e-9);
        assert!((em.runqueue_wait_us - 2.0).abs() < 1e-9);
    }

    #[test]
    fn rounds_merge_as_the_mean_per_name() {
        let u = |name: &str, cpu: f64| ThreadUsage {
            name: name.into(),
            threads: 1,
            cpu_percent: cpu,
            runqueue_wait_us: cpu,
            wakeups_per_bin: 1.0,
        };
        let a = ThreadsSummary { window_s: 10.0, by_name: vec![u("loop", 10.0), u("sim", 4.0)] };
        let b = ThreadsSummary { window_s: 10.0, by_name: vec![u("loop", 20.0)] };
        let m = ThreadsSummary::mean_of([&a, &b]).unwrap();
        assert_eq!(m.window_s, 20.0);
        assert_eq!(m.by_name.iter().map(|u| (u.name.as_str(), u.cpu_percent)).collect::<Vec<_>>(), [("loop", 15.0), ("sim", 4.0)]);
        assert!(m.markdown_table().contains("| loop | 1 | 15.0 | 15.0 | 1.00 |"));
        assert!(ThreadsSummary::mean_of([]).is_none());
    }

    #[test]
    fn this_process_is_read_with_a_named_thread_in_it() {
        let h = std::thread::Builder::new()
            .name("nl-threads-test".into())
            .spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(2));
                Snapshot::take().expect("/proc/self/task/*/schedstat on Linux")
            })
            .unwrap();
        let s = h.join().unwrap();
        assert!(s.threads.values().any(|t| t.name == "nl-threads-test" && t.slices > 0), "{s:?}");
    }
}
