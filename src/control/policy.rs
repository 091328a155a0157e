//! A learned policy network from the model file (docs/model.md, controller `policy`):
//! u = clamp(scale · tanh(W2 ReLU(W1 [x; x*] + b1) + b2)), the seed's
//! `Sequential(Linear(2d, hp), ReLU(), Linear(hp, m), Tanh())` controller.
//!
//! Cheapest controller (two mat-vecs); it needs `controller.*` tensors in the model file.
//! A rate objective is turned into the latent target x* by the same least-squares
//! conversion as LQR (see [`ObjectiveTarget`](super::ObjectiveTarget)).

use super::{ActuationLimits, ControlContext, Objective, ObjectiveTarget};
use crate::model::{Dims, ModelParams};
use nalgebra::DVector;

/// The policy controller: preallocated input / hidden / output buffers.
#[derive(Debug)]
pub struct PolicyController {
    pub(super) target: ObjectiveTarget,
    input: DVector<f64>,
    hidden: DVector<f64>,
    out: DVector<f64>,
}

impl PolicyController {
    /// Checks that the model has policy weights of the right shapes.
    pub fn new(dims: &Dims, params: &ModelParams) -> Result<Self, String> {
        let pol = params
            .policy
            .as_ref()
            .ok_or("controller kind \"policy\" needs policy weights (controller.0.weight, …) in the model file, and this model has none")?;
        let (d, m) = (dims.latent, dims.control);
        let hp = pol.w1.nrows();
        if pol.w1.ncols() != 2 * d {
            return Err(format!(
                "policy layer 1 weight is {}×{}, expected hp×{} (input [x; x*], d = {d})",
                pol.w1.nrows(),
                pol.w1.ncols(),
                2 * d
            ));
        }
        if pol.b1.len() != hp {
            return Err(format!("policy layer 1 bias has {} values, expected {hp}", pol.b1.len()));
        }
        if pol.w2.shape() != (m, hp) {
            return Err(format!("policy layer 2 weight is {}×{}, expected {m}×{hp}", pol.w2.nrows(), pol.w2.ncols()));
        }
        if pol.b2.len() != m {
            return Err(format!("policy layer 2 bias has {} values, expected {m}", pol.b2.len()));
        }
        if !pol.scale.is_finite() {
            return Err(format!("policy scale must be finite, got {}", pol.scale));
        }
        Ok(PolicyController {
            target: ObjectiveTarget::new(dims),
            input: DVector::zeros(2 * d),
            hidden: DVector::zeros(hp),
            out: DVector::zeros(m),
        })
    }

    /// One bin; allocation-free. If the parameters carry no policy (a model swapped under a
    /// running controller), outputs the clamp of 0.
    pub fn compute(&mut self, ctx: &ControlContext, objective: &Objective, limits: &ActuationLimits, u_out: &mut DVector<f64>) -> bool {
        self.target.sync(objective, ctx.params);
        let Some(pol) = ctx.params.policy.as_ref() else {
            u_out.fill(0.0);
            limits.clamp_in_place(u_out);
            return true;
        };
        let d = ctx.x.len();
        self.input.rows_mut(0, d).copy_from(ctx.x);
        self.input.rows_mut(d, d).copy_from(&self.target.latent);
        self.hidden.copy_from(&pol.b1);
        self.hidden.gemv(1.0, &pol.w1, &self.input, 1.0);
        self.hidden.apply(|v| *v = v.max(0.0));
        self.out.copy_from(&pol.b2);
        self.out.gemv(1.0, &pol.w2, &self.hidden, 1.0);
        for j in 0..u_out.len() {
            u_out[j] = pol.scale * self.out[j].tanh();
        }
        if u_out.iter().any(|v| !v.is_finite()) {
            u_out.fill(f64::NAN);
            return false;
        }
        limits.clamp_in_place(u_out);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{Controller, ControllerConfig, ControllerKind};
    use super::*;
    use crate::model::{Policy, Theta};
    use nalgebra::DMatrix;

    #[test]
    fn policy_matches_hand_computation() {
        // d = 1, m = 1, hp = 2.
        let mut p = params(1, 1, 1, 0.5, DMatrix::from_element(1, 1, 1.0), DVector::from_element(1, 0.0));
        p.policy = Some(Policy {
            w1: DMatrix::from_row_slice(2, 2, &[1.0, -1.0, 0.5, 2.0]),
            b1: DVector::from_vec(vec![0.1, -3.0]),
            w2: DMatrix::from_row_slice(1, 2, &[2.0, 1.0]),
            b2: DVector::from_vec(vec![-0.2]),
            scale: 1.5,
        });
        let cfg = ControllerConfig { kind: ControllerKind::Policy, ..Default::default() };
        let mut ctrl = Controller::new(&cfg, &p.dims, &p).unwrap();
        let theta = Theta::zeros(&p.dims);
        let x = DVector::from_element(1, 0.3);
        let u_prev = DVector::zeros(1);
        let ctx = ControlContext { params: &p, theta: &theta, x: &x, u_prev: &u_prev, bin: 0 };
        let limits = ActuationLimits { lo: DVector::from_element(1, -5.0), hi: DVector::from_element(1, 5.0) };
        let mut u = DVector::zeros(1);
        let obj = Objective::Latent(DVector::from_element(1, -0.4));
        let before = allocations();
        ctrl.compute(&ctx, &obj, &limits, &mut u);
        assert_eq!(allocations(), before, "policy compute allocated");
        // in = [0.3, −0.4]; h1 = relu(0.3 + 0.4 + 0.1) = 0.8; h2 = relu(0.15 − 0.8 − 3) = 0;
        // out = 2·0.8 + 0 − 0.2 = 1.4; u = 1.5 tanh(1.4).
        let expect = 1.5 * 1.4f64.tanh();
        assert!((u[0] - expect).abs() < 1e-12, "{} vs {expect}", u[0]);
        // Limits apply.
        let tight = ActuationLimits { lo: DVector::from_element(1, -1.0), hi: DVector::from_element(1, 1.0) };
        ctrl.compute(&ctx, &Objective::Latent(DVector::from_element(1, -0.4)), &tight, &mut u);
        assert_eq!(u[0], 1.0);
    }

    #[test]
    fn policy_shape_mismatch_is_an_error() {
        let mut p = params(1, 1, 1, 0.5, DMatrix::from_element(1, 1, 1.0), DVector::from_element(1, 0.0));
        p.policy =
            Some(Policy { w1: DMatrix::zeros(2, 3), b1: DVector::zeros(2), w2: DMatrix::zeros(1, 2), b2: DVector::zeros(1), scale: 1.0 });
        let cfg = ControllerConfig { kind: ControllerKind::Policy, ..Default::default() };
        assert!(Controller::new(&cfg, &p.dims, &p).unwrap_err().contains("layer 1"));
    }
}
