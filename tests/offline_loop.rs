//! The model and controller in closed loop with the simulated population, bin by bin in
//! one thread, no LSL and no clock: a deterministic check of the CPU backend's estimation,
//! re-identification and control (the live loop's timing is tested elsewhere).

mod common;
use common::{reachable_rates, repo};
use neuroloop::backend::{BinInput, BinOutput};
use neuroloop::rig::Rig;
use neuroloop::safety::Safety;
use neuroloop::session;
use neuroloop::sim::Population;

struct Outcome {
    r2: f64,
    reidentify: Vec<Option<u64>>,
    closed_mse: f64,
    open_mse: f64,
}

fn run_offline(rig_file: &str, controller: &str, bins: u64) -> Outcome {
    run_offline_with(rig_file, controller, bins, "")
}

/// `model_keys` are added to the rig's [model] section (backend, filter, …).
fn run_offline_with(rig_file: &str, controller: &str, bins: u64, model_keys: &str) -> Outcome {
    let path = repo().join(rig_file);
    let text = std::fs::read_to_string(&path).unwrap().replace("kind = \"mppi\"", &format!("kind = \"{controller}\""));
    let text = text.replace("backend = \"cpu\"\n", "").replace("[model]\n", &format!("[model]\n{model_keys}\n"));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rig.toml");
    std::fs::write(&p, text).unwrap();
    let rig = Rig::load(&p).unwrap();
    let sim = rig.sim.clone().unwrap();
    let bin_s = rig.timing.bin_ms * 1e-3;
    let truth = neuroloop::sim::truth_model(&sim, bin_s);
    let dims = truth.dims;
    let target = rig.objective.as_ref().unwrap().target.clone();
    let library = truth.task_library.clone();
    let mut pop = Population::new(truth.clone(), sim.seed);
    let (params, _) = session::load_model(&rig).unwrap();
    let safety = Safety::from_rig(&rig, dims.control).unwrap();
    let mut backend = session::backend(&rig, params).unwrap();
    let mut out = BinOutput::new(&dims);
    let switch = if sim.switch_every_s > 0.0 { (sim.switch_every_s / bin_s).round() as u64 } else { u64::MAX };
    let block = if sim.open_loop_block_bins > 0 { sim.open_loop_block_bins } else { u64::MAX };
    let mut emitted = vec![0.0; dims.control];
    let mut next = vec![0.0; dims.control];
    let counts_f: &mut Vec<f64> = &mut vec![0.0; dims.n_units];
    let (mut xs, mut ts) = (Vec::new(), Vec::new());
    let (mut closed, mut open) = ((0.0, 0u64), (0.0, 0u64));
    let mut reid = Vec::new();
    let mut since_switch: Option<(u64, usize, u32)> = None;
    for j in 0..bins {
        let task = ((j / switch) as usize) % library.len();
        pop.advance(j, &emitted, task);
        for i in 0..dims.n_units {
            counts_f[i] = pop.counts[i] as f64;
        }
        backend.step(&BinInput { bin: j, counts: counts_f, u_prev: &emitted, has_data: true, want_control: true }, &mut out);
        let enabled = block == u64::MAX || (j / block) % 2 == 1;
        safety.apply(&out.u, &emitted, enabled, &mut next);
        emitted.copy_from_slice(&next);
        xs.push(out.x.clone());
        ts.push(pop.x.as_slice().to_vec());
        if j % block > 50 || block == u64::MAX {
            let err: f64 = pop.x.iter().zip(&target).map(|(a, b)| (a - b).powi(2)).sum();
            let acc = if enabled { &mut closed } else { &mut open };
            acc.0 += err;
            acc.1 += 1;
        }
        // Re-identification: nearest library entry = true task for 10 bins in a row.
        if j > 0 && j % switch == 0 {
            if since_switch.take().is_some() {
                reid.push(None);
            }
            since_switch = Some((j, task, 0));
        }
        if let Some((start, t, run)) = since_switch {
            let nearest = (0..library.len())
                .min_by(|&a, &b| {
                    let da: f64 = library[a].iter().zip(&out.z).map(|(p, q)| (p - q).powi(2)).sum();
                    let db: f64 = library[b].iter().zip(&out.z).map(|(p, q)| (p - q).powi(2)).sum();
                    da.total_cmp(&db)
                })
                .unwrap();
            let run = if nearest == t { run + 1 } else { 0 };
            if run == 10 {
                reid.push(Some(j + 1 - 10 - start));
                since_switch = None;
            } else {
                since_switch = Some((start, t, run));
            }
        }
    }
    if since_switch.is_some() {
        reid.push(None);
    }
    let d = dims.latent;
    let mean: Vec<f64> = (0..d).map(|i| ts.iter().map(|t| t[i]).sum::<f64>() / ts.len() as f64).collect();
    let (mut sse, mut sst) = (0.0, 0.0);
    for (x, t) in xs.iter().zip(&ts).skip(100) {
        for i in 0..d {
            sse += (x[i] - t[i]).powi(2);
            sst += (t[i] - mean[i]).powi(2);
        }
    }
    let o = Outcome {
        r2: 1.0 - sse / sst,
        reidentify: reid,
        closed_mse: closed.0 / closed.1.max(1) as f64,
        open_mse: if open.1 > 0 { open.0 / open.1 as f64 } else { f64::NAN },
    };
    eprintln!(
        "{rig_file} {controller} [{model_keys}]: R² {:.3}, re-identification {:?}, tracking closed {:.4} open {:.4}",
        o.r2, o.reidentify, o.closed_mse, o.open_mse
    );
    o
}

