//! Every GPU kernel against the CPU reference (f64) on fresh random inputs of several
//! shapes, including sizes that are not multiples of the cube size (256).
//!
//! Tolerance: normwise relative error max|gpu − cpu| / max|cpu| ≤ 1e-4 (f32 on the device).
//! Runs on wgpu (Mesa lavapipe on a CPU-only machine, so in CI) and, built with
//! `--features cuda`, on CUDA too.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod gpu_common;

use gpu_common::*;
use nalgebra::{DMatrix, DVector};
use neuroloop::backend::gpu::{pack, DeviceConfig};
use neuroloop::control::{ActuationLimits, ControlContext, ControllerConfig, Mppi, Objective};
use neuroloop::model::dynamics;
use neuroloop::model::ekf::PointProcessEkf;
use neuroloop::model::embedding::{EmbeddingConfig, EmbeddingUpdater};
use neuroloop::model::hypernet::HypernetScratch;
use neuroloop::model::observation;
use neuroloop::model::particle::{ParticleConfig, ParticleFilter};
use neuroloop::model::taskid::TaskIdConfig;
use neuroloop::model::{Dims, ModelParams, Theta};
use neuroloop_kernels::layout::{self as lay};
use neuroloop_kernels::runner::DeviceModel;

/// Shapes: (N, d, e, m, hidden, tasks). 300 and 1000 units span several 256-unit chunks.
const SHAPES: [(usize, usize, usize, usize, usize, usize); 4] =
    [(7, 1, 2, 1, 5, 0), (96, 4, 3, 2, 16, 3), (300, 9, 5, 3, 20, 2), (1000, 17, 4, 5, 33, 4)];

struct Case {
    params: ModelParams,
    embed: EmbeddingConfig,
    task: TaskIdConfig,
    ctl: ControllerConfig,
    objective: Objective,
    lo: Vec<f64>,
    hi: Vec<f64>,
    particles: Option<ParticleConfig>,
}

impl Case {
    fn new(shape: (usize, usize, usize, usize, usize, usize), seed: u64) -> Case {
        let (n, d, e, m, h, t) = shape;
        let dims = Dims { n_units: n, latent: d, embed: e, control: m, hidden: h };
        let params = ModelParams::synthetic(dims, t.max(1), 0.01, seed);
        let mut rng = Rng::new(seed ^ 0xA5A5);
        Case {
            params,
            embed: EmbeddingConfig { enabled: false, ..EmbeddingConfig::default() },
            task: TaskIdConfig { enabled: t > 0, ..TaskIdConfig::default() },
            ctl: ControllerConfig { horizon: 7, samples: 300, seed: seed + 3, ..ControllerConfig::default() },
            objective: Objective::Latent(DVector::from_fn(d, |_, _| 0.5 * rng.normal())),
            lo: vec![-1.0; m],
            hi: vec![0.8; m],
            particles: None,
        }
    }

    fn device(&self) -> DeviceModel<TestRuntime> {
        let packed = pack(&DeviceConfig {
            params: &self.params,
            embedding: &self.embed,
            task_id: &self.task,
            controller: &self.ctl,
            objective: &self.objective,
            lower: &self.lo,
            upper: &self.hi,
            particles: self.particles.as_ref(),
        })
        .unwrap();
        let dm = DeviceModel::<TestRuntime>::new(&test_device(), packed.layout, &packed.mem, &packed.cfg);
        dm.decode();
        dm
    }
}

fn random_spd(d: usize, rng: &mut Rng) -> DMatrix<f64> {
    let a = DMatrix::from_fn(d, d, |_, _| rng.normal());
    &a * a.transpose() * (0.3 / d as f64) + DMatrix::identity(d, d) * 0.1
}

fn row_major(m: &DMatrix<f64>) -> Vec<f64> {
    (0..m.nrows()).flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)])).collect()
}

