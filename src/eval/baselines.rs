//! The baselines a lab already has, scored on the same held-out bins and units as the
//! model ([`super::compare`]). Each is learnt on the training bins only.
//!
//! - **smoothing + GLM** (co-bps; NLB's smoothing baseline): each held-in unit's spikes
//!   smoothed by a Gaussian of σ = 50 ms, log(s + 10⁻⁴), and a Poisson GLM per held-out unit
//!   on them (ridge α = 0.1 as sklearn's `PoissonRegressor(alpha=0.1)`, NLB's setting). Over
//!   48 held-in units the features are their top 48 principal components (a Newton fit
//!   costs p² per bin).
//! - **causal history GLM** (predictive bps): per unit, a Poisson GLM on its own past
//!   (the last bin's count; exponential traces of 50 ms, 200 ms and 1 s) and the
//!   population's (traces of 50 ms and 1 s): refractoriness, bursts and slow drifts, causal.
//! - **input-locked** (predictive bps, only with an input that changes): with at most 16
//!   distinct input states, a PSTH: each unit's rate by (input state, time since the input
//!   last changed), shrunk towards the state's and the unit's mean; with more (continuous
//!   stimulation) a Poisson GLM on the inputs averaged over lag windows of 1, 2, 4, …, 32
//!   bins. The input of bin k is the command of bin k − 1, as the model sees it.

use super::glm::{self, PoissonGlm};
use super::{bits_per_spike, Dataset, Metric, Row, Score, Split};
use nalgebra::DMatrix;
use std::collections::HashMap;

/// GLMs see at most this many training bins (evenly strided).
const MAX_GLM_ROWS: usize = 20_000;
/// The smoothing baseline's features: above this many held-in units, their top principal
/// components.
const MAX_SMOOTHING_FEATURES: usize = 48;
/// NLB's smoothing kernel and log offset.
const SMOOTHING_SIGMA_S: f64 = 0.05;
const LOG_OFFSET: f64 = 1e-4;
/// sklearn's `PoissonRegressor(alpha)` penalises α/2 ‖w‖² per sample.
const NLB_ALPHA: f64 = 0.1;
/// The other GLMs' ridge per training bin (on standardised features): a light touch.
const RIDGE_PER_ROW: f64 = 1e-4;
/// A PSTH over at most this many distinct input states; more is a GLM on lagged inputs.
const MAX_PSTH_STATES: usize = 16;
/// Pseudo-bins of shrinkage of a PSTH cell towards its state's mean, and of a state's mean
/// towards the unit's.
const PSTH_SHRINK_BINS: f64 = 5.0;

pub const SMOOTHING_GLM: &str = "smoothing + GLM";
pub const CAUSAL_HISTORY: &str = "causal history GLM";
pub const INPUT_PSTH: &str = "input-locked PSTH";
pub const INPUT_GLM: &str = "lagged-input GLM";

/// Every baseline's score.
pub fn score_all(ds: &Dataset, split: &Split) -> Vec<Score> {
    vec![smoothing_glm(ds, split), causal_history(ds, split), input_locked(ds, split)]
}

/// Gaussian smoothing (σ in bins) of the `units` columns of a bins × n matrix over
/// [start, end), each output normalised by the kernel weight inside the range.
pub fn gaussian_smooth(y: &[f64], n: usize, units: &[usize], start: usize, end: usize, sigma: f64) -> Vec<f64> {
    let w = (3.0 * sigma).ceil().max(1.0) as isize;
    let kernel: Vec<f64> = (-w..=w).map(|i| (-(i as f64).powi(2) / (2.0 * sigma * sigma)).exp()).collect();
    let (len, nu) = (end - start, units.len());
    let mut out = vec![0.0; len * nu];
    for i in 0..len {
        let mut wsum = 0.0;
        let o = &mut out[i * nu..(i + 1) * nu];
        for (off, kv) in (-w..=w).zip(&kernel) {
            let j = i as isize + off;
            if j < 0 || j >= len as isize {
                continue;
            }
            wsum += kv;
            let row = &y[(start + j as usize) * n..(start + j as usize + 1) * n];
            for (slot, &u) in o.iter_mut().zip(units) {
                *slot += kv * row[u];
            }
        }
        o.iter_mut().for_each(|v| *v /= wsum);
    }
    out
}

