//! `neuroloop sweep`: the scaling table. Steps each backend offline (no LSL, no clock: the
//! backend alone, on counts drawn from the simulated population) over a grid of model
//! sizes, one axis at a time from the rig's own configuration, and records the per-bin
//! compute time (`Backend::step`, wall clock) in an hdrhistogram per point.
//!
//! Axes: units N, latent d, particles P (the particle filter instead of the EKF), MPPI
//! samples K. Backends: cpu, and wgpu / cuda when compiled in (a backend that cannot start
//! on this machine, e.g. CUDA without a GPU, gets a row that says why).

use crate::backend::{BinInput, BinOutput};
use crate::control::ControllerKind;
use crate::latency::{histogram, Percentiles};
use crate::rig::{BackendKind, FilterKind, ObjectiveKind, Rig};
use crate::safety::Safety;
use crate::session;
use crate::sim::{self, Population};
use anyhow::{bail, Context};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Axis {
    /// Units N.
    Units,
    /// Latent dimension d.
    Latent,
    /// Particle count P (the particle filter replaces the EKF).
    Particles,
    /// MPPI sample count K.
    Samples,
}

impl Axis {
    pub fn name(self) -> &'static str {
        match self {
            Axis::Units => "units",
            Axis::Latent => "latent",
            Axis::Particles => "particles",
            Axis::Samples => "samples",
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Axis::Units => "N",
            Axis::Latent => "d",
            Axis::Particles => "P",
            Axis::Samples => "K",
        }
    }
}

pub struct SweepOptions {
    /// Timed steps per point (after the warm-up).
    pub bins: u64,
    /// Untimed steps first (GPU pipelines compile on the first launches).
    pub warmup: u64,
    pub backends: Vec<BackendKind>,
    pub axes: Vec<(Axis, Vec<usize>)>,
    pub out: PathBuf,
    pub status_line: bool,
}

/// The default grid: N 96 … 10 000, d 2 … 32, P 256 … 4096, K 32 … 2048.
pub fn default_axes() -> Vec<(Axis, Vec<usize>)> {
    vec![
        (Axis::Units, vec![96, 384, 1024, 4096, 10_000]),
        (Axis::Latent, vec![2, 4, 8, 16, 32]),
        (Axis::Particles, vec![256, 1024, 4096]),
        (Axis::Samples, vec![32, 128, 512, 2048]),
    ]
}

/// Every backend compiled into this binary.
pub fn compiled_backends() -> Vec<BackendKind> {
    let mut v = vec![BackendKind::Cpu];
    if cfg!(feature = "wgpu") {
        v.push(BackendKind::Wgpu);
    }
    if cfg!(feature = "cuda") {
        v.push(BackendKind::Cuda);
    }
    v
}

/// One point of the grid on one backend.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    pub axis: Axis,
    pub value: usize,
    pub backend: String,
    pub n_units: usize,
    pub latent: usize,
    /// "ekf" or "particles".
    pub filter: &'static str,
    /// Particle count (0 with the EKF).
    pub particles: usize,
    /// "mppi", "lqr" or "policy".
    pub controller: String,
    /// MPPI K (0 for other controllers).
    pub mppi_samples: usize,
    pub mppi_horizon: usize,
    /// Per-bin compute (µs); None when the backend could not run this point.
    pub step_us: Option<Percentiles>,
    pub mean_us: Option<f64>,
    /// Why there is no timing (backend unavailable, failed to build, …).
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub rig: String,
    pub machine: String,
    pub bins: u64,
    pub warmup: u64,
    pub rows: Vec<SweepRow>,
}

/// The rig as it would be at one grid point: the base rig with one axis changed.
fn rig_at(base: &Rig, axis: Axis, value: usize) -> anyhow::Result<Rig> {
    let mut rig = base.clone();
    let sim = rig.sim.as_mut().context("the sweep draws its counts from the simulated population: the rig needs a [sim] section")?;
    match axis {
        Axis::Units => sim.n_units = value,
        Axis::Latent => sim.latent_dim = value,
        Axis::Particles => {
            rig.model.filter = FilterKind::Particles;
            rig.model.particles.count = value;
        }
        Axis::Samples => {
            rig.controller.kind = ControllerKind::Mppi;
            rig.controller.samples = value;
        }
    }
    if value == 0 {
        bail!("sweep: {} = 0 is not a model size", axis.name());
    }
    // The objective follows the model's size: a latent target keeps its first d values
    // (zero-padded), a rate target its first value for every unit.
    let d = rig.sim.as_ref().map(|s| s.latent_dim).unwrap_or(0);
    if let Some(o) = &mut rig.objective {
        match o.kind {
            ObjectiveKind::Latent => o.target.resize(d, 0.0),
            ObjectiveKind::Rates => o.target.truncate(1),
        }
    }
    rig.model.path = None;
    Ok(rig)
}

