//! Task identification against the model file's library of task embeddings
//! (docs/model.md, "Optional task identification").
//!
//! θ_j = θ(z_j) is decoded once per library entry at construction. Each bin, every
//! candidate predicts x⁻_j = f(x_{k−1}, u; θ_j) from the filter's previous mean and is
//! scored by its one-step predictive Poisson log-likelihood of the new counts; the scores
//! (and the current model's own predictive log-likelihood, passed in) sit in circular
//! windows. When the best candidate's windowed sum beats the current model's by more than
//! a margin, and enough bins have passed since the last switch, the identifier proposes a
//! jump; the caller sets z = library[j] and calls [`TaskIdentifier::jumped_to`].
//! Per-bin work is O(T · (d² + N d)) and allocation-free.

use super::dynamics::step;
use super::hypernet::HypernetScratch;
use super::observation::{log_rates, poisson_loglik};
use super::{ModelParams, Theta};
use nalgebra::{DMatrix, DVector};

/// `[model.task_id]` in the rig file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskIdConfig {
    /// Score the library and propose jumps (a no-op when the model has no library).
    pub enabled: bool,
    /// Length of the scoring window (bins). Jumps are proposed only on a full window.
    pub window_bins: usize,
    /// How many nats (summed over the window) the best candidate must beat the current
    /// model by.
    pub margin: f64,
    /// Cool-down after a jump (and after start-up), in bins.
    pub min_bins_between_switches: usize,
}

impl Default for TaskIdConfig {
    fn default() -> Self {
        TaskIdConfig { enabled: true, window_bins: 50, margin: 5.0, min_bins_between_switches: 25 }
    }
}

impl TaskIdConfig {
    /// The documented ranges: window_bins in 1..=10000 (the (T × W) score window is
    /// allocated at start-up), margin finite and ≥ 0, min_bins_between_switches ≤ 10⁹.
    /// Returns the offending key and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=10_000).contains(&self.window_bins) {
            return Err(("window_bins", format!("must be in 1..=10000, got {}", self.window_bins)));
        }
        if !(self.margin.is_finite() && self.margin >= 0.0) {
            return Err(("margin", format!("must be finite and ≥ 0 nats, got {}", self.margin)));
        }
        if self.min_bins_between_switches > 1_000_000_000 {
            return Err(("min_bins_between_switches", format!("must be ≤ 1000000000, got {}", self.min_bins_between_switches)));
        }
        Ok(())
    }
}

/// Scores the task library bin by bin.
#[derive(Debug, Clone)]
pub struct TaskIdentifier {
    pub cfg: TaskIdConfig,
    thetas: Vec<Theta>,
    /// (T × W) per-candidate scores, circular in the column index.
    window: DMatrix<f64>,
    /// (W) the current model's scores.
    current: DVector<f64>,
    /// (T) windowed sums of `window`.
    sums: DVector<f64>,
    current_sum: f64,
    head: usize,
    filled: usize,
    since_switch: usize,
    active: Option<usize>,
    x_pred: DVector<f64>,
    tanh_a: DVector<f64>,
    eta: DVector<f64>,
}

impl TaskIdentifier {
    /// Decodes θ_j for every library embedding (allocates; call at start-up). The active
    /// candidate starts as the library entry equal to `params.z_init`, if any.
    pub fn new(params: &ModelParams, cfg: TaskIdConfig) -> Self {
        let dims = &params.dims;
        let t = params.task_library.len();
        let w = cfg.window_bins.max(1);
        let mut scratch = HypernetScratch::new(dims);
        let thetas = params
            .task_library
            .iter()
            .map(|z| {
                let mut th = Theta::zeros(dims);
                params.hypernet.decode(z, &mut th, &mut scratch);
                th
            })
            .collect();
        let active = params.task_library.iter().position(|z| *z == params.z_init);
        TaskIdentifier {
            cfg,
            thetas,
            window: DMatrix::zeros(t, w),
            current: DVector::zeros(w),
            sums: DVector::zeros(t),
            current_sum: 0.0,
            head: 0,
            filled: 0,
            since_switch: 0,
            active,
            x_pred: DVector::zeros(dims.latent),
            tanh_a: DVector::zeros(dims.latent),
            eta: DVector::zeros(dims.n_units),
        }
    }

    /// Number of library entries T.
    pub fn library_len(&self) -> usize {
        self.thetas.len()
    }

    /// θ_j, decoded at construction.
    pub fn theta(&self, j: usize) -> &Theta {
        &self.thetas[j]
    }

    /// The library entry the current model was last set to (None if z is not a library
    /// entry).
    pub fn active(&self) -> Option<usize> {
        self.active
    }

    /// Declare which library entry (if any) the current z is.
    pub fn set_active(&mut self, active: Option<usize>) {
        self.active = active;
    }

    /// Windowed score of candidate j (nats).
    pub fn windowed(&self, j: usize) -> f64 {
        self.sums[j]
    }

    /// Windowed score of the current model (nats).
    pub fn current_windowed(&self) -> f64 {
        self.current_sum
    }