#[test]
fn utah96_mppi_tracks_reidentifies_and_controls() {
    let o = run_offline("rigs/sim-utah96.toml", "mppi", 6000);
    assert!(o.r2 >= 0.9, "R² {}", o.r2);
    assert!(o.reidentify.len() >= 2 && o.reidentify.iter().all(|r| r.is_some_and(|b| b < 500)), "{:?}", o.reidentify);
    assert!(o.closed_mse < 0.5 * o.open_mse);
}

#[test]
fn utah96_lqr_controls() {
    let o = run_offline("rigs/sim-utah96.toml", "lqr", 4000);
    assert!(o.r2 >= 0.9, "R² {}", o.r2);
    assert!(o.closed_mse < 0.5 * o.open_mse);
}

/// The learned-policy controller (the synthetic model carries a random, untrained policy
/// head, which drives the population hard): it runs in the loop and estimation holds up.
#[test]
fn utah96_policy_runs() {
    let o = run_offline("rigs/sim-utah96.toml", "policy", 1500);
    assert!(o.r2 >= 0.7, "R² {}", o.r2);
    assert!(o.closed_mse.is_finite() && o.open_mse.is_finite());
}

/// The particle filter in place of the EKF (CPU backend).
#[test]
fn utah96_particle_filter_tracks_and_controls() {
    let o = run_offline_with("rigs/sim-utah96.toml", "mppi", 3000, "filter = \"particles\"\n[model.particles]\ncount = 512");
    assert!(o.r2 >= 0.85, "R² {}", o.r2);
    assert!(o.closed_mse < 0.5 * o.open_mse);
}

