//! `neuroloop fit` end to end: read, fit, evaluate, write the model file (with its
//! provenance), the JSON report and the training-curve SVG, and print a summary.

use super::data::{self, FitData, TaskSource};
use super::eval::{self, Evaluation, TaskIdentification};
use super::{FitOptions, IterationRecord};
use crate::rig::Rig;
use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize)]
pub struct InputFile {
    pub path: String,
    pub sha256: String,
    pub kind: String,
    pub bins: usize,
    pub training_bins: usize,
    pub heldout_bins: usize,
    pub bytes_used: u64,
    pub bytes_total: u64,
    /// Bins left out because their counts or command were in a damaged part of the file.
    pub lost_bins: usize,
    /// What the reader skipped (null: the whole file was read).
    pub damage: Option<crate::record::read::Damage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskEmbedding {
    pub label: String,
    pub z: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub neuroloop_version: String,
    pub model: String,
    pub rig: String,
    pub inputs: Vec<InputFile>,
    pub tasks_from: String,
    pub dims: FitDims,
    pub seed: u64,
    pub iterations: Vec<IterationRecord>,
    pub final_objective: Option<f64>,
    /// The fit stopped early (non-finite objective): why. The model holds the last good parameters.
    pub diverged: Option<String>,
    pub alpha: f64,
    pub process_noise: Vec<f64>,
    pub heldout: Evaluation,
    /// The model against the baselines on the same held-out bins and units (crate::eval).
    pub comparison: crate::eval::Comparison,
    /// `comparison`'s chart (SVG), beside the report.
    pub comparison_plot: Option<String>,
    /// `heldout.bits_per_spike`, the headline number (null, with `heldout.unscored` saying
    /// why, when there is nothing to score).
    pub heldout_bits_per_spike: Option<f64>,
    pub heldout_predictive_bits_per_spike: Option<f64>,
    /// Co-smoothing bits/spike (NLB): the held-out units predicted from the others' latents.
    pub heldout_co_bits_per_spike: Option<f64>,
    /// The simulator's true model on the same held-out bins (recordings of the simulated rig).
    pub true_model_heldout: Option<Evaluation>,
    pub true_model_heldout_bits_per_spike: Option<f64>,
    pub true_model_heldout_predictive_bits_per_spike: Option<f64>,
    /// Filtered latent of the fitted model vs the simulator's truth, after the best affine map.
    pub latent_r2: Option<f64>,
    pub embeddings: Vec<TaskEmbedding>,
    /// ‖z_a − z_b‖ between the fitted task embeddings.
    pub embedding_distances: Vec<Vec<f64>>,
    pub task_identification: Option<TaskIdentification>,
    /// Model selection (`--latent 2,4,8` …): every candidate's held-out scores and the
    /// choice (null: one model was fitted).
    pub selection: Option<super::select::Selection>,
    pub elapsed_s: f64,
    pub peak_memory_bytes: Option<u64>,
    pub training_curve: Option<String>,
    pub notices: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FitDims {
    pub n_units: usize,
    pub latent: usize,
    pub embed: usize,
    pub control: usize,
    pub hidden: usize,
    pub tasks: usize,
}

/// The process's peak resident memory (VmHWM), where /proc says.
pub fn peak_memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Where the training curve goes: beside the report, else beside the model.
fn curve_path(opts: &FitOptions) -> PathBuf {
    match &opts.report {
        Some(r) => r.with_extension("svg"),
        None => opts.out.with_extension("training.svg"),
    }
}

/// Where the model-vs-baselines chart goes: beside the report, else beside the model.
fn comparison_path(opts: &FitOptions) -> PathBuf {
    match &opts.report {
        Some(r) => r.with_extension("scores.svg"),
        None => opts.out.with_extension("scores.svg"),
    }
}

fn training_bins(data: &FitData, fi: usize) -> usize {
    let f = &data.files[fi];
    (0..f.bins).filter(|&k| !f.heldout[k] && f.task[k].is_some()).count()
}

/// Run a whole fit as the CLI does. Errors name the file and what to do.
pub fn run(opts: &FitOptions, rig: &Rig) -> anyhow::Result<FitReport> {
    opts.validate()?;
    if let Some(path) = &opts.report {
        crate::ensure_writable(path, "fit report")?;
    }
    // The model file is written only by a fit that succeeds (whole, through a temporary
    // file): that it can be written is checked now, not after the fit.
    crate::ensure_writable(&opts.out, "model")?;
    let started = std::time::Instant::now();
    let data = data::load(&opts.files, rig, opts.tasks, opts.heldout)?;
    for n in &data.notices {
        eprintln!("[neuroloop] fit: {n}");
    }
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(opts.iterations as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "[neuroloop] fit {bar:30} {pos}/{len} EM iterations, {elapsed} elapsed, ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let choices = opts.choices.clone().unwrap_or_else(|| super::select::Choices::single(opts));
    if choices.candidates().len() > 1 {
        bar.set_length((opts.iterations * choices.candidates().len()) as u64);
    }
    let (fitted, selection) = super::select::fit_and_select(&data, opts, &choices, &|rec| {
        bar.set_message(format!("objective {:.4}", rec.objective));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let p = &fitted.params;

    // Held-out scores by crate::eval's definitions, the baselines on the same bins and units.
    let eval_data = eval::dataset(&data);
    let split = crate::eval::Split::new(&eval_data, opts.seed);
    let (heldout, model_rates) = eval::evaluate(&data, p, &|fi, k| data.files[fi].task[k], &split);
    let comparison = crate::eval::compare(&eval_data, &split, &model_rates);
    // The simulator's true model on the same bins, with the true task of each bin.
    let truth_model = rig.sim.as_ref().map(|sc| crate::sim::truth_model(sc, data.bin_s));
    let has_truth = data.files.iter().all(|f| f.truth.is_some());
    let true_eval = match (&truth_model, has_truth) {
        (Some(tm), true) if tm.dims.n_units == data.n_units && tm.dims.control == data.control => {
            let task_of = |fi: usize, k: usize| {
                let f = &data.files[fi];
                f.task[k]?;
                f.truth.as_ref().and_then(|t| t.task[k])
            };
            Some(eval::evaluate(&data, tm, &task_of, &split).0)
        }
        _ => None,
    };
    let task_id =
        if data.labels.len() > 1 && opts.tasks == TaskSource::Markers { Some(eval::task_identification(&data, p, rig)?) } else { None };
    let lib = &p.task_library;
    let distances: Vec<Vec<f64>> = lib.iter().map(|a| lib.iter().map(|b| (a - b).norm()).collect()).collect();
    let final_objective = fitted.iterations.last().map(|r| r.objective);

    // Provenance in the model file: only what the inputs and options determine, so the same
    // fit writes the same bytes.
    let inputs: Vec<InputFile> = data
        .files
        .iter()
        .enumerate()
        .map(|(fi, f)| InputFile {
            path: f.path.display().to_string(),
            sha256: f.sha256.clone(),
            kind: f.kind.clone(),
            bins: f.bins,
            training_bins: training_bins(&data, fi),
            heldout_bins: f.heldout.iter().filter(|h| **h).count(),
            bytes_used: f.bytes_used,
            bytes_total: f.bytes_total,
            lost_bins: f.lost.iter().filter(|l| **l).count(),
            damage: f.damage.clone(),
        })
        .collect();
    let provenance: Vec<(String, String)> = vec![
        ("fit.neuroloop_version".into(), env!("CARGO_PKG_VERSION").into()),
        ("fit.inputs".into(), serde_json::to_string(&inputs.iter().map(|i| (&i.path, &i.sha256)).collect::<Vec<_>>())?),
        ("fit.rig_sha256".into(), crate::record::sha256_hex(&std::fs::read(&rig.path).unwrap_or_default())),
        ("fit.seed".into(), opts.seed.to_string()),
        ("fit.iterations".into(), fitted.iterations.len().to_string()),
        ("fit.final_objective".into(), final_objective.map_or("none".into(), |v| format!("{v:?}"))),
        ("fit.tasks".into(), serde_json::to_string(&data.labels)?),
        ("fit.heldout_fraction".into(), opts.heldout.to_string()),
        ("fit.learning_rate".into(), format!("{:?}", opts.learning_rate)),
        ("fit.batch".into(), opts.batch.to_string()),
        ("fit.method".into(), "laplace-em (EKF + RTS E-step, Adam M-step through the hypernetwork)".into()),
    ];
    p.save_with_metadata(&opts.out, &provenance).with_context(|| format!("cannot write the model to {}", opts.out.display()))?;

    let curve = curve_path(opts);
    let series = |name: &str, f: fn(&IterationRecord) -> f64| {
        (name.to_string(), fitted.iterations.iter().map(|r| (r.iteration as f64, f(r))).collect::<Vec<_>>())
    };
    let curve_written = crate::bench::plot::training_curve(
        &curve,
        "neuroloop fit: M-step objective per bin",
        &[series("total", |r| r.objective), series("observation", |r| r.observation), series("dynamics", |r| r.dynamics)],
    )
    .map(|_| curve.display().to_string());
    let comparison_path = comparison_path(opts);
    let comparison_written = crate::bench::plot::score_bars(
        &comparison_path,
        &format!("neuroloop fit: held-out bits/spike, model and baselines ({})", opts.out.display()),
        &comparison,
    )
    .map(|_| comparison_path.display().to_string());
    let mut notices = data.notices.clone();
    if let Err(e) = &curve_written {
        notices.push(format!("training curve: {e}"));
    }
    if let Err(e) = &comparison_written {
        notices.push(format!("comparison plot: {e}"));
    }
    if let Some(why) = &fitted.diverged {
        notices.push(format!(
            "the fit stopped early: {why}; {} holds the last good parameters (a lower --learning-rate may help)",
            opts.out.display()
        ));
    }
    let report = FitReport {
        neuroloop_version: env!("CARGO_PKG_VERSION").into(),
        model: opts.out.display().to_string(),
        rig: rig.path.display().to_string(),
        inputs,
        tasks_from: match opts.tasks {
            TaskSource::File => "file".into(),
            TaskSource::Markers => "markers".into(),
        },
        dims: FitDims {
            n_units: p.dims.n_units,
            latent: p.dims.latent,
            embed: p.dims.embed,
            control: p.dims.control,
            hidden: p.dims.hidden,
            tasks: lib.len(),
        },
        seed: opts.seed,
        iterations: fitted.iterations.clone(),
        final_objective,
        diverged: fitted.diverged.clone(),
        alpha: p.alpha,
        process_noise: p.process_noise.iter().copied().collect(),
        heldout_bits_per_spike: heldout.bits_per_spike,
        heldout_predictive_bits_per_spike: heldout.predictive_bits_per_spike,
        heldout_co_bits_per_spike: heldout.co_bits_per_spike,
        latent_r2: heldout.latent_r2,
        heldout,
        comparison,
        comparison_plot: comparison_written.ok(),
        true_model_heldout_bits_per_spike: true_eval.as_ref().and_then(|e| e.bits_per_spike),
        true_model_heldout_predictive_bits_per_spike: true_eval.as_ref().and_then(|e| e.predictive_bits_per_spike),
        true_model_heldout: true_eval,
        embeddings: data.labels.iter().zip(lib).map(|(l, z)| TaskEmbedding { label: l.clone(), z: z.iter().copied().collect() }).collect(),
        embedding_distances: distances,
        task_identification: task_id,
        selection,
        elapsed_s: started.elapsed().as_secs_f64(),
        peak_memory_bytes: peak_memory_bytes(),
        training_curve: curve_written.ok(),
        notices,
    };
    if let Some(path) = &opts.report {
        crate::outfile::write_output(path, serde_json::to_string_pretty(&report)?.as_bytes(), "report")?;
    }
    Ok(report)
}

/// The stdout summary.
pub fn summary(r: &FitReport, out: &Path) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let mut s = format!(
        "fitted {} (N={} d={} e={} m={} h={}, {} tasks) from {} file(s) in {:.1} s, {} EM iterations, final objective {}\n",
        out.display(),
        r.dims.n_units,
        r.dims.latent,
        r.dims.embed,
        r.dims.control,
        r.dims.hidden,
        r.dims.tasks,
        r.inputs.len(),
        r.elapsed_s,
        r.iterations.len(),
        f(r.final_objective)
    );
    match &r.heldout.unscored {
        Some(why) => s += &format!("held-out: not scored: {why}\n"),
        None => {
            s += &format!(
                "held-out ({} bins, {:.0} spikes): co-smoothing {} (true model {}), one-step-ahead {} (true model {}); smoothed {} (has seen the scored spikes: not comparable)\n",
                r.heldout.heldout_bins,
                r.heldout.heldout_spikes,
                f(r.heldout_co_bits_per_spike),
                f(r.true_model_heldout.as_ref().and_then(|e| e.co_bits_per_spike)),
                f(r.heldout_predictive_bits_per_spike),
                f(r.true_model_heldout_predictive_bits_per_spike),
                f(r.heldout_bits_per_spike),
            );
            for line in crate::eval::summary_lines(&r.comparison) {
                s += &line;
                s += "\n";
            }
        }
    }
    for i in r.inputs.iter().filter(|i| i.damage.is_some()) {
        s += &format!(
            "DAMAGED FILE {}: {} of {} bytes could not be read ({} damaged parts skipped); {} of its {} bins were left out (see the report's inputs[].damage)\n",
            i.path,
            i.bytes_total - i.bytes_used,
            i.bytes_total,
            i.damage.as_ref().map_or(0, |d| d.parts.len()),
            i.lost_bins,
            i.bins
        );
    }
    if r.latent_r2.is_some() {
        s += &format!("latent R² vs the simulator's truth (best affine map): {}\n", f(r.latent_r2));
    }
    if let Some(t) = &r.task_identification {
        let found: Vec<String> = t.switches.iter().map(|s| s.bins_to_reidentify.map_or("never".into(), |b| b.to_string())).collect();
        s += &format!(
            "task identification: {:.1} % of bins right; bins to re-identify after each switch: [{}]\n",
            100.0 * t.accuracy,
            found.join(", ")
        );
    }
    if let Some(sel) = &r.selection {
        s += "model selection (held-out co-smoothing bits/spike ± jackknife SE over the held-out units):\n";
        for (i, c) in sel.candidates.iter().enumerate() {
            let mark = if i == sel.chosen { "  <- chosen" } else { "" };
            s += &format!(
                "  d={:<3} e={:<3} h={:<5} α {:<8} co-smoothing {} ± {}  one-step-ahead {}  {:.1} s{}{mark}\n",
                c.latent,
                c.embed,
                c.hidden,
                c.alpha_fixed.map_or("fitted".into(), |a| a.to_string()),
                f(c.co_bits_per_spike),
                f(c.co_bits_per_spike_se),
                f(c.predictive_bits_per_spike),
                c.fit_s,
                c.failed.as_ref().map_or(String::new(), |w| format!(" FAILED: {w}"))
            );
        }
        let alpha = sel.candidates[sel.chosen].alpha_fixed.map_or("fitted".to_string(), |a| a.to_string());
        s += &format!("chose d={} e={} h={} α {alpha}: {}\n", r.dims.latent, r.dims.embed, r.dims.hidden, sel.rule);
    }
    if let Some(m) = r.peak_memory_bytes {
        s += &format!("peak memory {:.0} MiB\n", m as f64 / (1 << 20) as f64);
    }
    if let Some(d) = &r.diverged {
        s += &format!("STOPPED EARLY: {d}; {} holds the last good parameters (a lower --learning-rate may help)\n", r.model);
    }
    s
}