    /// Bins in the window so far (≤ `window_bins`).
    pub fn filled(&self) -> usize {
        self.filled
    }

    /// The candidate with the largest windowed score (None without a library or data).
    pub fn best(&self) -> Option<usize> {
        if self.filled == 0 {
            return None;
        }
        let mut best: Option<usize> = None;
        for j in 0..self.sums.len() {
            if best.is_none_or(|b| self.sums[j] > self.sums[b]) {
                best = Some(j);
            }
        }
        best
    }

    /// Clear the windows (e.g. after a filter reset). Allocation-free.
    pub fn reset(&mut self) {
        self.window.fill(0.0);
        self.current.fill(0.0);
        self.sums.fill(0.0);
        self.current_sum = 0.0;
        self.head = 0;
        self.filled = 0;
        self.since_switch = 0;
    }

    /// Score one bin (hot, allocation-free). `x_prev` = x_{k−1} (the filter's mean before
    /// this bin's predict), `u` the input over that step, `y` the counts of bin k and
    /// `current_loglik` the current model's predictive log-likelihood of `y` (what
    /// [`super::ekf::PointProcessEkf::update`] returns). Returns Some(j) when the caller
    /// should jump to library entry j.
    pub fn score(
        &mut self,
        params: &ModelParams,
        x_prev: &DVector<f64>,
        u: &DVector<f64>,
        y: &[f64],
        current_loglik: f64,
    ) -> Option<usize> {
        if !self.cfg.enabled || self.thetas.is_empty() || !current_loglik.is_finite() {
            return None;
        }
        let w = self.current.len();
        for j in 0..self.thetas.len() {
            step(&self.thetas[j], params.alpha, x_prev, u, &mut self.x_pred, &mut self.tanh_a);
            log_rates(&params.obs_c, &params.obs_d, params.log_rate_max, &self.x_pred, &mut self.eta);
            let ll = poisson_loglik(y, &self.eta, params.bin_s);
            self.window[(j, self.head)] = if ll.is_finite() { ll } else { -1e300 };
        }
        self.current[self.head] = current_loglik;
        self.head = (self.head + 1) % w;
        self.filled = (self.filled + 1).min(w);
        self.since_switch = self.since_switch.saturating_add(1);
        // Re-sum (T·W adds) rather than keep running sums, which would drift.
        for j in 0..self.thetas.len() {
            self.sums[j] = self.window.row(j).sum();
        }
        self.current_sum = self.current.sum();

        if self.filled < w || self.since_switch < self.cfg.min_bins_between_switches {
            return None;
        }
        let best = self.best()?;
        if Some(best) != self.active && self.sums[best] - self.current_sum > self.cfg.margin {
            Some(best)
        } else {
            None
        }
    }

