//! How good a fitted model is, on the held-out bins: bits per spike (Neural Latents
//! Benchmark definition), and for the simulator the latent R² against its truth and the
//! same numbers for its true model.
//!
//! bits/spike = (NLL_null − NLL_model) / (Σ spikes · ln 2), NLL = Σ r − y log r + log y!
//! with r the model's expected count in the bin, and the null model each unit's mean count
//! over the evaluated bins. Two model rates are scored:
//! - **smoothed**: the RTS-smoothed latent (the fitted model explaining the held-out bins);
//! - **predictive**: the filter's one-step-ahead prediction x⁻_k, before bin k's spikes
//!   are seen (what the live loop and its controller act on).

use super::data::FitData;
use super::smoother::{smooth, Segment};
use crate::model::observation::{ln_factorial, log_rates};
use crate::model::ModelParams;
use crate::telemetry::affine_r2;
use nalgebra::DVector;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub heldout_bins: usize,
    pub heldout_spikes: f64,
    /// None when nothing could be scored (see `unscored`): never NaN.
    pub bits_per_spike: Option<f64>,
    pub predictive_bits_per_spike: Option<f64>,
    /// Why there is no score: no held-out bins, or no spikes in them.
    pub unscored: Option<String>,
    /// Filtered latent vs the simulator's truth after the best affine map (None: no truth).
    pub latent_r2: Option<f64>,
}

/// The filter's and smoother's rates on every file, scored on its held-out bins.
/// `task_of(file, bin)` is the library index whose θ the bin's transition uses (None:
/// the bin is not evaluated).
pub fn evaluate(data: &FitData, p: &ModelParams, task_of: &dyn Fn(usize, usize) -> Option<usize>) -> Evaluation {
    let (n, d) = (data.n_units, p.dims.latent);
    let thetas: Vec<_> = p.task_library.iter().map(|z| p.theta_at(z)).collect();
    let mut eval_rows: Vec<(usize, usize)> = Vec::new(); // (file, bin)
    let mut rates_s: Vec<f64> = Vec::new();
    let mut rates_p: Vec<f64> = Vec::new();
    let mut r2_pairs: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    let mut eta = DVector::zeros(n);
    for (fi, f) in data.files.iter().enumerate() {
        let task: Vec<usize> = (0..f.bins).map(|k| task_of(fi, k).unwrap_or(0)).collect();
        let seg = Segment { counts: &f.counts, inputs: &f.inputs, has_data: &f.has_data, task: &task, start: 0, end: f.bins };
        let s = smooth(p, &thetas, &seg);
        for k in 0..f.bins {
            if !(f.heldout[k] && f.has_data[k] && task_of(fi, k).is_some()) {
                continue;
            }
            eval_rows.push((fi, k));
            for (x, out) in [(&s.m, &mut rates_s), (&s.x_pred, &mut rates_p)] {
                let xv = DVector::from_column_slice(&x[k * d..(k + 1) * d]);
                log_rates(&p.obs_c, &p.obs_d, p.log_rate_max, &xv, &mut eta);
                out.extend(eta.iter().map(|e| p.bin_s * e.exp()));
            }
            if let Some(t) = &f.truth {
                let xt = &t.x[k * t.latent..(k + 1) * t.latent];
                if xt.iter().all(|v| v.is_finite()) {
                    r2_pairs.push((s.x_filt[k * d..(k + 1) * d].to_vec(), xt.to_vec()));
                }
            }
        }
    }
    let rows = eval_rows.len();
    let mut mean = vec![0.0; n];
    let mut spikes = 0.0;
    for &(fi, k) in &eval_rows {
        let y = &data.files[fi].counts[k * n..(k + 1) * n];
        for u in 0..n {
            mean[u] += y[u] / rows.max(1) as f64;
            spikes += y[u];
        }
    }
    let nll = |r: f64, y: f64| {
        let r = r.max(1e-9);
        r - y * r.ln() + ln_factorial(y)
    };
    let (mut null, mut ms, mut mp) = (0.0, 0.0, 0.0);
    for (row, &(fi, k)) in eval_rows.iter().enumerate() {
        let y = &data.files[fi].counts[k * n..(k + 1) * n];
        for u in 0..n {
            null += nll(mean[u], y[u]);
            ms += nll(rates_s[row * n + u], y[u]);
            mp += nll(rates_p[row * n + u], y[u]);
        }
    }
    let unscored = if rows == 0 {
        Some("no held-out bins (--heldout 0, or every held-out bin was a stream gap or unlabelled)".to_string())
    } else if spikes == 0.0 {
        Some(format!("no spikes in the {rows} held-out bins"))
    } else {
        None
    };
    let bps = |model: f64| Some((null - model) / spikes / std::f64::consts::LN_2).filter(|v| unscored.is_none() && v.is_finite());
    Evaluation {
        heldout_bins: rows,
        heldout_spikes: spikes,
        bits_per_spike: bps(ms),
        predictive_bits_per_spike: bps(mp),
        latent_r2: affine_r2(&r2_pairs),
        unscored,
    }
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
        controller: crate::control::ControllerConfig { kind: crate::control::ControllerKind::Lqr, ..Default::default() },
        objective: crate::control::Objective::Latent(DVector::zeros(d)),
        lower: vec![-1e9; m],
        upper: vec![1e9; m],
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