fn theta_flat(th: &Theta) -> Vec<f64> {
    let mut v = row_major(&th.w_hh);
    v.extend(row_major(&th.w_xu));
    v.extend(th.b.iter());
    v
}

/// Counts drawn from the model's own rates at a random state.
fn random_counts(p: &ModelParams, rng: &mut Rng) -> Vec<f64> {
    let x = DVector::from_fn(p.dims.latent, |_, _| 0.5 * rng.normal());
    let mut eta = DVector::zeros(p.dims.n_units);
    observation::log_rates(&p.obs_c, &p.obs_d, p.log_rate_max, &x, &mut eta);
    eta.iter().map(|&e| rng.poisson(p.bin_s * e.exp())).collect()
}

/// Writes state (x, P, z) into the device and returns the bin upload (counts, u_prev).
fn set_state(dm: &DeviceModel<TestRuntime>, x: &DVector<f64>, p: &DMatrix<f64>, z: &DVector<f64>) {
    let l = &dm.layout;
    dm.write_mem(l.at(lay::O_X), &f32s(x.as_slice()));
    dm.write_mem(l.at(lay::O_P), &f32s(&row_major(p)));
    dm.write_mem(l.at(lay::O_Z), &f32s(z.as_slice()));
    dm.decode();
}

fn bin_upload(counts: &[f64], u: &[f64]) -> Vec<f32> {
    let mut b = f32s(counts);
    b.extend(f32s(u));
    b
}

#[test]
fn philox_draws_match_the_cpu() {
    for (seed, stream, first) in [(7u64, 0u64, 0u32), (1, 123_456, 3), (0xDEAD_BEEF_0000_0001, (5u64 << 32) | 9, 1001)] {
        let n = 777;
        let (normals, uniforms) = neuroloop_kernels::runner::draw::<TestRuntime>(&test_device(), seed, stream, first, n);
        for i in 0..n {
            let idx = first as u64 + i as u64;
            let cn = neuroloop_kernels::philox::normal_at(seed, stream, idx);
            let cu = neuroloop_kernels::philox::uniform_at(seed, stream, idx);
            assert_eq!(uniforms[i], cu, "uniform {idx}: the integer rounds must agree exactly");
            assert!((normals[i] - cn).abs() <= 1e-5 * cn.abs().max(1.0), "normal {idx}: gpu {} cpu {cn}", normals[i]);
        }
    }
}

#[test]
fn decode_matches_the_hypernetwork() {
    for (s, shape) in SHAPES.iter().enumerate() {
        let case = Case::new(*shape, 11 + s as u64);
        let dm = case.device();
        let mut rng = Rng::new(s as u64);
        let z = DVector::from_fn(shape.2, |_, _| rng.normal());
        dm.write_mem(dm.layout.at(lay::O_Z), &f32s(z.as_slice()));
        dm.decode();
        let mem = dm.read_mem().unwrap();
        let mut th = Theta::zeros(&case.params.dims);
        let mut scratch = HypernetScratch::new(&case.params.dims);
        case.params.hypernet.decode(&z, &mut th, &mut scratch);
        let gpu = region(&mem, &dm.layout, lay::O_THETA, dm.layout.shape.theta_len());
        assert_close("θ(z)", gpu, &theta_flat(&th), 1e-4);
        let mut pre: Vec<f64> = scratch.w_hh.pre.iter().copied().collect();
        pre.extend(scratch.w_xu.pre.iter());
        pre.extend(scratch.b.pre.iter());
        assert_close("pre-activations", region(&mem, &dm.layout, lay::O_PRE, pre.len()), &pre, 1e-4);
    }
}

