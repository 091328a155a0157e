//! The GPU backend: the per-bin model and MPPI in cubecl kernels (`neuroloop-kernels`),
//! on wgpu (Vulkan / Metal / DX12; Mesa lavapipe on a CPU-only machine) or CUDA
//! (`--features cuda`).
//!
//! Weights, filter, embedding, task-id and controller state live on the device in f32
//! (see `neuroloop_kernels::layout`); per bin the host uploads the counts and the emitted
//! u_{k−1}, launches predict → obs_reduce → update → mppi_rollout → mppi_update (with the
//! particle filter: predict → pf_propagate → obs_reduce → pf_weigh → pf_resample → update
//! → mppi_*), and reads
//! back one small buffer (u_k, x_k, z, log-likelihood, ‖Δz‖, task jump). The CPU backend
//! is the reference: `tests/gpu_kernels.rs` holds every kernel to it.
//!
//! Deadlines: the loop thread runs `step` like the CPU backend's, and the emitter sends
//! the fallback at the deadline whatever the device is doing, so a late GPU result is a
//! fallback like any other. cubecl's client allocates small host-side objects per launch
//! and per read-back, so unlike the CPU backend this `step` is not allocation-free.

use super::{Backend, BackendConfig, BackendStats, BinInput, BinOutput};
use crate::control::{ControllerKind, Objective, ObjectiveTarget};
use crate::model::filter::FilterChoice;
use crate::model::{Dims, ModelParams};
use anyhow::bail;
use cubecl::Runtime;
use neuroloop_kernels::layout::{self as lay, Layout, Shape};
use neuroloop_kernels::runner::DeviceModel;

/// Everything the device needs, packed: the layout, `mem` and `cfg`.
#[derive(Clone)]
pub struct Packed {
    pub layout: Layout,
    pub mem: Vec<f32>,
    pub cfg: Vec<f32>,
}

/// What the packer needs besides the model file.
pub struct DeviceConfig<'a> {
    pub params: &'a ModelParams,
    pub embedding: &'a crate::model::embedding::EmbeddingConfig,
    pub task_id: &'a crate::model::taskid::TaskIdConfig,
    pub controller: &'a crate::control::ControllerConfig,
    pub objective: &'a Objective,
    pub lower: &'a [f64],
    pub upper: &'a [f64],
    /// Some: the particle filter replaces the EKF.
    pub particles: Option<&'a crate::model::particle::ParticleConfig>,
}

fn put(mem: &mut [f32], at: usize, src: impl IntoIterator<Item = f64>) {
    for (i, v) in src.into_iter().enumerate() {
        mem[at + i] = v as f32;
    }
}

/// Row-major (r × c) copy of an nalgebra matrix.
fn row_major(m: &nalgebra::DMatrix<f64>) -> impl Iterator<Item = f64> + '_ {
    (0..m.nrows()).flat_map(move |i| (0..m.ncols()).map(move |j| m[(i, j)]))
}

