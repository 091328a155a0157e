//! How a simulated session did against the simulator's truth: latent R² (raw and after the
//! best affine map), tracking error open vs closed loop, and task re-identification after
//! each switch. Accumulated bin by bin in fixed memory — sufficient statistics, not rows —
//! so an hour at 1 ms bins costs what a minute does, and the status line's numbers are O(1)
//! to compute each second.

use super::{Reidentification, Tracking, TrackingTarget};

/// One finalised bin with live input: what the model estimated and, in simulation, the truth.
pub struct EvalRow<'a> {
    /// The controller's gate was on (closed loop).
    pub enabled: bool,
    pub x: &'a [f64],
    pub x_true: Option<&'a [f64]>,
    pub z: &'a [f64],
    pub task_true: Option<usize>,
}

/// 1 − SSE/SST pooled over dimensions, SST about each dimension's own mean (Welford).
#[derive(Clone)]
pub struct R2Accumulator {
    n: u64,
    mean: Vec<f64>,
    m2: Vec<f64>,
    sse: f64,
}

impl R2Accumulator {
    pub fn new(dims: usize) -> R2Accumulator {
        R2Accumulator { n: 0, mean: vec![0.0; dims], m2: vec![0.0; dims], sse: 0.0 }
    }

    pub fn add(&mut self, x: &[f64], t: &[f64]) {
        self.n += 1;
        let n = self.n as f64;
        for i in 0..self.mean.len() {
            let delta = t[i] - self.mean[i];
            self.mean[i] += delta / n;
            self.m2[i] += delta * (t[i] - self.mean[i]);
            self.sse += (x[i] - t[i]).powi(2);
        }
    }

    /// None with fewer than 10 bins or a constant truth.
    pub fn value(&self) -> Option<f64> {
        let sst: f64 = self.m2.iter().sum();
        (self.n >= 10 && sst > 0.0).then(|| 1.0 - self.sse / sst)
    }
}

/// 1 − SSE/SST of estimates against the truth, over all dimensions ((estimate, truth) per
/// bin); None with fewer than 10 bins or a constant truth.
pub fn r_squared<'a>(pairs: impl Iterator<Item = (&'a [f64], &'a [f64])>) -> Option<f64> {
    let mut pairs = pairs.peekable();
    let d = pairs.peek().map_or(0, |(_, t)| t.len());
    let mut acc = R2Accumulator::new(d);
    for (x, t) in pairs {
        acc.add(x, t);
    }
    acc.value()
}

/// The least-squares affine map from estimate to truth, from its normal equations: R² of the
/// truth against it, pooled over the truth's dimensions.
#[derive(Clone)]
pub struct AffineR2Accumulator {
    n: u64,
    /// Estimate dimensions d (the design has d + 1 columns: x and a constant).
    d: usize,
    /// Truth dimensions.
    dt: usize,
    xtx: nalgebra::DMatrix<f64>,
    xty: nalgebra::DMatrix<f64>,
    /// Per truth dimension: Σy and Σy² (for SST and for SSE by the normal equations).
    sum_y: Vec<f64>,
    sum_y2: Vec<f64>,
    row: nalgebra::DVector<f64>,
}

impl AffineR2Accumulator {
    pub fn new(d: usize, dt: usize) -> AffineR2Accumulator {
        AffineR2Accumulator {
            n: 0,
            d,
            dt,
            xtx: nalgebra::DMatrix::zeros(d + 1, d + 1),
            xty: nalgebra::DMatrix::zeros(d + 1, dt),
            sum_y: vec![0.0; dt],
            sum_y2: vec![0.0; dt],
            row: nalgebra::DVector::zeros(d + 1),
        }
    }

    pub fn add(&mut self, x: &[f64], y: &[f64]) {
        self.n += 1;
        self.row.as_mut_slice()[..self.d].copy_from_slice(&x[..self.d]);
        self.row[self.d] = 1.0;
        for a in 0..=self.d {
            for b in 0..=self.d {
                self.xtx[(a, b)] += self.row[a] * self.row[b];
            }
            for j in 0..self.dt {
                self.xty[(a, j)] += self.row[a] * y[j];
            }
        }
        for j in 0..self.dt {
            self.sum_y[j] += y[j];
            self.sum_y2[j] += y[j] * y[j];
        }
    }

