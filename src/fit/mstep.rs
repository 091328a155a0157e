//! The M-step: gradient steps (Adam) on the expected complete-data log-likelihood of the
//! whole model, with gradients from burn's autodiff through the hypernetwork.
//!
//! Per transition k → k+1 of task t (smoothed means m, covariances P from the E-step):
//!   dynamics  ½ Σⱼ (m_{k+1,j} − fⱼ(m_k, u_k; θ(z_t)))² / qⱼ
//! and per bin with data:
//!   observation  Σᵢ Δ·exp(cᵢᵀm_k + dᵢ + ½ cᵢᵀP_k cᵢ) − y_{k,i}(cᵢᵀm_k + dᵢ)
//! (the Gaussian expectation of the Poisson log-likelihood, up to constants), both averaged
//! per bin, plus small ridges on the embeddings and the generators' weights, with the
//! embeddings jittered by seeded noise on each step ([`Z_NOISE`]). Trained: the three generators, one
//! embedding per task, C, d and α. diag(Q) and the initial-state variance have closed forms
//! given the rest and are set by the caller after each M-step.
//!
//! Large fits take each Adam step on a random subset of bins (a seeded Philox draw, so the
//! fit stays deterministic).

use crate::model::{Generator, Hypernet, ModelParams};
use burn::backend::ndarray::NdArrayDevice;
use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, AdamConfig, GradientsParams, Optimizer};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use nalgebra::{DMatrix, DVector};
use neuroloop_kernels::philox::uniform_at;

/// The fit's autodiff backend: burn's ndarray CPU backend in f64.
pub type Inner = NdArray<f64>;
pub type Ad = Autodiff<Inner>;

/// Ridge on the task embeddings (keeps their scale where the online update's prior is).
const Z_RIDGE: f64 = 1e-3;
/// Ridge on the generators' weights: with a few tasks the hypernetwork is far
/// over-parameterised, and an unregularised fit that matches one-step predictions equally
/// well controlled worse (multi-step predictions drift; rate tracking with MPPI 2.2× the
/// true model's after 60 iterations, 1.1× with this ridge; bench/RESULTS.md, "Fitting").
const W_RIDGE: f64 = 1e-3;
/// Each Adam step decodes θ at the embeddings plus N(0, Z_NOISE²) noise (seeded): θ(z) must
/// hold up near each task's embedding, where the online embedding update moves z (the
/// meta-dynamical SSM gets the same from sampling z from its posterior in the ELBO).
const Z_NOISE: f64 = 0.1;

/// One `Linear(e→h) → ReLU → Linear(h→out)` generator as trainable tensors.
#[derive(Module, Debug)]
pub struct GenModule<B: Backend> {
    pub w1: Param<Tensor<B, 2>>,
    pub b1: Param<Tensor<B, 1>>,
    pub w2: Param<Tensor<B, 2>>,
    pub b2: Param<Tensor<B, 1>>,
}

/// Everything the M-step trains.
#[derive(Module, Debug)]
pub struct FitModule<B: Backend> {
    pub w_hh: GenModule<B>,
    pub w_xu: GenModule<B>,
    pub b: GenModule<B>,
    /// (T, e): one embedding per task.
    pub z: Param<Tensor<B, 2>>,
    /// (N, d)
    pub c: Param<Tensor<B, 2>>,
    /// (N)
    pub d: Param<Tensor<B, 1>>,
    /// α = sigmoid(alpha_logit) ∈ (0, 1).
    pub alpha_logit: Param<Tensor<B, 1>>,
    /// (N, B): the history term's weights times each regressor's scale (the M-step sees
    /// standardised traces, so Adam's steps are on one scale whatever a unit's rate);
    /// unused, (N, 1) zeros, without a history term.
    pub hist_w: Param<Tensor<B, 2>>,
}

fn mat<B: Backend>(m: &DMatrix<f64>, dev: &B::Device) -> Tensor<B, 2> {
    let mut v = Vec::with_capacity(m.len());
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            v.push(m[(i, j)]);
        }
    }
    Tensor::from_data(TensorData::new(v, [m.nrows(), m.ncols()]), dev)
}

