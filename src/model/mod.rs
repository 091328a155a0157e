//! The neurocybernetic state-space model (docs/model.md).
//!
//! Latent dynamics whose weights θ(z) = (W_hh, W_xu, b) are generated from a task
//! embedding z by a hypernetwork, Poisson spiking observations, a point-process EKF for
//! the latent state, and an online embedding update with optional task identification.
//!
//! All CPU-side numerics are f64 and use nalgebra with buffers preallocated at start-up:
//! nothing here allocates per bin.

pub mod dynamics;
pub mod ekf;
pub mod embedding;
pub mod file;
pub mod filter;
pub mod history;
pub mod hypernet;
pub mod observation;
pub mod particle;
pub mod synthetic;
pub mod taskid;
#[cfg(test)]
pub(crate) mod testutil;

use nalgebra::{DMatrix, DVector};

/// Model dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// N: number of model units (observed neurons).
    pub n_units: usize,
    /// d: latent dimension.
    pub latent: usize,
    /// e: embedding dimension.
    pub embed: usize,
    /// m: control dimension.
    pub control: usize,
    /// h: hidden width of each hypernetwork generator.
    pub hidden: usize,
}

/// One hypernetwork head (PyTorch `Sequential(Linear(e, h), ReLU(), Linear(h, out))`).
/// Weights use PyTorch's layout: `w1` is (h × e), `w2` is (out × h).
#[derive(Debug, Clone, PartialEq)]
pub struct Generator {
    pub w1: DMatrix<f64>,
    pub b1: DVector<f64>,
    pub w2: DMatrix<f64>,
    pub b2: DVector<f64>,
}

/// The JEDI decoder: z ↦ θ(z), one generator per tensor of θ.
/// `w_hh` outputs d·d values (row-major (d × d)), `w_xu` d·m (row-major (d × m)), `b` d.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypernet {
    pub w_hh: Generator,
    pub w_xu: Generator,
    pub b: Generator,
}

/// The dynamics' parameters for one embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Theta {
    /// (d × d)
    pub w_hh: DMatrix<f64>,
    /// (d × m)
    pub w_xu: DMatrix<f64>,
    /// (d)
    pub b: DVector<f64>,
}

impl Theta {
    pub fn zeros(dims: &Dims) -> Self {
        Theta {
            w_hh: DMatrix::zeros(dims.latent, dims.latent),
            w_xu: DMatrix::zeros(dims.latent, dims.control),
            b: DVector::zeros(dims.latent),
        }
    }
}

/// A learned policy u = scale · tanh(W2 ReLU(W1 [x; x*] + b1) + b2)
/// (the seed's `controller` = `Sequential(Linear(2d, hp), ReLU(), Linear(hp, m), Tanh())`).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// (hp × 2d)
    pub w1: DMatrix<f64>,
    pub b1: DVector<f64>,
    /// (m × hp)
    pub w2: DMatrix<f64>,
    pub b2: DVector<f64>,
    /// Output scale applied after tanh (metadata `policy_scale`, default 1).
    pub scale: f64,
}

/// Everything a model file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    pub dims: Dims,
    /// Δ, the bin width the model was fitted at (seconds).
    pub bin_s: f64,
    /// α, the leak / integration step of the dynamics.
    pub alpha: f64,
    /// diag(Q), process-noise variance per latent dimension (d).
    pub process_noise: DVector<f64>,
    /// Initial latent covariance diag(P₀) (scalar variance).
    pub initial_state_var: f64,
    /// Upper clamp on the log-rate exponent cᵢᵀx + dᵢ (log Hz), so rates stay finite.
    pub log_rate_max: f64,
    /// C, (N × d): `observation.weight`.
    pub obs_c: DMatrix<f64>,
    /// d, (N): `observation.bias` (log Hz).
    pub obs_d: DVector<f64>,
    pub hypernet: Hypernet,
    /// The embedding the filter starts from (e).
    pub z_init: DVector<f64>,
    /// σ_z of the Gaussian prior on z.
    pub z_prior_sigma: f64,
    /// Library of known task embeddings for task identification (may be empty).
    pub task_library: Vec<DVector<f64>>,
    pub policy: Option<Policy>,
    /// The per-unit spike-history term (history.rs); None: η = C x + d alone.
    pub history: Option<history::History>,
}