#[test]
fn predict_matches_the_ekf_and_the_library() {
    for (s, shape) in SHAPES.iter().enumerate() {
        let case = Case::new(*shape, 21 + s as u64);
        let p = &case.params;
        let (d, m) = (p.dims.latent, p.dims.control);
        let mut dm = case.device();
        let mut rng = Rng::new(100 + s as u64);
        let x = DVector::from_fn(d, |_, _| 0.7 * rng.normal());
        let pm = random_spd(d, &mut rng);
        let z = DVector::from_fn(p.dims.embed, |_, _| rng.normal());
        let u = DVector::from_fn(m, |_, _| rng.normal());
        set_state(&dm, &x, &pm, &z);
        dm.upload_bin(&bin_upload(&vec![0.0; p.dims.n_units], u.as_slice()));
        dm.predict();
        let mem = dm.read_mem().unwrap();

        let theta = p.theta_at(&z);
        let mut ekf = PointProcessEkf::new(&p.dims, 1.0);
        ekf.x.copy_from(&x);
        ekf.p.copy_from(&pm);
        ekf.predict(&theta, p.alpha, &p.process_noise, &u);
        assert_close("x⁻", region(&mem, &dm.layout, lay::O_X, d), ekf.x.as_slice(), 1e-4);
        assert_close("P⁻", region(&mem, &dm.layout, lay::O_P, d * d), &row_major(&ekf.p), 1e-4);
        assert_close("x_prev", region(&mem, &dm.layout, lay::O_XPREV, d), x.as_slice(), 1e-6);
        let cands = region(&mem, &dm.layout, lay::O_XCAND, (dm.layout.shape.tasks + 1) * d);
        for j in 0..dm.layout.shape.tasks {
            let th = p.theta_at(&p.task_library[j]);
            let (mut xj, mut t) = (DVector::zeros(d), DVector::zeros(d));
            dynamics::step(&th, p.alpha, &x, &u, &mut xj, &mut t);
            assert_close("library candidate x⁻", &cands[(j + 1) * d..(j + 2) * d], xj.as_slice(), 1e-4);
        }
    }
}

#[test]
fn update_matches_the_ekf_and_scores_the_library() {
    for (s, shape) in SHAPES.iter().enumerate() {
        let case = Case::new(*shape, 31 + s as u64);
        let p = &case.params;
        let (n, d, m) = (p.dims.n_units, p.dims.latent, p.dims.control);
        let mut dm = case.device();
        let mut rng = Rng::new(200 + s as u64);
        let x = DVector::from_fn(d, |_, _| 0.5 * rng.normal());
        let pm = random_spd(d, &mut rng);
        let u = DVector::from_fn(m, |_, _| 0.5 * rng.normal());
        let y = random_counts(p, &mut rng);
        set_state(&dm, &x, &pm, &p.z_init);
        dm.upload_bin(&bin_upload(&y, u.as_slice()));
        dm.predict();
        dm.obs_reduce();
        dm.update();
        let mem = dm.read_mem().unwrap();
        let mut out = vec![0.0; dm.layout.shape.out_len()];
        dm.read_out(&mut out).unwrap();

        let theta = p.theta_at(&p.z_init);
        let mut ekf = PointProcessEkf::new(&p.dims, 1.0);
        ekf.x.copy_from(&x);
        ekf.p.copy_from(&pm);
        ekf.predict(&theta, p.alpha, &p.process_noise, &u);
        let ll = ekf.update(&p.obs_c, &p.obs_d, p.log_rate_max, p.bin_s, &y);
        assert_close("x (filtered)", region(&mem, &dm.layout, lay::O_X, d), ekf.x.as_slice(), 1e-4);
        assert_close("P (filtered)", region(&mem, &dm.layout, lay::O_P, d * d), &row_major(&ekf.p), 1e-4);
        let tail = m + d + p.dims.embed;
        assert_close("log-likelihood", &out[tail + lay::OUT_LL..tail + lay::OUT_LL + 1], &[ll], 1e-4);
        assert_close("x in out", &out[m..m + d], ekf.x.as_slice(), 1e-4);
        let llc = region(&mem, &dm.layout, lay::O_LLC, dm.layout.shape.tasks + 1);
        for j in 0..dm.layout.shape.tasks {
            let th = p.theta_at(&p.task_library[j]);
            let (mut xj, mut t) = (DVector::zeros(d), DVector::zeros(d));
            dynamics::step(&th, p.alpha, &x, &u, &mut xj, &mut t);
            let mut eta = DVector::zeros(n);
            observation::log_rates(&p.obs_c, &p.obs_d, p.log_rate_max, &xj, &mut eta);
            let cpu = observation::poisson_loglik(&y, &eta, p.bin_s);
            assert_close("candidate log-likelihood", &llc[j + 1..j + 2], &[cpu], 1e-4);
        }
    }
}

