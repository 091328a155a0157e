//! A per-unit spike-history term in the observation model: refractoriness, bursts and a
//! unit's own fluctuations, which a low-dimensional latent shared by all units cannot carry
//! (on a recorded locust antennal lobe, a per-unit history GLM predicted held-out spikes
//! 2.4× better than the model without this term; docs/evaluation.md).
//!
//! η_{i,k} = cᵢᵀx_k + dᵢ + Σ_b w_{ib} (h_{ib,k} − μᵢ)
//! h_{ib,k} = a_b h_{ib,k−1} + (1 − a_b) y_{i,k−1},  a_b = exp(−Δ/τ_b)  (τ_b = 0: the last bin)
//!
//! The traces h are each unit's own past counts, causal: known before bin k's spikes. μᵢ is
//! the unit's mean count per bin over the fit's training bins, and the traces start there,
//! so dᵢ stays the log-rate at the unit's typical history: what a rate target is converted
//! through and what the co-smoothing readout of an unobserved unit uses. A bin without data
//! feeds the traces no spikes (offline and live alike).
//!
//! Per bin O(N·B), allocation-free: the backends add the offsets to d before the filter,
//! the embedding update, task identification and the controller see it (`obs_d` of the
//! backend's copy of the parameters; the GPU backends upload it with the bin). MPPI's
//! rollouts therefore hold this bin's offsets over the whole horizon (the future spikes that
//! would move them are unknown); on both backends alike.

use nalgebra::{DMatrix, DVector};

/// The history basis `neuroloop fit` uses: the last bin's count, traces of 50 ms, 250 ms and 1 s.
pub const DEFAULT_TAUS_S: [f64; 4] = [0.0, 0.05, 0.25, 1.0];
/// At most this many basis traces in a model file.
pub const MAX_BASIS: usize = 8;

/// The history term's parameters (model file: `history.weight`, `history.mean_count`,
/// metadata `history_taus_s`).
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// τ_b per basis trace (seconds; 0 = the last bin's count).
    pub taus_s: Vec<f64>,
    /// w (N × B).
    pub weight: DMatrix<f64>,
    /// μ (N): mean count per bin over the training bins.
    pub mean_count: DVector<f64>,
}

impl History {
    pub fn basis(&self) -> usize {
        self.taus_s.len()
    }

    /// a_b = exp(−Δ/τ_b) (0 for τ = 0).
    pub fn decays(&self, bin_s: f64) -> Vec<f64> {
        decays(&self.taus_s, bin_s)
    }

    /// Why the parameters are unusable, if they are.
    pub fn check(&self, n_units: usize) -> Result<(), String> {
        let b = self.basis();
        if b == 0 || b > MAX_BASIS {
            return Err(format!("history_taus_s lists {b} traces; 1..={MAX_BASIS} are allowed"));
        }
        if let Some(t) = self.taus_s.iter().find(|t| !(t.is_finite() && **t >= 0.0 && **t <= 3600.0)) {
            return Err(format!("history_taus_s holds {t}; each τ must be in [0, 3600] seconds"));
        }
        if self.weight.shape() != (n_units, b) {
            return Err(format!("history.weight has shape {:?}, expected ({n_units}, {b})", self.weight.shape()));
        }
        if self.mean_count.len() != n_units {
            return Err(format!("history.mean_count has {} entries, expected {n_units}", self.mean_count.len()));
        }
        if !self.weight.iter().all(|v| v.is_finite()) || !self.mean_count.iter().all(|v| v.is_finite() && *v >= 0.0) {
            return Err("history.weight must be finite and history.mean_count finite and ≥ 0".into());
        }
        Ok(())
    }
}

pub fn decays(taus_s: &[f64], bin_s: f64) -> Vec<f64> {
    taus_s.iter().map(|&t| if t > 0.0 { (-bin_s / t).exp() } else { 0.0 }).collect()
}

/// The live traces of one session (the backends).
#[derive(Debug, Clone)]
pub struct HistoryState {
    /// h (N × B).
    traces: DMatrix<f64>,
    decay: Vec<f64>,
}

impl HistoryState {
    pub fn new(h: &History, bin_s: f64) -> Self {
        let mut s = HistoryState { traces: DMatrix::zeros(h.mean_count.len(), h.basis()), decay: h.decays(bin_s) };
        s.reset(h);
        s
    }

    /// Traces at each unit's mean (offsets 0), as at the start of a recording.
    pub fn reset(&mut self, h: &History) {
        for i in 0..self.traces.nrows() {
            for b in 0..self.traces.ncols() {
                self.traces[(i, b)] = h.mean_count[i];
            }
        }
    }

    /// out = d + Σ_b w_b ⊙ (h_b − μ): this bin's log-rate intercepts. Allocation-free.
    pub fn intercepts_into(&self, h: &History, d: &DVector<f64>, out: &mut DVector<f64>) {
        for i in 0..d.len() {
            let mut o = d[i];
            for b in 0..self.traces.ncols() {
                o += h.weight[(i, b)] * (self.traces[(i, b)] - h.mean_count[i]);
            }
            out[i] = o;
        }
    }

