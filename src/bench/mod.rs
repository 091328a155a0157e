//! `neuroloop bench`: the latency benchmarking harness. Runs a rig's closed loop (with its
//! simulated rig when it has one) through the real ingest → bin → model → control → emit
//! path, leaves the warm-up bins out, and writes per-stage latency percentiles as a table,
//! a JSON report, an HdrHistogram interval log and two SVG plots; then runs the baselines
//! (bench/baselines/) against the same simulated rig and reports neuroloop / baseline
//! ratios. `neuroloop sweep` (sweep.rs) makes the scaling table. See bench/README.md.

pub mod baseline;
pub mod plot;
pub mod sweep;

use crate::latency::{Percentiles, Stage, STAGES};
use crate::rig::Rig;
use crate::session::{self, RunOptions};
use crate::telemetry::Report;
use anyhow::Context;
use baseline::{BaselineKind, BaselineOptions, BaselineResult};
use serde::Serialize;
use std::path::{Path, PathBuf};

pub struct BenchOptions {
    /// Measured bins (after the warm-up).
    pub bins: u64,
    /// Bins run first and left out of every latency histogram.
    pub warmup: u64,
    /// Output folder (created if missing).
    pub out: PathBuf,
    pub status_line: bool,
    /// Baselines to run after neuroloop, in the same run.
    pub baselines: Vec<BaselineKind>,
    /// Interpreter for the Python baselines (needs pylsl and numpy).
    pub python: PathBuf,
    /// Run neuroloop's session with its control plane on this address (to measure the loop
    /// with a dashboard open); None: without one.
    pub control: Option<String>,
}

/// The files one bench run writes into its output folder.
pub struct BenchFiles {
    pub report: PathBuf,
    pub interval_log: PathBuf,
    pub table: PathBuf,
    pub distribution_svg: PathBuf,
    pub over_time_svg: PathBuf,
    pub baselines: PathBuf,
}

impl BenchFiles {
    fn in_dir(dir: &Path) -> BenchFiles {
        BenchFiles {
            report: dir.join("report.json"),
            interval_log: dir.join("latency.hlog"),
            table: dir.join("latency.md"),
            distribution_svg: dir.join("latency-distribution.svg"),
            over_time_svg: dir.join("latency-over-time.svg"),
            baselines: dir.join("baselines.json"),
        }
    }
}

/// neuroloop and the baselines of one run, side by side.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub rig: String,
    pub machine: String,
    pub bins: u64,
    pub warmup_bins: u64,
    pub neuroloop: LoopSummary,
    pub baselines: Vec<BaselineResult>,
    /// neuroloop / baseline, per baseline (below 1: neuroloop is faster).
    pub ratios: Vec<Ratios>,
}

/// The numbers every loop in the comparison has.
#[derive(Debug, Clone, Serialize)]
pub struct LoopSummary {
    pub name: String,
    /// Control samples the simulated rig received for measured bins.
    pub control_samples: u64,
    /// Bins a baseline skipped because it had fallen behind (no sample pushed; 0 for neuroloop).
    pub bins_skipped: u64,
    /// Measured bins whose own result came after the deadline (close + deadline):
    /// neuroloop covers them with its fallback, a baseline just pushes late.
    pub past_deadline: u64,
    /// Spikes that arrived after their bin closed.
    pub late_spikes: u64,
    pub compute_us: Option<Percentiles>,
    pub close_to_push_us: Option<Percentiles>,
    pub end_to_end_us: Option<Percentiles>,
    pub latent_r2: Option<f64>,
    /// CPU time the hypervisor stole while this loop ran (% of all CPU time).
    pub cpu_steal_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub baseline: BaselineKind,
    pub end_to_end_p50: Option<f64>,
    pub end_to_end_p99: Option<f64>,
    pub end_to_end_p999: Option<f64>,
    pub close_to_push_p50: Option<f64>,
    pub close_to_push_p99: Option<f64>,
    pub compute_p50: Option<f64>,
}

impl LoopSummary {
    fn of_neuroloop(r: &Report, cpu_steal_percent: f64) -> LoopSummary {
        LoopSummary {
            name: format!("neuroloop ({})", r.backend),
            control_samples: r.end_to_end_us.as_ref().map_or(0, |p| p.count),
            bins_skipped: 0,
            past_deadline: r.measured_deadline_misses,
            late_spikes: r.late_spikes,
            compute_us: stage_percentiles(r, Stage::Compute),
            close_to_push_us: stage_percentiles(r, Stage::CloseToPush),
            end_to_end_us: r.end_to_end_us.clone(),
            latent_r2: r.latent_r2,
            cpu_steal_percent,
        }
    }
}

