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
        Ok(Safety { lower, upper, max_step: s.max_step, fallback: s.fallback, fallback_vector })
    }

    /// Bounds [lo, hi] on every channel, a maximum step and a "hold" fallback (tests of the
    /// stages that push through the safety layer).
    #[cfg(test)]
    pub(crate) fn for_tests(m: usize, lo: f64, hi: f64, max_step: f64) -> Safety {
        Safety { lower: vec![lo; m], upper: vec![hi; m], max_step, fallback: FallbackKind::Hold, fallback_vector: vec![0.0; m] }
    }

    pub fn lower(&self) -> &[f64] {
        &self.lower
    }
    pub fn upper(&self) -> &[f64] {
        &self.upper
    }
    pub fn max_step(&self) -> f64 {
        self.max_step
    }
    pub fn fallback_kind(&self) -> FallbackKind {
        self.fallback
    }
    pub fn fallback_vector(&self) -> &[f64] {
        &self.fallback_vector
    }

    /// New bounds and maximum step (a run-time command; the control plane has checked that
    /// they lie within the rig file's). Copies in place: never allocates.
    pub fn set_limits(&mut self, lower: &[f64], upper: &[f64], max_step: f64) {
        let m = self.lower.len();
        self.lower.copy_from_slice(&lower[..m]);
        self.upper.copy_from_slice(&upper[..m]);
        self.max_step = max_step;
    }

    /// A new fallback (`vector`, m values, is used by `Vector` only). Never allocates.
    pub fn set_fallback(&mut self, fallback: FallbackKind, vector: &[f64]) {
        let m = self.fallback_vector.len();
        self.fallback = fallback;
        if fallback == FallbackKind::Vector {
            self.fallback_vector.copy_from_slice(&vector[..m]);
        }
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

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Any f64 a controller could produce: ordinary values, huge ones, ±inf and NaN.
    fn proposal() -> impl Strategy<Value = f64> {
        prop_oneof![4 => -10.0f64..10.0, 1 => prop::num::f64::ANY]
    }

    fn safety_layer() -> impl Strategy<Value = Safety> {
        (prop::collection::vec((-5.0f64..5.0, 0.0f64..5.0), 1..5), 0.001f64..2.0, 0u8..3, any::<u64>()).prop_map(
            |(bounds, max_step, kind, seed)| {
                let lower: Vec<f64> = bounds.iter().map(|b| b.0).collect();
                let upper: Vec<f64> = bounds.iter().map(|b| b.0 + b.1).collect();
                // a fallback vector inside the bounds, as Safety::from_rig insists
                let fallback_vector =
                    bounds.iter().enumerate().map(|(j, b)| b.0 + b.1 * (((seed >> (8 * j)) & 0xff) as f64 / 255.0)).collect();
                let fallback = [FallbackKind::Hold, FallbackKind::Zero, FallbackKind::Vector][kind as usize];
                Safety { lower, upper, max_step, fallback, fallback_vector }
            },
        )
    }

    proptest! {
        /// Whatever the controller proposes and whichever bins fall back, every command sent
        /// is finite, inside the bounds, and at most max_step from the one before; with the
        /// gate off it heads for the safe value and, given the bins, stays there.
        #[test]
        fn every_command_is_in_bounds_and_rate_limited(
            s in safety_layer(),
            bins in prop::collection::vec((prop::collection::vec(proposal(), 4), any::<bool>(), prop::bool::weighted(0.8)), 1..200),
            off_tail in 0usize..2,
        ) {
            let m = s.lower.len();
            let mut last: Vec<f64> = (0..m).map(|j| s.safe_zero(j)).collect();
            let mut out = vec![0.0; m];
            let emit = |proposed: &[f64], fallback: bool, enabled: bool, last: &mut Vec<f64>, out: &mut Vec<f64>| {
                let mut p = proposed[..m].to_vec();
                crate::emit::command(&s, &mut p, fallback, last, enabled, out);
                for j in 0..m {
                    assert!(out[j].is_finite(), "channel {j}: {} from {:?}", out[j], proposed);
                    assert!(out[j] >= s.lower[j] && out[j] <= s.upper[j], "channel {j}: {} outside [{}, {}]", out[j], s.lower[j], s.upper[j]);
                    assert!((out[j] - last[j]).abs() <= s.max_step * (1.0 + 1e-12), "channel {j}: step {} > {}", out[j] - last[j], s.max_step);
                    if !enabled {
                        // gate off: one step towards the safe value, never away from it
                        assert!((out[j] - s.safe_zero(j)).abs() <= (last[j] - s.safe_zero(j)).abs());
                    }
                }
                last.copy_from_slice(out);
            };
            for (proposed, fallback, enabled) in &bins {
                emit(proposed, *fallback, *enabled, &mut last, &mut out);
            }
            if off_tail == 1 {
                // Gate off for as many bins as the widest range takes at max_step: at the safe value.
                let widest = (0..m).map(|j| s.upper[j] - s.lower[j]).fold(0.0, f64::max);
                for _ in 0..=((widest / s.max_step).ceil() as usize + 1) {
                    emit(&[f64::NAN, 1e300, -1e300, 7.0], false, false, &mut last, &mut out);
                }
                for j in 0..m {
                    prop_assert_eq!(out[j], s.safe_zero(j));
                }
            }
        }
    }
}