fn step_times(rig: &Rig, bins: u64, warmup: u64) -> anyhow::Result<(Percentiles, f64)> {
    let sim_cfg = rig.sim.as_ref().expect("rig_at keeps [sim]");
    let truth = sim::truth_model(sim_cfg, rig.timing.bin_ms * 1e-3);
    let dims = truth.dims;
    let mut pop = Population::new(truth.clone(), sim_cfg.seed);
    let mut backend = session::backend(rig, truth)?;
    let mut out = BinOutput::new(&dims);
    let mut counts = vec![0.0; dims.n_units];
    let safety = Safety::from_rig(rig, dims.control)?;
    let mut u_prev = vec![0.0; dims.control];
    let mut u_next = vec![0.0; dims.control];
    let mut h = histogram();
    let mut sum = 0.0;
    for j in 0..warmup + bins {
        pop.advance(j, &u_prev, 0);
        for (c, &k) in counts.iter_mut().zip(&pop.counts) {
            *c = k as f64;
        }
        let t = Instant::now();
        backend.step(&BinInput { bin: j, counts: &counts, u_prev: &u_prev, has_data: true, want_control: true }, &mut out);
        let us = t.elapsed().as_secs_f64() * 1e6;
        if j >= warmup {
            h.saturating_record(us.round().max(1.0) as u64);
            sum += us;
        }
        // Close the loop through the rig's safety layer, so the population sees the commands.
        safety.apply(&out.u, &u_prev, out.control_valid, &mut u_next);
        u_prev.copy_from_slice(&u_next);
    }
    Ok((Percentiles::of(&h), sum / bins as f64))
}

/// Runs the grid and writes sweep.json, sweep.md and one SVG per axis into `o.out`.
pub fn run(base: &Rig, o: &SweepOptions) -> anyhow::Result<(SweepReport, String)> {
    if o.bins == 0 {
        bail!("--bins must be at least 1 (timed steps per grid point)");
    }
    if o.backends.is_empty() {
        bail!("--backends names no backend");
    }
    std::fs::create_dir_all(&o.out).with_context(|| format!("cannot create the output folder {}", o.out.display()))?;
    let total: usize = o.axes.iter().map(|(_, v)| v.len()).sum::<usize>() * o.backends.len();
    let mut rows = Vec::new();
    let mut done = 0;
    for (axis, values) in &o.axes {
        for &value in values {
            let rig = rig_at(base, *axis, value)?;
            for &b in &o.backends {
                done += 1;
                let mut rig = rig.clone();
                rig.model.backend = b;
                let started = Instant::now();
                // A GPU runtime that cannot start panics inside cubecl: record why and go on.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step_times(&rig, o.bins, o.warmup)));
                let (step_us, mean_us, note) = match result {
                    Ok(Ok((p, mean))) => (Some(p), Some(mean), None),
                    Ok(Err(e)) => (None, None, Some(format!("{e:#}"))),
                    Err(panic) => (None, None, Some(format!("backend failed: {}", crate::panic_message(panic.as_ref())))),
                };
                if o.status_line {
                    let what = match (&step_us, &note) {
                        (Some(p), _) => format!("p50 {:.0} µs, p99 {:.0} µs", p.p50, p.p99),
                        (None, Some(n)) => format!("skipped: {}", n.lines().next().unwrap_or("")),
                        (None, None) => String::new(),
                    };
                    eprintln!(
                        "[sweep {done}/{total}] {}={value} on {}: {what} ({:.1} s)",
                        axis.symbol(),
                        b.name(),
                        started.elapsed().as_secs_f64()
                    );
                }
                let sim = rig.sim.as_ref().expect("rig_at keeps [sim]");
                let particles = rig.model.filter == FilterKind::Particles;
                let mppi = rig.controller.kind == ControllerKind::Mppi;
                rows.push(SweepRow {
                    axis: *axis,
                    value,
                    backend: b.name().into(),
                    n_units: sim.n_units,
                    latent: sim.latent_dim,
                    filter: if particles { "particles" } else { "ekf" },
                    particles: if particles { rig.model.particles.count } else { 0 },
                    controller: format!("{:?}", rig.controller.kind).to_lowercase(),
                    mppi_samples: if mppi { rig.controller.samples } else { 0 },
                    mppi_horizon: if mppi { rig.controller.horizon } else { 0 },
                    step_us,
                    mean_us,
                    note,
                });
            }
        }
    }
    let report = SweepReport { rig: base.name.clone(), machine: super::machine_summary(), bins: o.bins, warmup: o.warmup, rows };
    let md = table(&report, base);
    let json = o.out.join("sweep.json");
    crate::outfile::write_output(&json, serde_json::to_string_pretty(&report)?.as_bytes(), "sweep report")?;
    let md_path = o.out.join("sweep.md");
    crate::outfile::write_output(&md_path, md.as_bytes(), "sweep table")?;
    for (axis, _) in &o.axes {
        let lines: Vec<(String, super::plot::ScalingCurve)> = o
            .backends
            .iter()
            .map(|&b| {
                let pts = report
                    .rows
                    .iter()
                    .filter(|r| r.axis == *axis && r.backend == b.name())
                    .filter_map(|r| r.step_us.as_ref().map(|p| (r.value as f64, p.p50, p.p99)))
                    .collect();
                (b.name().to_string(), pts)
            })
            .collect();
        let path = o.out.join(format!("sweep-{}.svg", axis.name()));
        super::plot::scaling(&path, &format!("per-bin compute vs {} — {}", axis_label(*axis), base.name), &axis_label(*axis), &lines)?;
    }
    Ok((report, md))
}

