//! `neuroloop bench`: the latency benchmarking harness. Runs a rig's closed loop (with its
//! simulated rig when it has one) through the real ingest → bin → model → control → emit
//! path, leaves the warm-up bins out, and writes per-stage latency percentiles as a table,
//! a JSON report, an HdrHistogram interval log and two SVG plots; then runs the baselines
//! (bench/baselines/) against the same simulated rig and reports neuroloop / baseline
//! ratios. `neuroloop sweep` (sweep.rs) makes the scaling table. See bench/README.md.

pub mod baseline;
pub mod filters;
pub mod floor;
pub mod plot;
pub mod sweep;
pub mod wakeup;

use crate::latency::{histogram, quantile_curve_of, BinLatency, Percentiles, Stage, STAGES};
use crate::rig::Rig;
use crate::session::{self, RunOptions};
use crate::telemetry::Report;
use anyhow::Context;
use baseline::{BaselineKind, BaselineOptions, BaselineResult};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::path::{Path, PathBuf};

pub struct BenchOptions {
    /// Measured bins (after the warm-up), per round.
    pub bins: u64,
    /// Bins run first and left out of every latency histogram.
    pub warmup: u64,
    /// Rounds: each runs neuroloop and every baseline once, in alternating order, so that a
    /// change in the machine's load falls on all of them (at least 1).
    pub rounds: u32,
    /// Output folder (created if missing).
    pub out: PathBuf,
    pub status_line: bool,
    /// Baselines to run beside neuroloop, in the same run.
    pub baselines: Vec<BaselineKind>,
    /// Interpreter for the Python baselines (needs pylsl and numpy).
    pub python: PathBuf,
    /// Run neuroloop's session with its control plane on this address (to measure the loop
    /// with a dashboard open); None: without one.
    pub control: Option<String>,
}

/// Rounds whose CPU steal differs by at most this (percentage points) between neuroloop's
/// phase and a baseline's are compared; steal on a shared VM swamps what is measured.
pub const COMPARABLE_STEAL_PP: f64 = 2.0;

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

/// neuroloop and the baselines of one run, side by side: every round merged, and each round.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub rig: String,
    pub machine: String,
    /// Measured bins per loop per round.
    pub bins: u64,
    pub warmup_bins: u64,
    pub rounds: u32,
    /// Every round merged (histograms added, counts summed).
    pub neuroloop: LoopSummary,
    pub baselines: Vec<BaselineResult>,
    /// neuroloop / baseline, per baseline, over the rounds with comparable steal.
    pub ratios: Vec<Ratios>,
    pub per_round: Vec<Round>,
}

/// One round: what each loop measured, and the order they ran in.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// 1-based.
    pub index: u32,
    pub order: Vec<String>,
    pub neuroloop: LoopSummary,
    pub baselines: Vec<BaselineResult>,
}

/// What a loop's latencies were, kept whole so that rounds merge exactly.
#[derive(Debug, Clone)]
pub struct LoopHistograms {
    /// Bin close → loop thread awake (neuroloop only; empty for a baseline).
    pub loop_wake: Histogram<u64>,
    pub compute: Histogram<u64>,
    pub close_to_push: Histogram<u64>,
    pub end_to_end: Histogram<u64>,
}

impl Default for LoopHistograms {
    fn default() -> Self {
        LoopHistograms { loop_wake: histogram(), compute: histogram(), close_to_push: histogram(), end_to_end: histogram() }
    }
}

impl LoopHistograms {
    fn add(&mut self, other: &LoopHistograms) {
        // Same bounds on both sides (latency::histogram), so adding cannot fail.
        let _ = self.loop_wake.add(&other.loop_wake);
        let _ = self.compute.add(&other.compute);
        let _ = self.close_to_push.add(&other.close_to_push);
        let _ = self.end_to_end.add(&other.end_to_end);
    }

    /// From a session's per-bin series (after warm-up; NaN = not measured).
    fn of_series(series: &[BinLatency]) -> LoopHistograms {
        let mut h = LoopHistograms::default();
        let rec = |h: &mut Histogram<u64>, us: f32| {
            if us.is_finite() {
                h.saturating_record((us as f64).round().max(1.0) as u64);
            }
        };
        for b in series {
            rec(&mut h.loop_wake, b.loop_wake_us);
            rec(&mut h.compute, b.compute_us);
            rec(&mut h.close_to_push, b.close_to_push_us);
            rec(&mut h.end_to_end, b.end_to_end_us);
        }
        h
    }
}

