//! Fault injection (rig `[fault]`), as a decorator around the real backend, so the
//! production loop has no test-only branch: every `slow_every`-th bin's step takes
//! `slow_ms` longer, which makes the loop miss that bin's deadline on purpose, and every
//! `controller_fault_every`-th bin's command comes out NaN, as from a controller whose cost
//! overflowed (tests/faults.rs).

use super::{Backend, BackendStats, BinInput, BinOutput};
use crate::control::Objective;
use crate::model::Dims;
use crate::rig::FaultConfig;

pub struct Faulty {
    inner: Box<dyn Backend>,
    /// 0: off.
    slow_every: u64,
    extra_s: f64,
    /// 0: off.
    controller_fault_every: u64,
}

impl Faulty {
    /// `backend` itself when the rig injects no fault.
    pub fn wrap(backend: Box<dyn Backend>, fault: &FaultConfig) -> Box<dyn Backend> {
        let slow_every = if fault.slow_ms > 0.0 { fault.slow_every } else { 0 };
        if slow_every == 0 && fault.controller_fault_every == 0 {
            return backend;
        }
        Box::new(Faulty { inner: backend, slow_every, extra_s: fault.slow_ms * 1e-3, controller_fault_every: fault.controller_fault_every })
    }
}

/// Whether bin k is the n-th of a period of `every` (0: never).
fn nth(k: u64, every: u64) -> bool {
    every > 0 && k % every == every - 1
}

impl Backend for Faulty {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn dims(&self) -> Dims {
        self.inner.dims()
    }
    fn step(&mut self, input: &BinInput, out: &mut BinOutput) {
        self.inner.step(input, out);
        if nth(input.bin, self.controller_fault_every) && out.control_valid {
            out.u.fill(f64::NAN);
            out.control_valid = false;
            out.control_fault = true;
        }
        if nth(input.bin, self.slow_every) {
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
