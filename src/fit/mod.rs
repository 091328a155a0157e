//! `neuroloop fit`: learn the whole model from recordings of a lab's own population.
//!
//! The method is Laplace-EM on the model neuroloop runs (README "The model"):
//! 1. **Initialisation** (Poisson-PCA style): dᵢ from each unit's mean rate; C and the
//!    first latents from the principal components of the smoothed log-rates.
//! 2. **E-step** ([`smoother`]): the model's own point-process EKF forward, an RTS smoother
//!    backward, per contiguous run of training bins, with each bin's task embedding.
//! 3. **M-step** ([`mstep`]): Adam steps (burn autodiff) on the expected complete-data
//!    log-likelihood through the hypernetwork: the three generators, one embedding per
//!    task, C, d and α; then diag(Q) and the initial-state variance in closed form.
//!
//! Held-out bins (the last `--heldout` fraction of each file, or of each task block with
//! `--tasks markers`) are never fitted; the report evaluates the fitted model on them
//! ([`eval`]) against the null model and, for the simulator, against its true model.

pub mod data;
pub mod eval;
pub mod mstep;
pub mod report;
pub mod select;
pub mod smoother;

use crate::model::{Dims, Generator, Hypernet, ModelParams, Theta};
use anyhow::{bail, Context};
use data::{FitData, TaskSource};
use mstep::{MStep, Stats, TaskTransitions};
use nalgebra::{DMatrix, DVector};
use neuroloop_kernels::philox::normal_at;
use smoother::{smooth, Segment, Update};
use std::path::PathBuf;

/// `neuroloop fit` options (README "Fitting a model").
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub files: Vec<PathBuf>,
    pub out: PathBuf,
    pub report: Option<PathBuf>,
    pub latent: usize,
    pub embed: usize,
    pub hidden: usize,
    pub seed: u64,
    /// EM iterations.
    pub iterations: usize,
    /// Fraction of each file (or task block) held out.
    pub heldout: f64,
    pub tasks: TaskSource,
    /// Fix α instead of fitting it.
    pub alpha: Option<f64>,
    /// Adam steps per M-step (the first M-step takes 5×).
    pub adam_steps: usize,
    /// Bins per Adam step (a seeded random subset when there are more).
    pub batch: usize,
    /// Adam's learning rate at the first iteration; it falls to a tenth of it (cosine).
    pub learning_rate: f64,
    /// Fit the per-unit spike-history term (model/history.rs).
    pub history: bool,
    /// Model selection: the values of d, e and h to try (None: `latent`, `embed`, `hidden`).
    pub choices: Option<select::Choices>,
    pub progress: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            files: Vec::new(),
            out: PathBuf::from("fitted.safetensors"),
            report: None,
            latent: 4,
            embed: 3,
            hidden: 16,
            seed: 1,
            iterations: 25,
            heldout: 0.2,
            tasks: TaskSource::File,
            alpha: None,
            adam_steps: 60,
            batch: 4096,
            learning_rate: 1e-2,
            history: true,
            choices: None,
            progress: false,
        }
    }
}

impl FitOptions {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.latent == 0 || self.latent > crate::MAX_LATENT {
            bail!("--latent must be in 1..={}, got {}", crate::MAX_LATENT, self.latent);
        }
        if self.embed == 0 || self.embed > crate::MAX_EMBED {
            bail!("--embed must be in 1..={}, got {}", crate::MAX_EMBED, self.embed);
        }
        if self.hidden == 0 || self.hidden > 4096 {
            bail!("--hidden must be in 1..=4096, got {}", self.hidden);
        }
        if self.iterations == 0 || self.iterations > 100_000 {
            bail!("--iterations must be in 1..=100000, got {}", self.iterations);
        }
        if !(self.heldout.is_finite() && (0.0..0.9).contains(&self.heldout)) {
            bail!("--heldout must be a fraction in [0, 0.9), got {}", self.heldout);
        }
        if !(64..=10_000_000).contains(&self.batch) {
            bail!("--batch must be in 64..=10000000 bins, got {}", self.batch);
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0 && self.learning_rate <= 1e3) {
            bail!("--learning-rate must be in (0, 1000], got {} (the default is 0.01)", self.learning_rate);
        }
        if let Some(a) = self.alpha {
            if !(a.is_finite() && a > 0.0 && a <= 1.0) {
                bail!("--alpha must be in (0, 1], got {a}");
            }
        }
        Ok(())
    }
}

