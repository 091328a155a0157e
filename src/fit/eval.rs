//! How good a fitted model is, on the held-out bins, by the definitions of [`crate::eval`]
//! (co-smoothing, one-step-ahead and smoothed bits/spike), and for the simulator the latent
//! R² against its truth. This module computes the model's rates; `crate::eval` scores them
//! beside the baselines.

use super::data::FitData;
use super::smoother::{smooth, Segment, Update};
use crate::eval::{self, ModelRates, Split};
use crate::model::observation::log_rates;
use crate::model::ModelParams;
use crate::telemetry::affine_r2;
use nalgebra::{DMatrix, DVector};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub heldout_bins: usize,
    pub heldout_spikes: f64,
    /// The smoother's bits/spike: it has seen each scored bin's spikes (not comparable).
    /// None when nothing could be scored (see `unscored`): never NaN.
    pub bits_per_spike: Option<f64>,
    /// One-step-ahead (causal) bits/spike of every unit.
    pub predictive_bits_per_spike: Option<f64>,
    /// Co-smoothing bits/spike (NLB): held-out units from the held-in units' latents.
    pub co_bits_per_spike: Option<f64>,
    /// Why there is no score: no held-out bins, or no spikes in them.
    pub unscored: Option<String>,
    /// Filtered latent vs the simulator's truth after the best affine map (None: no truth).
    pub latent_r2: Option<f64>,
}

/// The fit's recordings as the evaluation sees them: a bin is usable when it has data and a
/// task label (damaged bins have neither).
pub fn dataset(data: &FitData) -> eval::Dataset<'_> {
    eval::Dataset {
        recordings: data
            .files
            .iter()
            .map(|f| eval::Recording {
                counts: &f.counts,
                inputs: &f.inputs,
                usable: (0..f.bins).map(|k| f.has_data[k] && f.task[k].is_some()).collect(),
                heldout: &f.heldout,
            })
            .collect(),
        n_units: data.n_units,
        control: data.control,
        bin_s: data.bin_s,
    }
}

/// `p` observing only `units`: their rows of C and d.
fn restricted(p: &ModelParams, units: &[usize]) -> ModelParams {
    let mut q = p.clone();
    q.obs_c = DMatrix::from_fn(units.len(), p.dims.latent, |i, j| p.obs_c[(units[i], j)]);
    q.obs_d = DVector::from_iterator(units.len(), units.iter().map(|&u| p.obs_d[u]));
    q.dims.n_units = units.len();
    q
}

/// log E[exp(Σ_b w_b (h_b − μ))] per unit over the training bins (0 without a history term).
fn history_gain(data: &FitData, p: &ModelParams, split: &Split) -> Vec<f64> {
    let n = data.n_units;
    let units: Vec<usize> = (0..n).collect();
    let units = &units;
    let Some(h) = &p.history else { return vec![0.0; n] };
    let (mut sum, mut rows) = (vec![0.0; units.len()], 0.0f64);
    for (fi, f) in data.files.iter().enumerate() {
        if !split.train_rows.iter().any(|r| r.0 == fi) {
            continue;
        }
        let t = crate::model::history::centred_traces(&f.counts, &f.has_data, n, &h.taus_s, p.bin_s, h.mean_count.as_slice());
        let off = crate::model::history::offsets(&t, n, &h.weight, units);
        for &(_, k) in split.train_rows.iter().filter(|r| r.0 == fi) {
            for j in 0..units.len() {
                sum[j] += off[k * units.len() + j].exp();
            }
            rows += 1.0;
        }
    }
    sum.iter().map(|s| if rows > 0.0 { (s / rows).ln() } else { 0.0 }).collect()
}