/// Features (one matrix per recording, bins × p) → the GLM per target unit learnt on the
/// training rows, predicted on the eval rows: eval_rows × targets.len().
fn glm_rates(
    ds: &Dataset,
    split: &Split,
    features: &dyn Fn(usize) -> DMatrix<f64>,
    targets: &[usize],
    ridge_per_row: f64,
    standardise: bool,
) -> Vec<f64> {
    let per_rec: Vec<DMatrix<f64>> = (0..ds.recordings.len()).map(features).collect();
    let gather = |rows: &[Row]| {
        let p = per_rec.first().map_or(0, |m| m.ncols());
        DMatrix::from_fn(rows.len(), p, |i, j| per_rec[rows[i].0][(rows[i].1, j)])
    };
    let train = glm::subsample(&split.train_rows, MAX_GLM_ROWS);
    let (mut xt, mut xe) = (gather(&train), gather(&split.eval_rows));
    if standardise {
        let all: Vec<usize> = (0..xt.nrows()).collect();
        let (mean, sd) = glm::standardiser(&xt, &all);
        xt = glm::standardised_rows(&xt, &all, &mean, &sd);
        xe = glm::standardised_rows(&xe, &(0..xe.nrows()).collect::<Vec<_>>(), &mean, &sd);
    }
    let ridge = ridge_per_row * train.len() as f64;
    let nt = targets.len();
    let mut rates = vec![0.0; split.eval_rows.len() * nt];
    let mut row = vec![0.0; xe.ncols()];
    for (j, &u) in targets.iter().enumerate() {
        let y: Vec<f64> = train.iter().map(|&(ri, k)| ds.recordings[ri].counts[k * ds.n_units + u]).collect();
        let g: PoissonGlm = glm::fit(&xt, &y, ridge);
        for i in 0..xe.nrows() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = xe[(i, c)];
            }
            rates[i * nt + j] = g.predict(&row);
        }
    }
    rates
}

/// NLB's smoothing baseline (co-bps), fold by fold as the model's.
pub fn smoothing_glm(ds: &Dataset, split: &Split) -> Score {
    let score = |bps, detail| Score { metric: Metric::CoBps, method: SMOOTHING_GLM.into(), bits_per_spike: bps, detail };
    if split.folds.is_empty() {
        return score(None, "co-smoothing needs at least 2 units".into());
    }
    if split.train_rows.is_empty() || split.eval_rows.is_empty() {
        return score(None, "no training or no held-out bins".into());
    }
    let n = ds.n_units;
    let mut rates = vec![0.0; split.eval_rows.len() * n];
    let mut pca = false;
    for (fi, fold) in split.folds.iter().enumerate() {
        let heldin = split.heldin(fi, n);
        pca |= heldin.len() > MAX_SMOOTHING_FEATURES;
        let features = smoothed_features(ds, split, &heldin);
        let r = glm_rates(ds, split, &*features, fold, NLB_ALPHA, false);
        for i in 0..split.eval_rows.len() {
            for (j, &u) in fold.iter().enumerate() {
                rates[i * n + u] = r[i * fold.len() + j];
            }
        }
    }
    let detail = format!(
        "each of {} folds of units held out in turn: {}the log of the other units' spikes smoothed by a 50 ms Gaussian; Poisson GLM, α = {NLB_ALPHA}",
        split.folds.len(),
        if pca { format!("the top {MAX_SMOOTHING_FEATURES} principal components of ") } else { String::new() }
    );
    score(bits_per_spike(ds, &split.eval_rows, &split.cosmoothed_units(), &rates), detail)
}

/// The smoothing baseline's features for one fold: log smoothed spikes of `heldin`, or
/// their top principal components over the training rows when there are many.
fn smoothed_features<'a>(ds: &'a Dataset, split: &Split, heldin: &[usize]) -> Box<dyn Fn(usize) -> DMatrix<f64> + 'a> {
    let sigma = (SMOOTHING_SIGMA_S / ds.bin_s).max(0.5);
    let heldin = heldin.to_vec();
    let log_smoothed = move |ri: usize| {
        let r = &ds.recordings[ri];
        let s = gaussian_smooth(r.counts, ds.n_units, &heldin, 0, r.bins(), sigma);
        DMatrix::from_row_iterator(r.bins(), heldin.len(), s.into_iter().map(|v| (v + LOG_OFFSET).ln()))
    };
    let mats: Vec<DMatrix<f64>> = (0..ds.recordings.len()).map(&log_smoothed).collect();
    let p = mats.first().map_or(0, |m| m.ncols());
    if p <= MAX_SMOOTHING_FEATURES {
        return Box::new(move |ri| mats[ri].clone());
    }
    // Principal components of the log-smoothed rates over the training rows.
    let train = glm::subsample(&split.train_rows, MAX_GLM_ROWS);
    let mean: Vec<f64> = (0..p).map(|j| train.iter().map(|&(ri, k)| mats[ri][(k, j)]).sum::<f64>() / train.len() as f64).collect();
    let centred = DMatrix::from_fn(train.len(), p, |i, j| mats[train[i].0][(train[i].1, j)] - mean[j]);
    let eig = nalgebra::SymmetricEigen::new(centred.tr_mul(&centred));
    let mut order: Vec<usize> = (0..p).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let basis = DMatrix::from_fn(p, MAX_SMOOTHING_FEATURES, |i, j| eig.eigenvectors[(i, order[j])]);
    Box::new(move |ri: usize| {
        let m = &mats[ri];
        let c = DMatrix::from_fn(m.nrows(), p, |i, j| m[(i, j)] - mean[j]);
        c * &basis
    })
}

