//! The plain-Rust CPU backend: the reference every GPU kernel is tested against.
//!
//! Per bin: filter predict with the command actually emitted last bin (the point-process
//! EKF, or the particle filter when the rig asks for it) → filter update with the
//! counts → one online embedding step (gradient through dynamics and hypernetwork) →
//! re-decode θ(z) → task identification over the library → controller. Everything is
//! preallocated in `new`; `step` does not allocate.

use super::{Backend, BackendConfig, BinInput, BinOutput};
use crate::control::{ActuationLimits, ControlContext, Controller, ControllerKind, Objective};
use crate::model::embedding::{EmbeddingConfig, EmbeddingUpdater};
use crate::model::filter::LatentFilter;
use crate::model::hypernet::HypernetScratch;
use crate::model::taskid::TaskIdentifier;
use crate::model::{Dims, ModelParams, Theta};
use anyhow::anyhow;
use nalgebra::DVector;

pub struct CpuBackend {
    params: ModelParams,
    z: DVector<f64>,
    theta: Theta,
    hyper: HypernetScratch,
    filter: LatentFilter,
    embed_cfg: EmbeddingConfig,
    embed: EmbeddingUpdater,
    taskid: Option<TaskIdentifier>,
    /// None: `kind = "monitor"`, no controller; every bin's command is `hold`.
    controller: Option<Controller>,
    /// A monitor's command: the rig's fallback (zeros unless `fallback_vector`) within the bounds.
    hold: DVector<f64>,
    objective: Objective,
    limits: ActuationLimits,
    u_prev: DVector<f64>,
    u: DVector<f64>,
    /// The library task the embedding is held on (`lock_task`): no embedding update and no
    /// task identification while it is set.
    locked: Option<usize>,
    /// A lock's jump, reported as the next bin's `task_jump`.
    lock_jump: Option<usize>,
    /// The per-unit history term: writes each bin's intercepts into `params.obs_d`.
    history: Option<crate::model::history::LiveHistory>,
}

impl CpuBackend {
    pub fn new(params: ModelParams, cfg: &BackendConfig) -> anyhow::Result<CpuBackend> {
        let dims = params.dims;
        let controller = if cfg.controller.kind == ControllerKind::Monitor {
            None
        } else {
            let mut c = Controller::new(&cfg.controller, &dims, &params).map_err(|e| anyhow!("[controller]: {e}"))?;
            c.set_objective(&cfg.objective, &params).map_err(|e| anyhow!("[objective]: {e}"))?;
            Some(c)
        };
        let hold = DVector::from_fn(dims.control, |j, _| cfg.hold.get(j).copied().unwrap_or(0.0).clamp(cfg.lower[j], cfg.upper[j]));
        let taskid = (cfg.task_id.enabled && !params.task_library.is_empty()).then(|| TaskIdentifier::new(&params, cfg.task_id.clone()));
        let mut hyper = HypernetScratch::new(&dims);
        let mut theta = Theta::zeros(&dims);
        let z = params.z_init.clone();
        params.hypernet.decode(&z, &mut theta, &mut hyper);
        Ok(CpuBackend {
            history: crate::model::history::LiveHistory::new(&params),
            filter: LatentFilter::new(&cfg.filter, &params),
            embed: EmbeddingUpdater::new(&dims, cfg.embedding.clone()),
            embed_cfg: cfg.embedding.clone(),
            taskid,
            controller,
            hold,
            objective: cfg.objective.clone(),
            limits: ActuationLimits { lo: DVector::from_column_slice(&cfg.lower), hi: DVector::from_column_slice(&cfg.upper) },
            u_prev: DVector::zeros(dims.control),
            u: DVector::zeros(dims.control),
            locked: None,
            lock_jump: None,
            z,
            theta,
            hyper,
            params,
        })
    }
}