/// One EM iteration in the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IterationRecord {
    pub iteration: usize,
    /// The M-step objective per bin after the iteration (dynamics + observation terms).
    pub objective: f64,
    pub dynamics: f64,
    pub observation: f64,
    /// The E-step's predictive log-likelihood per training bin (nats).
    pub train_predictive_loglik_per_bin: f64,
    pub elapsed_s: f64,
}

/// A fitted model and how it got there.
pub struct Fitted {
    pub params: ModelParams,
    pub iterations: Vec<IterationRecord>,
    /// Set when the fit stopped early on a non-finite objective (the parameters are the
    /// last good ones).
    pub diverged: Option<String>,
}

/// The minimum number of training bins per task.
pub const MIN_BINS_PER_TASK: usize = 200;

/// Contiguous runs of training bins with one task each.
fn training_segments(data: &FitData) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for (fi, f) in data.files.iter().enumerate() {
        let mut k = 0;
        while k < f.bins {
            if f.heldout[k] || f.task[k].is_none() {
                k += 1;
                continue;
            }
            let t = f.task[k];
            let mut e = k;
            while e < f.bins && !f.heldout[e] && f.task[e] == t {
                e += 1;
            }
            if e - k >= 2 {
                out.push((fi, k, e));
            }
            k = e;
        }
    }
    out
}

fn randn(seed: u64, stream: u64, r: usize, c: usize, scale: f64) -> DMatrix<f64> {
    DMatrix::from_fn(r, c, |i, j| scale * normal_at(seed, stream, (i * c + j) as u64) as f64)
}

