//! The objective a controller pursues (a target latent state or target rates), and the
//! cache that turns it into what each controller needs (see the module docs of
//! [`crate::control`]).

use crate::linalg::spd_solve_mut;
use crate::model::{Dims, ModelParams};
use nalgebra::{DMatrix, DVector};

/// Rates below this (Hz) are raised to it before taking logs in the rate → latent
/// conversion, so a silent target unit does not pull x* to the log-rate floor.
pub const RATE_FLOOR_HZ: f64 = 0.1;

/// Relative ridge ρ / (tr(CᵀC)/d) of the rate → latent least squares.
const RATE_LS_RIDGE: f64 = 1e-6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetKind {
    None,
    Latent,
    Rates,
}

/// What the controller steers towards. Set in the rig file; can be changed while running.
#[derive(Debug, Clone, PartialEq)]
pub enum Objective {
    /// Target latent state x* (d).
    Latent(DVector<f64>),
    /// Target firing rates r* in Hz (N).
    Rates(DVector<f64>),
}

impl Objective {
    /// Checks lengths against the model and that every value is finite (rates ≥ 0).
    pub fn validate(&self, dims: &Dims) -> Result<(), String> {
        match self {
            Objective::Latent(x) => {
                if x.len() != dims.latent {
                    return Err(format!("latent objective has {} values, the model's latent dimension is {}", x.len(), dims.latent));
                }
                if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                    return Err(format!("latent objective value {i} is not finite"));
                }
            }
            Objective::Rates(r) => {
                if r.len() != dims.n_units {
                    return Err(format!("rate objective has {} values, the model has {} units", r.len(), dims.n_units));
                }
                if let Some(i) = r.iter().position(|v| !v.is_finite() || *v < 0.0) {
                    return Err(format!("rate objective value {i} must be finite and ≥ 0 Hz"));
                }
            }
        }
        Ok(())
    }
}

/// The objective a controller last saw and what it derived from it (see the module docs).
#[derive(Debug)]
pub struct ObjectiveTarget {
    kind: TargetKind,
    /// x* (d): the latent objective itself, or the least-squares conversion of the rates.
    pub latent: DVector<f64>,
    /// r* (N) in Hz when the objective is in rate space (zeros otherwise).
    pub rates: DVector<f64>,
    /// 1 / max(r*ᵢ, 1) (N), MPPI's per-unit normalisation of the rate error.
    pub rate_scale: DVector<f64>,
    /// Bumped whenever the target changes.
    pub generation: u64,
    ctc: DMatrix<f64>,
    log_target: DVector<f64>,
}

impl ObjectiveTarget {
    pub fn new(dims: &Dims) -> Self {
        ObjectiveTarget {
            kind: TargetKind::None,
            latent: DVector::zeros(dims.latent),
            rates: DVector::zeros(dims.n_units),
            rate_scale: DVector::zeros(dims.n_units),
            generation: 0,
            ctc: DMatrix::zeros(dims.latent, dims.latent),
            log_target: DVector::zeros(dims.n_units),
        }
    }

    /// Whether the current objective is in rate space.
    pub fn is_rates(&self) -> bool {
        self.kind == TargetKind::Rates
    }

    /// Brings the cache up to date with `obj`; returns whether it changed. O(N + d) when
    /// unchanged; O(N d² + d³) on a change of rate objective. Allocation-free.
    pub fn sync(&mut self, obj: &Objective, params: &ModelParams) -> bool {
        match obj {
            Objective::Latent(x) => {
                if self.kind == TargetKind::Latent && *x == self.latent {
                    return false;
                }
                assert_eq!(x.len(), self.latent.len(), "latent objective length ≠ latent dimension");
                self.latent.copy_from(x);
                self.rates.fill(0.0);
                self.rate_scale.fill(0.0);
                self.kind = TargetKind::Latent;
            }
            Objective::Rates(r) => {
                if self.kind == TargetKind::Rates && *r == self.rates {
                    return false;
                }
                assert_eq!(r.len(), self.rates.len(), "rate objective length ≠ number of units");
                self.rates.copy_from(r);
                for i in 0..r.len() {
                    self.rate_scale[i] = 1.0 / r[i].max(1.0);
                }
                self.kind = TargetKind::Rates;
                rates_to_latent(params, r, &mut self.ctc, &mut self.log_target, &mut self.latent);
            }
        }
        self.generation = self.generation.wrapping_add(1);
        true
    }
}

/// x* = clip(argmin ‖C x − (ln max(r*, floor) − d)‖² + ρ‖x‖², −1, 1), allocation-free given
/// scratch `ctc` (d × d) and `log_target` (N).
pub fn rates_to_latent(
    params: &ModelParams,
    rates: &DVector<f64>,
    ctc: &mut DMatrix<f64>,
    log_target: &mut DVector<f64>,
    x_out: &mut DVector<f64>,
) {
    let c = &params.obs_c;
    let d = c.ncols();
    for i in 0..rates.len() {
        let eta = rates[i].max(RATE_FLOOR_HZ).ln().clamp(crate::model::observation::LOG_RATE_MIN, params.log_rate_max);
        log_target[i] = eta - params.obs_d[i];
    }
    x_out.gemv_tr(1.0, c, log_target, 0.0);
    let ok = spd_solve_mut(
        ctc,
        |m| {
            m.gemm_tr(1.0, c, c, 0.0);
            let mean_diag = (0..d).map(|i| m[(i, i)]).sum::<f64>() / d.max(1) as f64;
            let ridge = RATE_LS_RIDGE * mean_diag.max(1e-12);
            for i in 0..d {
                m[(i, i)] += ridge;
            }
        },
        x_out,
    );
    if !ok {
        x_out.fill(0.0);
    }
    x_out.apply(|v| *v = if v.is_finite() { v.clamp(-1.0, 1.0) } else { 0.0 });
}
