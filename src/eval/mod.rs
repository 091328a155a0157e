//! How well a model predicts held-out spikes, measured the way the field does, with the
//! baselines a lab already has scored on the same bins and units. One definition (as
//! nlb_tools is for the Neural Latents Benchmark), used by `neuroloop fit`; `filters` and the
//! bench are to report through it too (issue 26, not yet).
//!
//! **bits/spike** (NLB): (NLL_null − NLL_model) / (Σ y · ln 2), NLL = Σ r − y log r + log y!,
//! r the expected count in the bin (floored at 1e-9), the null model each unit's mean count
//! over the evaluated bins.
//!
//! Three scores, each on the held-out bins (the last fraction of each file or task block):
//! - **co-smoothing bits/spike** (`co_bps`, NLB's headline): a seeded quarter of the units
//!   is held out; the latents are inferred from the other units only, and the held-out
//!   units' rates are predicted from those latents (their readout learnt on the training
//!   bins). Acausal. Honest: the scored spikes are never seen by the inference. NLB holds
//!   out one quarter; here the units are dealt into 4 seeded folds and each fold is held out
//!   in turn, so every unit is scored once: with tens of units one quarter is a handful, and
//!   its score moved by ±0.02 bits/spike with the numerics' rounding (a recorded locust, 3
//!   held-out units).
//! - **predictive bits/spike** (`predictive_bps`): every unit's rate in bin k from bins
//!   before k only (the live loop's one-step EKF's prediction, with each bin's labelled task
//!   and no online embedding update), what the loop and its controller act on. Honest for
//!   the same reason.
//! - **smoothed bits/spike**: the smoother's rates, which have seen each bin's own spikes;
//!   reported for continuity, not comparable with anything.
//!
//! The baselines ([`baselines`]) answer each honest score: spike smoothing + a Poisson GLM
//! from the held-in to the held-out units for co-bps (NLB's smoothing baseline); for
//! predictive bps a per-unit causal history GLM and, where the recording has an input, an
//! input-locked baseline (PSTH by input state × time since it changed, or a GLM on lagged
//! inputs).

pub mod baselines;
pub mod glm;

use crate::model::observation::ln_factorial;
use serde::Serialize;

/// Co-smoothing folds: each holds out about a quarter of the units (NLB's fraction).
pub const COSMOOTHING_FOLDS: usize = 4;

/// A mean below this (Hz) over the training bins makes a unit "near-silent" in the report.
pub const NEAR_SILENT_HZ: f64 = 0.05;

/// One recording as the evaluation sees it.
pub struct Recording<'a> {
    /// bins × N counts.
    pub counts: &'a [f64],
    /// bins × m inputs: the command emitted for bin k (it drives bin k + 1).
    pub inputs: &'a [f64],
    /// Bins that may be fitted and scored (data present, labelled, not damaged).
    pub usable: Vec<bool>,
    /// Held out of the fit: scored.
    pub heldout: &'a [bool],
}

impl Recording<'_> {
    pub fn bins(&self) -> usize {
        self.usable.len()
    }
}

/// Every recording of one evaluation.
pub struct Dataset<'a> {
    pub recordings: Vec<Recording<'a>>,
    pub n_units: usize,
    pub control: usize,
    pub bin_s: f64,
}

/// A bin of a recording: (recording, bin).
pub type Row = (usize, usize);

/// Which bins are scored and which units are held out for co-smoothing.
#[derive(Debug, Clone)]
pub struct Split {
    /// The held-out bins, recording by recording.
    pub eval_rows: Vec<Row>,
    /// The training bins.
    pub train_rows: Vec<Row>,
    /// Co-smoothing: the units held out together, fold by fold (every unit in one fold);
    /// empty when there are fewer than 2 units (co-smoothing needs both kinds).
    pub folds: Vec<Vec<usize>>,
    pub seed: u64,
}

impl Split {
    pub fn new(ds: &Dataset, seed: u64) -> Split {
        let (mut eval_rows, mut train_rows) = (Vec::new(), Vec::new());
        for (ri, r) in ds.recordings.iter().enumerate() {
            for k in 0..r.bins() {
                if r.usable[k] {
                    if r.heldout[k] {
                        eval_rows.push((ri, k));
                    } else {
                        train_rows.push((ri, k));
                    }
                }
            }
        }
        Split { eval_rows, train_rows, folds: unit_folds(ds.n_units, seed), seed }
    }