fn vect<B: Backend>(v: &DVector<f64>, dev: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(v.as_slice().to_vec(), [v.len()]), dev)
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec::<f64>().expect("f64 tensor data")
}

fn gen_module<B: Backend>(g: &Generator, dev: &B::Device) -> GenModule<B> {
    GenModule {
        w1: Param::from_tensor(mat(&g.w1, dev)),
        b1: Param::from_tensor(vect(&g.b1, dev)),
        w2: Param::from_tensor(mat(&g.w2, dev)),
        b2: Param::from_tensor(vect(&g.b2, dev)),
    }
}

fn gen_back<B: Backend>(g: &GenModule<B>, like: &Generator) -> Generator {
    let (h, e) = (like.w1.nrows(), like.w1.ncols());
    let out = like.w2.nrows();
    Generator {
        w1: DMatrix::from_row_slice(h, e, &to_vec(g.w1.val())),
        b1: DVector::from_vec(to_vec(g.b1.val())),
        w2: DMatrix::from_row_slice(out, h, &to_vec(g.w2.val())),
        b2: DVector::from_vec(to_vec(g.b2.val())),
    }
}

impl<B: Backend> GenModule<B> {
    /// (T, e) → (T, out).
    fn forward(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = relu(z.matmul(self.w1.val().transpose()) + self.b1.val().unsqueeze::<2>());
        h.matmul(self.w2.val().transpose()) + self.b2.val().unsqueeze::<2>()
    }
}

impl<B: Backend> FitModule<B> {
    /// `hist_scale` (N × B, row-major): the history regressors' scales (see `hist_w`).
    pub fn from_params(p: &ModelParams, library: &[DVector<f64>], hist_scale: &[f64], dev: &B::Device) -> Self {
        let e = p.dims.embed;
        let zdata: Vec<f64> = library.iter().flat_map(|z| z.iter().copied()).collect();
        let alpha = p.alpha.clamp(1e-4, 1.0 - 1e-4);
        FitModule {
            w_hh: gen_module(&p.hypernet.w_hh, dev),
            w_xu: gen_module(&p.hypernet.w_xu, dev),
            b: gen_module(&p.hypernet.b, dev),
            z: Param::from_tensor(Tensor::from_data(TensorData::new(zdata, [library.len(), e]), dev)),
            c: Param::from_tensor(mat(&p.obs_c, dev)),
            d: Param::from_tensor(vect(&p.obs_d, dev)),
            alpha_logit: Param::from_tensor(Tensor::from_data(TensorData::new(vec![(alpha / (1.0 - alpha)).ln()], [1]), dev)),
            hist_w: Param::from_tensor(match &p.history {
                Some(h) => mat(
                    &DMatrix::from_fn(h.weight.nrows(), h.weight.ncols(), |i, b| h.weight[(i, b)] * hist_scale[i * h.weight.ncols() + b]),
                    dev,
                ),
                None => Tensor::zeros([p.dims.n_units, 1], dev),
            }),
        }
    }

    /// The trained values written into a copy of `like` (the library returned separately).
    pub fn to_params(&self, like: &ModelParams, hist_scale: &[f64]) -> (ModelParams, Vec<DVector<f64>>) {
        let mut p = like.clone();
        p.hypernet = Hypernet {
            w_hh: gen_back(&self.w_hh, &like.hypernet.w_hh),
            w_xu: gen_back(&self.w_xu, &like.hypernet.w_xu),
            b: gen_back(&self.b, &like.hypernet.b),
        };
        let (n, d, e) = (like.dims.n_units, like.dims.latent, like.dims.embed);
        p.obs_c = DMatrix::from_row_slice(n, d, &to_vec(self.c.val()));
        p.obs_d = DVector::from_vec(to_vec(self.d.val()));
        let a = to_vec(self.alpha_logit.val())[0];
        p.alpha = 1.0 / (1.0 + (-a).exp());
        if let Some(h) = &mut p.history {
            let nb = h.basis();
            let v = to_vec(self.hist_w.val());
            h.weight = DMatrix::from_fn(n, nb, |i, b| v[i * nb + b] / hist_scale[i * nb + b]);
        }
        let zs = to_vec(self.z.val());
        let lib = zs.chunks(e).map(DVector::from_column_slice).collect();
        (p, lib)
    }
}