/// The numbers every loop in the comparison has.
#[derive(Debug, Clone, Serialize)]
pub struct LoopSummary {
    pub name: String,
    /// Control samples the simulated rig received for measured bins.
    pub control_samples: u64,
    /// Control samples the loop pushed (warm-up included) that the rig never received.
    pub control_lost: u64,
    /// Bins a baseline skipped because it had fallen behind (no sample pushed; 0 for neuroloop).
    pub bins_skipped: u64,
    /// Measured bins whose own result came after the deadline (close + deadline):
    /// neuroloop covers them with its fallback, a baseline just pushes late.
    pub past_deadline: u64,
    /// Spikes that arrived after their bin closed.
    pub late_spikes: u64,
    /// Bin close → the loop thread awake (neuroloop only): where a late result's time went
    /// when the model itself was quick.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loop_wake_us: Option<Percentiles>,
    /// neuroloop's threads, from the kernel's accounting (the report's `threads`; merged
    /// rounds: the mean per thread name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<crate::telemetry::threads::ThreadsSummary>,
    pub compute_us: Option<Percentiles>,
    pub close_to_push_us: Option<Percentiles>,
    pub end_to_end_us: Option<Percentiles>,
    /// Merged rounds: the mean of the rounds' R².
    pub latent_r2: Option<f64>,
    /// CPU time the hypervisor stole while this loop ran (% of all CPU time; merged rounds:
    /// the mean).
    pub cpu_steal_percent: f64,
    #[serde(skip)]
    pub histograms: LoopHistograms,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub baseline: BaselineKind,
    /// The rounds the ratios are over (1-based): those whose steal differed by at most
    /// COMPARABLE_STEAL_PP between the two loops, or every round when none did
    /// (`steal_matched` false).
    pub rounds: Vec<u32>,
    pub steal_matched: bool,
    /// Past-deadline bins in those rounds: neuroloop's (covered by its fallback) and the
    /// baseline's (pushed late).
    pub neuroloop_past_deadline: u64,
    pub baseline_past_deadline: u64,
    pub end_to_end_p50: Option<f64>,
    pub end_to_end_p99: Option<f64>,
    pub end_to_end_p999: Option<f64>,
    pub close_to_push_p50: Option<f64>,
    pub close_to_push_p99: Option<f64>,
    pub compute_p50: Option<f64>,
}

fn some_percentiles(h: &Histogram<u64>) -> Option<Percentiles> {
    (!h.is_empty()).then(|| Percentiles::of(h))
}

impl LoopSummary {
    fn of_neuroloop(r: &Report, cpu_steal_percent: f64) -> LoopSummary {
        LoopSummary {
            name: format!("neuroloop ({})", r.backend),
            control_samples: r.end_to_end_us.as_ref().map_or(0, |p| p.count),
            control_lost: r.rig_control.map_or(0, |c| c.lost),
            bins_skipped: 0,
            past_deadline: r.measured_deadline_misses,
            late_spikes: r.late_spikes,
            loop_wake_us: stage_percentiles(r, Stage::LoopWake),
            threads: r.threads.clone(),
            compute_us: stage_percentiles(r, Stage::Compute),
            close_to_push_us: stage_percentiles(r, Stage::CloseToPush),
            end_to_end_us: r.end_to_end_us.clone(),
            latent_r2: r.latent_r2,
            cpu_steal_percent,
            histograms: LoopHistograms::of_series(&r.series),
        }
    }

    /// Several rounds of one loop as one: histograms added, counts summed; R² and steal the
    /// rounds' mean.
    pub fn merged<'a>(parts: impl IntoIterator<Item = &'a LoopSummary>) -> Option<LoopSummary> {
        let parts: Vec<&LoopSummary> = parts.into_iter().collect();
        let first = parts.first()?;
        if parts.len() == 1 {
            // As measured (a session's own percentiles, not re-derived from its series).
            return Some((*first).clone());
        }
        let mut h = LoopHistograms::default();
        for p in &parts {
            h.add(&p.histograms);
        }
        let n = parts.len() as f64;
        let r2: Vec<f64> = parts.iter().filter_map(|p| p.latent_r2).collect();
        Some(LoopSummary {
            name: first.name.clone(),
            control_samples: parts.iter().map(|p| p.control_samples).sum(),
            control_lost: parts.iter().map(|p| p.control_lost).sum(),
            bins_skipped: parts.iter().map(|p| p.bins_skipped).sum(),
            past_deadline: parts.iter().map(|p| p.past_deadline).sum(),
            late_spikes: parts.iter().map(|p| p.late_spikes).sum(),
            loop_wake_us: some_percentiles(&h.loop_wake),
            threads: crate::telemetry::threads::ThreadsSummary::mean_of(parts.iter().filter_map(|p| p.threads.as_ref())),
            compute_us: some_percentiles(&h.compute),
            close_to_push_us: some_percentiles(&h.close_to_push),
            end_to_end_us: some_percentiles(&h.end_to_end),
            latent_r2: (!r2.is_empty()).then(|| r2.iter().sum::<f64>() / r2.len() as f64),
            cpu_steal_percent: parts.iter().map(|p| p.cpu_steal_percent).sum::<f64>() / n,
            histograms: h,
        })
    }
}