/// Exponential traces of a series: h[k] = a h[k−1] + (1 − a) x[k−1], a = exp(−1/τ), with
/// τ = 0 meaning "the previous value".
fn trace_into(x: impl Iterator<Item = f64>, tau_bins: f64, out: &mut [f64]) {
    let a = if tau_bins > 0.0 { (-1.0 / tau_bins).exp() } else { 0.0 };
    let mut h = 0.0;
    for (k, v) in x.enumerate() {
        out[k] = h;
        h = a * h + (1.0 - a) * v;
    }
}

/// The per-unit causal history GLM (predictive bps, every unit).
pub fn causal_history(ds: &Dataset, split: &Split) -> Score {
    let detail =
        "per unit: Poisson GLM on its last bin's count, its 50 ms / 200 ms / 1 s traces and the population's 50 ms / 1 s traces (causal)";
    let score = |bps, detail: &str| Score {
        metric: Metric::PredictiveBps,
        method: CAUSAL_HISTORY.into(),
        bits_per_spike: bps,
        detail: detail.into(),
    };
    if split.train_rows.is_empty() || split.eval_rows.is_empty() {
        return score(None, "no training or no held-out bins");
    }
    let n = ds.n_units;
    let taus = [0.0, 0.05 / ds.bin_s, 0.2 / ds.bin_s, 1.0 / ds.bin_s];
    let pop_taus = [0.05 / ds.bin_s, 1.0 / ds.bin_s];
    // The population's traces are shared by every unit.
    let pop: Vec<DMatrix<f64>> = ds
        .recordings
        .iter()
        .map(|r| {
            let total: Vec<f64> = (0..r.bins()).map(|k| r.counts[k * n..(k + 1) * n].iter().sum::<f64>() / n as f64).collect();
            let mut m = DMatrix::zeros(r.bins(), pop_taus.len());
            let mut col = vec![0.0; r.bins()];
            for (j, &t) in pop_taus.iter().enumerate() {
                trace_into(total.iter().copied(), t, &mut col);
                m.set_column(j, &nalgebra::DVector::from_column_slice(&col));
            }
            m
        })
        .collect();
    let mut rates = vec![0.0; split.eval_rows.len() * n];
    for u in 0..n {
        let own = |ri: usize| {
            let r = &ds.recordings[ri];
            let mut m = DMatrix::zeros(r.bins(), taus.len() + pop_taus.len());
            let mut col = vec![0.0; r.bins()];
            for (j, &t) in taus.iter().enumerate() {
                trace_into((0..r.bins()).map(|k| r.counts[k * n + u]), t, &mut col);
                m.set_column(j, &nalgebra::DVector::from_column_slice(&col));
            }
            for j in 0..pop_taus.len() {
                m.set_column(taus.len() + j, &pop[ri].column(j));
            }
            m
        };
        let r = glm_rates(ds, split, &own, &[u], RIDGE_PER_ROW, true);
        for (i, v) in r.into_iter().enumerate() {
            rates[i * n + u] = v;
        }
    }
    let all: Vec<usize> = (0..n).collect();
    score(bits_per_spike(ds, &split.eval_rows, &all, &rates), detail)
}

/// The input state seen by bin k: the command of bin k − 1 (bin 0 sees its own: there is
/// no earlier one).
fn state_key(inputs: &[f64], m: usize, k: usize) -> Vec<u32> {
    let j = k.max(1) - 1;
    inputs[j * m..(j + 1) * m].iter().map(|&v| (v as f32).to_bits()).collect()
}