    /// Every unit that is held out in some fold (all of them, or none).
    pub fn cosmoothed_units(&self) -> Vec<usize> {
        let mut all: Vec<usize> = self.folds.concat();
        all.sort_unstable();
        all
    }

    /// The units observed while fold `f` is held out.
    pub fn heldin(&self, f: usize, n: usize) -> Vec<usize> {
        (0..n).filter(|u| !self.folds[f].contains(u)).collect()
    }
}

/// `n` units dealt into min(4, n) seeded folds, each sorted (none for n < 2).
pub fn unit_folds(n: usize, seed: u64) -> Vec<Vec<usize>> {
    if n < 2 {
        return Vec::new();
    }
    let k = COSMOOTHING_FOLDS.min(n);
    // Rank units by a seeded Philox draw: a permutation that does not depend on N's order.
    let mut order: Vec<(f32, usize)> = (0..n).map(|u| (neuroloop_kernels::philox::uniform_at(seed, 0xC05, u as u64), u)).collect();
    order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut folds = vec![Vec::new(); k];
    for (rank, (_, u)) in order.into_iter().enumerate() {
        folds[rank % k].push(u);
    }
    folds.iter_mut().for_each(|f| f.sort_unstable());
    folds
}

/// Σ over rows and units of the Poisson NLL of `rates` (rows × units.len(), expected counts),
/// of the null model (each unit's mean over these rows), and the spike count.
pub fn nll_sums(ds: &Dataset, rows: &[Row], units: &[usize], rates: &[f64]) -> (f64, f64, f64) {
    let (n, nu) = (ds.n_units, units.len());
    let count = |&(ri, k): &Row, u: usize| ds.recordings[ri].counts[k * n + u];
    let mut mean = vec![0.0; nu];
    for row in rows {
        for (j, &u) in units.iter().enumerate() {
            mean[j] += count(row, u);
        }
    }
    let spikes: f64 = mean.iter().sum();
    mean.iter_mut().for_each(|m| *m /= rows.len().max(1) as f64);
    let nll = |r: f64, y: f64| {
        let r = r.max(1e-9);
        r - y * r.ln() + ln_factorial(y)
    };
    let (mut null, mut model) = (0.0, 0.0);
    for (i, row) in rows.iter().enumerate() {
        for (j, &u) in units.iter().enumerate() {
            let y = count(row, u);
            null += nll(mean[j], y);
            model += nll(rates[i * nu + j], y);
        }
    }
    (null, model, spikes)
}

/// Bits per spike of `rates` (rows × units.len()) on `rows`; None when there is no spike
/// to score or the score is not finite (never NaN in a report).
pub fn bits_per_spike(ds: &Dataset, rows: &[Row], units: &[usize], rates: &[f64]) -> Option<f64> {
    // A rate that is not finite (a diverged filter) gets no score, not a floored one.
    if rates.iter().any(|r| !r.is_finite()) {
        return None;
    }
    let (null, model, spikes) = nll_sums(ds, rows, units, rates);
    if spikes <= 0.0 {
        return None;
    }
    Some((null - model) / spikes / std::f64::consts::LN_2).filter(|v| v.is_finite())
}

/// The model's rates on a split's held-out bins (expected counts per bin).
pub struct ModelRates {
    /// eval_rows × N: one-step-ahead predictions.
    pub predictive: Vec<f64>,
    /// eval_rows × N: smoothed (has seen each bin's spikes).
    pub smoothed: Vec<f64>,
    /// eval_rows × N: each unit from latents inferred without its fold (the other units).
    pub cosmoothed: Vec<f64>,
}

/// Which honest score a number is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    CoBps,
    PredictiveBps,
}

impl Metric {
    pub fn describe(self) -> &'static str {
        match self {
            Metric::CoBps => "co-smoothing bits/spike",
            Metric::PredictiveBps => "one-step-ahead bits/spike",
        }
    }
}

/// One method's score.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub metric: Metric,
    /// "model", or the baseline's name.
    pub method: String,
    pub bits_per_spike: Option<f64>,
    /// How the method was set up (features, kernel), or why it has no score.
    pub detail: String,
}