/// Packs a model, its configuration and the initial state (x = 0, P = P₀ I, z = z_init,
/// zero warm start) into the device layout. θ(z) is decoded on the device afterwards.
pub fn pack(c: &DeviceConfig) -> anyhow::Result<Packed> {
    let p = c.params;
    let Dims { n_units: n, latent: d, embed: e, control: m, hidden: h } = p.dims;
    let tasks = if c.task_id.enabled { p.task_library.len() } else { 0 };
    let shape = Shape {
        n,
        d,
        e,
        m,
        hidden: h,
        tasks,
        window: c.task_id.window_bins.max(1),
        horizon: c.controller.horizon.max(1),
        samples: c.controller.samples.max(1),
        particles: c.particles.map_or(1, |pc| pc.count.max(1)),
    };
    let mut layout = Layout::new(shape);
    let mut mem = vec![0.0f32; layout.mem_len];
    let at = |slot| layout.at(slot);
    let gens = [&p.hypernet.w_hh, &p.hypernet.w_xu, &p.hypernet.b];
    for (g, gen) in gens.iter().enumerate() {
        put(&mut mem, at(lay::O_W1) + g * h * e, row_major(&gen.w1));
        put(&mut mem, at(lay::O_B1) + g * h, gen.b1.iter().copied());
    }
    let mut row = 0;
    for gen in gens {
        put(&mut mem, at(lay::O_W2) + row * h, row_major(&gen.w2));
        put(&mut mem, at(lay::O_B2) + row, gen.b2.iter().copied());
        row += gen.w2.nrows();
    }
    if row != shape.theta_len() {
        bail!("the hypernetwork's heads output {row} values, θ needs {}", shape.theta_len());
    }
    put(&mut mem, at(lay::O_C), row_major(&p.obs_c));
    put(&mut mem, at(lay::O_DV), p.obs_d.iter().copied());
    put(&mut mem, at(lay::O_Q), p.process_noise.iter().copied());
    for j in 0..tasks {
        let th = p.theta_at(&p.task_library[j]);
        let base = at(lay::O_LIBTH) + j * shape.theta_len();
        put(&mut mem, base, row_major(&th.w_hh));
        put(&mut mem, base + d * d, row_major(&th.w_xu));
        put(&mut mem, base + d * d + d * m, th.b.iter().copied());
        put(&mut mem, at(lay::O_LIBZ) + j * e, p.task_library[j].iter().copied());
    }
    put(&mut mem, at(lay::O_LO), c.lower.iter().copied());
    put(&mut mem, at(lay::O_HI), c.upper.iter().copied());
    let mut target = ObjectiveTarget::new(&p.dims);
    target.sync(c.objective, p);
    put(&mut mem, at(lay::O_TGTX), target.latent.iter().copied());
    put(&mut mem, at(lay::O_TGTR), target.rates.iter().copied());
    put(&mut mem, at(lay::O_RSCALE), target.rate_scale.iter().copied());
    for i in 0..d {
        mem[at(lay::O_P) + i * d + i] = p.initial_state_var as f32;
    }
    put(&mut mem, at(lay::O_Z), p.z_init.iter().copied());
    mem[at(lay::O_ESCAL)] = 1.0;
    let active = p.task_library.iter().position(|z| *z == p.z_init).filter(|_| tasks > 0);
    mem[at(lay::O_TSCAL) + 3] = active.map_or(-1.0, |j| j as f32);

    if let Some(pc) = c.particles {
        // The initial cloud is the CPU filter's (same Philox stream), in f32.
        let pf = crate::model::particle::ParticleFilter::new(&p.dims, pc.clone(), &nalgebra::DVector::zeros(d), p.initial_state_var);
        put(&mut mem, at(lay::O_PART), pf.particles.iter().copied());
        put(&mut mem, at(lay::O_LOGW), pf.logw.iter().copied());
        put(&mut mem, at(lay::O_PW), pf.weights.iter().copied());
        put(&mut mem, at(lay::O_X), pf.x.iter().copied());
    }

    let mut flags = 0;
    if let Some(pc) = c.particles {
        flags |= lay::FLAG_PARTICLES;
        let key = neuroloop_kernels::philox::key_from_seed(pc.seed);
        layout.lay[lay::PKEY0] = key[0];
        layout.lay[lay::PKEY1] = key[1];
    }
    if c.embedding.enabled {
        flags |= lay::FLAG_EMBED;
    }
    if tasks > 0 {
        flags |= lay::FLAG_TASKID;
    }
    if target.is_rates() {
        flags |= lay::FLAG_RATES;
    }
    layout.lay[lay::FLAGS] = flags;
    layout.lay[lay::MIN_SWITCH] = c.task_id.min_bins_between_switches.min(16_000_000) as u32;
    let key = neuroloop_kernels::philox::key_from_seed(c.controller.seed);
    layout.lay[lay::KEY0] = key[0];
    layout.lay[lay::KEY1] = key[1];

    let mut cfg = vec![0.0f32; lay::CFG_LEN];
    cfg[lay::CFG_ALPHA] = p.alpha as f32;
    cfg[lay::CFG_BIN_S] = p.bin_s as f32;
    cfg[lay::CFG_LNBIN] = p.bin_s.ln() as f32;
    cfg[lay::CFG_LMAX] = p.log_rate_max as f32;
    cfg[lay::CFG_LR] = c.embedding.learning_rate as f32;
    cfg[lay::CFG_RHO] = c.embedding.rms_decay as f32;
    cfg[lay::CFG_TRUST] = c.embedding.trust_radius as f32;
    cfg[lay::CFG_PRIOR] = (c.embedding.prior_weight / (p.z_prior_sigma * p.z_prior_sigma)) as f32;
    cfg[lay::CFG_MARGIN] = c.task_id.margin as f32;
    cfg[lay::CFG_TEMP] = c.controller.temperature as f32;
    cfg[lay::CFG_RATE_TEMP] = c.controller.rate_temperature as f32;
    cfg[lay::CFG_NOISE] = c.controller.noise_std as f32;
    cfg[lay::CFG_QLAT] = c.controller.q_latent as f32;
    cfg[lay::CFG_RCTL] = c.controller.r_control as f32;
    cfg[lay::CFG_RATE] = (c.controller.rate_weight / n.max(1) as f64) as f32;
    cfg[lay::CFG_ESS_FRAC] = c.particles.map_or(0.5, |pc| pc.resample_ess) as f32;
    Ok(Packed { layout, mem, cfg })
}