    /// None with fewer than 20 bins, a constant truth or a singular design.
    pub fn value(&self) -> Option<f64> {
        if self.n < 20 {
            return None;
        }
        let n = self.n as f64;
        let k = self.d + 1;
        let xtx = &self.xtx + nalgebra::DMatrix::identity(k, k) * 1e-9;
        let w = xtx.clone().cholesky()?.solve(&self.xty);
        let (mut sse, mut sst) = (0.0, 0.0);
        for j in 0..self.dt {
            let wj = w.column(j);
            // ‖y − Xw‖² = yᵀy − 2 wᵀXᵀy + wᵀXᵀXw
            sse += self.sum_y2[j] - 2.0 * wj.dot(&self.xty.column(j)) + (wj.transpose() * &xtx * wj)[(0, 0)];
            sst += self.sum_y2[j] - self.sum_y[j] * self.sum_y[j] / n;
        }
        (sst > 0.0).then(|| 1.0 - sse.max(0.0) / sst)
    }
}

/// R² of the truth against the best affine map of the estimate (least squares), pooled over
/// the truth's dimensions: 1 − SSE/SST.
pub fn affine_r2(pairs: &[(Vec<f64>, Vec<f64>)]) -> Option<f64> {
    let (x0, y0) = pairs.first()?;
    let mut acc = AffineR2Accumulator::new(x0.len(), y0.len());
    for (x, y) in pairs {
        acc.add(x, y);
    }
    acc.value()
}

/// The last `window` (estimate, truth) pairs, in a preallocated ring: the status line's R².
struct RecentPairs {
    window: usize,
    d: usize,
    x: Vec<f64>,
    t: Vec<f64>,
    len: usize,
    head: usize,
}

impl RecentPairs {
    fn new(window: usize, d: usize) -> RecentPairs {
        RecentPairs { window, d, x: vec![0.0; window * d], t: vec![0.0; window * d], len: 0, head: 0 }
    }

    fn add(&mut self, x: &[f64], t: &[f64]) {
        let d = self.d;
        self.x[self.head * d..(self.head + 1) * d].copy_from_slice(&x[..d]);
        self.t[self.head * d..(self.head + 1) * d].copy_from_slice(&t[..d]);
        self.head = (self.head + 1) % self.window;
        self.len = (self.len + 1).min(self.window);
    }

    fn r_squared(&self) -> Option<f64> {
        let d = self.d;
        r_squared((0..self.len).map(|i| (&self.x[i * d..(i + 1) * d], &self.t[i * d..(i + 1) * d])))
    }
}

/// Squared tracking error, open and closed loop, leaving out the bins right after each
/// change of the enable gate (the transient).
struct TrackingAccumulator {
    target: TrackingTarget,
    settle_bins: u64,
    since_change: u64,
    prev_enabled: Option<bool>,
    closed: (f64, u64),
    open: (f64, u64),
}

impl TrackingAccumulator {
    fn add(&mut self, enabled: bool, x_true: Option<&[f64]>) {
        if self.prev_enabled != Some(enabled) {
            self.since_change = 0;
            self.prev_enabled = Some(enabled);
        }
        self.since_change += 1;
        let Some(t) = x_true else { return };
        if self.since_change <= self.settle_bins {
            return;
        }
        let err = tracking_error(&self.target, t);
        let acc = if enabled { &mut self.closed } else { &mut self.open };
        acc.0 += err;
        acc.1 += 1;
    }

    fn value(&self) -> Tracking {
        let c = (self.closed.1 > 0).then(|| self.closed.0 / self.closed.1 as f64);
        let o = (self.open.1 > 0).then(|| self.open.0 / self.open.1 as f64);
        Tracking {
            closed_loop_mse: c,
            open_loop_mse: o,
            closed_loop_bins: self.closed.1,
            open_loop_bins: self.open.1,
            ratio: match (c, o) {
                (Some(c), Some(o)) if o > 0.0 => Some(c / o),
                _ => None,
            },
        }
    }
}