/// The model against one baseline on one metric.
#[derive(Debug, Clone, Serialize)]
pub struct Versus {
    pub metric: Metric,
    pub baseline: String,
    pub model_bps: f64,
    pub baseline_bps: f64,
    /// model / baseline; null when the baseline's score is ≤ 0 (then `difference` says it).
    pub ratio: Option<f64>,
    pub difference: f64,
    pub model_wins: bool,
}

/// The whole held-out comparison of a model with the baselines.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub heldout_bins: usize,
    pub heldout_spikes: f64,
    pub training_bins: usize,
    /// Co-smoothing: the folds of units held out together (indices into the rig's unit
    /// order), and the scored units' spikes in the held-out bins.
    pub cosmoothing_folds: Vec<Vec<usize>>,
    pub cosmoothing_spikes: f64,
    pub cosmoothing_seed: u64,
    pub scores: Vec<Score>,
    pub versus: Vec<Versus>,
    /// The smoother's bits/spike (it has seen the scored spikes: not comparable).
    pub smoothed_bps: Option<f64>,
    /// Units whose mean rate over the training bins is below 0.05 Hz (index, Hz).
    pub near_silent_units: Vec<(usize, f64)>,
}

impl Comparison {
    pub fn score(&self, metric: Metric, method: &str) -> Option<f64> {
        self.scores.iter().find(|s| s.metric == metric && s.method == method).and_then(|s| s.bits_per_spike)
    }

    /// The baselines the model does not beat.
    pub fn losses(&self) -> Vec<&Versus> {
        self.versus.iter().filter(|v| !v.model_wins).collect()
    }
}

/// Score the model's rates and every baseline on `split`.
pub fn compare(ds: &Dataset, split: &Split, model: &ModelRates) -> Comparison {
    let all: Vec<usize> = (0..ds.n_units).collect();
    let rows = &split.eval_rows;
    let mut scores = vec![
        Score {
            metric: Metric::CoBps,
            method: "model".into(),
            bits_per_spike: if split.folds.is_empty() { None } else { bits_per_spike(ds, rows, &all, &model.cosmoothed) },
            detail: format!(
                "each of {} folds of units held out in turn: latents from the other units (Laplace RTS smoother), the fold's rates from the model's readout",
                split.folds.len()
            ),
        },
        Score {
            metric: Metric::PredictiveBps,
            method: "model".into(),
            bits_per_spike: bits_per_spike(ds, rows, &all, &model.predictive),
            detail: "the filter's one-step-ahead prediction of every unit".into(),
        },
    ];
    scores.extend(baselines::score_all(ds, split));
    let mut versus = Vec::new();
    for s in scores.iter().filter(|s| s.method != "model") {
        let model_bps = scores.iter().find(|m| m.method == "model" && m.metric == s.metric).and_then(|m| m.bits_per_spike);
        if let (Some(m), Some(b)) = (model_bps, s.bits_per_spike) {
            versus.push(Versus {
                metric: s.metric,
                baseline: s.method.clone(),
                model_bps: m,
                baseline_bps: b,
                ratio: (b > 0.0).then_some(m / b),
                difference: m - b,
                model_wins: m > b,
            });
        }
    }
    let (_, _, spikes) = nll_sums(ds, rows, &all, &model.predictive);
    let co_spikes = if split.folds.is_empty() { 0.0 } else { spikes };
    Comparison {
        heldout_bins: rows.len(),
        heldout_spikes: spikes,
        training_bins: split.train_rows.len(),
        cosmoothing_folds: split.folds.clone(),
        cosmoothing_spikes: co_spikes,
        cosmoothing_seed: split.seed,
        scores,
        versus,
        smoothed_bps: bits_per_spike(ds, rows, &all, &model.smoothed),
        near_silent_units: near_silent(ds, &split.train_rows),
    }
}

/// Units whose mean rate over `rows` is below [`NEAR_SILENT_HZ`].
pub fn near_silent(ds: &Dataset, rows: &[Row]) -> Vec<(usize, f64)> {
    let n = ds.n_units;
    let mut sum = vec![0.0; n];
    for &(ri, k) in rows {
        for u in 0..n {
            sum[u] += ds.recordings[ri].counts[k * n + u];
        }
    }
    let secs = rows.len() as f64 * ds.bin_s;
    (0..n).map(|u| (u, if secs > 0.0 { sum[u] / secs } else { 0.0 })).filter(|&(_, hz)| hz < NEAR_SILENT_HZ).collect()
}