fn ratio(a: &Option<Percentiles>, b: &Option<Percentiles>, pick: fn(&Percentiles) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if pick(b) > 0.0 => Some(pick(a) / pick(b)),
        _ => None,
    }
}

impl Comparison {
    fn new(rig: &Rig, o: &BenchOptions, rounds: Vec<Round>) -> Comparison {
        let neuroloop = LoopSummary::merged(rounds.iter().map(|r| &r.neuroloop)).expect("at least one round");
        let mut baselines = Vec::new();
        let mut ratios = Vec::new();
        for &kind in &o.baselines {
            let of_kind = |r: &'_ Round| r.baselines.iter().find(|b| b.kind == kind).cloned();
            let all: Vec<BaselineResult> = rounds.iter().filter_map(of_kind).collect();
            let Some(summary) = LoopSummary::merged(all.iter().map(|b| &b.summary)) else { continue };
            baselines.push(BaselineResult {
                kind,
                bins: all.iter().map(|b| b.bins).sum(),
                warmup_bins: all.iter().map(|b| b.warmup_bins).sum(),
                bins_processed: all.iter().map(|b| b.bins_processed).sum(),
                summary,
            });
            let comparable: Vec<&Round> = rounds
                .iter()
                .filter(|r| {
                    of_kind(r).is_some_and(|b| (b.summary.cpu_steal_percent - r.neuroloop.cpu_steal_percent).abs() <= COMPARABLE_STEAL_PP)
                })
                .collect();
            let steal_matched = !comparable.is_empty();
            let used: Vec<&Round> = if steal_matched { comparable } else { rounds.iter().filter(|r| of_kind(r).is_some()).collect() };
            let nl = LoopSummary::merged(used.iter().map(|r| &r.neuroloop)).expect("rounds");
            let bl_parts: Vec<BaselineResult> = used.iter().filter_map(|r| of_kind(r)).collect();
            let bl = LoopSummary::merged(bl_parts.iter().map(|b| &b.summary)).expect("rounds");
            ratios.push(Ratios {
                baseline: kind,
                rounds: used.iter().map(|r| r.index).collect(),
                steal_matched,
                neuroloop_past_deadline: nl.past_deadline,
                baseline_past_deadline: bl.past_deadline,
                end_to_end_p50: ratio(&nl.end_to_end_us, &bl.end_to_end_us, |p| p.p50),
                end_to_end_p99: ratio(&nl.end_to_end_us, &bl.end_to_end_us, |p| p.p99),
                end_to_end_p999: ratio(&nl.end_to_end_us, &bl.end_to_end_us, |p| p.p999),
                close_to_push_p50: ratio(&nl.close_to_push_us, &bl.close_to_push_us, |p| p.p50),
                close_to_push_p99: ratio(&nl.close_to_push_us, &bl.close_to_push_us, |p| p.p99),
                compute_p50: ratio(&nl.compute_us, &bl.compute_us, |p| p.p50),
            });
        }
        Comparison {
            rig: rig.name.clone(),
            machine: machine_summary(),
            bins: o.bins,
            warmup_bins: o.warmup,
            rounds: rounds.len() as u32,
            neuroloop,
            baselines,
            ratios,
            per_round: rounds,
        }
    }