fn ratio(a: &Option<Percentiles>, b: &Option<Percentiles>, pick: fn(&Percentiles) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if pick(b) > 0.0 => Some(pick(a) / pick(b)),
        _ => None,
    }
}

impl Comparison {
    fn new(rig: &Rig, o: &BenchOptions, neuroloop: LoopSummary, baselines: Vec<BaselineResult>) -> Comparison {
        let ratios = baselines
            .iter()
            .map(|b| Ratios {
                baseline: b.kind,
                end_to_end_p50: ratio(&neuroloop.end_to_end_us, &b.summary.end_to_end_us, |p| p.p50),
                end_to_end_p99: ratio(&neuroloop.end_to_end_us, &b.summary.end_to_end_us, |p| p.p99),
                end_to_end_p999: ratio(&neuroloop.end_to_end_us, &b.summary.end_to_end_us, |p| p.p999),
                close_to_push_p50: ratio(&neuroloop.close_to_push_us, &b.summary.close_to_push_us, |p| p.p50),
                close_to_push_p99: ratio(&neuroloop.close_to_push_us, &b.summary.close_to_push_us, |p| p.p99),
                compute_p50: ratio(&neuroloop.compute_us, &b.summary.compute_us, |p| p.p50),
            })
            .collect();
        Comparison { rig: rig.name.clone(), machine: machine_summary(), bins: o.bins, warmup_bins: o.warmup, neuroloop, baselines, ratios }
    }

    /// The side-by-side table and the ratios, as Markdown.
    pub fn table(&self) -> String {
        let mut s = format!(
            "### neuroloop and the baselines — same rig, same machine, same run ({} bins after {} warm-up each)\n\n\
             | loop | control samples | bins skipped | past deadline | late spikes | bin close → model done p50 / p99 µs | \
             bin close → pushed p50 / p99 / p99.9 µs | end to end p50 / p99 / p99.9 / max µs | latent R² | CPU steal |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.bins, self.warmup_bins
        );
        let pq = |p: &Option<Percentiles>, f: &[fn(&Percentiles) -> f64]| match p {
            Some(p) => f.iter().map(|g| format!("{:.0}", g(p))).collect::<Vec<_>>().join(" / "),
            None => "–".into(),
        };
        for l in std::iter::once(&self.neuroloop).chain(self.baselines.iter().map(|b| &b.summary)) {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} % |\n",
                l.name,
                l.control_samples,
                l.bins_skipped,
                l.past_deadline,
                l.late_spikes,
                pq(&l.compute_us, &[|p| p.p50, |p| p.p99]),
                pq(&l.close_to_push_us, &[|p| p.p50, |p| p.p99, |p| p.p999]),
                pq(&l.end_to_end_us, &[|p| p.p50, |p| p.p99, |p| p.p999, |p| p.max]),
                l.latent_r2.map_or("–".into(), |r| format!("{r:.3}")),
                l.cpu_steal_percent,
            );
        }
        if !self.ratios.is_empty() {
            s += "\nneuroloop / baseline (below 1: neuroloop is faster)\n\n\
                  | baseline | end to end p50 | p99 | p99.9 | close → pushed p50 | p99 | close → model done p50 |\n\
                  |---|---:|---:|---:|---:|---:|---:|\n";
            let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}"));
            for r in &self.ratios {
                s += &format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    r.baseline.describe(),
                    f(r.end_to_end_p50),
                    f(r.end_to_end_p99),
                    f(r.end_to_end_p999),
                    f(r.close_to_push_p50),
                    f(r.close_to_push_p99),
                    f(r.compute_p50)
                );
            }
        }
        s
    }
}