/// The E-step's statistics, flattened for the M-step.
pub struct Stats {
    pub d: usize,
    pub n: usize,
    pub m: usize,
    /// Transitions grouped by task: (x_k, u_k, x_{k+1}) rows per task.
    pub trans: Vec<TaskTransitions>,
    /// Bins with data: smoothed mean (K × d), covariance (K × d²), counts (K × N).
    pub obs_m: Vec<f64>,
    pub obs_p: Vec<f64>,
    pub obs_y: Vec<f64>,
    /// History basis traces per unit (0: no history term), and each bin's centred traces
    /// (K × N·B).
    pub hist: usize,
    pub obs_h: Vec<f64>,
}

#[derive(Default, Clone)]
pub struct TaskTransitions {
    pub x: Vec<f64>,
    pub u: Vec<f64>,
    pub x_next: Vec<f64>,
    pub resid_cov: Vec<f64>,
}

impl Stats {
    pub fn obs_bins(&self) -> usize {
        self.obs_m.len() / self.d.max(1)
    }
    pub fn transitions(&self) -> usize {
        self.trans.iter().map(|t| t.x.len() / self.d.max(1)).sum()
    }
}

/// The M-step's objective terms (per bin) at the current parameters.
#[derive(Debug, Clone, Copy)]
pub struct Objective {
    pub dynamics: f64,
    pub observation: f64,
}

impl Objective {
    pub fn total(&self) -> f64 {
        self.dynamics + self.observation
    }
}

pub struct MStep {
    pub module: FitModule<Ad>,
    /// The history regressors' scales (N × B), as `FitModule::hist_w` is stored.
    pub hist_scale: Vec<f64>,
    /// α held fixed (`--alpha A`); None: trained.
    pub fixed_alpha: Option<f64>,
    optim: OptimizerAdaptor<Adam, FitModule<Ad>, Ad>,
    dev: NdArrayDevice,
    pub batch: usize,
    pub seed: u64,
    steps: u64,
}

fn rows<B: Backend>(data: &[f64], cols: usize, dev: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(data.to_vec(), [data.len() / cols.max(1), cols]), dev)
}

/// The statistics as tensors, built once per M-step (not per Adam step: at 60 000 bins the
/// counts alone are 37 MB).
struct StatTensors {
    trans: Vec<Option<TensorTriple>>,
    obs: TensorTriple,
    /// The obs rows' standardised history traces, one (K × N) tensor per basis (none
    /// without a history term).
    hist: Vec<Tensor<Ad, 2>>,
}

/// The three sufficient-statistic tensors of one part of the model.
type TensorTriple = (Tensor<Ad, 2>, Tensor<Ad, 2>, Tensor<Ad, 2>);

impl MStep {
    fn tensors(&self, s: &Stats) -> StatTensors {
        let (d, n, m) = (s.d, s.n, s.m);
        let dev = &self.dev;
        StatTensors {
            trans: s
                .trans
                .iter()
                .map(|tr| {
                    (!tr.x.is_empty()).then(|| (rows::<Ad>(&tr.x, d, dev), rows::<Ad>(&tr.u, m, dev), rows::<Ad>(&tr.x_next, d, dev)))
                })
                .collect(),
            obs: (rows::<Ad>(&s.obs_m, d, dev), rows::<Ad>(&s.obs_p, d * d, dev), rows::<Ad>(&s.obs_y, n, dev)),
            hist: (0..s.hist)
                .map(|b| {
                    // Basis b's standardised traces (K × N) (see `FitModule::hist_w`): one
                    // contiguous 2-D tensor per basis (a (K, N, B) product was 3× slower).
                    let nb = s.hist;
                    let cols: Vec<f64> =
                        s.obs_h.iter().skip(b).step_by(nb).enumerate().map(|(j, v)| v / self.hist_scale[(j % n) * nb + b]).collect();
                    rows::<Ad>(&cols, n, dev)
                })
                .collect(),
        }
    }