/// Time since the input last changed, in buckets: exact up to 10 bins, then 3 per octave.
fn lag_bucket(since: usize) -> usize {
    if since < 10 {
        since
    } else {
        (10 + ((since as f64 / 10.0).log2() * 3.0) as usize).min(40)
    }
}

/// The input-locked baseline (predictive bps, every unit).
pub fn input_locked(ds: &Dataset, split: &Split) -> Score {
    let (n, m) = (ds.n_units, ds.control);
    let none = |method: &str, detail: String| Score { metric: Metric::PredictiveBps, method: method.into(), bits_per_spike: None, detail };
    if m == 0 {
        return none(INPUT_PSTH, "the recording has no input (no Control stream)".into());
    }
    if split.train_rows.is_empty() || split.eval_rows.is_empty() {
        return none(INPUT_PSTH, "no training or no held-out bins".into());
    }
    let mut states: HashMap<Vec<u32>, usize> = HashMap::new();
    for &(ri, k) in &split.train_rows {
        let key = state_key(ds.recordings[ri].inputs, m, k);
        let next = states.len();
        states.entry(key).or_insert(next);
        if states.len() > MAX_PSTH_STATES {
            break;
        }
    }
    if states.len() <= 1 {
        return none(INPUT_PSTH, "the input never changes in the training bins: nothing to lock to".into());
    }
    let all: Vec<usize> = (0..n).collect();
    if states.len() <= MAX_PSTH_STATES {
        let rates = psth_rates(ds, split, &states);
        let detail = format!(
            "each unit's rate by input state ({} states) × time since the input last changed (41 buckets), shrunk towards the state's mean",
            states.len()
        );
        return Score {
            metric: Metric::PredictiveBps,
            method: INPUT_PSTH.into(),
            bits_per_spike: bits_per_spike(ds, &split.eval_rows, &all, &rates),
            detail,
        };
    }
    // Continuous input: a GLM on the inputs averaged over lag windows.
    let windows: &[(usize, usize)] =
        if 6 * m <= 64 { &[(0, 0), (1, 2), (3, 6), (7, 14), (15, 30), (31, 62)] } else { &[(0, 0), (1, 6), (7, 62)] };
    let channels: Vec<usize> = (0..m).take(64 / windows.len()).collect();
    let features = |ri: usize| {
        let r = &ds.recordings[ri];
        let bins = r.bins();
        let mut out = DMatrix::zeros(bins, windows.len() * channels.len());
        for (ci, &c) in channels.iter().enumerate() {
            // cum[j] = Σ_{i<j} u_i: the mean of u over [k−1−hi, k−1−lo] in O(1).
            let mut cum = vec![0.0; bins + 1];
            for i in 0..bins {
                cum[i + 1] = cum[i] + r.inputs[i * m + c];
            }
            for k in 0..bins {
                for (wi, &(lo, hi)) in windows.iter().enumerate() {
                    let end = k as isize - lo as isize; // exclusive
                    let start = (k as isize - 1 - hi as isize).max(0);
                    if end > start {
                        out[(k, ci * windows.len() + wi)] = (cum[end as usize] - cum[start as usize]) / (end - start) as f64;
                    }
                }
            }
        }
        out
    };
    let rates = glm_rates(ds, split, &features, &all, RIDGE_PER_ROW, true);
    let skipped = if channels.len() < m { format!(" (the first {} of {m} input channels)", channels.len()) } else { String::new() };
    Score {
        metric: Metric::PredictiveBps,
        method: INPUT_GLM.into(),
        bits_per_spike: bits_per_spike(ds, &split.eval_rows, &all, &rates),
        detail: format!(
            "more than {MAX_PSTH_STATES} input states: per unit, a Poisson GLM on the inputs averaged over {} lag windows{skipped}",
            windows.len()
        ),
    }
}