/// Squared distance of the true state to the objective: latent units², or Hz² per unit
/// through the simulator's observation model for a rate objective.
fn tracking_error(target: &TrackingTarget, x_true: &[f64]) -> f64 {
    match target {
        TrackingTarget::Latent(t) => x_true.iter().zip(t).map(|(a, b)| (a - b).powi(2)).sum(),
        TrackingTarget::Rates { target_hz, c, d, log_rate_max } => {
            let mut sum = 0.0;
            for (i, r) in target_hz.iter().enumerate() {
                let eta = d[i] + (0..x_true.len()).map(|j| c[(i, j)] * x_true[j]).sum::<f64>();
                sum += (eta.min(*log_rate_max).exp() - r).powi(2);
            }
            sum / target_hz.len() as f64
        }
    }
}

/// After each switch of the true task: bins until the embedding's nearest library task is
/// the true one, and stays so for 10 bins. Counted in bins that have a true task.
struct Reidentifier {
    library: Vec<Vec<f64>>,
    /// Bins with a true task seen so far.
    seen: u64,
    prev_task: Option<usize>,
    done: Vec<Reidentification>,
    /// The switch being followed: its entry and the current run of correct bins.
    open: Option<(Reidentification, u32)>,
}

const REIDENTIFIED_AFTER: u32 = 10;

impl Reidentifier {
    fn nearest(&self, z: &[f64]) -> usize {
        let dist = |p: &Vec<f64>| p.iter().zip(z).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
        (0..self.library.len()).min_by(|&a, &b| dist(&self.library[a]).total_cmp(&dist(&self.library[b]))).unwrap_or(0)
    }

    fn add(&mut self, z: &[f64], task: Option<usize>) {
        let Some(task) = task else { return };
        if self.library.is_empty() {
            return;
        }
        if self.prev_task.is_some_and(|p| p != task) {
            if let Some((entry, _)) = self.open.take() {
                self.done.push(entry);
            }
            self.open = Some((Reidentification { switch_bin: self.seen, task, bins_to_reidentify: None }, 0));
        }
        self.prev_task = Some(task);
        let nearest = self.nearest(z);
        if let Some((entry, run)) = &mut self.open {
            if entry.bins_to_reidentify.is_none() && entry.task == task {
                if nearest == task {
                    *run += 1;
                    if *run == REIDENTIFIED_AFTER {
                        entry.bins_to_reidentify = Some(self.seen + 1 - REIDENTIFIED_AFTER as u64 - entry.switch_bin);
                    }
                } else {
                    *run = 0;
                }
            }
        }
        self.seen += 1;
    }

    fn value(&self) -> Vec<Reidentification> {
        self.done.iter().cloned().chain(self.open.as_ref().map(|(e, _)| e.clone())).collect()
    }
}

/// Everything the report and the status line say about the estimate against the truth.
pub struct Evaluation {
    /// The model's latent dimension equals the simulator's: raw R² means something.
    same_space: bool,
    has_truth: bool,
    r2: R2Accumulator,
    recent: RecentPairs,
    affine: AffineR2Accumulator,
    tracking: Option<TrackingAccumulator>,
    reid: Reidentifier,
}

/// Bins behind the status line's R².
const RECENT_BINS: usize = 500;

impl Evaluation {
    pub fn new(latent: usize, truth_latent: usize, target: Option<TrackingTarget>, settle_bins: u64, library: Vec<Vec<f64>>) -> Evaluation {
        Evaluation {
            same_space: latent == truth_latent,
            has_truth: false,
            r2: R2Accumulator::new(truth_latent),
            recent: RecentPairs::new(RECENT_BINS, if latent == truth_latent { latent } else { 0 }),
            affine: AffineR2Accumulator::new(latent, truth_latent),
            tracking: target.map(|target| TrackingAccumulator {
                target,
                settle_bins,
                since_change: 0,
                prev_enabled: None,
                closed: (0.0, 0),
                open: (0.0, 0),
            }),
            reid: Reidentifier { library, seen: 0, prev_task: None, done: Vec::new(), open: None },
        }
    }

    pub fn add(&mut self, row: EvalRow) {
        if let Some(t) = row.x_true {
            self.has_truth = true;
            if self.same_space {
                self.r2.add(row.x, t);
                self.recent.add(row.x, t);
            }
            if !row.x.is_empty() {
                self.affine.add(row.x, t);
            }
        }
        if let Some(tr) = &mut self.tracking {
            tr.add(row.enabled, row.x_true);
        }
        self.reid.add(row.z, row.task_true);
    }

    pub fn has_truth(&self) -> bool {
        self.has_truth
    }