    pub fn new(p: &ModelParams, library: &[DVector<f64>], hist_scale: Vec<f64>, batch: usize, seed: u64) -> MStep {
        let dev = NdArrayDevice::Cpu;
        let module = FitModule::<Ad>::from_params(p, library, &hist_scale, &dev);
        let optim = AdamConfig::new().init::<Ad, FitModule<Ad>>();
        MStep { module, hist_scale, fixed_alpha: None, optim, dev, batch, seed, steps: 0 }
    }

    /// A seeded subset of `total` row indices of size `batch` (all rows when they fit).
    fn subset(&self, total: usize, stream: u64) -> Option<Tensor<Ad, 1, Int>> {
        if total <= self.batch {
            return None;
        }
        let idx: Vec<i64> = (0..self.batch as u64)
            .map(|i| {
                ((uniform_at(self.seed, stream.wrapping_mul(1 << 20) + self.steps, i) as f64 * total as f64) as i64).min(total as i64 - 1)
            })
            .collect();
        Some(Tensor::from_data(TensorData::new(idx, [self.batch]), &self.dev))
    }

    /// The loss (a scalar tensor) on the statistics (a random subset when `sample`).
    fn loss(&self, s: &Stats, st: &StatTensors, q: &[f64], bin_s: f64, sample: bool) -> (Tensor<Ad, 1>, Tensor<Ad, 1>) {
        let (d, n, m) = (s.d, s.n, s.m);
        let dev = &self.dev;
        let md = &self.module;
        // A fixed α (`--alpha A`) is a constant here, not the trainable logit: the generators
        // are fitted under the α the E-step and Q use.
        let alpha = match self.fixed_alpha {
            Some(a) => Tensor::<Ad, 2>::from_data(TensorData::new(vec![a], [1, 1]), dev),
            None => sigmoid(md.alpha_logit.val()).unsqueeze::<2>(),
        };
        let mut zv = md.z.val();
        if sample {
            let [t, e] = zv.dims();
            let eps: Vec<f64> = (0..(t * e) as u64)
                .map(|i| Z_NOISE * neuroloop_kernels::philox::normal_at(self.seed ^ 0x2e, self.steps, i) as f64)
                .collect();
            zv = zv + Tensor::<Ad, 2>::from_data(TensorData::new(eps, [t, e]), dev);
        }
        let out_hh = md.w_hh.forward(zv.clone());
        // A model without inputs (m = 0) has an empty W_xu generator: nothing to decode.
        let out_xu = (m > 0).then(|| md.w_xu.forward(zv.clone()));
        let out_b = md.b.forward(zv);
        let inv_q: Tensor<Ad, 2> = Tensor::from_data(TensorData::new(q.iter().map(|v| 0.5 / v).collect::<Vec<f64>>(), [1, d]), dev);
        let n_trans = s.transitions().max(1) as f64;
        let mut dyn_loss: Tensor<Ad, 1> = Tensor::zeros([1], dev);
        for (t, tr) in s.trans.iter().enumerate() {
            let k = tr.x.len() / d;
            if k == 0 {
                continue;
            }
            let Some((x, u, xn)) = &st.trans[t] else { continue };
            let (mut x, mut u, mut xn) = (x.clone(), u.clone(), xn.clone());
            let mut weight = k as f64 / n_trans;
            if sample {
                let share = ((self.batch as f64) * k as f64 / n_trans).ceil() as usize;
                if k > share.max(1) {
                    let idx: Vec<i64> = (0..share as u64)
                        .map(|i| {
                            ((uniform_at(self.seed, (t as u64 + 1) * (1 << 20) + self.steps, i) as f64 * k as f64) as i64).min(k as i64 - 1)
                        })
                        .collect();
                    let idx: Tensor<Ad, 1, Int> = Tensor::from_data(TensorData::new(idx, [share]), dev);
                    x = x.select(0, idx.clone());
                    if m > 0 {
                        u = u.select(0, idx.clone());
                    }
                    xn = xn.select(0, idx);
                    weight = k as f64 / n_trans;
                }
            }
            let rows_used = x.dims()[0] as f64;
            let w = out_hh.clone().slice([t..t + 1, 0..d * d]).reshape([d, d]);
            let b = out_b.clone().slice([t..t + 1, 0..d]);
            let mut a = x.clone().matmul(w.transpose()) + b;
            if let Some(out_xu) = &out_xu {
                let bx = out_xu.clone().slice([t..t + 1, 0..d * m]).reshape([d, m]);
                a = a + u.matmul(bx.transpose());
            }
            let f = x.clone() + alpha.clone() * (a.tanh() - x);
            let r = xn - f;
            let term = (r.clone() * r * inv_q.clone()).sum() * (weight / rows_used);
            dyn_loss = dyn_loss + term;
        }
        // Observations.
        let k_obs = s.obs_bins();
        let (mut mm, mut pp, mut yy) = (st.obs.0.clone(), st.obs.1.clone(), st.obs.2.clone());
        let mut hh = st.hist.clone();
        if sample {
            if let Some(idx) = self.subset(k_obs, 0) {
                mm = mm.select(0, idx.clone());
                pp = pp.select(0, idx.clone());
                hh = hh.into_iter().map(|h| h.select(0, idx.clone())).collect();
                yy = yy.select(0, idx);
            }
        }
        let used = mm.dims()[0] as f64;
        let c = md.c.val();
        let mut eta = mm.matmul(c.clone().transpose()) + md.d.val().unsqueeze::<2>();
        if !hh.is_empty() {
            // Σ_b w_{ib} (h_{ib,k} − μᵢ), each basis a (K, N) ⊙ (1, N) product.
            let w = md.hist_w.val();
            for (b, h) in hh.into_iter().enumerate() {
                let wb = w.clone().slice([0..n, b..b + 1]).reshape([1, n]);
                eta = eta + h * wb;
            }
        }
        // v_{k,i} = cᵢᵀ P_k cᵢ = P_k (flat) · (cᵢ ⊗ cᵢ).
        let cc = (c.clone().unsqueeze_dim::<3>(2) * c.unsqueeze_dim::<3>(1)).reshape([n, d * d]).transpose();
        let v = pp.matmul(cc);
        let rate = (eta.clone() + v * 0.5).clamp_max(crate::model::file::DEFAULT_LOG_RATE_MAX + 5.0).exp() * bin_s;
        let obs_loss = (rate - yy * eta).sum() / used;
        let mut ridge = (md.z.val().powf_scalar(2.0)).sum() * Z_RIDGE;
        let gens: &[&GenModule<Ad>] = if m > 0 { &[&md.w_hh, &md.w_xu, &md.b] } else { &[&md.w_hh, &md.b] };
        for g in gens {
            ridge = ridge + (g.w2.val().powf_scalar(2.0).sum() + g.w1.val().powf_scalar(2.0).sum()) * W_RIDGE;
        }
        if s.hist > 0 {
            ridge = ridge + md.hist_w.val().powf_scalar(2.0).sum() * W_RIDGE;
        }
        (dyn_loss + ridge, obs_loss)
    }

    /// The objective at the current parameters on all the statistics (no gradient step).
    pub fn objective(&self, s: &Stats, q: &[f64], bin_s: f64) -> Objective {
        let st = self.tensors(s);
        let (dl, ol) = self.loss(s, &st, q, bin_s, false);
        Objective { dynamics: to_vec(dl.inner())[0], observation: to_vec(ol.inner())[0] }
    }

    /// `steps` Adam steps at learning rate `lr`. Returns false (parameters unchanged since
    /// the last good step) when the loss went non-finite.
    pub fn steps(&mut self, s: &Stats, q: &[f64], bin_s: f64, steps: usize, lr: f64) -> bool {
        let st = self.tensors(s);
        for _ in 0..steps {
            let (dl, ol) = self.loss(s, &st, q, bin_s, true);
            let loss = dl + ol;
            let value = to_vec(loss.clone().inner())[0];
            if !value.is_finite() {
                return false;
            }
            let grads = loss.backward();
            let grads = GradientsParams::from_grads(grads, &self.module);
            let next = self.optim.step(lr, self.module.clone(), grads);
            self.module = next;
            self.steps += 1;
        }
        true
    }
}