#[test]
fn embedding_steps_match_the_cpu_updater() {
    for (s, shape) in SHAPES.iter().enumerate() {
        let mut case = Case::new(*shape, 41 + s as u64);
        case.embed = EmbeddingConfig { enabled: true, trust_radius: 0.5, ..EmbeddingConfig::default() };
        case.task.enabled = false;
        let p = case.params.clone();
        let (d, e, m) = (p.dims.latent, p.dims.embed, p.dims.control);
        let mut dm = case.device();
        let mut rng = Rng::new(300 + s as u64);
        let x0 = DVector::from_fn(d, |_, _| 0.5 * rng.normal());
        let pm = random_spd(d, &mut rng);
        set_state(&dm, &x0, &pm, &p.z_init);

        // CPU: the same sequence of predict → update → embedding step.
        let mut z = p.z_init.clone();
        let mut scratch = HypernetScratch::new(&p.dims);
        let mut theta = Theta::zeros(&p.dims);
        p.hypernet.decode(&z, &mut theta, &mut scratch);
        let mut ekf = PointProcessEkf::new(&p.dims, 1.0);
        ekf.x.copy_from(&x0);
        ekf.p.copy_from(&pm);
        let mut upd = EmbeddingUpdater::new(&p.dims, case.embed.clone());
        for bin in 0..4 {
            let u = DVector::from_fn(m, |_, _| 0.5 * rng.normal());
            let y = random_counts(&p, &mut rng);
            dm.upload_bin(&bin_upload(&y, u.as_slice()));
            dm.predict();
            dm.obs_reduce();
            dm.update();
            let mut out = vec![0.0; dm.layout.shape.out_len()];
            dm.read_out(&mut out).unwrap();

            ekf.predict(&theta, p.alpha, &p.process_noise, &u);
            ekf.update(&p.obs_c, &p.obs_d, p.log_rate_max, p.bin_s, &y);
            let step = upd.step(&p, &mut z, &mut theta, &ekf.x_prev, &u, &y, &mut scratch);
            let what = format!("bin {bin}");
            assert_close(&format!("z after the step, {what}"), &out[m + d..m + d + e], z.as_slice(), 1e-4);
            assert_close(&format!("‖Δz‖, {what}"), &out[m + d + e + lay::OUT_STEP..m + d + e + lay::OUT_STEP + 1], &[step], 1e-4);
            let mem = dm.read_mem().unwrap();
            assert_close(
                &format!("θ re-decoded, {what}"),
                region(&mem, &dm.layout, lay::O_THETA, dm.layout.shape.theta_len()),
                &theta_flat(&theta),
                1e-4,
            );
            // Keep the two filters on the same state so each bin tests one step.
            set_state(&dm, &ekf.x, &ekf.p, &z);
        }
    }
}

