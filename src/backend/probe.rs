//! The probe backend: an identification session's "model" (`[controller] kind = "probe"`).
//!
//! There is no model to run yet (fitting one is what the session is for), so no filter,
//! no embedding, no controller: each bin proposes the probe's excitation
//! ([`crate::control::probe`]), and the loop, the emitter's deadline and the safety layer
//! treat it like any controller's proposal. Allocation-free per bin.

use super::{Backend, BinInput, BinOutput};
use crate::control::probe::{Probe, ProbeConfig};
use crate::control::Objective;
use crate::model::Dims;

pub struct ProbeBackend {
    dims: Dims,
    probe: Probe,
}

impl ProbeBackend {
    /// `dims`: N and m from the rig; latent, embed and hidden are 0 (no model).
    pub fn new(dims: Dims, cfg: ProbeConfig) -> ProbeBackend {
        ProbeBackend { probe: Probe::new(cfg, dims.control), dims }
    }
}

impl Backend for ProbeBackend {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn dims(&self) -> Dims {
        self.dims
    }

    fn step(&mut self, input: &BinInput, out: &mut BinOutput) {
        // The sequence advances on every bin, sent or not, so it depends on (seed, k) only.
        self.probe.value(input.bin, &mut out.u);
        // As for a model: no excitation on a stream gap (the rig may be gone) or past the
        // deadline; the emitter sends the fallback instead.
        out.control_valid = input.has_data && input.want_control;
        out.loglik = 0.0;
        out.task_jump = None;
        out.embed_step = 0.0;
    }

    fn set_objective(&mut self, objective: Objective) -> Result<Objective, (Objective, &'static str)> {
        Err((objective, "an identification session (the probe) has no objective"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_the_probe_sequence_and_no_control_on_gaps() {
        let dims = Dims { n_units: 5, latent: 0, embed: 0, control: 2, hidden: 0 };
        let mut b = ProbeBackend::new(dims, ProbeConfig::default());
        let mut reference = Probe::new(ProbeConfig::default(), 2);
        let mut out = BinOutput::new(&dims);
        let mut want = vec![0.0; 2];
        let counts = vec![0.0; 5];
        let u_prev = vec![0.0; 2];
        for k in 0..50u64 {
            let has_data = k % 10 != 4;
            b.step(&BinInput { bin: k, counts: &counts, u_prev: &u_prev, has_data, want_control: true }, &mut out);
            reference.value(k, &mut want);
            assert_eq!(out.u, want);
            assert_eq!(out.control_valid, has_data);
            assert!(out.x.is_empty() && out.z.is_empty());
        }
    }
}
