//! Fault injection (rig `[fault]`), as a decorator around the real backend, so the
//! production loop has no test-only branch: every `slow_every`-th bin's step takes
//! `slow_ms` longer, which makes the loop miss that bin's deadline on purpose (tests/faults.rs).

use super::{Backend, BackendStats, BinInput, BinOutput};
use crate::control::Objective;
use crate::model::Dims;
use crate::rig::FaultConfig;

pub struct SlowEvery {
    inner: Box<dyn Backend>,
    every: u64,
    extra_s: f64,
}

impl SlowEvery {
    /// `backend` itself when the rig injects no fault.
    pub fn wrap(backend: Box<dyn Backend>, fault: &FaultConfig) -> Box<dyn Backend> {
        if fault.slow_every == 0 || !(fault.slow_ms > 0.0) {
            return backend;
        }
        Box::new(SlowEvery { inner: backend, every: fault.slow_every, extra_s: fault.slow_ms * 1e-3 })
    }
}

impl Backend for SlowEvery {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn dims(&self) -> Dims {
        self.inner.dims()
    }
    fn step(&mut self, input: &BinInput, out: &mut BinOutput) {
        self.inner.step(input, out);
        if input.bin % self.every == self.every - 1 {
            crate::clock::sleep_until(crate::clock::now() + self.extra_s);
        }
    }
    fn set_objective(&mut self, objective: Objective) -> Result<Objective, (Objective, &'static str)> {
        self.inner.set_objective(objective)
    }
    fn lock_task(&mut self, task: Option<usize>) -> Result<(), &'static str> {
        self.inner.lock_task(task)
    }
    fn set_limits(&mut self, lower: &[f64], upper: &[f64]) {
        self.inner.set_limits(lower, upper)
    }
    fn can_lock_task(&self) -> bool {
        self.inner.can_lock_task()
    }
    fn step_allocates(&self) -> bool {
        self.inner.step_allocates()
    }
    fn stats(&self) -> BackendStats {
        self.inner.stats()
    }
}
