//! `neuroloop filters`: how well the latent can be recovered from a recorded simulated
//! session, filter by filter, on the same bins — the live loop's estimate (its Status
//! stream) against the EKF and against a bootstrap particle filter with many particles
//! that knows the simulator's true model and task (a near-optimal reference).
//!
//! It separates two causes of a low live R²:
//! - the **model or the filter** (the EKF far below the reference on the same counts), or
//! - the **population** (even the reference is low: at this Δ, N and rate the spikes do not
//!   pin the latent down), or
//! - the **live loop** (the live R² below the offline EKF's: late spikes dropped, the
//!   online embedding update moving θ away from the truth).
//!
//! Scored per filter: R² (1 − SSE/SST against the truth, pooled over dimensions, as the
//! live report's `latent_r2`), R² after the best affine map, RMSE and the mean error per
//! dimension (bias), over all bins and split open / closed loop (the closed loop holds the
//! latent near its target, so its truth varies less and the same error costs more R²).

use crate::fit::data::{self, FileData, TaskSource};
use crate::model::filter::{FilterChoice, LatentFilter};
use crate::model::particle::ParticleConfig;
use crate::model::{ModelParams, Theta};
use crate::replay::streams_of;
use crate::rig::Rig;
use crate::telemetry::{affine_r2, r_squared};
use anyhow::{bail, Context};
use nalgebra::DVector;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// The most particles a reference may have (the rig's own limit).
const MAX_PARTICLES: usize = 1 << 20;

pub struct FiltersOptions {
    pub files: Vec<PathBuf>,
    /// Particle counts of the references, one run each.
    pub particles: Vec<usize>,
    /// Philox seed of the references' process noise and resampling.
    pub seed: u64,
    /// Bins left out of the scores at the start of each file (the filters' transient).
    pub skip_bins: usize,
    /// Score at most this many bins per file (after the skipped ones).
    pub max_bins: Option<usize>,
    pub progress: bool,
}

impl FiltersOptions {
    /// `particles`: comma-separated counts ("1024,8192"; "" or "none": no reference).
    pub fn parse_particles(text: &str) -> anyhow::Result<Vec<usize>> {
        let t = text.trim();
        if t.is_empty() || t == "none" {
            return Ok(Vec::new());
        }
        t.split(',')
            .map(|s| {
                let s = s.trim();
                match s.parse::<usize>() {
                    Ok(p) if (1..=MAX_PARTICLES).contains(&p) => Ok(p),
                    _ => bail!("--particles: '{s}' is not a particle count between 1 and {MAX_PARTICLES} (e.g. --particles 1024,8192)"),
                }
            })
            .collect()
    }
}