    /// The side-by-side table, the ratios and (with several rounds) each round, as Markdown.
    pub fn table(&self) -> String {
        let rounds = if self.rounds > 1 { format!(", {} interleaved rounds merged", self.rounds) } else { String::new() };
        let mut s = format!(
            "### neuroloop and the baselines — same rig, same machine, same run ({} bins after {} warm-up per loop per round{rounds})\n\n\
             | loop | control samples | lost | bins skipped | past deadline | late spikes | bin close → model done p50 / p99 / p99.9 µs | \
             bin close → pushed p50 / p99 / p99.9 µs | end to end p50 / p99 / p99.9 / max µs | latent R² | CPU steal |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.bins, self.warmup_bins
        );
        let pq = |p: &Option<Percentiles>, f: &[fn(&Percentiles) -> f64]| match p {
            Some(p) => f.iter().map(|g| format!("{:.0}", g(p))).collect::<Vec<_>>().join(" / "),
            None => "–".into(),
        };
        for l in std::iter::once(&self.neuroloop).chain(self.baselines.iter().map(|b| &b.summary)) {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} % |\n",
                l.name,
                l.control_samples,
                l.control_lost,
                l.bins_skipped,
                l.past_deadline,
                l.late_spikes,
                pq(&l.compute_us, &[|p| p.p50, |p| p.p99, |p| p.p999]),
                pq(&l.close_to_push_us, &[|p| p.p50, |p| p.p99, |p| p.p999]),
                pq(&l.end_to_end_us, &[|p| p.p50, |p| p.p99, |p| p.p999, |p| p.max]),
                l.latent_r2.map_or("–".into(), |r| format!("{r:.3}")),
                l.cpu_steal_percent,
            );
        }
        if let Some(w) = &self.neuroloop.loop_wake_us {
            s += &format!(
                "\nneuroloop's loop thread woke {:.0} / {:.0} / {:.0} / {:.0} µs (p50 / p99 / p99.9 / max) after the bin's close; \
                 bin close → model done includes it. A bin whose result is not done by its deadline is a miss the emitter covers.\n",
                w.p50, w.p99, w.p999, w.max
            );
        }
        if let Some(t) = &self.neuroloop.threads {
            s += "\nneuroloop's threads while the loop ran, from the kernel's accounting (/proc schedstat; liblsl's threads carry \
                  the name of the thread that made them; rounds: the mean). A large run-queue wait is a thread that woke and \
                  found its CPU taken.\n\n";
            s += &t.markdown_table();
        }
        if !self.ratios.is_empty() {
            s += &format!(
                "\nneuroloop / baseline (below 1: neuroloop is faster), over the rounds whose CPU steal differed by ≤ {COMPARABLE_STEAL_PP} points\n\n\
                 | baseline | rounds | past deadline neuroloop / baseline | end to end p50 | p99 | p99.9 | close → pushed p50 | p99 | close → model done p50 |\n\
                 |---|---|---:|---:|---:|---:|---:|---:|---:|\n"
            );
            let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}"));
            for r in &self.ratios {
                let rounds = r.rounds.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
                let rounds = if r.steal_matched { rounds } else { format!("{rounds} (none matched: all)") };
                s += &format!(
                    "| {} | {} | {} / {} | {} | {} | {} | {} | {} | {} |\n",
                    r.baseline.describe(),
                    rounds,
                    r.neuroloop_past_deadline,
                    r.baseline_past_deadline,
                    f(r.end_to_end_p50),
                    f(r.end_to_end_p99),
                    f(r.end_to_end_p999),
                    f(r.close_to_push_p50),
                    f(r.close_to_push_p99),
                    f(r.compute_p50)
                );
            }
        }
        if self.rounds > 1 {
            s +=
                "\nround by round\n\n| round | loop | CPU steal | past deadline | lost | bin close → pushed p99 µs | end to end p99 µs |\n\
                  |---:|---|---:|---:|---:|---:|---:|\n";
            for r in &self.per_round {
                for l in std::iter::once(&r.neuroloop).chain(r.baselines.iter().map(|b| &b.summary)) {
                    let p99 = |p: &Option<Percentiles>| p.as_ref().map_or("–".into(), |p| format!("{:.0}", p.p99));
                    s += &format!(
                        "| {} | {} | {:.1} % | {} | {} | {} | {} |\n",
                        r.index,
                        l.name,
                        l.cpu_steal_percent,
                        l.past_deadline,
                        l.control_lost,
                        p99(&l.close_to_push_us),
                        p99(&l.end_to_end_us)
                    );
                }
            }
            s += &format!(
                "\n(order within a round alternates: odd rounds {}, even rounds the reverse)\n",
                self.per_round[0].order.join(" → ")
            );
        }
        s
    }
}

