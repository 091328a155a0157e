//! The objective a controller pursues (a target latent state or target rates), and the
//! cache that turns it into what each controller needs (see the module docs of
//! [`crate::control`]).

use crate::linalg::spd_solve_mut;
use crate::model::{Dims, ModelParams};
use nalgebra::{DMatrix, DVector};

/// Rates below this (Hz) are raised to it before taking logs in the rate → latent
/// conversion, so a silent target unit does not pull x* to the log-rate floor.
pub const RATE_FLOOR_HZ: f64 = 0.1;

/// The largest |x*ᵢ| a latent objective may ask for. The model's dynamics keep every latent
/// within (−1, 1) (x' = x + α(tanh(·) − x)), so no target beyond that box is reachable; ±10
/// leaves room for a target that pushes hard at the edge, and keeps every controller's cost
/// far from overflow (a target of 1e200 squared is infinite).
pub const LATENT_TARGET_MAX: f64 = 10.0;

/// The default ceiling of a rate objective (Hz), `[objective] max_rate_hz` in a rig file:
/// above any neuron's sustained rate.
pub const DEFAULT_MAX_RATE_HZ: f64 = 1000.0;

/// The highest `[objective] max_rate_hz` a rig may set (Hz).
pub const MAX_RATE_CEILING_HZ: f64 = 100_000.0;

/// Checks an objective's values against the documented bounds: latent targets within
/// ±[`LATENT_TARGET_MAX`], rate targets within [0, `max_rate_hz`]; every value finite.
/// The message names the value, its index and the bound.
pub fn check_target_values(rates: bool, target: &[f64], max_rate_hz: f64) -> Result<(), String> {
    for (i, &v) in target.iter().enumerate() {
        if !v.is_finite() {
            return Err(format!("value {i} is {v}; expected a finite number"));
        }
        if rates && !(0.0..=max_rate_hz).contains(&v) {
            return Err(format!(
                "rate {i} is {v} Hz; a rate target must lie within [0, {max_rate_hz}] Hz (the rig's [objective] max_rate_hz)"
            ));
        }
        if !rates && v.abs() > LATENT_TARGET_MAX {
            return Err(format!(
                "value {i} is {v}; a latent target must lie within ±{LATENT_TARGET_MAX} (the model's latents stay within ±1)"
            ));
        }
    }
    Ok(())
}

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
    /// Checks lengths against the model and every value against the bounds of
    /// [`check_target_values`] (rates up to [`MAX_RATE_CEILING_HZ`]: the rig's own ceiling
    /// is checked where commands and rig files are, before an objective gets here).
    pub fn validate(&self, dims: &Dims) -> Result<(), String> {
        match self {
            Objective::Latent(x) => {
                if x.len() != dims.latent {
                    return Err(format!("latent objective has {} values, the model's latent dimension is {}", x.len(), dims.latent));
                }
                check_target_values(false, x.as_slice(), MAX_RATE_CEILING_HZ).map_err(|e| format!("latent objective: {e}"))?;
            }
            Objective::Rates(r) => {
                if r.len() != dims.n_units {
                    return Err(format!("rate objective has {} values, the model has {} units", r.len(), dims.n_units));
                }
                check_target_values(true, r.as_slice(), MAX_RATE_CEILING_HZ).map_err(|e| format!("rate objective: {e}"))?;
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
