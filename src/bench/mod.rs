//! `neuroloop bench`: the latency benchmarking harness. Runs a rig's closed loop (with its
//! simulated rig when it has one) through the real ingest → bin → model → control → emit
//! path, leaves the warm-up bins out, and writes per-stage latency percentiles as a table,
//! a JSON report, an HdrHistogram interval log and two SVG plots. See bench/README.md.

pub mod plot;

use crate::latency::{Percentiles, Stage, STAGES};
use crate::rig::Rig;
use crate::session::{self, RunOptions};
use crate::telemetry::Report;
use anyhow::Context;
use std::path::{Path, PathBuf};

pub struct BenchOptions {
    /// Measured bins (after the warm-up).
    pub bins: u64,
    /// Bins run first and left out of every latency histogram.
    pub warmup: u64,
    /// Output folder (created if missing).
    pub out: PathBuf,
    pub status_line: bool,
}

/// The files one bench run writes into its output folder.
pub struct BenchFiles {
    pub report: PathBuf,
    pub interval_log: PathBuf,
    pub table: PathBuf,
    pub distribution_svg: PathBuf,
    pub over_time_svg: PathBuf,
}

impl BenchFiles {
    fn in_dir(dir: &Path) -> BenchFiles {
        BenchFiles {
            report: dir.join("report.json"),
            interval_log: dir.join("latency.hlog"),
            table: dir.join("latency.md"),
            distribution_svg: dir.join("latency-distribution.svg"),
            over_time_svg: dir.join("latency-over-time.svg"),
        }
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
    };
    let report = session::run(rig, &opts)?;
    let title = format!("{} · {} backend · Δ = {} ms · {} bins after {} warm-up", rig.name, report.backend, rig.timing.bin_ms, o.bins, o.warmup);
    let table = table(&report, &title);
    std::fs::write(&files.table, &table).with_context(|| format!("cannot write {}", files.table.display()))?;
    plot::distribution(&files.distribution_svg, &format!("latency distribution — {title}"), &report.quantile_curves)?;
    plot::over_time(&files.over_time_svg, &format!("latency over time — {title}"), &report.series, rig.timing.bin_ms * 1e-3, o.warmup)?;
    Ok((report, table))
}

/// The per-stage table (µs) and the counters, as Markdown.
pub fn table(r: &Report, title: &str) -> String {
    let mut s = format!("### {title}\n\n| stage | count | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for stage in STAGES {
        let p = stage_percentiles(r, stage);
        let cell = |v: f64| format!("{v:.0}");
        match p {
            Some(p) => s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                stage.describe(),
                p.count,
                cell(p.p50),
                cell(p.p90),
                cell(p.p99),
                cell(p.p999),
                cell(p.max)
            ),
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