    /// Over the whole run (None unless the model's latent space is the simulator's).
    pub fn latent_r2(&self) -> Option<f64> {
        self.same_space.then(|| self.r2.value()).flatten()
    }

    /// Over the last 500 bins with truth.
    pub fn recent_latent_r2(&self) -> Option<f64> {
        self.same_space.then(|| self.recent.r_squared()).flatten()
    }

    pub fn latent_r2_affine(&self) -> Option<f64> {
        self.affine.value()
    }

    pub fn tracking(&self) -> Option<Tracking> {
        self.tracking.as_ref().map(TrackingAccumulator::value)
    }

    pub fn reidentification(&self) -> Vec<Reidentification> {
        self.reid.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        }
    }

    /// The accumulators against the plain two-pass formulas over rows kept in memory.
    #[test]
    fn streaming_r2_equals_the_two_pass_formulas() {
        let mut rng = Lcg(3);
        let rows: Vec<(Vec<f64>, Vec<f64>)> = (0..5000)
            .map(|_| {
                let t: Vec<f64> = (0..3).map(|_| rng.next() + 2.0).collect();
                let x: Vec<f64> = t.iter().map(|v| 0.8 * v - 0.3 + 0.1 * rng.next()).collect();
                (x, t)
            })
            .collect();
        // two-pass R²
        let n = rows.len() as f64;
        let mean: Vec<f64> = (0..3).map(|i| rows.iter().map(|r| r.1[i]).sum::<f64>() / n).collect();
        let sse: f64 = rows.iter().map(|(x, t)| (0..3).map(|i| (x[i] - t[i]).powi(2)).sum::<f64>()).sum();
        let sst: f64 = rows.iter().map(|(_, t)| (0..3).map(|i| (t[i] - mean[i]).powi(2)).sum::<f64>()).sum();
        let got = r_squared(rows.iter().map(|(x, t)| (&x[..], &t[..]))).unwrap();
        assert!((got - (1.0 - sse / sst)).abs() < 1e-9, "{got} vs {}", 1.0 - sse / sst);
        // affine: least squares through nalgebra's SVD on the full design
        let x = nalgebra::DMatrix::from_fn(rows.len(), 4, |i, j| if j < 3 { rows[i].0[j] } else { 1.0 });
        let y = nalgebra::DMatrix::from_fn(rows.len(), 3, |i, j| rows[i].1[j]);
        let w = x.clone().svd(true, true).solve(&y, 1e-12).unwrap();
        let resid = &y - &x * w;
        let want = 1.0 - resid.iter().map(|v| v * v).sum::<f64>() / sst;
        let got = affine_r2(&rows).unwrap();
        assert!((got - want).abs() < 1e-7, "{got} vs {want}");
        assert!(got > 0.9);
        assert!(r_squared(rows[..9].iter().map(|(x, t)| (&x[..], &t[..]))).is_none());
        assert!(affine_r2(&rows[..19]).is_none());
    }

    #[test]
    fn reidentification_follows_each_switch() {
        let library = vec![vec![0.0], vec![1.0]];
        let mut ev = Evaluation::new(1, 1, Some(TrackingTarget::Latent(vec![0.0])), 2, library);
        // 30 bins of task 0, then task 1 whose estimate arrives after 5 bins, then task 0
        // never recognised.
        let mut feed = |task: usize, z: f64, enabled: bool| {
            ev.add(EvalRow { enabled, x: &[0.0], x_true: Some(&[1.0]), z: &[z], task_true: Some(task) });
        };
        for _ in 0..30 {
            feed(0, 0.0, false);
        }
        for i in 0..30 {
            feed(1, if i < 5 { 0.0 } else { 1.0 }, true);
        }
        for _ in 0..30 {
            feed(0, 1.0, true);
        }
        let r = ev.reidentification();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].switch_bin, r[0].task, r[0].bins_to_reidentify), (30, 1, Some(5)));
        assert_eq!((r[1].switch_bin, r[1].task, r[1].bins_to_reidentify), (60, 0, None));
        let t = ev.tracking().unwrap();
        // the first 2 bins after each gate change are left out
        assert_eq!((t.open_loop_bins, t.closed_loop_bins), (28, 58));
        assert_eq!(t.closed_loop_mse, Some(1.0));
    }
}