/// One estimate's scores on one set of bins.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub bins: usize,
    pub r2: Option<f64>,
    pub r2_affine: Option<f64>,
    pub rmse: f64,
    /// Mean of estimate − truth, per dimension.
    pub bias: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FilterScore {
    /// "live", "EKF", "particles 8192".
    pub filter: String,
    /// Which model and θ the filter ran with.
    pub model: String,
    pub all: Score,
    pub open_loop: Option<Score>,
    pub closed_loop: Option<Score>,
    /// Offline compute per bin (µs; None for the live estimate).
    pub us_per_bin: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileScores {
    pub file: PathBuf,
    pub bin_ms: f64,
    pub n_units: usize,
    pub latent: usize,
    /// Bins scored (truth, a live estimate and counts present, past the skipped ones).
    pub bins: usize,
    pub spikes_per_bin: f64,
    /// The truth's standard deviation per dimension over the scored bins, all and closed loop.
    pub truth_std: Vec<f64>,
    pub truth_std_closed_loop: Vec<f64>,
    pub filters: Vec<FilterScore>,
}

/// The bins of one file that are scored, with what every filter is compared against.
struct Scored {
    /// Bin index per scored row.
    bins: Vec<usize>,
    /// Closed loop (the controller's gate on) per scored row.
    closed: Vec<bool>,
    truth: Vec<Vec<f64>>,
}

fn score(est: &[Vec<f64>], truth: &[Vec<f64>], pick: impl Fn(usize) -> bool) -> Option<Score> {
    let rows: Vec<usize> = (0..est.len()).filter(|&i| pick(i)).collect();
    if rows.len() < 10 {
        return None;
    }
    let d = truth[0].len();
    let mut sse = 0.0;
    let mut bias = vec![0.0; d];
    for &i in &rows {
        for j in 0..d {
            let e = est[i][j] - truth[i][j];
            sse += e * e;
            bias[j] += e / rows.len() as f64;
        }
    }
    let pairs: Vec<(Vec<f64>, Vec<f64>)> = rows.iter().map(|&i| (est[i].clone(), truth[i].clone())).collect();
    Some(Score {
        bins: rows.len(),
        r2: r_squared(rows.iter().map(|&i| (&est[i][..], &truth[i][..]))),
        r2_affine: affine_r2(&pairs),
        rmse: (sse / (rows.len() * d) as f64).sqrt(),
        bias,
    })
}

fn std_per_dim(rows: &[&Vec<f64>]) -> Vec<f64> {
    let Some(first) = rows.first() else { return Vec::new() };
    let n = rows.len() as f64;
    (0..first.len())
        .map(|j| {
            let mean = rows.iter().map(|r| r[j]).sum::<f64>() / n;
            (rows.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / n).sqrt()
        })
        .collect()
}

/// Runs `choice` over every bin of `f` as the live loop does (predict with the command
/// emitted for the previous bin, update with the bin's counts unless it had no data) and
/// returns its estimate at the scored bins, with the compute per bin (µs).
fn run_filter(
    f: &FileData,
    p: &ModelParams,
    choice: &FilterChoice,
    theta_of: &dyn Fn(usize) -> usize,
    thetas: &[Theta],
    scored: &Scored,
    status: &mut dyn FnMut(usize),
) -> (Vec<Vec<f64>>, f64) {
    let (n, m) = (p.dims.n_units, p.dims.control);
    let mut filter = LatentFilter::new(choice, p);
    let mut u_prev = DVector::zeros(m);
    let last = scored.bins.last().copied().unwrap_or(0);
    let mut out = Vec::with_capacity(scored.bins.len());
    let mut next = 0;
    let started = Instant::now();
    for k in 0..=last {
        let theta = &thetas[theta_of(k)];
        filter.predict(p, theta, &u_prev, k as u64);
        if f.has_data[k] {
            filter.update(p, theta, &u_prev, &f.counts[k * n..(k + 1) * n], k as u64);
        } else {
            filter.skip_update();
        }
        if next < scored.bins.len() && scored.bins[next] == k {
            out.push(filter.x().as_slice().to_vec());
            next += 1;
        }
        u_prev.as_mut_slice().copy_from_slice(&f.inputs[k * m..(k + 1) * m]);
        if k % 1000 == 0 {
            status(k);
        }
    }
    (out, started.elapsed().as_secs_f64() * 1e6 / (last + 1) as f64)
}

fn filter_score(filter: String, model: String, est: &[Vec<f64>], s: &Scored, us_per_bin: Option<f64>) -> FilterScore {
    FilterScore {
        filter,
        model,
        all: score(est, &s.truth, |_| true).expect("at least 10 scored bins (checked)"),
        open_loop: score(est, &s.truth, |i| !s.closed[i]),
        closed_loop: score(est, &s.truth, |i| s.closed[i]),
        us_per_bin,
    }
}

/// Scores every file. Needs recordings of a simulated session (`neuroloop run --record` of a
/// rig with a `[sim]` section): the truth and the live estimate are in them.
pub fn run(rig: &Rig, opts: &FiltersOptions) -> anyhow::Result<Vec<FileScores>> {
    let Some(sim_cfg) = &rig.sim else {
        bail!(
            "rig file {}: has no [sim] section: `neuroloop filters` scores filters against the simulator's true latent, so it needs the rig a simulated session ran with",
            rig.path.display()
        );
    };
    let bin_s = rig.timing.bin_ms * 1e-3;
    let (rig_model, rig_model_name) = crate::session::load_model(rig)?;
    let truth_model = crate::sim::truth_model(sim_cfg, bin_s);
    let rig_theta = vec![rig_model.theta_at(&rig_model.z_init)];
    let true_thetas: Vec<Theta> = truth_model.task_library.iter().map(|z| truth_model.theta_at(z)).collect();
    if true_thetas.is_empty() {
        bail!("rig file {}: [sim] tasks = 0: the simulator has no task library to take the true θ from", rig.path.display());
    }
    let data = data::load(&opts.files, rig, TaskSource::File, 0.0)?;
    for notice in &data.notices {
        eprintln!("[neuroloop] {notice}");
    }
    let mut out = Vec::new();
    for f in &data.files {
        let Some(truth) = &f.truth else {
            bail!(
                "{}: has no NeuroloopSimTruth stream: record the simulated session with `neuroloop run --rig {} --record FILE.xdf`",
                f.path.display(),
                rig.path.display()
            );
        };
        let d = truth.latent;
        if d != truth_model.dims.latent || rig_model.dims.latent != d {
            bail!(
                "{}: the truth has d = {d} latent dimensions, the rig's model {} and its simulator {}: score with the rig the session ran with",
                f.path.display(),
                rig_model.dims.latent,
                truth_model.dims.latent
            );
        }
        let (live, enabled) = live_estimate(f, d)?;
        let mut scored = Scored { bins: Vec::new(), closed: Vec::new(), truth: Vec::new() };
        let mut live_rows = Vec::new();
        for k in opts.skip_bins..f.bins {
            let t = &truth.x[k * d..(k + 1) * d];
            let (Some(x), true) = (&live[k], f.has_data[k]) else { continue };
            if t.iter().any(|v| !v.is_finite()) {
                continue;
            }
            scored.bins.push(k);
            scored.closed.push(enabled[k]);
            scored.truth.push(t.to_vec());
            live_rows.push(x.clone());
            if opts.max_bins.is_some_and(|mx| scored.bins.len() >= mx) {
                break;
            }
        }
        if scored.bins.len() < 10 {
            bail!(
                "{}: only {} bins have the truth, a live estimate and counts after the first {} (--skip): record a longer session",
                f.path.display(),
                scored.bins.len(),
                opts.skip_bins
            );
        }
        let n = data.n_units;
        let spikes: f64 = scored.bins.iter().map(|&k| f.counts[k * n..(k + 1) * n].iter().sum::<f64>()).sum();
        let closed_truth: Vec<&Vec<f64>> = scored.truth.iter().zip(&scored.closed).filter(|(_, c)| **c).map(|(t, _)| t).collect();
        let all_truth: Vec<&Vec<f64>> = scored.truth.iter().collect();
        let mut filters = vec![filter_score("live".into(), "the recorded Status stream".into(), &live_rows, &scored, None)];

        let true_task = |k: usize| truth.task[k].filter(|&t| t < true_thetas.len()).unwrap_or(0);
        let mut runs: Vec<(String, String, FilterChoice, bool)> = vec![
            ("EKF".into(), format!("{rig_model_name}, θ at its z_init (no embedding update)"), FilterChoice::Ekf, false),
            ("EKF".into(), "the simulator's true model and task".into(), FilterChoice::Ekf, true),
        ];
        for &count in &opts.particles {
            let cfg = ParticleConfig { count, seed: opts.seed, ..ParticleConfig::default() };
            runs.push((format!("particles {count}"), "the simulator's true model and task".into(), FilterChoice::Particles(cfg), true));
        }
        let last = *scored.bins.last().unwrap();
        for (name, model, choice, oracle) in runs {
            let mut status = |k: usize| {
                if opts.progress {
                    eprint!("\r[neuroloop] {}: {name}, {model}: bin {k} of {}   ", f.path.display(), last + 1);
                }
            };
            let (est, us) = if oracle {
                run_filter(f, &truth_model, &choice, &true_task, &true_thetas, &scored, &mut status)
            } else {
                run_filter(f, &rig_model, &choice, &|_| 0, &rig_theta, &scored, &mut status)
            };
            if opts.progress {
                eprintln!();
            }
            filters.push(filter_score(name, model, &est, &scored, Some(us)));
        }
        out.push(FileScores {
            file: f.path.clone(),
            bin_ms: rig.timing.bin_ms,
            n_units: data.n_units,
            latent: d,
            bins: scored.bins.len(),
            spikes_per_bin: spikes / scored.bins.len() as f64,
            truth_std: std_per_dim(&all_truth),
            truth_std_closed_loop: std_per_dim(&closed_truth),
            filters,
        });
    }
    Ok(out)
}

/// Per bin: the live loop's x (None where the Status stream has none).
type LiveRows = Vec<Option<Vec<f64>>>;

/// The live loop's estimate per bin (the Status stream's x) and whether the controller's gate
/// was on (the Timing stream's `enabled`).
fn live_estimate(f: &FileData, d: usize) -> anyhow::Result<(LiveRows, Vec<bool>)> {
    let opened = crate::record::read::open(&f.path)?;
    let streams = streams_of(&opened);
    let status = streams.iter().find(|s| s.stream_type == "NeuroloopStatus").with_context(|| {
        format!("{}: has no NeuroloopStatus stream: score a `neuroloop run --record` file (it records the live estimate)", f.path.display())
    })?;
    if status.rows.channels < 1 + d {
        bail!("{}: the Status stream has {} channels, fewer than bin + x0…x{}", f.path.display(), status.rows.channels, d - 1);
    }
    let mut live = vec![None; f.bins];
    for i in 0..status.rows.len() {
        let r = status.rows.row(i);
        if r[0] >= 0.0 && (r[0] as usize) < f.bins && r[1..1 + d].iter().all(|v| v.is_finite()) {
            live[r[0] as usize] = Some(r[1..1 + d].to_vec());
        }
    }
    let mut enabled = vec![false; f.bins];
    if let Some(timing) = streams.iter().find(|s| s.stream_type == "NeuroloopTiming") {
        let col = crate::schema::TIMING_LABELS.iter().position(|l| *l == "enabled").unwrap();
        for i in 0..timing.rows.len() {
            let r = timing.rows.row(i);
            if r[0] >= 0.0 && (r[0] as usize) < f.bins {
                enabled[r[0] as usize] = r[col] == 1.0;
            }
        }
    }
    Ok((live, enabled))
}

fn opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.3}"))
}

