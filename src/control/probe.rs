//! The probe: excitation for an identification session (`[controller] kind = "probe"`).
//!
//! Labs that fit a model of their population first drive it with random stimulation
//! (lds-ctrl-est / CLOCTools, Bolus et al. 2021) and record what it does; `neuroloop fit`
//! then learns the model from that recording. The probe needs no model: it generates a
//! seeded, per-channel excitation sequence that the safety layer (bounds, max step, gate)
//! clamps like any controller's proposal.
//!
//! Two signals:
//! - `noise`: band-limited Gaussian noise, u_k = a·u_{k−1} + σ·ε_k with ε_k ~ N(0, 1) drawn
//!   from Philox at (seed, channel, k); stationary std σ/√(1−a²). lds-ctrl-est's examples use
//!   a = 0.975, σ = 0.1.
//! - `prbs`: a maximal-length pseudo-random binary sequence (PRBS-31, x³¹ + x²⁸ + 1) per
//!   channel, each bit held `hold_bins` bins, at ±`amplitude` (+ `offset`).
//!
//! The sequence is a function of the seed and the bin index only (not of what the safety
//! layer let through), so the same seed gives the same sequence.

use neuroloop_kernels::philox::normal_at;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeSignal {
    /// Band-limited (AR(1)) Gaussian noise.
    #[default]
    Noise,
    /// Pseudo-random binary sequence.
    Prbs,
}

/// `[controller.probe]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    pub signal: ProbeSignal,
    /// AR(1) coefficient a of the noise, in [0, 1).
    pub a: f64,
    /// Innovation std σ of the noise (control units).
    pub sigma: f64,
    /// PRBS: bins each bit is held (≥ 1); sets the signal's bandwidth.
    pub hold_bins: u64,
    /// PRBS: the levels are offset ± amplitude.
    pub amplitude: f64,
    /// Added to every channel (both signals): the excitation's centre.
    pub offset: f64,
    /// Philox seed of the excitation.
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig { signal: ProbeSignal::Noise, a: 0.975, sigma: 0.1, hold_bins: 10, amplitude: 0.5, offset: 0.0, seed: 1 }
    }
}

impl ProbeConfig {
    /// Rejects out-of-range values, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.a.is_finite() && (0.0..1.0).contains(&self.a)) {
            return Err(format!("controller.probe.a must be in [0, 1) (an AR(1) coefficient), got {}", self.a));
        }
        if !(self.sigma.is_finite() && self.sigma >= 0.0) {
            return Err(format!("controller.probe.sigma must be finite and ≥ 0, got {}", self.sigma));
        }
        if self.hold_bins < 1 || self.hold_bins > 1_000_000 {
            return Err(format!("controller.probe.hold_bins must be in 1..=1000000, got {}", self.hold_bins));
        }
        if !(self.amplitude.is_finite() && self.amplitude >= 0.0) {
            return Err(format!("controller.probe.amplitude must be finite and ≥ 0, got {}", self.amplitude));
        }
        if !self.offset.is_finite() {
            return Err(format!("controller.probe.offset must be finite, got {}", self.offset));
        }
        Ok(())
    }
}

/// Philox stream base for the probe's noise (channel j uses stream BASE + j).
const NOISE_STREAM: u64 = 0x9_0000;

/// The excitation generator. Allocation-free after `new`.
#[derive(Debug, Clone)]
pub struct Probe {
    cfg: ProbeConfig,
    /// The AR(1) state (noise) per channel.
    state: Vec<f64>,
    /// PRBS-31 registers per channel.
    lfsr: Vec<u32>,
    /// The bin `state`/`lfsr` are at (None before bin 0).
    at: Option<u64>,
}

impl Probe {
    pub fn new(cfg: ProbeConfig, m: usize) -> Probe {
        let lfsr = (0..m)
            .map(|j| {
                // A non-zero 31-bit start per channel, from the seed.
                let mut s = 0u32;
                for b in 0..31u64 {
                    s = (s << 1) | (normal_at(cfg.seed, NOISE_STREAM + 0x1000 + j as u64, b) > 0.0) as u32;
                }
                if s == 0 {
                    1
                } else {
                    s
                }
            })
            .collect();
        Probe { state: vec![0.0; m], lfsr, at: None, cfg }
    }

    /// The excitation for bin `k` into `out` (m). Bins must come in increasing order; a
    /// skipped bin still advances the sequence, so the value at bin k depends only on
    /// (seed, k).
    pub fn value(&mut self, k: u64, out: &mut [f64]) {
        let start = match self.at {
            Some(at) if at >= k => {
                self.write(out);
                return;
            }
            Some(at) => at + 1,
            None => 0,
        };
        for b in start..=k {
            self.advance(b);
        }
        self.at = Some(k);
        self.write(out);
    }