#[test]
fn mppi_matches_the_cpu_controller() {
    let configs = [(1usize, 1usize), (100, 7), (300, 25), (513, 3)];
    for (s, shape) in SHAPES.iter().enumerate() {
        for rates in [false, true] {
            let mut case = Case::new(*shape, 51 + s as u64);
            let (k, h) = configs[s];
            case.ctl.samples = k;
            case.ctl.horizon = h;
            let p = case.params.clone();
            let (n, d, m) = (p.dims.n_units, p.dims.latent, p.dims.control);
            let mut rng = Rng::new(400 + s as u64);
            if rates {
                // Reachable targets: the model's own rates at a random latent state (the
                // softmin compares costs to τ = 0.3, so costs in the thousands, e.g. from
                // unreachable targets, are decided by rounding in any precision).
                let x_star = DVector::from_fn(d, |_, _| 0.3 * rng.normal());
                let mut eta = DVector::zeros(n);
                observation::log_rates(&p.obs_c, &p.obs_d, p.log_rate_max, &x_star, &mut eta);
                case.objective = Objective::Rates(eta.map(|e| e.exp()));
            }
            let mut dm = case.device();
            // Rate costs grow with exp(C x): a random embedding can drive the rollouts to
            // rates in the kHz, where the cost of a sample moves by more than τ for a
            // 1e-6 change in x (a property of the objective, in any precision). The rate
            // case therefore rolls out the model's own task at the stationary spread.
            let x = DVector::from_fn(d, |_, _| if rates { 0.3 } else { 0.5 } * rng.normal());
            let pm = random_spd(d, &mut rng);
            let z = if rates { p.z_init.clone() } else { DVector::from_fn(p.dims.embed, |_, _| rng.normal()) };
            set_state(&dm, &x, &pm, &z);
            dm.upload_bin(&bin_upload(&vec![0.0; n], &vec![0.0; m]));
            let theta = p.theta_at(&z);
            let mut mppi = Mppi::new(&case.ctl, &p.dims);
            let limits = ActuationLimits { lo: DVector::from_vec(case.lo.clone()), hi: DVector::from_vec(case.hi.clone()) };
            let mut u_cpu = DVector::zeros(m);
            for bin in [0u64, 1, 2, (7u64 << 32) + 5] {
                dm.mppi(bin);
                let mut out = vec![0.0; dm.layout.shape.out_len()];
                dm.read_out(&mut out).unwrap();
                let ctx = ControlContext { params: &p, theta: &theta, x: &x, u_prev: &u_cpu.clone(), bin };
                mppi.compute(&ctx, &case.objective, &limits, &mut u_cpu);
                let what = format!("shape {shape:?} K={k} H={h} rates={rates} bin {bin}");
                assert_close(&format!("u, {what}"), &out[..m], u_cpu.as_slice(), 1e-4);
                let mem = dm.read_mem().unwrap();
                let nominal: Vec<f64> = (0..h).flat_map(|hh| (0..m).map(move |j| (hh, j))).map(|(hh, j)| mppi.nominal()[(j, hh)]).collect();
                assert_close(&format!("nominal sequence, {what}"), region(&mem, &dm.layout, lay::O_UNOM, h * m), &nominal, 1e-4);
            }
        }
    }
}