/// The scores as a Markdown table per file.
pub fn table(scores: &[FileScores]) -> String {
    let mut s = String::new();
    for f in scores {
        let std = |v: &[f64]| v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", ");
        s += &format!(
            "{}: {} bins scored, Δ = {} ms, N = {} units, {:.2} spikes per bin; truth std per dimension {} (closed loop {})\n\n",
            f.file.display(),
            f.bins,
            f.bin_ms,
            f.n_units,
            f.spikes_per_bin,
            std(&f.truth_std),
            std(&f.truth_std_closed_loop)
        );
        s += "| filter | model | R² | R² affine | RMSE | R² open loop | R² closed loop | max |bias| | µs/bin |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n";
        for r in &f.filters {
            let bias = r.all.bias.iter().fold(0.0f64, |a, b| a.max(b.abs()));
            s += &format!(
                "| {} | {} | {} | {} | {:.3} | {} | {} | {:.3} | {} |\n",
                r.filter,
                r.model,
                opt(r.all.r2),
                opt(r.all.r2_affine),
                r.all.rmse,
                opt(r.open_loop.as_ref().and_then(|o| o.r2)),
                opt(r.closed_loop.as_ref().and_then(|o| o.r2)),
                bias,
                r.us_per_bin.map_or("–".into(), |u| format!("{u:.1}"))
            );
        }
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn particle_counts_are_parsed_and_checked() {
        assert_eq!(FiltersOptions::parse_particles("1024, 8192").unwrap(), vec![1024, 8192]);
        assert!(FiltersOptions::parse_particles("none").unwrap().is_empty());
        let e = FiltersOptions::parse_particles("1024,0").unwrap_err().to_string();
        assert!(e.contains("'0'") && e.contains("--particles"), "{e}");
        assert!(FiltersOptions::parse_particles("lots").is_err());
        assert!(FiltersOptions::parse_particles("99999999999").is_err());
    }

    #[test]
    fn a_perfect_estimate_scores_one_and_a_shifted_one_shows_its_bias() {
        let truth: Vec<Vec<f64>> = (0..50).map(|i| vec![(i as f64 * 0.3).sin(), (i as f64 * 0.2).cos()]).collect();
        let s = score(&truth, &truth, |_| true).unwrap();
        assert!((s.r2.unwrap() - 1.0).abs() < 1e-12 && s.rmse < 1e-12);
        let shifted: Vec<Vec<f64>> = truth.iter().map(|t| vec![t[0] + 0.5, t[1]]).collect();
        let s = score(&shifted, &truth, |_| true).unwrap();
        assert!(s.r2.unwrap() < 0.9, "{:?}", s.r2);
        assert!((s.r2_affine.unwrap() - 1.0).abs() < 1e-9, "an offset is undone by the affine map");
        assert!((s.bias[0] - 0.5).abs() < 1e-12 && s.bias[1].abs() < 1e-12);
        assert!(score(&truth[..9], &truth[..9], |_| true).is_none());
    }
}