/// The model's rates on the split's held-out bins, and its scores. `task_of(file, bin)` is
/// the library index whose θ the bin's transition uses.
pub fn evaluate(
    data: &FitData,
    p: &ModelParams,
    task_of: &dyn Fn(usize, usize) -> Option<usize>,
    split: &Split,
) -> (Evaluation, ModelRates) {
    let (n, d) = (data.n_units, p.dims.latent);
    let thetas: Vec<_> = p.task_library.iter().map(|z| p.theta_at(z)).collect();
    // A unit of a held-out fold has its history unseen: its intercept is d plus
    // log E[exp(offset)] over the training bins (d alone is the log-rate at the typical
    // history, and exp is convex).
    let gain = history_gain(data, p, split);
    let eval_rows_of = |fi: usize| split.eval_rows.iter().filter(move |r| r.0 == fi).map(|r| r.1);
    let mut rates = ModelRates {
        predictive: Vec::new(),
        smoothed: Vec::new(),
        cosmoothed: vec![0.0; if split.folds.is_empty() { 0 } else { split.eval_rows.len() * n }],
    };
    let mut r2_pairs: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    let mut eta = DVector::zeros(n);
    let mut rows = split.eval_rows.iter().peekable();
    // Where each file's held-out rows start in `split.eval_rows`.
    let mut row0 = 0usize;
    for (fi, f) in data.files.iter().enumerate() {
        if rows.peek().is_none_or(|r| r.0 != fi) {
            continue;
        }
        let task: Vec<usize> = (0..f.bins).map(|k| task_of(fi, k).unwrap_or(0)).collect();
        // The history term's offsets: every unit's for the full model, the held-in units'
        // for co-smoothing (a held-out unit's own spikes are never seen; its rate uses d, the
        // log-rate at its typical history).
        let traces = p
            .history
            .as_ref()
            .map(|h| crate::model::history::centred_traces(&f.counts, &f.has_data, n, &h.taus_s, p.bin_s, h.mean_count.as_slice()));
        let all: Vec<usize> = (0..n).collect();
        let offsets_of =
            |units: &[usize]| traces.as_ref().zip(p.history.as_ref()).map(|(t, h)| crate::model::history::offsets(t, n, &h.weight, units));
        let off_all = offsets_of(&all);
        let seg = Segment {
            counts: &f.counts,
            inputs: &f.inputs,
            has_data: &f.has_data,
            task: &task,
            offsets: off_all.as_deref(),
            start: 0,
            end: f.bins,
        };
        // The live filter's prediction (what `run` acts on), and the Laplace smoother's means.
        let live = smooth(p, &thetas, &seg, Update::Live);
        let s = smooth(p, &thetas, &seg, Update::Laplace(super::smoother::E_STEP_NEWTON));
        // Co-smoothing, fold by fold: the latents from the other units' counts alone, the
        // fold's rates from them.
        for (fo, fold) in split.folds.iter().enumerate() {
            let heldin = split.heldin(fo, n);
            let mut q = restricted(p, &heldin);
            q.history = None; // its offsets come with the segment
            let off_in = offsets_of(&heldin);
            let counts_in: Vec<f64> = (0..f.bins).flat_map(|k| heldin.iter().map(move |&u| f.counts[k * n + u])).collect();
            let seg_in = Segment { counts: &counts_in, offsets: off_in.as_deref(), ..seg };
            let m = smooth(&q, &thetas, &seg_in, Update::Laplace(super::smoother::E_STEP_NEWTON)).m;
            let out_c = DMatrix::from_fn(fold.len(), d, |i, j| p.obs_c[(fold[i], j)]);
            let out_d = DVector::from_iterator(fold.len(), fold.iter().map(|&u| p.obs_d[u] + gain[u]));
            let mut eta_out = DVector::zeros(fold.len());
            for (i, k) in eval_rows_of(fi).enumerate() {
                let xv = DVector::from_column_slice(&m[k * d..(k + 1) * d]);
                log_rates(&out_c, &out_d, p.log_rate_max, &xv, &mut eta_out);
                for (j, &u) in fold.iter().enumerate() {
                    rates.cosmoothed[(row0 + i) * n + u] = p.bin_s * eta_out[j].exp();
                }
            }
        }
        row0 += eval_rows_of(fi).count();
        while let Some(&&(_, k)) = rows.peek().filter(|r| r.0 == fi) {
            rows.next();
            let mut d_eff = p.obs_d.clone();
            if let Some(o) = &off_all {
                for i in 0..n {
                    d_eff[i] += o[k * n + i];
                }
            }
            for (x, out) in [(&s.m, &mut rates.smoothed), (&live.x_pred, &mut rates.predictive)] {
                let xv = DVector::from_column_slice(&x[k * d..(k + 1) * d]);
                log_rates(&p.obs_c, &d_eff, p.log_rate_max, &xv, &mut eta);
                out.extend(eta.iter().map(|e| p.bin_s * e.exp()));
            }
            if let Some(t) = &f.truth {
                let xt = &t.x[k * t.latent..(k + 1) * t.latent];
                if xt.iter().all(|v| v.is_finite()) {
                    r2_pairs.push((live.x_filt[k * d..(k + 1) * d].to_vec(), xt.to_vec()));
                }
            }
        }
    }
    let ds = dataset(data);
    let all: Vec<usize> = (0..n).collect();
    let (_, _, spikes) = eval::nll_sums(&ds, &split.eval_rows, &all, &rates.predictive);
    let rows = split.eval_rows.len();
    let unscored = if rows == 0 {
        Some("no held-out bins (--heldout 0, or every held-out bin was a stream gap or unlabelled)".to_string())
    } else if spikes == 0.0 {
        Some(format!("no spikes in the {rows} held-out bins"))
    } else {
        None
    };
    let bps = |r: &[f64], units: &[usize]| if unscored.is_some() { None } else { eval::bits_per_spike(&ds, &split.eval_rows, units, r) };
    let evaluation = Evaluation {
        heldout_bins: rows,
        heldout_spikes: spikes,
        bits_per_spike: bps(&rates.smoothed, &all),
        predictive_bits_per_spike: bps(&rates.predictive, &all),
        co_bits_per_spike: if split.folds.is_empty() { None } else { bps(&rates.cosmoothed, &all) },
        latent_r2: affine_r2(&r2_pairs),
        unscored,
    };
    (evaluation, rates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_r2_is_one_for_an_affine_image_and_low_for_noise() {
        let pairs: Vec<(Vec<f64>, Vec<f64>)> = (0..200)
            .map(|i| {
                let a = (i as f64 * 0.37).sin();
                let b = (i as f64 * 0.11).cos();
                (vec![a, b], vec![2.0 * a - b + 3.0, 0.5 * b])
            })
            .collect();
        assert!((affine_r2(&pairs).unwrap() - 1.0).abs() < 1e-9);
        let noise: Vec<(Vec<f64>, Vec<f64>)> =
            (0..200).map(|i| (vec![(i as f64 * 0.37).sin()], vec![(i as f64 * 1.7).sin() * (i as f64 * 0.13).cos()])).collect();
        assert!(affine_r2(&noise).unwrap() < 0.2);
    }
}

/// After one true task switch: how many bins the live backend (the CPU reference, with the
/// rig's online embedding update and task identification) took until the embedding's
/// nearest library task was the true one for 10 bins.
#[derive(Debug, Clone, Serialize)]
pub struct Reidentification {
    pub file: String,
    pub switch_bin: usize,
    pub true_task: String,
    pub bins_to_reidentify: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskIdentification {
    pub switches: Vec<Reidentification>,
    /// Fraction of labelled bins (from 100 bins after each switch) whose nearest library
    /// task is the true one.
    pub accuracy: f64,
}

/// Run the fitted model through the real CPU backend over every file (controller off) and
/// score its task identification against the files' labels.
pub fn task_identification(data: &FitData, p: &ModelParams, rig: &crate::rig::Rig) -> anyhow::Result<TaskIdentification> {
    use crate::backend::{cpu::CpuBackend, Backend, BinInput, BinOutput};
    let d = p.dims.latent;
    let m = p.dims.control;
    // Only the filter, the embedding update and task identification run: no controller.
    let cfg = crate::backend::BackendConfig {
        filter: rig.model.filter_choice(),
        embedding: rig.model.embedding.clone(),
        task_id: crate::model::taskid::TaskIdConfig { enabled: true, ..rig.model.task_id.clone() },
        controller: crate::control::ControllerConfig { kind: crate::control::ControllerKind::Monitor, ..Default::default() },
        objective: crate::control::Objective::Latent(DVector::zeros(d)),
        lower: vec![-1e9; m],
        upper: vec![1e9; m],
        hold: Vec::new(),
    };
    let lib = &p.task_library;
    let nearest = |z: &[f64]| {
        (0..lib.len())
            .min_by(|&a, &b| {
                let da: f64 = lib[a].iter().zip(z).map(|(x, y)| (x - y).powi(2)).sum();
                let db: f64 = lib[b].iter().zip(z).map(|(x, y)| (x - y).powi(2)).sum();
                da.total_cmp(&db)
            })
            .unwrap_or(0)
    };
    let (mut right, mut scored) = (0usize, 0usize);
    let mut switches = Vec::new();
    for f in &data.files {
        let mut b = CpuBackend::new(p.clone(), &cfg)?;
        let mut out = BinOutput::new(&p.dims);
        let n = data.n_units;
        let zeros = vec![0.0; m];
        let mut since_switch = usize::MAX / 2;
        let mut pending: Option<(usize, usize, usize)> = None; // (switch bin, task, run)
        for k in 0..f.bins {
            let u_prev = if k == 0 { &zeros[..] } else { &f.inputs[(k - 1) * m..k * m] };
            b.step(
                &BinInput { bin: k as u64, counts: &f.counts[k * n..(k + 1) * n], u_prev, has_data: f.has_data[k], want_control: false },
                &mut out,
            );
            let Some(t) = f.task[k] else { continue };
            if k > 0 && f.task[k - 1].is_some() && f.task[k - 1] != Some(t) {
                if let Some((sb, st, _)) = pending.take() {
                    switches.push(Reidentification {
                        file: f.path.display().to_string(),
                        switch_bin: sb,
                        true_task: data.labels[st].clone(),
                        bins_to_reidentify: None,
                    });
                }
                pending = Some((k, t, 0));
                since_switch = 0;
            }
            let guess = nearest(&out.z);
            if let Some((sb, st, run)) = pending.as_mut() {
                *run = if guess == *st { *run + 1 } else { 0 };
                if *run == 10 {
                    switches.push(Reidentification {
                        file: f.path.display().to_string(),
                        switch_bin: *sb,
                        true_task: data.labels[*st].clone(),
                        bins_to_reidentify: Some(k + 1 - 10 - *sb),
                    });
                    pending = None;
                }
            }
            if since_switch >= 100 {
                scored += 1;
                right += (guess == t) as usize;
            }
            since_switch += 1;
        }
        if let Some((sb, st, _)) = pending {
            switches.push(Reidentification {
                file: f.path.display().to_string(),
                switch_bin: sb,
                true_task: data.labels[st].clone(),
                bins_to_reidentify: None,
            });
        }
    }
    Ok(TaskIdentification { switches, accuracy: if scored > 0 { right as f64 / scored as f64 } else { f64::NAN } })
}