    /// The caller set z = library[j]: the current model's window becomes candidate j's,
    /// and the cool-down restarts. Allocation-free.
    pub fn jumped_to(&mut self, j: usize) {
        for k in 0..self.current.len() {
            self.current[k] = self.window[(j, k)];
        }
        self.current_sum = self.sums[j];
        self.active = Some(j);
        self.since_switch = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::super::ekf::PointProcessEkf;
    use super::super::testutil::Rng;
    use super::super::Dims;
    use super::*;

    #[test]
    fn identifies_the_task_generating_the_data() {
        let dims = Dims { n_units: 96, latent: 4, embed: 3, control: 2, hidden: 16 };
        for seed in [3u64, 4, 5] {
            let p = ModelParams::synthetic(dims, 3, 0.01, seed);
            let (n, d, m) = (dims.n_units, dims.latent, dims.control);
            let cfg = TaskIdConfig::default();
            let mut tid = TaskIdentifier::new(&p, cfg.clone());
            assert_eq!(tid.library_len(), 3);
            assert_eq!(tid.active(), Some(0));
            let theta_true = p.theta_at(&p.task_library[2]);
            let mut theta = p.theta_at(&p.z_init);
            let mut ekf = PointProcessEkf::new(&dims, p.initial_state_var);
            let mut rng = Rng::new(seed, 5);
            let (mut x, mut next, mut t) = (DVector::zeros(d), DVector::zeros(d), DVector::zeros(d));
            let mut eta = DVector::zeros(n);
            let mut y = vec![0.0; n];
            let mut u = DVector::zeros(m);
            let mut jumps = Vec::new();
            for k in 0..1500 {
                step(&theta_true, p.alpha, &x, &u, &mut next, &mut t);
                for i in 0..d {
                    next[i] += p.process_noise[i].sqrt() * rng.normal();
                }
                x.copy_from(&next);
                log_rates(&p.obs_c, &p.obs_d, p.log_rate_max, &x, &mut eta);
                for i in 0..n {
                    y[i] = rng.poisson(p.bin_s * eta[i].exp());
                }
                ekf.predict(&theta, p.alpha, &p.process_noise, &u);
                let ll = ekf.update(&p.obs_c, &p.obs_d, p.log_rate_max, p.bin_s, &y);
                if let Some(j) = tid.score(&p, &ekf.x_prev, &u, &y, ll) {
                    jumps.push((k, j));
                    theta = tid.theta(j).clone();
                    tid.jumped_to(j);
                }
                if k % 50 == 0 {
                    for j in 0..m {
                        u[j] = 2.0 * rng.uniform() - 1.0;
                    }
                }
            }
            assert!(!jumps.is_empty(), "seed {seed}: never jumped");
            assert_eq!(jumps[0].1, 2, "seed {seed}: jumps {jumps:?}");
            assert!(jumps[0].0 < 2 * cfg.window_bins, "seed {seed}: jumps {jumps:?}");
            assert_eq!(jumps.len(), 1, "seed {seed}: jumps {jumps:?}");
            // The best over the last window may be another task by noise, but within the margin.
            let best = tid.best().unwrap();
            assert!(tid.windowed(2) >= tid.windowed(best) - cfg.margin);
            assert_eq!(tid.active(), Some(2));
        }
    }

    /// Mid-run switch: the data change from task 0 to task 2 after the filter has settled.
    #[test]
    fn detects_a_mid_run_task_switch() {
        let dims = Dims { n_units: 96, latent: 4, embed: 3, control: 2, hidden: 16 };
        for seed in [3u64, 4, 5, 6, 7] {
            let p = ModelParams::synthetic(dims, 3, 0.01, seed);
            let (n, d, m) = (dims.n_units, dims.latent, dims.control);
            let cfg = TaskIdConfig::default();
            let mut tid = TaskIdentifier::new(&p, cfg.clone());
            let mut theta_true = p.theta_at(&p.task_library[0]);
            let mut theta = p.theta_at(&p.z_init);
            let mut ekf = PointProcessEkf::new(&dims, p.initial_state_var);
            let mut rng = Rng::new(seed, 6);
            let (mut x, mut next, mut t) = (DVector::zeros(d), DVector::zeros(d), DVector::zeros(d));
            let mut eta = DVector::zeros(n);
            let mut y = vec![0.0; n];
            let mut u = DVector::zeros(m);
            let mut jumps = Vec::new();
            let switch_at = 1000;
            for k in 0..3000 {
                if k == switch_at {
                    theta_true = p.theta_at(&p.task_library[2]);
                }
                step(&theta_true, p.alpha, &x, &u, &mut next, &mut t);
                for i in 0..d {
                    next[i] += p.process_noise[i].sqrt() * rng.normal();
                }
                x.copy_from(&next);
                log_rates(&p.obs_c, &p.obs_d, p.log_rate_max, &x, &mut eta);
                for i in 0..n {
                    y[i] = rng.poisson(p.bin_s * eta[i].exp());
                }
                ekf.predict(&theta, p.alpha, &p.process_noise, &u);
                let ll = ekf.update(&p.obs_c, &p.obs_d, p.log_rate_max, p.bin_s, &y);
                if let Some(j) = tid.score(&p, &ekf.x_prev, &u, &y, ll) {
                    jumps.push((k, j));
                    theta = tid.theta(j).clone();
                    tid.jumped_to(j);
                }
                if k % 50 == 0 {
                    for j in 0..m {
                        u[j] = 2.0 * rng.uniform() - 1.0;
                    }
                }
            }
            assert!(!jumps.is_empty(), "seed {seed}: never jumped");
            let (k, j) = jumps[0];
            // The latent drifts to the new task's fixed point with τ = 200 ms (20 bins per
            // 0.2 s), so the evidence builds over a few time constants.
            assert!(j == 2 && k >= switch_at && k < switch_at + 8 * cfg.window_bins, "seed {seed}: jumps {jumps:?}");
        }
    }

    #[test]
    fn no_library_or_disabled_never_jumps() {
        let dims = Dims { n_units: 10, latent: 2, embed: 2, control: 1, hidden: 4 };
        let p = ModelParams::synthetic(dims, 0, 0.01, 1);
        let mut tid = TaskIdentifier::new(&p, TaskIdConfig::default());
        assert_eq!(tid.library_len(), 0);
        let x = DVector::zeros(2);
        let u = DVector::zeros(1);
        for _ in 0..100 {
            assert_eq!(tid.score(&p, &x, &u, &[1.0; 10], -3.0), None);
        }
        assert_eq!(tid.best(), None);
        let p = ModelParams::synthetic(dims, 2, 0.01, 1);
        let mut tid = TaskIdentifier::new(&p, TaskIdConfig { enabled: false, ..Default::default() });
        for _ in 0..100 {
            assert_eq!(tid.score(&p, &x, &u, &[1.0; 10], -1e9), None);
        }
        let cfg: TaskIdConfig = toml::from_str("window_bins = 20").unwrap();
        assert_eq!(cfg.window_bins, 20);
        assert_eq!(cfg.margin, TaskIdConfig::default().margin);
        assert!(toml::from_str::<TaskIdConfig>("windw_bins = 20").is_err());
    }
}