/// The same loop on the GPU backend (wgpu: Mesa lavapipe in CI; CUDA with --features cuda).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[test]
fn utah96_gpu_backend_tracks_reidentifies_and_controls() {
    let backend = if cfg!(feature = "cuda") { "cuda" } else { "wgpu" };
    let o = run_offline_with("rigs/sim-utah96.toml", "mppi", 6000, &format!("backend = \"{backend}\""));
    assert!(o.r2 >= 0.9, "R² {}", o.r2);
    assert!(o.reidentify.len() >= 2 && o.reidentify.iter().all(|r| r.is_some_and(|b| b < 500)), "{:?}", o.reidentify);
    assert!(o.closed_mse < 0.5 * o.open_mse);
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[test]
fn utah96_gpu_particle_filter_tracks_and_controls() {
    let backend = if cfg!(feature = "cuda") { "cuda" } else { "wgpu" };
    let o = run_offline_with(
        "rigs/sim-utah96.toml",
        "mppi",
        3000,
        &format!("backend = \"{backend}\"\nfilter = \"particles\"\n[model.particles]\ncount = 512"),
    );
    assert!(o.r2 >= 0.85, "R² {}", o.r2);
    assert!(o.closed_mse < 0.5 * o.open_mse);
}

/// Switching the objective at run time (latent → rates → latent) on the GPU backend gives
/// exactly the controls of a backend started with that objective: the targets and the
/// cost's kind both follow `set_objective`.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[test]
fn gpu_backend_switches_objective_between_latent_and_rates() {
    use nalgebra::DVector;
    use neuroloop::control::Objective;
    let backend_kind = if cfg!(feature = "cuda") { "cuda" } else { "wgpu" };
    let load = |objective: &str| {
        let path = repo().join("rigs/sim-utah96.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("backend = \"cpu\"\n", "")
            .replace("[model]\n", &format!("[model]\nbackend = \"{backend_kind}\"\n"))
            .replace("kind = \"latent\"\ntarget = [0.3, -0.3, 0.2, -0.1]", objective);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rig.toml");
        std::fs::write(&p, text).unwrap();
        let rig = Rig::load(&p).unwrap();
        let (params, _) = session::load_model(&rig).unwrap();
        (rig.clone(), session::backend(&rig, params).unwrap())
    };
    let latent = "kind = \"latent\"\ntarget = [0.3, -0.3, 0.2, -0.1]";
    let rates = "kind = \"rates\"\ntarget = [12.0]";
    let (rig, mut switched) = load(latent);
    let (_, mut fresh_rates) = load(rates);
    let (_, mut fresh_latent) = load(latent);
    let sim = rig.sim.clone().unwrap();
    let truth = neuroloop::sim::truth_model(&sim, rig.timing.bin_ms * 1e-3);
    let dims = truth.dims;
    let mut pop = Population::new(truth, sim.seed);
    let counts = (0..12)
        .map(|j| {
            pop.advance(j, &vec![0.0; dims.control], 0);
            pop.counts.iter().map(|&c| c as f64).collect::<Vec<f64>>()
        })
        .collect::<Vec<_>>();
    let u_prev = vec![0.0; dims.control];
    let run = |b: &mut Box<dyn neuroloop::backend::Backend>, bins: std::ops::Range<usize>| {
        let mut out = BinOutput::new(&dims);
        bins.map(|j| {
            let input = BinInput { bin: j as u64, counts: &counts[j], u_prev: &u_prev, has_data: true, want_control: true };
            b.step(&input, &mut out);
            assert!(out.control_valid, "bin {j}: no valid control");
            out.u.clone()
        })
        .collect::<Vec<_>>()
    };
    let to_rates = Objective::Rates(DVector::from_element(dims.n_units, 12.0));
    let to_latent = Objective::Latent(DVector::from_vec(vec![0.3, -0.3, 0.2, -0.1]));
    // Switched before the first bin: identical to a backend started with that objective.
    switched.set_objective(to_rates.clone()).unwrap();
    let mut there_and_back = load(latent).1;
    there_and_back.set_objective(to_rates.clone()).unwrap();
    there_and_back.set_objective(to_latent.clone()).unwrap();
    assert_eq!(run(&mut switched, 0..6), run(&mut fresh_rates, 0..6), "latent → rates");
    assert_eq!(run(&mut there_and_back, 0..6), run(&mut fresh_latent, 0..6), "latent → rates → latent");
    // Switched mid-run: from then on it no longer follows the rate objective.
    switched.set_objective(to_latent).unwrap();
    assert_ne!(run(&mut switched, 6..12), run(&mut fresh_rates, 6..12), "the rate objective must have been left");
    // An objective that does not fit the model is refused (and changes nothing), as on the CPU backend.
    assert!(fresh_latent.set_objective(Objective::Rates(DVector::from_element(3, 1.0))).is_err());
    assert!(fresh_latent.set_objective(Objective::Latent(DVector::from_element(dims.latent, f64::NAN))).is_err());
    assert_eq!(run(&mut fresh_latent, 6..12), run(&mut there_and_back, 6..12));
}

/// A rate objective on both backends in lockstep (the same counts, the CPU's commands
/// driving the population): the GPU's MPPI stays with the CPU reference bin after bin
/// (the rate cost's relative temperature keeps f32 and f64 from splitting).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[test]
fn gpu_mppi_follows_the_cpu_on_a_rate_objective() {
    use neuroloop::model::observation;
    let backend = if cfg!(feature = "cuda") { "cuda" } else { "wgpu" };
    let path = repo().join("rigs/sim-utah96.toml");
    let base = std::fs::read_to_string(&path).unwrap();
    let rig0 = Rig::load(&path).unwrap();
    let sim = rig0.sim.clone().unwrap();
    let truth = neuroloop::sim::truth_model(&sim, 0.01);
    let dims = truth.dims;
    // A reachable target: the population's rates in task 0 under a constant input.
    let target: Vec<String> = reachable_rates(&truth).iter().map(|r| format!("{r:.6}")).collect();
    let text =
        base.replace("kind = \"latent\"\ntarget = [0.3, -0.3, 0.2, -0.1]", &format!("kind = \"rates\"\ntarget = [{}]", target.join(", ")));
    let dir = tempfile::tempdir().unwrap();
    let mk = |name: &str, t: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, t).unwrap();
        Rig::load(&p).unwrap()
    };
    let cpu_rig = mk("cpu.toml", &text);
    let gpu_rig = mk("gpu.toml", &text.replace("backend = \"cpu\"", &format!("backend = \"{backend}\"")));
    let (p1, _) = session::load_model(&cpu_rig).unwrap();
    let (p2, _) = session::load_model(&gpu_rig).unwrap();
    let mut cpu = session::backend(&cpu_rig, p1).unwrap();
    let mut gpu = session::backend(&gpu_rig, p2).unwrap();
    let safety = Safety::from_rig(&cpu_rig, dims.control).unwrap();
    let mut pop = Population::new(truth.clone(), sim.seed);
    let (mut oc, mut og) = (BinOutput::new(&dims), BinOutput::new(&dims));
    let mut emitted = vec![0.0; dims.control];
    let mut next = vec![0.0; dims.control];
    let mut counts = vec![0.0; dims.n_units];
    let mut worst: f64 = 0.0;
    let mut err_first = 0.0;
    let mut err_last = 0.0;
    for j in 0..400u64 {
        pop.advance(j, &emitted, 0);
        for i in 0..dims.n_units {
            counts[i] = pop.counts[i] as f64;
        }
        let input = BinInput { bin: j, counts: &counts, u_prev: &emitted, has_data: true, want_control: true };
        cpu.step(&input, &mut oc);
        gpu.step(&input, &mut og);
        let diff = oc.u.iter().zip(&og.u).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        worst = worst.max(diff);
        safety.apply(&oc.u, &emitted, true, &mut next);
        emitted.copy_from_slice(&next);
        let mut eta = nalgebra::DVector::zeros(dims.n_units);
        observation::log_rates(&truth.obs_c, &truth.obs_d, truth.log_rate_max, &pop.x, &mut eta);
        let e: f64 = eta.iter().zip(&target).map(|(a, b)| (a.exp() - b.parse::<f64>().unwrap()).powi(2)).sum::<f64>() / dims.n_units as f64;
        if j < 50 {
            err_first += e / 50.0;
        }
        if j >= 350 {
            err_last += e / 50.0;
        }
    }
    eprintln!("rate objective, {backend} vs cpu: largest command difference {worst:.4}; rate error {err_first:.1} → {err_last:.1} Hz²");
    assert!(worst < 0.05, "the GPU's commands left the CPU's by {worst}");
    assert!(err_last < 0.5 * err_first, "MPPI did not approach the rate target: {err_first} → {err_last}");
}