    /// Advance the traces past a bin with these counts (None: a bin without data, no spikes).
    pub fn push(&mut self, counts: Option<&[f64]>) {
        for i in 0..self.traces.nrows() {
            let y = counts.map_or(0.0, |c| c[i]);
            for (b, &a) in self.decay.iter().enumerate() {
                self.traces[(i, b)] = a * self.traces[(i, b)] + (1.0 - a) * y;
            }
        }
    }
}

/// What a backend keeps for the history term: the model's own d, the term and its state.
#[derive(Debug, Clone)]
pub struct LiveHistory {
    d: DVector<f64>,
    history: History,
    state: HistoryState,
}

impl LiveHistory {
    /// None when the model has no history term.
    pub fn new(p: &super::ModelParams) -> Option<Self> {
        let h = p.history.as_ref()?;
        Some(LiveHistory { d: p.obs_d.clone(), history: h.clone(), state: HistoryState::new(h, p.bin_s) })
    }

    /// This bin's intercepts d + offsets into `obs_d` (the backend's copy), before the
    /// filter, the embedding update, task identification and the controller run.
    pub fn before_bin(&self, obs_d: &mut DVector<f64>) {
        self.state.intercepts_into(&self.history, &self.d, obs_d);
    }

    /// The model's own d (the log-rates at a typical history).
    pub fn base(&self) -> &DVector<f64> {
        &self.d
    }

    /// After the bin: its counts enter the traces (None: no data, no spikes).
    pub fn after_bin(&mut self, counts: Option<&[f64]>) {
        self.state.push(counts);
    }
}

/// The centred traces h − μ of every bin of a recording (bins × N × B, row-major), as the
/// live state would hold them before each bin: the fit's regressors.
pub fn centred_traces(counts: &[f64], has_data: &[bool], n: usize, taus_s: &[f64], bin_s: f64, mean: &[f64]) -> Vec<f64> {
    let bins = has_data.len();
    let nb = taus_s.len();
    let decay = decays(taus_s, bin_s);
    let mut out = vec![0.0; bins * n * nb];
    let mut tr: Vec<f64> = (0..n * nb).map(|j| mean[j / nb]).collect();
    for k in 0..bins {
        for i in 0..n {
            for b in 0..nb {
                out[(k * n + i) * nb + b] = tr[i * nb + b] - mean[i];
            }
        }
        for i in 0..n {
            let y = if has_data[k] { counts[k * n + i] } else { 0.0 };
            for b in 0..nb {
                let a = decay[b];
                tr[i * nb + b] = a * tr[i * nb + b] + (1.0 - a) * y;
            }
        }
    }
    out
}

/// Σ_b w_b (h_b − μ) per bin and unit (bins × N) from centred traces, for `units` only.
pub fn offsets(traces: &[f64], n: usize, weight: &DMatrix<f64>, units: &[usize]) -> Vec<f64> {
    let nb = weight.ncols();
    let bins = traces.len() / (n * nb).max(1);
    let mut out = Vec::with_capacity(bins * units.len());
    for k in 0..bins {
        for &i in units {
            let row = &traces[(k * n + i) * nb..(k * n + i + 1) * nb];
            out.push((0..nb).map(|b| weight[(i, b)] * row[b]).sum());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(n: usize) -> History {
        History {
            taus_s: DEFAULT_TAUS_S.to_vec(),
            weight: DMatrix::from_fn(n, 4, |i, b| 0.1 * (i + 1) as f64 - 0.2 * b as f64),
            mean_count: DVector::from_fn(n, |i, _| 0.1 * (i + 1) as f64),
        }
    }

    /// The live state and the offline traces agree bin for bin, gaps included.
    #[test]
    fn live_state_matches_the_offline_traces() {
        let (n, bins, bin_s) = (3, 200, 0.01);
        let h = hist(n);
        let counts: Vec<f64> = (0..bins * n).map(|j| ((j * 7) % 5 == 0) as u8 as f64).collect();
        let has_data: Vec<bool> = (0..bins).map(|k| k % 37 != 5).collect();
        let tr = centred_traces(&counts, &has_data, n, &h.taus_s, bin_s, h.mean_count.as_slice());
        let all: Vec<usize> = (0..n).collect();
        let off = offsets(&tr, n, &h.weight, &all);
        let mut s = HistoryState::new(&h, bin_s);
        let d = DVector::from_element(n, 2.0);
        let mut eta = DVector::zeros(n);
        for k in 0..bins {
            s.intercepts_into(&h, &d, &mut eta);
            for i in 0..n {
                assert!((eta[i] - 2.0 - off[k * n + i]).abs() < 1e-12, "bin {k} unit {i}");
            }
            s.push(has_data[k].then(|| &counts[k * n..(k + 1) * n]));
        }
        // At the start the offsets are zero: d is the typical log-rate.
        assert!(off[..n].iter().all(|o| *o == 0.0));
    }

    #[test]
    fn bad_parameters_are_named() {
        let mut h = hist(2);
        assert!(h.check(2).is_ok());
        assert!(h.check(3).unwrap_err().contains("history.weight"));
        h.taus_s[1] = f64::NAN;
        assert!(h.check(2).unwrap_err().contains("history_taus_s"));
    }
}
