//! The safety layer between controller and outlet: per-channel bounds, maximum change
//! per bin, and an enable gate. Everything pushed to the Control outlet — fallbacks
//! included — goes through [`Safety::apply`].

use crate::rig::{FallbackKind, Rig, RigError};

#[derive(Debug, Clone)]
pub struct Safety {
    lower: Vec<f64>,
    upper: Vec<f64>,
    max_step: f64,
    fallback: FallbackKind,
    fallback_vector: Vec<f64>,
}

impl Safety {
    pub fn from_rig(rig: &Rig, m: usize) -> Result<Safety, RigError> {
        let s = &rig.safety;
        let lower = rig.broadcast("safety.lower", &s.lower, m)?;
        let upper = rig.broadcast("safety.upper", &s.upper, m)?;
        if let Some(j) = (0..m).find(|&j| lower[j] > upper[j]) {
            return Err(RigError::Invalid {
                path: rig.path.clone(),
                key: "safety.lower".into(),
                message: format!("channel {j}: lower {} > upper {}", lower[j], upper[j]),
            });
        }
        let invalid = |key: &str, message: String| RigError::Invalid { path: rig.path.clone(), key: key.into(), message };
        let fallback_vector = match &s.fallback_vector {
            None => vec![0.0; m],
            Some(v) if v.len() != m => return Err(invalid("safety.fallback_vector", format!("has {} values; m = {m}", v.len()))),
            Some(v) => {
                // A fallback outside the bounds would be clamped silently at every use:
                // the operator must see the command that goes out when the loop is late.
                if let Some(j) = (0..m).find(|&j| !(v[j].is_finite() && v[j] >= lower[j] && v[j] <= upper[j])) {
                    return Err(invalid(
                        "safety.fallback_vector",
                        format!("channel {j}: {} is outside [lower, upper] = [{}, {}]", v[j], lower[j], upper[j]),
                    ));
                }
                v.clone()
            }
        };
        Ok(Safety { lower, upper, max_step: s.max_step, fallback: s.fallback.clone(), fallback_vector })
    }

    pub fn lower(&self) -> &[f64] {
        &self.lower
    }
    pub fn upper(&self) -> &[f64] {
        &self.upper
    }

    /// The value nearest to zero inside the bounds (the safe "off" command).
    #[inline]
    fn safe_zero(&self, j: usize) -> f64 {
        0.0f64.clamp(self.lower[j], self.upper[j])
    }

    /// Clamp `proposed` to the bounds and to at most `max_step` away from `last`, into `out`.
    /// With `enabled == false`, the proposal is replaced by the safe zero.
    #[inline]
    pub fn apply(&self, proposed: &[f64], last: &[f64], enabled: bool, out: &mut [f64]) {
        for j in 0..out.len() {
            let want = if enabled && proposed[j].is_finite() { proposed[j] } else { self.safe_zero(j) };
            let stepped = want.clamp(last[j] - self.max_step, last[j] + self.max_step);
            out[j] = stepped.clamp(self.lower[j], self.upper[j]);
        }
    }

    /// The fallback command (before [`Safety::apply`]), given the last emitted one.
    #[inline]
    pub fn fallback(&self, last: &[f64], out: &mut [f64]) {
        for j in 0..out.len() {
            out[j] = match self.fallback {
                FallbackKind::Hold => last[j],
                FallbackKind::Zero => 0.0,
                FallbackKind::Vector => self.fallback_vector[j],
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safety(fallback: FallbackKind) -> Safety {
        Safety { lower: vec![-1.0, 0.0], upper: vec![1.0, 2.0], max_step: 0.5, fallback, fallback_vector: vec![0.3, 0.4] }
    }

    #[test]
    fn bounds_and_rate_limit() {
        let s = safety(FallbackKind::Hold);
        let mut out = [0.0; 2];
        s.apply(&[5.0, -3.0], &[0.9, 0.2], true, &mut out);
        assert_eq!(out, [1.0, 0.0]);
        s.apply(&[-1.0, 2.0], &[0.9, 0.2], true, &mut out);
        assert_eq!(out, [0.4, 0.7]);
        s.apply(&[f64::NAN, 1.0], &[0.2, 0.2], true, &mut out);
        assert_eq!(out, [0.0, 0.7]);
        // Gate off: head for the safe zero, still rate limited.
        s.apply(&[1.0, 2.0], &[0.9, 1.5], false, &mut out);
        assert_eq!(out, [0.4, 1.0]);
    }

    #[test]
    fn fallbacks() {
        let mut out = [0.0; 2];
        safety(FallbackKind::Hold).fallback(&[0.7, 0.1], &mut out);
        assert_eq!(out, [0.7, 0.1]);
        safety(FallbackKind::Zero).fallback(&[0.7, 0.1], &mut out);
        assert_eq!(out, [0.0, 0.0]);
        safety(FallbackKind::Vector).fallback(&[0.7, 0.1], &mut out);
        assert_eq!(out, [0.3, 0.4]);
    }
}