/// The GPU backend on runtime `R`.
pub struct GpuBackend<R: Runtime> {
    name: &'static str,
    dims: Dims,
    params: ModelParams,
    device: DeviceModel<R>,
    particles: bool,
    bin_buf: Vec<f32>,
    out_buf: Vec<f32>,
    /// Bins whose read-back failed (each one became a fallback).
    pub device_errors: u64,
    /// The per-unit history term: each bin's intercepts d + offsets, computed here in f64
    /// as on the CPU and written over the device's d before the kernels run.
    history: Option<crate::model::history::LiveHistory>,
    dv_at: usize,
    dv: nalgebra::DVector<f64>,
    dv_buf: Vec<f32>,
}

impl<R: Runtime> GpuBackend<R> {
    pub fn new(name: &'static str, device: &R::Device, params: ModelParams, cfg: &BackendConfig) -> anyhow::Result<Self> {
        if cfg.controller.kind != ControllerKind::Mppi {
            bail!(
                "[controller] kind = \"{:?}\" runs on the cpu backend only; the {name} backend runs mppi \
                 (use kind = \"mppi\", or backend = \"cpu\")",
                cfg.controller.kind
            );
        }
        if let Objective::Rates(r) = &cfg.objective {
            if r.len() != params.dims.n_units {
                bail!("[objective] has {} target rates, the model has {} units", r.len(), params.dims.n_units);
            }
        }
        let particles = match &cfg.filter {
            FilterChoice::Ekf => None,
            FilterChoice::Particles(p) => Some(p),
        };
        let packed = pack(&DeviceConfig {
            params: &params,
            embedding: &cfg.embedding,
            task_id: &cfg.task_id,
            controller: &cfg.controller,
            objective: &cfg.objective,
            lower: &cfg.lower,
            upper: &cfg.upper,
            particles,
        })?;
        let shape = packed.layout.shape;
        let dv_at = packed.layout.at(lay::O_DV);
        let device = open_device::<R>(name, device, packed)?;
        Ok(GpuBackend {
            history: crate::model::history::LiveHistory::new(&params),
            dv_at,
            dv: params.obs_d.clone(),
            dv_buf: vec![0.0; params.dims.n_units],
            name,
            dims: params.dims,
            params,
            device,
            particles: particles.is_some(),
            bin_buf: vec![0.0; shape.bin_len()],
            out_buf: vec![0.0; shape.out_len()],
            device_errors: 0,
        })
    }

    /// The resident model (tests read its memory).
    pub fn device(&self) -> &DeviceModel<R> {
        &self.device
    }
}

/// Creates the device model, turning cubecl's panics (no adapter, no driver) into a clear
/// error.
pub fn open_device<R: Runtime>(name: &str, device: &R::Device, packed: Packed) -> anyhow::Result<DeviceModel<R>> {
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        warm_up::<R>(device, packed.clone());
        let dm = DeviceModel::<R>::new(device, packed.layout, &packed.mem, &packed.cfg);
        dm.decode();
        let mut probe = vec![0.0; dm.layout.shape.out_len()];
        dm.read_out(&mut probe).map(|_| dm)
    }));
    match opened {
        Ok(Ok(dm)) => Ok(dm),
        Ok(Err(e)) => bail!("the {name} device failed its first launch: {e}"),
        Err(panic) => {
            let msg = crate::panic_message(panic.as_ref());
            let hint = if name == "wgpu" {
                "wgpu needs a Vulkan (or Metal/DX12) driver; on a machine without a GPU install Mesa's lavapipe \
                 (Debian: apt-get install mesa-vulkan-drivers)"
            } else {
                "CUDA needs the NVIDIA driver (libcuda) on this machine"
            };
            bail!("could not open the {name} device: {msg}\n  {hint}, or use backend = \"cpu\"")
        }
    }
}

/// Runs every kernel once on a throw-away copy of the model, so that shader compilation
/// (hundreds of ms to seconds on the first launch) happens before the loop starts, not in
/// its first bins.
fn warm_up<R: Runtime>(device: &R::Device, packed: Packed) {
    let shape = packed.layout.shape;
    let particles = packed.layout.lay[lay::FLAGS] & lay::FLAG_PARTICLES != 0;
    let mut dm = DeviceModel::<R>::new(device, packed.layout, &packed.mem, &packed.cfg);
    dm.decode();
    dm.upload_bin(&vec![0.0; shape.bin_len()]);
    dm.predict();
    if particles {
        dm.pf_propagate(0);
        dm.pf_resample(false, 0);
    }
    dm.obs_reduce();
    if particles {
        dm.pf_weigh();
        dm.pf_resample(true, 0);
    }
    dm.update();
    dm.mppi(0);
    let mut out = vec![0.0; shape.out_len()];
    let _ = dm.read_out(&mut out);
}