/// No rollout with a finite cost (a latent target of 1e200: every cost overflows): the kernel
/// flags the bin (`OUT_FAULT`, which the GPU backend turns into a controller fault) and resets
/// its nominal to zero, as the CPU controller says it has no command and resets its own.
#[test]
fn mppi_flags_a_bin_without_a_finite_cost_as_the_cpu_does() {
    let mut case = Case::new(SHAPES[1], 77);
    let p = case.params.clone();
    let (n, d, e, m) = (p.dims.n_units, p.dims.latent, p.dims.embed, p.dims.control);
    case.objective = Objective::Latent(DVector::from_element(d, 1e200));
    let mut dm = case.device();
    let mut rng = Rng::new(9);
    let x = DVector::from_fn(d, |_, _| 0.3 * rng.normal());
    set_state(&dm, &x, &random_spd(d, &mut rng), &p.z_init);
    dm.upload_bin(&bin_upload(&vec![0.0; n], &vec![0.0; m]));
    dm.mppi(0);
    let mut out = vec![0.0; dm.layout.shape.out_len()];
    dm.read_out(&mut out).unwrap();
    assert_eq!(out[m + d + e + lay::OUT_FAULT], 1.0, "the kernel flags the bin");
    let mem = dm.read_mem().unwrap();
    assert!(region(&mem, &dm.layout, lay::O_UNOM, case.ctl.horizon * m).iter().all(|v| *v == 0.0), "the nominal starts again from zero");
    let theta = p.theta_at(&p.z_init);
    let limits = ActuationLimits { lo: DVector::from_vec(case.lo.clone()), hi: DVector::from_vec(case.hi.clone()) };
    let mut mppi = Mppi::new(&case.ctl, &p.dims);
    let mut u = DVector::zeros(m);
    let ctx = ControlContext { params: &p, theta: &theta, x: &x, u_prev: &DVector::zeros(m), bin: 0 };
    assert!(!mppi.compute(&ctx, &case.objective, &limits, &mut u), "the CPU controller has no command either");
    assert!(u.iter().all(|v| v.is_nan()) && mppi.nominal().iter().all(|v| *v == 0.0));
    // A sane objective next bin: the kernel clears the flag.
    let mut ok = Case::new(SHAPES[1], 77);
    ok.objective = Objective::Latent(DVector::zeros(d));
    let mut dm = ok.device();
    set_state(&dm, &x, &random_spd(d, &mut rng), &p.z_init);
    dm.upload_bin(&bin_upload(&vec![0.0; n], &vec![0.0; m]));
    dm.mppi(1);
    dm.read_out(&mut out).unwrap();
    assert_eq!(out[m + d + e + lay::OUT_FAULT], 0.0);
}

#[test]
fn particle_filter_matches_the_cpu_filter() {
    let counts = [1usize, 300, 1000, 2049];
    for (s, shape) in SHAPES.iter().enumerate() {
        let mut case = Case::new(*shape, 61 + s as u64);
        // Resample on every bin for half the shapes, on low ESS for the others.
        let cfg = ParticleConfig { count: counts[s], seed: 70 + s as u64, resample_ess: if s % 2 == 0 { 1.0 } else { 0.5 } };
        case.particles = Some(cfg.clone());
        let p = case.params.clone();
        let (n, d, m) = (p.dims.n_units, p.dims.latent, p.dims.control);
        let np = cfg.count;
        let mut dm = case.device();
        let mut rng = Rng::new(500 + s as u64);
        let z = DVector::from_fn(p.dims.embed, |_, _| rng.normal());
        let mut pf = ParticleFilter::new(&p.dims, cfg, &DVector::zeros(d), p.initial_state_var);
        set_state(&dm, &pf.x, &DMatrix::identity(d, d), &z);
        let theta = p.theta_at(&z);
        for bin in [0u64, 1, 2, (3u64 << 32) + 1] {
            let u = DVector::from_fn(m, |_, _| 0.5 * rng.normal());
            let y = random_counts(&p, &mut rng);
            dm.upload_bin(&bin_upload(&y, u.as_slice()));
            dm.predict();
            dm.pf_propagate(bin);
            dm.obs_reduce();
            dm.pf_weigh();
            dm.pf_resample(true, bin);
            let mut out = vec![0.0; dm.layout.shape.out_len()];
            dm.read_out(&mut out).unwrap();
            let mem = dm.read_mem().unwrap();

            pf.predict(&theta, p.alpha, &p.process_noise, &u, bin);
            let propagated = pf.particles.clone();
            pf.update(&p.obs_c, &p.obs_d, p.log_rate_max, p.bin_s, &y, bin);
            let what = format!("P={np} N={n} d={d} bin {bin}");
            let tail = m + d + p.dims.embed;
            assert_close(&format!("ESS, {what}"), &out[tail + lay::OUT_ESS..tail + lay::OUT_ESS + 1], &[pf.ess], 1e-4);
            assert_close(&format!("posterior mean, {what}"), &out[m..m + d], pf.x.as_slice(), 1e-4);
            let resampled = region(&mem, &dm.layout, lay::O_PSCAL, 2)[1] > 0.5;
            assert_eq!(resampled, pf.resampled, "{what}: resampling decision");
            let gpu = region(&mem, &dm.layout, lay::O_PART, np * d);
            if resampled {
                // Ancestors agree except where (j + u)/P lies within rounding of a
                // cumulative-weight boundary (f32 on the device, f64 here).
                let cum = region(&mem, &dm.layout, lay::O_PCUM, np);
                let u0 = neuroloop_kernels::philox::uniform_at(70 + s as u64, bin.wrapping_add(1 << 63), 0) as f64;
                let mut ambiguous = 0;
                for j in 0..np {
                    let g = &gpu[j * d..(j + 1) * d];
                    let c = &pf.particles[j * d..(j + 1) * d];
                    if rel_err(g, c) > 1e-4 {
                        let pos = (j as f64 + u0) / np as f64;
                        let near = cum.iter().any(|&b| (b as f64 - pos).abs() < 1e-4);
                        assert!(near, "{what}: particle {j} has a different ancestor away from any boundary (pos {pos})");
                        ambiguous += 1;
                    }
                }
                assert!(ambiguous * 100 <= np.max(100), "{what}: {ambiguous} of {np} ancestors differ");
            } else {
                assert_close(&format!("propagated particles, {what}"), gpu, &propagated, 1e-4);
                let lw = region(&mem, &dm.layout, lay::O_LOGW, np);
                let w: Vec<f32> = lw.iter().map(|l| l.exp()).collect();
                assert_close(&format!("weights, {what}"), &w, &pf.weights, 1e-4);
            }
            // Re-synchronise so every bin tests one step from the same cloud.
            dm.write_mem(dm.layout.at(lay::O_PART), &f32s(&pf.particles));
            dm.write_mem(dm.layout.at(lay::O_LOGW), &f32s(&pf.logw));
            dm.write_mem(dm.layout.at(lay::O_X), &f32s(pf.x.as_slice()));
        }
    }
}