/// Runs the benchmark and writes its files; returns the report and the table.
pub fn run(rig: &Rig, o: &BenchOptions) -> anyhow::Result<(Report, String)> {
    if o.bins == 0 {
        anyhow::bail!("--bins must be at least 1 (the number of measured bins after the warm-up)");
    }
    std::fs::create_dir_all(&o.out).with_context(|| format!("cannot create the output folder {}", o.out.display()))?;
    let files = BenchFiles::in_dir(&o.out);
    let opts = RunOptions {
        bins: Some(o.warmup + o.bins),
        report: Some(files.report.clone()),
        with_sim: rig.sim.is_some(),
        status_line: o.status_line,
        warmup_bins: o.warmup,
        keep_series: true,
        interval_log: Some(files.interval_log.clone()),
        record: None,
        control: o.control.clone(),
    };
    let cpu_at_start = CpuTimes::now();
    let report = session::run(rig, &opts)?;
    let steal = cpu_at_start.steal_percent_since();
    let title =
        format!("{} · {} backend · Δ = {} ms · {} bins after {} warm-up", rig.name, report.backend, rig.timing.bin_ms, o.bins, o.warmup);
    let table = table(&report, &title);
    std::fs::write(&files.table, &table).with_context(|| format!("cannot write {}", files.table.display()))?;
    plot::distribution(&files.distribution_svg, &format!("latency distribution — {title}"), &report.quantile_curves)?;
    plot::over_time(&files.over_time_svg, &format!("latency over time — {title}"), &report.series, rig.timing.bin_ms * 1e-3, o.warmup)?;
    if o.baselines.is_empty() {
        return Ok((report, table));
    }
    let mut results = Vec::new();
    for &kind in &o.baselines {
        if o.status_line {
            eprintln!("[bench] baseline: {} ({} bins after {} warm-up)", kind.describe(), o.bins, o.warmup);
        }
        let bo = BaselineOptions { bins: o.bins, warmup: o.warmup, python: &o.python, out: &o.out, status_line: o.status_line };
        results.push(baseline::run(rig, kind, &bo)?);
    }
    let cmp = Comparison::new(rig, o, LoopSummary::of_neuroloop(&report, steal), results);
    std::fs::write(&files.baselines, serde_json::to_string_pretty(&cmp)?)
        .with_context(|| format!("cannot write {}", files.baselines.display()))?;
    let table = format!("{table}\n{}", cmp.table());
    std::fs::write(&files.table, &table).with_context(|| format!("cannot write {}", files.table.display()))?;
    Ok((report, table))
}

/// The per-stage table (µs) and the counters, as Markdown.
pub fn table(r: &Report, title: &str) -> String {
    let mut s =
        format!("### {title}\n\n| stage | count | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for stage in STAGES {
        let p = stage_percentiles(r, stage);
        let cell = |v: f64| format!("{v:.0}");
        match p {
            Some(p) => {
                s += &format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    stage.describe(),
                    p.count,
                    cell(p.p50),
                    cell(p.p90),
                    cell(p.p99),
                    cell(p.p999),
                    cell(p.max)
                )
            }
            None => s += &format!("| {} | 0 | – | – | – | – | – |\n", stage.describe()),
        }
    }
    s += &format!(
        "\nbins {} (warm-up {} excluded from the latencies) · control samples {} · deadline misses {} · fallbacks {} · \
         gap bins {} · late spikes {} of {} · ring overflows {} · ingest-lag samples dropped {} · \
         spikes that arrived before their timestamp {}\n",
        r.bins,
        r.warmup_bins,
        r.control_samples,
        r.deadline_misses,
        r.fallbacks,
        r.gap_bins,
        r.late_spikes,
        r.ingest.spikes,
        r.ring_overflows,
        r.ingest_lag_dropped,
        r.ingest_lag_early
    );
    s
}

/// A stage's percentiles as the report holds them (None when it was not measured).
pub fn stage_percentiles(r: &Report, stage: Stage) -> Option<Percentiles> {
    match stage {
        Stage::IngestLag => r.ingest_lag_us.clone(),
        Stage::Compute => Some(r.compute_us.clone()).filter(|p| p.count > 0),
        Stage::DoneToPush => r.done_to_push_us.clone(),
        Stage::CloseToPush => Some(r.close_to_push_us.clone()).filter(|p| p.count > 0),
        Stage::EndToEnd => r.end_to_end_us.clone(),
    }
}

/// One line saying what machine a number came from: CPU model, logical CPUs, OS.
pub fn machine_summary() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cpu}, {n} logical CPUs, {} {}", std::env::consts::OS, std::env::consts::ARCH)
}

/// The machine's CPU time counters (/proc/stat): steal, and all of it. On a shared VM the
/// host's steal explains a run's tail, so every loop in a comparison reports its own.
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes(f64, f64);

impl CpuTimes {
    pub fn now() -> CpuTimes {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<f64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        CpuTimes(fields.get(7).copied().unwrap_or(0.0), fields.iter().sum())
    }

    /// Steal as a percentage of all CPU time since `self` (0 where it is not reported).
    pub fn steal_percent_since(self) -> f64 {
        let now = CpuTimes::now();
        let total = now.1 - self.1;
        if total > 0.0 {
            100.0 * (now.0 - self.0) / total
        } else {
            0.0
        }
    }
}