impl<R: Runtime> Backend for GpuBackend<R> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn dims(&self) -> Dims {
        self.dims
    }

    fn step(&mut self, input: &BinInput, out: &mut BinOutput) {
        let Dims { n_units: n, latent: d, embed: e, control: m, .. } = self.dims;
        for (dst, &c) in self.bin_buf[..n].iter_mut().zip(input.counts) {
            *dst = c as f32;
        }
        for (dst, &u) in self.bin_buf[n..n + m].iter_mut().zip(input.u_prev) {
            *dst = u as f32;
        }
        self.device.upload_bin(&self.bin_buf);
        if let Some(h) = &self.history {
            h.before_bin(&mut self.dv);
            for (dst, &v) in self.dv_buf.iter_mut().zip(self.dv.iter()) {
                *dst = v as f32;
            }
            self.device.write_mem(self.dv_at, &self.dv_buf);
        }
        if let Some(h) = &mut self.history {
            h.after_bin(input.has_data.then_some(input.counts));
        }
        self.device.predict();
        if self.particles {
            self.device.pf_propagate(input.bin);
        }
        let control = input.want_control && input.has_data;
        if input.has_data {
            self.device.obs_reduce();
            if self.particles {
                self.device.pf_weigh();
                self.device.pf_resample(true, input.bin);
            }
            self.device.update();
            if control {
                self.device.mppi(input.bin);
            }
        } else if self.particles {
            self.device.pf_resample(false, input.bin);
        }
        out.control_valid = false;
        out.control_fault = false;
        out.task_jump = None;
        out.embed_step = 0.0;
        if self.device.read_out(&mut self.out_buf).is_err() {
            // Nothing trustworthy came back: the emitter's fallback covers this bin, and the
            // state is unknown (NaN), not the previous bin's.
            self.device_errors += 1;
            out.x.iter_mut().chain(out.z.iter_mut()).for_each(|v| *v = f64::NAN);
            out.loglik = f64::NAN;
            return;
        }
        let tail = m + d + e;
        for (dst, &v) in out.x.iter_mut().zip(&self.out_buf[m..m + d]) {
            *dst = v as f64;
        }
        if input.has_data {
            for (dst, &v) in out.z.iter_mut().zip(&self.out_buf[m + d..tail]) {
                *dst = v as f64;
            }
            out.loglik = self.out_buf[tail + lay::OUT_LL] as f64;
            out.embed_step = self.out_buf[tail + lay::OUT_STEP] as f64;
            let jump = self.out_buf[tail + lay::OUT_JUMP];
            out.task_jump = (jump >= 0.0).then_some(jump as usize);
        } else {
            out.loglik = 0.0;
        }
        if control {
            for (dst, &v) in out.u.iter_mut().zip(&self.out_buf[..m]) {
                *dst = v as f64;
            }
            // No rollout had a finite cost: no command, as on the CPU (NaN, a fault).
            if self.out_buf[tail + lay::OUT_FAULT] > 0.5 {
                out.u.fill(f64::NAN);
            }
            out.control_valid = out.u.iter().all(|v| v.is_finite());
            out.control_fault = !out.control_valid;
        }
    }

    fn step_allocates(&self) -> bool {
        true
    }

    fn stats(&self) -> BackendStats {
        BackendStats { device_errors: self.device_errors }
    }

    fn set_objective(&mut self, objective: Objective) -> Result<Objective, (Objective, &'static str)> {
        if objective.validate(&self.dims).is_err() {
            return Err((objective, "the objective does not fit the model (its length, or a value that is not finite)"));
        }
        let mut target = ObjectiveTarget::new(&self.dims);
        target.sync(&objective, &self.params);
        let l = &self.device.layout;
        let f = |v: &nalgebra::DVector<f64>| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (tx, tr, rs) = (l.at(lay::O_TGTX), l.at(lay::O_TGTR), l.at(lay::O_RSCALE));
        self.device.write_mem(tx, &f(&target.latent));
        self.device.write_mem(tr, &f(&target.rates));
        self.device.write_mem(rs, &f(&target.rate_scale));
        self.device.set_rate_objective(target.is_rates());
        // The device holds the target; the host keeps no objective to hand back but this one.
        Ok(objective)
    }

    fn set_limits(&mut self, lower: &[f64], upper: &[f64]) {
        let l = &self.device.layout;
        let m = self.dims.control;
        let f = |v: &[f64]| v[..m].iter().map(|&x| x as f32).collect::<Vec<f32>>();
        self.device.write_mem(l.at(lay::O_LO), &f(lower));
        self.device.write_mem(l.at(lay::O_HI), &f(upper));
    }
}