fn psth_rates(ds: &Dataset, split: &Split, states: &HashMap<Vec<u32>, usize>) -> Vec<f64> {
    let (n, m) = (ds.n_units, ds.control);
    // (state, lag bucket) of every bin of every recording; None: a state unseen in training.
    let cells: Vec<Vec<(Option<usize>, usize)>> = ds
        .recordings
        .iter()
        .map(|r| {
            let mut since = 0usize;
            let mut prev: Option<Vec<u32>> = None;
            (0..r.bins())
                .map(|k| {
                    let key = state_key(r.inputs, m, k);
                    since = if prev.as_ref() == Some(&key) { since + 1 } else { 0 };
                    let s = states.get(&key).copied();
                    prev = Some(key);
                    (s, lag_bucket(since))
                })
                .collect()
        })
        .collect();
    let ns = states.len();
    let buckets = 41;
    let mut cell_sum = vec![0.0; ns * buckets * n];
    let mut cell_bins = vec![0.0; ns * buckets];
    let mut unit_sum = vec![0.0; n];
    for &(ri, k) in &split.train_rows {
        let (s, b) = cells[ri][k];
        let y = &ds.recordings[ri].counts[k * n..(k + 1) * n];
        for u in 0..n {
            unit_sum[u] += y[u];
        }
        if let Some(s) = s {
            cell_bins[s * buckets + b] += 1.0;
            for u in 0..n {
                cell_sum[(s * buckets + b) * n + u] += y[u];
            }
        }
    }
    let unit_mean: Vec<f64> = unit_sum.iter().map(|v| v / split.train_rows.len() as f64).collect();
    let mut state_sum = vec![0.0; ns * n];
    let mut state_bins = vec![0.0; ns];
    for s in 0..ns {
        for b in 0..buckets {
            state_bins[s] += cell_bins[s * buckets + b];
            for u in 0..n {
                state_sum[s * n + u] += cell_sum[(s * buckets + b) * n + u];
            }
        }
    }
    let a = PSTH_SHRINK_BINS;
    let mut rates = vec![0.0; split.eval_rows.len() * n];
    for (i, &(ri, k)) in split.eval_rows.iter().enumerate() {
        let (s, b) = cells[ri][k];
        for u in 0..n {
            rates[i * n + u] = match s {
                None => unit_mean[u],
                Some(s) => {
                    let state_rate = (state_sum[s * n + u] + a * unit_mean[u]) / (state_bins[s] + a);
                    let c = s * buckets + b;
                    (cell_sum[c * n + u] + a * state_rate) / (cell_bins[c] + a)
                }
            };
        }
    }
    rates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{Recording, Split};

    #[test]
    fn smoothing_keeps_a_constant_and_normalises_at_the_edges() {
        let y = vec![2.0; 50 * 3];
        let s = gaussian_smooth(&y, 3, &[0, 2], 0, 50, 4.0);
        assert_eq!(s.len(), 100);
        assert!(s.iter().all(|v| (v - 2.0).abs() < 1e-12));
    }

    #[test]
    fn lag_buckets_are_monotone_and_bounded() {
        let b: Vec<usize> = (0..100_000).map(lag_bucket).collect();
        assert!(b.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*b.last().unwrap(), 40);
    }

    /// A unit that fires only right after the input switches on: the PSTH and the causal
    /// history baselines both see it; the null model does not.
    #[test]
    fn input_locked_and_history_baselines_beat_the_null_model_on_locked_spikes() {
        let bins = 4000;
        let n = 2;
        let mut inputs = vec![0.0; bins];
        let mut counts = vec![0.0; bins * n];
        for k in 0..bins {
            inputs[k] = if (k / 50) % 2 == 1 { 1.0 } else { 0.0 };
        }
        for k in 1..bins {
            // Unit 0: a transient 1–3 bins after the input turns on. Unit 1: tonic.
            let on_since = (1..=3).any(|l| k > l && inputs[k - l - 1] == 0.0 && inputs[k - l] == 1.0);
            counts[k * n] = if on_since { 1.0 } else { 0.0 };
            counts[k * n + 1] = (k % 3 == 0) as u8 as f64;
        }
        let heldout: Vec<bool> = (0..bins).map(|k| k >= 3000).collect();
        let ds = Dataset {
            recordings: vec![Recording { counts: &counts, inputs: &inputs, usable: vec![true; bins], heldout: &heldout }],
            n_units: n,
            control: 1,
            bin_s: 0.01,
        };
        let split = Split::new(&ds, 1);
        let psth = input_locked(&ds, &split);
        assert_eq!(psth.method, INPUT_PSTH);
        assert!(psth.bits_per_spike.unwrap() > 0.3, "{psth:?}");
        let hist = causal_history(&ds, &split);
        assert!(hist.bits_per_spike.unwrap() > 0.3, "{hist:?}");
        // A constant input: no input-locked score, and it says why.
        let flat = vec![0.5; bins];
        let ds2 =
            Dataset { recordings: vec![Recording { counts: &counts, inputs: &flat, usable: vec![true; bins], heldout: &heldout }], ..ds };
        let s = input_locked(&ds2, &Split::new(&ds2, 1));
        assert!(s.bits_per_spike.is_none() && s.detail.contains("never changes"), "{s:?}");
    }
}