/// Per-bin step time, CPU backend vs this GPU backend, same rig and counts, same process
/// (run with `--ignored --nocapture`; a probe for bench/, never a pass/fail on speed).
#[test]
#[ignore]
fn step_timing_probe_cpu_vs_gpu() {
    use neuroloop::backend::{BinInput, BinOutput};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rigs/sim-utah96.toml");
    for model_keys in ["", "filter = \"particles\"\n"] {
        for backend in ["cpu", TEST_BACKEND] {
            let text =
                std::fs::read_to_string(&path).unwrap().replace("backend = \"cpu\"", &format!("backend = \"{backend}\"\n{model_keys}"));
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("rig.toml");
            std::fs::write(&p, text).unwrap();
            let rig = neuroloop::rig::Rig::load(&p).unwrap();
            let (params, _) = neuroloop::session::load_model(&rig).unwrap();
            let dims = params.dims;
            let mut b = neuroloop::session::backend(&rig, params).unwrap();
            let mut out = BinOutput::new(&dims);
            let counts: Vec<f64> = (0..dims.n_units).map(|i| (i % 3 == 0) as u8 as f64).collect();
            let u_prev = vec![0.0; dims.control];
            let mut times = Vec::new();
            for k in 0..2000u64 {
                let t = std::time::Instant::now();
                b.step(&BinInput { bin: k, counts: &counts, u_prev: &u_prev, has_data: true, want_control: true }, &mut out);
                if k >= 200 {
                    times.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            times.sort_by(|a, b| a.total_cmp(b));
            let q = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
            eprintln!(
                "utah96 (N=96 d=4 MPPI K=128 H=25) {backend:>5} {:<9}: p50 {:>6.0} µs  p90 {:>6.0}  p99 {:>6.0}  max {:>6.0}",
                if model_keys.is_empty() { "ekf" } else { "particles" },
                q(0.5),
                q(0.9),
                q(0.99),
                q(1.0)
            );
        }
    }
}