impl CpuBackend {
    /// One bin of the model proper (the history term's intercepts already in `obs_d`).
    fn step_model(&mut self, input: &BinInput, out: &mut BinOutput) {
        let p = &self.params;
        self.u_prev.as_mut_slice().copy_from_slice(input.u_prev);
        self.filter.predict(p, &self.theta, &self.u_prev, input.bin);
        out.task_jump = self.lock_jump.take();
        out.embed_step = 0.0;
        if input.has_data {
            out.loglik = self.filter.update(p, &self.theta, &self.u_prev, input.counts, input.bin);
            let x_prev = self.filter.x_prev();
            if self.locked.is_some() {
                // Held on a task: the embedding stays where the lock put it.
            } else if self.embed_cfg.enabled {
                out.embed_step = self.embed.step(p, &mut self.z, &mut self.theta, x_prev, &self.u_prev, input.counts, &mut self.hyper);
                // re-decodes θ(z) for the next bin
            }
            if let Some(tid) = self.taskid.as_mut().filter(|_| self.locked.is_none()) {
                if let Some(j) = tid.score(p, x_prev, &self.u_prev, input.counts, out.loglik) {
                    self.z.copy_from(&p.task_library[j]);
                    p.hypernet.decode(&self.z, &mut self.theta, &mut self.hyper);
                    tid.jumped_to(j);
                    self.embed.reset();
                    out.task_jump = Some(j);
                }
            }
        } else {
            self.filter.skip_update();
            out.loglik = 0.0;
        }
        let x = self.filter.x();
        out.control_valid = false;
        out.control_fault = false;
        if input.want_control && input.has_data {
            let usable = match &mut self.controller {
                Some(c) => {
                    let ctx = ControlContext { params: p, theta: &self.theta, x, u_prev: &self.u_prev, bin: input.bin };
                    c.compute(&ctx, &self.objective, &self.limits, &mut self.u)
                }
                None => {
                    self.u.copy_from(&self.hold);
                    true
                }
            };
            out.u.copy_from_slice(self.u.as_slice());
            out.control_valid = usable;
            out.control_fault = !usable;
        }
        out.x.copy_from_slice(x.as_slice());
        out.z.copy_from_slice(self.z.as_slice());
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn dims(&self) -> Dims {
        self.params.dims
    }

    fn step(&mut self, input: &BinInput, out: &mut BinOutput) {
        if let Some(h) = &self.history {
            h.before_bin(&mut self.params.obs_d);
        }
        self.step_model(input, out);
        if let Some(h) = &mut self.history {
            h.after_bin(input.has_data.then_some(input.counts));
        }
    }

    fn set_objective(&mut self, mut objective: Objective) -> Result<Objective, (Objective, &'static str)> {
        // Validates (allocation-free) and primes the controller's target cache now, so the
        // conversion does not land on the next bin's budget.
        let Some(controller) = &mut self.controller else {
            return Err((objective, "a monitoring session (kind = \"monitor\") has no controller to take an objective"));
        };
        // A rate target becomes a latent target through d at a typical history, not this
        // bin's history offsets (the next bin writes them again).
        if let Some(h) = &self.history {
            self.params.obs_d.copy_from(h.base());
        }
        if controller.set_objective(&objective, &self.params).is_err() {
            return Err((objective, "the objective does not fit the model (its length, or a value that is not finite)"));
        }
        std::mem::swap(&mut self.objective, &mut objective);
        Ok(objective)
    }

    fn lock_task(&mut self, task: Option<usize>) -> Result<(), &'static str> {
        let p = &self.params;
        match task {
            Some(j) if j >= p.task_library.len() => Err("no such library task"),
            Some(j) => {
                self.z.copy_from(&p.task_library[j]);
                p.hypernet.decode(&self.z, &mut self.theta, &mut self.hyper);
                self.embed.reset();
                if let Some(tid) = &mut self.taskid {
                    tid.reset();
                    tid.set_active(Some(j));
                }
                self.locked = Some(j);
                self.lock_jump = Some(j);
                Ok(())
            }
            None => {
                // Identification starts over from the held task: its windows are stale.
                if let Some(tid) = &mut self.taskid {
                    tid.reset();
                }
                self.locked = None;
                Ok(())
            }
        }
    }

    fn can_lock_task(&self) -> bool {
        !self.params.task_library.is_empty()
    }

    fn set_limits(&mut self, lower: &[f64], upper: &[f64]) {
        let m = self.params.dims.control;
        self.limits.lo.as_mut_slice().copy_from_slice(&lower[..m]);
        self.limits.hi.as_mut_slice().copy_from_slice(&upper[..m]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BinOutput;
    use crate::rig::Rig;

    fn sim_rig(controller: &str) -> Rig {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rigs/sim-utah96.toml")).unwrap();
        let text = text.replace("kind = \"mppi\"", &format!("kind = \"{controller}\""));
        let mut rig: Rig = toml::from_str(&text).unwrap();
        rig.path = "rigs/sim-utah96.toml".into();
        rig
    }

    /// Per-bin step time on synthetic counts (run with --ignored --nocapture; a timing
    /// probe, not a test of anything).
    #[test]
    #[ignore]
    fn step_timing_probe() {
        for controller in ["mppi", "lqr"] {
            let rig = sim_rig(controller);
            let params = crate::sim::truth_model(rig.sim.as_ref().unwrap(), 0.01);
            let dims = params.dims;
            let cfg = crate::session::backend_config(&rig, &params).unwrap();
            let mut b = CpuBackend::new(params, &cfg).unwrap();
            let mut out = BinOutput::new(&dims);
            let counts: Vec<f64> = (0..dims.n_units).map(|i| (i % 3 == 0) as u8 as f64).collect();
            let u_prev = vec![0.0; dims.control];
            let mut times = Vec::new();
            for k in 0..3000 {
                let t = std::time::Instant::now();
                b.step(&BinInput { bin: k, counts: &counts, u_prev: &u_prev, has_data: true, want_control: true }, &mut out);
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
            times.sort_by(|a, b| a.total_cmp(b));
            let q = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
            eprintln!("{controller}: p50 {:.0} µs p99 {:.0} µs max {:.0} µs", q(0.5), q(0.99), q(1.0));
        }
    }
}