/// The initial model: d from mean rates, C and latents from PCA of smoothed log-rates,
/// dynamics near a slow stable linear system, random distinct embeddings.
fn initial_params(data: &FitData, opts: &FitOptions, segs: &[(usize, usize, usize)]) -> (ModelParams, Vec<DVector<f64>>) {
    let (n, d, e, m, h) = (data.n_units, opts.latent, opts.embed, data.control, opts.hidden);
    let bin_s = data.bin_s;
    let mut sum = vec![0.0; n];
    let mut bins = 0.0f64;
    for &(fi, a, b) in segs {
        let f = &data.files[fi];
        for k in a..b {
            if f.has_data[k] {
                for u in 0..n {
                    sum[u] += f.counts[k * n + u];
                }
                bins += 1.0;
            }
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / bins.max(1.0)).collect();
    let obs_d = DVector::from_iterator(n, mean.iter().map(|c| ((c + 0.01) / bin_s).ln()));
    // Centred smoothed log-rates → covariance (N × N).
    let mut cov = DMatrix::<f64>::zeros(n, n);
    let mut rows = 0.0f64;
    let sigma_bins = (0.05 / bin_s).max(1.0);
    let all_units: Vec<usize> = (0..n).collect();
    for &(fi, a, b) in segs {
        let f = &data.files[fi];
        let s = crate::eval::baselines::gaussian_smooth(&f.counts, n, &all_units, a, b, sigma_bins);
        for i in 0..(b - a) {
            let v = DVector::from_iterator(n, (0..n).map(|u| ((s[i * n + u] + 0.01) / bin_s).ln() - obs_d[u]));
            cov.ger(1.0, &v, &v, 1.0);
            rows += 1.0;
        }
    }
    cov /= rows.max(1.0);
    let eig = nalgebra::SymmetricEigen::new(cov);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    // Latent std 0.3 per dimension (inside tanh's near-linear range): C = V · √λ / 0.3.
    let mut obs_c = DMatrix::zeros(n, d);
    for j in 0..d.min(n) {
        let col = order[j];
        let scale = eig.eigenvalues[col].max(1e-9).sqrt() / 0.3;
        // Sign convention: the largest loading positive (deterministic).
        let v = eig.eigenvectors.column(col);
        let imax = (0..n).max_by(|&a, &b| v[a].abs().total_cmp(&v[b].abs())).unwrap_or(0);
        let sign = if v[imax] < 0.0 { -1.0 } else { 1.0 };
        for u in 0..n {
            obs_c[(u, j)] = sign * v[u] * scale;
        }
    }
    let seed = opts.seed;
    let gen = |k: u64, out: usize, base: DVector<f64>| Generator {
        w1: randn(seed, 100 + 10 * k, h, e, 1.0 / (e as f64).sqrt()),
        b1: DVector::from_element(h, 0.5),
        w2: randn(seed, 101 + 10 * k, out, h, 0.05 / (h as f64).sqrt()),
        b2: base,
    };
    // A slow stable start: W_hh = ½ I (x' ≈ (1 − α/2) x near 0), no input gain, no bias.
    let w_hh0 = DMatrix::<f64>::identity(d, d) * 0.5;
    let flat = |mtx: &DMatrix<f64>| DVector::from_iterator(mtx.len(), mtx.transpose().iter().copied());
    let hypernet =
        Hypernet { w_hh: gen(0, d * d, flat(&w_hh0)), w_xu: gen(1, d * m, DVector::zeros(d * m)), b: gen(2, d, DVector::zeros(d)) };
    // Task embeddings: orthogonal directions while they last, norm 1.
    let t = data.labels.len();
    let mut lib: Vec<DVector<f64>> = Vec::new();
    for k in 0..t {
        let mut v = DVector::from_fn(e, |i, _| normal_at(seed, 200 + k as u64, i as u64) as f64);
        if k < e {
            for p in &lib {
                let pn = p.normalize();
                v -= &pn * pn.dot(&v);
            }
        }
        lib.push(v.normalize());
    }
    let alpha = opts.alpha.unwrap_or((bin_s / 0.1).min(0.5));
    let params = ModelParams {
        dims: Dims { n_units: n, latent: d, embed: e, control: m, hidden: h },
        bin_s,
        alpha,
        process_noise: DVector::from_element(d, 0.01),
        initial_state_var: 0.1,
        log_rate_max: crate::model::file::DEFAULT_LOG_RATE_MAX,
        obs_c,
        obs_d,
        hypernet,
        z_init: lib[0].clone(),
        z_prior_sigma: 1.0,
        task_library: lib.clone(),
        policy: None,
        history: None,
    };
    (params, lib)
}

fn thetas(p: &ModelParams, lib: &[DVector<f64>]) -> Vec<Theta> {
    lib.iter().map(|z| p.theta_at(z)).collect()
}

/// E-step over every training segment → the M-step's statistics, and the closed-form
/// updates' sums.
struct EStep {
    stats: Stats,
    /// Σ (m₀² + P₀) per dimension over segments, and the segment count.
    init_sq: f64,
    init_count: f64,
    predictive_ll: f64,
    bins_with_data: f64,
}

/// Each file's centred history traces (bins × N × B; history.rs), from the training bins'
/// mean counts. Empty when the fit has no history term.
pub struct HistoryTraces {
    pub taus_s: Vec<f64>,
    pub mean_count: Vec<f64>,
    pub per_file: Vec<Vec<f64>>,
    /// Each trace's standard deviation over the training bins (N × B), floored: the
    /// M-step's scale.
    pub scale: Vec<f64>,
}

impl HistoryTraces {
    fn new(data: &FitData, segs: &[(usize, usize, usize)], taus_s: &[f64]) -> HistoryTraces {
        let n = data.n_units;
        let (mut sum, mut bins) = (vec![0.0; n], 0.0f64);
        for &(fi, a, b) in segs {
            let f = &data.files[fi];
            for k in (a..b).filter(|&k| f.has_data[k]) {
                for u in 0..n {
                    sum[u] += f.counts[k * n + u];
                }
                bins += 1.0;
            }
        }
        let mean_count: Vec<f64> = sum.iter().map(|v| v / bins.max(1.0)).collect();
        let per_file: Vec<Vec<f64>> = data
            .files
            .iter()
            .map(|f| crate::model::history::centred_traces(&f.counts, &f.has_data, n, taus_s, data.bin_s, &mean_count))
            .collect();
        let nb = taus_s.len();
        let (mut sq, mut rows) = (vec![0.0; n * nb], 0.0f64);
        for &(fi, a, b) in segs {
            let t = &per_file[fi];
            for k in (a..b).filter(|&k| data.files[fi].has_data[k]) {
                for (j, v) in t[k * n * nb..(k + 1) * n * nb].iter().enumerate() {
                    sq[j] += v * v;
                }
                rows += 1.0;
            }
        }
        let scale = sq.iter().map(|v| (v / rows.max(1.0)).sqrt().max(1e-3)).collect();
        HistoryTraces { taus_s: taus_s.to_vec(), mean_count, per_file, scale }
    }

    /// File `fi`'s log-rate offsets under `p`'s history weights (bins × N), if it has any.
    pub fn offsets(&self, p: &ModelParams, fi: usize, units: &[usize]) -> Option<Vec<f64>> {
        let h = p.history.as_ref()?;
        Some(crate::model::history::offsets(&self.per_file[fi], h.mean_count.len(), &h.weight, units))
    }
}

fn e_step(data: &FitData, p: &ModelParams, lib: &[DVector<f64>], segs: &[(usize, usize, usize)], traces: Option<&HistoryTraces>) -> EStep {
    let (n, d, m) = (data.n_units, p.dims.latent, data.control);
    let th = thetas(p, lib);
    let all: Vec<usize> = (0..n).collect();
    let offsets: Vec<Option<Vec<f64>>> = (0..data.files.len()).map(|fi| traces.and_then(|t| t.offsets(p, fi, &all))).collect();
    let nb_hist = traces.map_or(0, |t| t.taus_s.len());
    let mut obs_h = Vec::new();
    let mut trans = vec![TaskTransitions::default(); lib.len()];
    let (mut obs_m, mut obs_p, mut obs_y) = (Vec::new(), Vec::new(), Vec::new());
    let (mut init_sq, mut init_count, mut ll, mut nb) = (0.0, 0.0, 0.0, 0.0);
    for &(fi, a, b) in segs {
        let f = &data.files[fi];
        let task: Vec<usize> = f.task.iter().map(|t| t.unwrap_or(0)).collect();
        let seg = Segment {
            counts: &f.counts,
            inputs: &f.inputs,
            has_data: &f.has_data,
            task: &task,
            offsets: offsets[fi].as_deref(),
            start: a,
            end: b,
        };
        let s = smooth(p, &th, &seg, Update::Laplace(smoother::E_STEP_NEWTON));
        ll += s.predictive_loglik;
        for i in 0..(b - a) {
            let k = a + i;
            if f.has_data[k] {
                obs_m.extend_from_slice(&s.m[i * d..(i + 1) * d]);
                obs_p.extend_from_slice(&s.p[i * d * d..(i + 1) * d * d]);
                obs_y.extend_from_slice(&f.counts[k * n..(k + 1) * n]);
                if let Some(t) = traces {
                    obs_h.extend_from_slice(&t.per_file[fi][k * n * nb_hist..(k + 1) * n * nb_hist]);
                }
                nb += 1.0;
            }
            if i + 1 < b - a {
                let tr = &mut trans[task[k + 1]];
                tr.x.extend_from_slice(&s.m[i * d..(i + 1) * d]);
                tr.u.extend_from_slice(&f.inputs[k * m..(k + 1) * m]);
                tr.x_next.extend_from_slice(&s.m[(i + 1) * d..(i + 2) * d]);
                tr.resid_cov.extend_from_slice(&s.resid_cov[i * d..(i + 1) * d]);
            }
        }
        for j in 0..d {
            init_sq += s.m[j].powi(2) + s.p[j * d + j];
        }
        init_count += d as f64;
    }
    EStep {
        stats: Stats { d, n, m, hist: nb_hist, trans, obs_m, obs_p, obs_y, obs_h },
        init_sq,
        init_count,
        predictive_ll: ll,
        bins_with_data: nb,
    }
}

/// diag(Q) in closed form: the mean squared dynamics residual plus its covariance term.
fn closed_form_q(p: &ModelParams, lib: &[DVector<f64>], s: &Stats) -> DVector<f64> {
    let d = s.d;
    let th = thetas(p, lib);
    let mut acc = vec![0.0; d];
    let mut count = 0.0f64;
    let mut r = vec![0.0; d];
    for (t, tr) in s.trans.iter().enumerate() {
        let k = tr.x.len() / d;
        for i in 0..k {
            smoother::dynamics_residual_sq(p, &th[t], &tr.x[i * d..], &tr.u[i * s.m..], &tr.x_next[i * d..(i + 1) * d], &mut r);
            for j in 0..d {
                acc[j] += r[j] + tr.resid_cov[i * d + j];
            }
            count += 1.0;
        }
    }
    DVector::from_iterator(d, acc.iter().map(|a| (a / count.max(1.0)).max(1e-6)))
}

/// Fit the model. `on_iteration` is called after each EM iteration (progress).
pub fn fit(data: &FitData, opts: &FitOptions, mut on_iteration: impl FnMut(&IterationRecord)) -> anyhow::Result<Fitted> {
    opts.validate()?;
    let segs = training_segments(data);
    for (t, label) in data.labels.iter().enumerate() {
        let bins: usize = segs.iter().filter(|&&(fi, a, _)| data.files[fi].task[a] == Some(t)).map(|&(_, a, b)| b - a).sum();
        if bins < MIN_BINS_PER_TASK {
            bail!(
                "task '{label}' has {bins} training bins; the fit needs at least {MIN_BINS_PER_TASK} per task (record longer, or lower --heldout)"
            );
        }
    }
    let started = std::time::Instant::now();
    let (mut params, mut lib) = initial_params(data, opts, &segs);
    // The per-unit history term starts at zero weights (the model without it).
    let traces = opts.history.then(|| HistoryTraces::new(data, &segs, &crate::model::history::DEFAULT_TAUS_S));
    if let Some(t) = &traces {
        params.history = Some(crate::model::history::History {
            taus_s: t.taus_s.clone(),
            weight: DMatrix::zeros(data.n_units, t.taus_s.len()),
            mean_count: DVector::from_column_slice(&t.mean_count),
        });
    }
    let mut iterations = Vec::new();
    let mut diverged = None;
    let hist_scale = traces.as_ref().map_or_else(|| vec![1.0; data.n_units], |t| t.scale.clone());
    let mut mstep = MStep::new(&params, &lib, hist_scale, opts.batch, opts.seed);
    mstep.fixed_alpha = opts.alpha;
    // The first M-step takes more steps: it fits the dynamics from scratch to the latents
    // the initial model's filter finds (its observation model carries them).
    let mut good = (params.clone(), lib.clone());
    for it in 0..opts.iterations {
        let es = e_step(data, &params, &lib, &segs, traces.as_ref());
        if !es.predictive_ll.is_finite() {
            diverged = Some(format!("iteration {it}: the E-step's log-likelihood is not finite"));
            break;
        }
        let q: Vec<f64> = params.process_noise.iter().copied().collect();
        let steps = if it == 0 { opts.adam_steps * 5 } else { opts.adam_steps };
        // Learning rate: --learning-rate falling to a tenth of it over the iterations (cosine).
        let frac = it as f64 / (opts.iterations.max(2) - 1) as f64;
        let (lr0, lr1) = (opts.learning_rate, 0.1 * opts.learning_rate);
        let lr = lr1 + 0.5 * (lr0 - lr1) * (1.0 + (std::f64::consts::PI * frac).cos());
        if !mstep.steps(&es.stats, &q, data.bin_s, steps, lr) {
            diverged = Some(format!("iteration {it}: the M-step objective went non-finite"));
            break;
        }
        let (mut next, next_lib) = mstep.module.to_params(&params, &mstep.hist_scale);
        if let Some(a) = opts.alpha {
            next.alpha = a;
        }
        next.process_noise = closed_form_q(&next, &next_lib, &es.stats);
        next.initial_state_var = (es.init_sq / es.init_count.max(1.0)).max(1e-3);
        next.task_library = next_lib.clone();
        next.z_init = next_lib[0].clone();
        let obj = mstep.objective(&es.stats, next.process_noise.as_slice(), data.bin_s);
        if !obj.total().is_finite() || next.validate().is_err() {
            diverged = Some(format!("iteration {it}: the objective is not finite"));
            break;
        }
        params = next;
        lib = next_lib;
        good = (params.clone(), lib.clone());
        let rec = IterationRecord {
            iteration: it + 1,
            objective: obj.total(),
            dynamics: obj.dynamics,
            observation: obj.observation,
            train_predictive_loglik_per_bin: es.predictive_ll / es.bins_with_data.max(1.0),
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        on_iteration(&rec);
        iterations.push(rec);
    }
    let (mut params, lib) = good;
    params.task_library = lib.clone();
    params.z_init = lib[0].clone();
    // The online update's prior on z: as wide as the library.
    let max_norm = lib.iter().map(|z| z.norm()).fold(0.0, f64::max);
    params.z_prior_sigma = max_norm.max(0.1) * 2.0;
    params.validate().context("the fitted model")?;
    Ok(Fitted { params, iterations, diverged })
}