/// neuroloop's session for one round, with its files in `dir`.
fn run_neuroloop(rig: &Rig, o: &BenchOptions, dir: &Path) -> anyhow::Result<(Report, LoopSummary, String)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the output folder {}", dir.display()))?;
    let files = BenchFiles::in_dir(dir);
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
    crate::outfile::write_output(&files.table, table.as_bytes(), "table")?;
    plot::distribution(&files.distribution_svg, &format!("latency distribution — {title}"), &report.quantile_curves)?;
    plot::over_time(&files.over_time_svg, &format!("latency over time — {title}"), &report.series, rig.timing.bin_ms * 1e-3, o.warmup)?;
    let summary = LoopSummary::of_neuroloop(&report, steal);
    Ok((report, summary, table))
}

/// Runs the benchmark and writes its files; returns neuroloop's last report and the table.
pub fn run(rig: &Rig, o: &BenchOptions) -> anyhow::Result<(Report, String)> {
    if o.bins == 0 {
        anyhow::bail!("--bins must be at least 1 (the number of measured bins after the warm-up)");
    }
    if o.rounds == 0 || o.rounds > 1000 {
        anyhow::bail!("--rounds {}: expected 1 to 1000 rounds", o.rounds);
    }
    std::fs::create_dir_all(&o.out).with_context(|| format!("cannot create the output folder {}", o.out.display()))?;
    let files = BenchFiles::in_dir(&o.out);
    // The loops of a round; odd rounds run them in reverse, so neither side always runs
    // first (or right after the other on a warm machine).
    let loops: Vec<Option<BaselineKind>> = std::iter::once(None).chain(o.baselines.iter().map(|&k| Some(k))).collect();
    let name_of = |l: &Option<BaselineKind>| l.map_or("neuroloop", |k| k.name()).to_string();
    let mut rounds = Vec::new();
    let mut last = None;
    for index in 1..=o.rounds {
        let dir = if o.rounds > 1 { o.out.join(format!("round-{index:02}")) } else { o.out.clone() };
        // Before any loop of the round: in even rounds a baseline runs first and writes here.
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create the output folder {}", dir.display()))?;
        let mut order = loops.clone();
        if index % 2 == 0 {
            order.reverse();
        }
        let mut neuroloop = None;
        let mut baselines = Vec::new();
        for l in &order {
            match l {
                None => {
                    if o.status_line && o.rounds > 1 {
                        eprintln!("[bench] round {index}/{}: neuroloop ({} bins after {} warm-up)", o.rounds, o.bins, o.warmup);
                    }
                    neuroloop = Some(run_neuroloop(rig, o, &dir)?);
                }
                Some(kind) => {
                    if o.status_line {
                        eprintln!(
                            "[bench] round {index}/{}: baseline {} ({} bins after {} warm-up)",
                            o.rounds,
                            kind.describe(),
                            o.bins,
                            o.warmup
                        );
                    }
                    let bo = BaselineOptions { bins: o.bins, warmup: o.warmup, python: &o.python, out: &dir, status_line: o.status_line };
                    baselines.push(baseline::run(rig, *kind, &bo)?);
                }
            }
        }
        let (report, summary, table) = neuroloop.expect("neuroloop runs every round");
        baselines.sort_by_key(|b| o.baselines.iter().position(|&k| k == b.kind));
        rounds.push(Round { index, order: order.iter().map(name_of).collect(), neuroloop: summary, baselines });
        last = Some((report, table));
    }
    let (report, table) = last.expect("at least one round");
    if o.baselines.is_empty() && o.rounds == 1 {
        return Ok((report, table));
    }
    let cmp = Comparison::new(rig, o, rounds);
    crate::outfile::write_output(&files.baselines, serde_json::to_string_pretty(&cmp)?.as_bytes(), "baseline comparison")?;
    let table = if o.rounds > 1 {
        let title = format!(
            "{} · {} backend · Δ = {} ms · {} rounds × {} bins after {} warm-up",
            rig.name, report.backend, rig.timing.bin_ms, o.rounds, o.bins, o.warmup
        );
        let h = &cmp.neuroloop.histograms;
        let curves: Vec<(Stage, Vec<(f64, f64)>)> =
            [(Stage::Compute, &h.compute), (Stage::CloseToPush, &h.close_to_push), (Stage::EndToEnd, &h.end_to_end)]
                .into_iter()
                .map(|(st, h)| (st, quantile_curve_of(h)))
                .collect();
        plot::distribution(&files.distribution_svg, &format!("latency distribution — {title}"), &curves)?;
        format!("### {title}\n\nEach round's own tables and plots are in round-NN/.\n\n{}", cmp.table())
    } else {
        format!("{table}\n{}", cmp.table())
    };
    crate::outfile::write_output(&files.table, table.as_bytes(), "table")?;
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
        Stage::LoopWake => r.loop_wake_us.clone(),
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