    fn advance(&mut self, b: u64) {
        match self.cfg.signal {
            ProbeSignal::Noise => {
                for (j, s) in self.state.iter_mut().enumerate() {
                    let eps = normal_at(self.cfg.seed, NOISE_STREAM + j as u64, b) as f64;
                    *s = self.cfg.a * *s + self.cfg.sigma * eps;
                }
            }
            ProbeSignal::Prbs => {
                if b.is_multiple_of(self.cfg.hold_bins) {
                    for (r, s) in self.lfsr.iter_mut().zip(self.state.iter_mut()) {
                        let bit = ((*r >> 30) ^ (*r >> 27)) & 1;
                        *r = ((*r << 1) | bit) & 0x7fff_ffff;
                        *s = if bit == 1 { self.cfg.amplitude } else { -self.cfg.amplitude };
                    }
                }
            }
        }
    }

    fn write(&self, out: &mut [f64]) {
        for (o, s) in out.iter_mut().zip(&self.state) {
            *o = s + self.cfg.offset;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cfg: &ProbeConfig, m: usize, bins: &[u64]) -> Vec<Vec<f64>> {
        let mut p = Probe::new(cfg.clone(), m);
        let mut out = vec![0.0; m];
        bins.iter()
            .map(|&k| {
                p.value(k, &mut out);
                out.clone()
            })
            .collect()
    }

    #[test]
    fn same_seed_same_sequence_and_skipped_bins_do_not_shift_it() {
        let cfg = ProbeConfig::default();
        let all: Vec<u64> = (0..200).collect();
        let a = run(&cfg, 3, &all);
        assert_eq!(a, run(&cfg, 3, &all));
        // Skipping bins (a gap, a late bin) gives the same values at the bins asked for.
        let some: Vec<u64> = (0..200).filter(|k| k % 7 != 3).collect();
        let b = run(&cfg, 3, &some);
        for (i, k) in some.iter().enumerate() {
            assert_eq!(b[i], a[*k as usize]);
        }
        let other = run(&ProbeConfig { seed: 2, ..cfg }, 3, &all);
        assert_ne!(a, other);
        // Channels differ.
        assert_ne!(a[100][0], a[100][1]);
    }

    #[test]
    fn noise_has_the_ar1_statistics() {
        let cfg = ProbeConfig { a: 0.9, sigma: 0.2, ..Default::default() };
        let n = 200_000u64;
        let mut p = Probe::new(cfg.clone(), 1);
        let mut out = [0.0];
        let (mut s2, mut lag, mut prev) = (0.0, 0.0, 0.0);
        for k in 0..n {
            p.value(k, &mut out);
            s2 += out[0] * out[0];
            lag += out[0] * prev;
            prev = out[0];
        }
        let var = s2 / n as f64;
        let want = 0.2f64.powi(2) / (1.0 - 0.81);
        assert!((var / want - 1.0).abs() < 0.05, "variance {var} vs {want}");
        let rho = lag / s2;
        assert!((rho - 0.9).abs() < 0.01, "lag-1 autocorrelation {rho}");
    }

    #[test]
    fn prbs_holds_two_levels_and_is_balanced() {
        let cfg = ProbeConfig { signal: ProbeSignal::Prbs, hold_bins: 5, amplitude: 0.4, offset: 0.1, ..Default::default() };
        let bins: Vec<u64> = (0..50_000).collect();
        let v = run(&cfg, 2, &bins);
        let mut highs = 0;
        for (k, row) in v.iter().enumerate() {
            for &x in row {
                assert!((x - 0.5).abs() < 1e-12 || (x + 0.3).abs() < 1e-12, "level {x}");
            }
            if k % 5 != 0 {
                assert_eq!(row, &v[k - 1], "bit not held at bin {k}");
            }
            highs += (row[0] > 0.0) as usize;
        }
        let frac = highs as f64 / v.len() as f64;
        assert!((frac - 0.5).abs() < 0.02, "PRBS is unbalanced: {frac}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (cfg, key) in [
            (ProbeConfig { a: 1.0, ..Default::default() }, "probe.a"),
            (ProbeConfig { sigma: f64::NAN, ..Default::default() }, "probe.sigma"),
            (ProbeConfig { hold_bins: 0, ..Default::default() }, "probe.hold_bins"),
            (ProbeConfig { amplitude: -1.0, ..Default::default() }, "probe.amplitude"),
        ] {
            let e = cfg.validate().unwrap_err();
            assert!(e.contains(key), "{e}");
        }
    }
}