fn axis_label(a: Axis) -> String {
    match a {
        Axis::Units => "units N".into(),
        Axis::Latent => "latent dimension d".into(),
        Axis::Particles => "particles P (particle filter)".into(),
        Axis::Samples => "MPPI samples K".into(),
    }
}

/// The scaling table as Markdown: one table per axis, a row per value, p50 / p99 per
/// backend, and each GPU backend's p50 as a ratio of the CPU's.
pub fn table(r: &SweepReport, base: &Rig) -> String {
    let backends: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for row in &r.rows {
            if !v.contains(&row.backend) {
                v.push(row.backend.clone());
            }
        }
        v
    };
    let sim = base.sim.as_ref();
    let mut s = format!(
        "### Per-bin compute (µs) — `Backend::step` alone, {} timed steps after {} warm-up, per point\n\n\
         Base: rig {} (N={}, d={}, {} filter, {} controller, MPPI H={} K={}); each table changes one thing.\n\
         Machine: {}\n",
        r.bins,
        r.warmup,
        base.name,
        sim.map(|s| s.n_units).unwrap_or(0),
        sim.map(|s| s.latent_dim).unwrap_or(0),
        format!("{:?}", base.model.filter).to_lowercase(),
        format!("{:?}", base.controller.kind).to_lowercase(),
        base.controller.horizon,
        base.controller.samples,
        r.machine
    );
    let mut axes: Vec<Axis> = Vec::new();
    for row in &r.rows {
        if !axes.contains(&row.axis) {
            axes.push(row.axis);
        }
    }
    let gpu: Vec<&String> = backends.iter().filter(|b| *b != "cpu").collect();
    let has_cpu = backends.iter().any(|b| b == "cpu");
    for axis in axes {
        s += &format!("\n#### {}\n\n| {} |", axis_label(axis), axis.symbol());
        for b in &backends {
            s += &format!(" {b} p50 | {b} p99 | {b} max |");
        }
        if has_cpu {
            for g in &gpu {
                s += &format!(" {g} / cpu (p50) |");
            }
        }
        s += "\n|---:|";
        s += &"---:|".repeat(3 * backends.len() + if has_cpu { gpu.len() } else { 0 });
        s += "\n";
        let mut values: Vec<usize> = Vec::new();
        for row in r.rows.iter().filter(|x| x.axis == axis) {
            if !values.contains(&row.value) {
                values.push(row.value);
            }
        }
        let mut notes = Vec::new();
        for v in values {
            let at = |b: &str| r.rows.iter().find(|x| x.axis == axis && x.value == v && x.backend == b);
            s += &format!("| {v} |");
            for b in &backends {
                match at(b).and_then(|x| x.step_us.as_ref()) {
                    Some(p) => s += &format!(" {:.0} | {:.0} | {:.0} |", p.p50, p.p99, p.max),
                    None => {
                        if let Some(n) = at(b).and_then(|x| x.note.as_ref()) {
                            notes.push(format!("{b} at {}={v}: {}", axis.symbol(), n.lines().next().unwrap_or("")));
                        }
                        s += " – | – | – |"
                    }
                }
            }
            if has_cpu {
                let cpu = at("cpu").and_then(|x| x.step_us.as_ref()).map(|p| p.p50);
                for g in &gpu {
                    match (at(g).and_then(|x| x.step_us.as_ref()).map(|p| p.p50), cpu) {
                        (Some(a), Some(c)) if c > 0.0 => s += &format!(" {:.2} |", a / c),
                        _ => s += " – |",
                    }
                }
            }
            s += "\n";
        }
        for n in notes {
            s += &format!("\n- {n}");
        }
    }
    s += "\n";
    s
}

/// Parses a comma-separated list of sizes ("96,384,1024").
pub fn parse_sizes(flag: &str, text: &str) -> anyhow::Result<Vec<usize>> {
    text.split(',')
        .map(|t| {
            let t = t.trim();
            match t.replace('_', "").parse::<usize>() {
                Ok(v) if v > 0 => Ok(v),
                _ => bail!("--{flag}: '{t}' is not a positive whole number (expected a comma-separated list such as 96,384,1024)"),
            }
        })
        .collect()
}

/// Parses `--backends cpu,wgpu,cuda`.
pub fn parse_backends(text: &str) -> anyhow::Result<Vec<BackendKind>> {
    let compiled = compiled_backends();
    text.split(',')
        .map(|t| {
            let Some(b) = BackendKind::parse(t.trim()) else {
                bail!("--backends: unknown backend '{}' (expected cpu, wgpu or cuda)", t.trim());
            };
            if !compiled.contains(&b) {
                bail!("--backends: {} is not compiled into this neuroloop (rebuild with `--features {}`)", b.name(), b.name());
            }
            Ok(b)
        })
        .collect()
}