/// The summary lines `fit` prints: each honest score, the model against each baseline.
pub fn summary_lines(c: &Comparison) -> Vec<String> {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let mut out = Vec::new();
    for metric in [Metric::CoBps, Metric::PredictiveBps] {
        let model = c.score(metric, "model");
        let mut line = match metric {
            Metric::CoBps => format!(
                "held-out {} ({} folds of units, each predicted from the others; {:.0} spikes): model {}",
                metric.describe(),
                c.cosmoothing_folds.len(),
                c.cosmoothing_spikes,
                f(model)
            ),
            Metric::PredictiveBps => format!("held-out {}: model {}", metric.describe(), f(model)),
        };
        for s in c.scores.iter().filter(|s| s.metric == metric && s.method != "model") {
            line += &format!(" | {} {}", s.method, f(s.bits_per_spike));
            if let Some(v) = c.versus.iter().find(|v| v.metric == metric && v.baseline == s.method) {
                match v.ratio {
                    Some(r) => line += &format!(" (model ×{r:.2})"),
                    None => line += &format!(" (model {:+.3})", v.difference),
                }
            }
        }
        out.push(line);
    }
    let losses: Vec<String> = c.losses().iter().map(|v| format!("{} on {}", v.baseline, v.metric.describe())).collect();
    if !losses.is_empty() {
        out.push(format!("THE MODEL LOSES to: {} (see docs/evaluation.md for what to try)", losses.join(", ")));
    }
    if !c.near_silent_units.is_empty() {
        let list: Vec<String> = c.near_silent_units.iter().take(10).map(|(u, hz)| format!("{u} ({hz:.3} Hz)")).collect();
        out.push(format!(
            "{} near-silent units (below {NEAR_SILENT_HZ} Hz in the training bins): {}{}",
            c.near_silent_units.len(),
            list.join(", "),
            if c.near_silent_units.len() > 10 { ", …" } else { "" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(counts: &[f64], n: usize, heldout: &[bool]) -> Dataset<'static> {
        let counts: &'static [f64] = Box::leak(counts.to_vec().into_boxed_slice());
        let heldout: &'static [bool] = Box::leak(heldout.to_vec().into_boxed_slice());
        let bins = counts.len() / n;
        Dataset {
            recordings: vec![Recording { counts, inputs: &[], usable: vec![true; bins], heldout }],
            n_units: n,
            control: 0,
            bin_s: 0.01,
        }
    }

    #[test]
    fn the_null_model_scores_zero_and_the_truth_scores_positive() {
        // Unit 0 alternates 0, 2; a model that knows it beats the mean.
        let counts: Vec<f64> = (0..100).map(|k| if k % 2 == 0 { 0.0 } else { 2.0 }).collect();
        let ds = dataset(&counts, 1, &[true; 100]);
        let rows: Vec<Row> = (0..100).map(|k| (0, k)).collect();
        let null = vec![1.0; 100];
        assert!(bits_per_spike(&ds, &rows, &[0], &null).unwrap().abs() < 1e-12);
        let truth: Vec<f64> = counts.iter().map(|&c| c.max(1e-3)).collect();
        assert!(bits_per_spike(&ds, &rows, &[0], &truth).unwrap() > 0.5);
        // No spikes: no score, not NaN.
        let silent = dataset(&[0.0; 10], 1, &[true; 10]);
        let rows10: Vec<Row> = (0..10).map(|k| (0, k)).collect();
        assert_eq!(bits_per_spike(&silent, &rows10, &[0], &[0.0; 10]), None);
    }

    #[test]
    fn unit_folds_are_seeded_quarters_covering_every_unit_once() {
        let f = unit_folds(40, 7);
        assert_eq!(f.len(), 4);
        assert!(f.iter().all(|x| x.len() == 10));
        let mut all = f.concat();
        all.sort_unstable();
        assert_eq!(all, (0..40).collect::<Vec<_>>());
        assert_eq!(unit_folds(40, 7), f);
        assert_ne!(unit_folds(40, 8), f);
        assert_eq!(unit_folds(2, 1).len(), 2);
        assert!(unit_folds(1, 1).is_empty());
    }
}
