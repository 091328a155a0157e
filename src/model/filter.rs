//! The online latent filter a backend runs: the point-process EKF (the default) or the
//! bootstrap particle filter (`[model] filter = "particles"`), behind one interface, so the
//! backend's step reads the same whichever runs (docs/model.md).

use super::ekf::PointProcessEkf;
use super::observation::{log_rates, poisson_loglik};
use super::particle::{ParticleConfig, ParticleFilter};
use super::{Dims, ModelParams, Theta};
use nalgebra::DVector;

/// Which filter, with its settings (resolved from the rig).
#[derive(Debug, Clone)]
pub enum FilterChoice {
    Ekf,
    Particles(ParticleConfig),
}

pub enum LatentFilter {
    Ekf(Box<PointProcessEkf>),
    Particles(Box<Particles>),
}

/// The particle filter and its scratch for the predictive log-likelihood.
pub struct Particles {
    pf: ParticleFilter,
    /// x⁻ = f(x_{k−1}, u; θ) and the log-rates at it: the reported log-likelihood is
    /// log p(y | x⁻), as the EKF's.
    x_pred: DVector<f64>,
    tanh_a: DVector<f64>,
    eta: DVector<f64>,
}

impl LatentFilter {
    /// A filter at x = 0 with the model's initial variance. Preallocates everything.
    pub fn new(choice: &FilterChoice, params: &ModelParams) -> LatentFilter {
        let dims: Dims = params.dims;
        let x0 = DVector::zeros(dims.latent);
        match choice {
            FilterChoice::Ekf => {
                let mut ekf = PointProcessEkf::new(&dims, params.initial_state_var);
                ekf.reset(&x0, params.initial_state_var);
                LatentFilter::Ekf(Box::new(ekf))
            }
            FilterChoice::Particles(cfg) => LatentFilter::Particles(Box::new(Particles {
                pf: ParticleFilter::new(&dims, cfg.clone(), &x0, params.initial_state_var),
                x_pred: DVector::zeros(dims.latent),
                tanh_a: DVector::zeros(dims.latent),
                eta: DVector::zeros(dims.n_units),
            })),
        }
    }

    /// x⁻ from x_{k−1} under θ with the command that was emitted (`bin` seeds the
    /// particles' process noise).
    pub fn predict(&mut self, p: &ModelParams, theta: &Theta, u_prev: &DVector<f64>, bin: u64) {
        match self {
            LatentFilter::Ekf(ekf) => ekf.predict(theta, p.alpha, &p.process_noise, u_prev),
            LatentFilter::Particles(s) => s.pf.predict(theta, p.alpha, &p.process_noise, u_prev, bin),
        }
    }

    /// The update with bin k's counts; returns log p(y_k | x_k⁻).
    pub fn update(&mut self, p: &ModelParams, theta: &Theta, u_prev: &DVector<f64>, counts: &[f64], bin: u64) -> f64 {
        match self {
            LatentFilter::Ekf(ekf) => ekf.update(&p.obs_c, &p.obs_d, p.log_rate_max, p.bin_s, counts),
            LatentFilter::Particles(s) => {
                super::dynamics::step(theta, p.alpha, &s.pf.x_prev, u_prev, &mut s.x_pred, &mut s.tanh_a);
                log_rates(&p.obs_c, &p.obs_d, p.log_rate_max, &s.x_pred, &mut s.eta);
                s.pf.update(&p.obs_c, &p.obs_d, p.log_rate_max, p.bin_s, counts, bin);
                poisson_loglik(counts, &s.eta, p.bin_s)
            }
        }
    }

    /// No data this bin (a stream gap): the prediction stands.
    pub fn skip_update(&mut self) {
        match self {
            LatentFilter::Ekf(ekf) => ekf.skip_update(),
            LatentFilter::Particles(s) => s.pf.skip_update(),
        }
    }

    /// The filtered mean x_k.
    pub fn x(&self) -> &DVector<f64> {
        match self {
            LatentFilter::Ekf(ekf) => &ekf.x,
            LatentFilter::Particles(s) => &s.pf.x,
        }
    }

    /// The previous bin's mean x_{k−1} (the embedding gradient and the task scores start there).
    pub fn x_prev(&self) -> &DVector<f64> {
        match self {
            LatentFilter::Ekf(ekf) => &ekf.x_prev,
            LatentFilter::Particles(s) => &s.pf.x_prev,
        }
    }
}
