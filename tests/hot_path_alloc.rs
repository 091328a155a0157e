//! The per-bin hot path allocates nothing after start-up: a counting global allocator
//! counts allocations made while a thread is marked hot (`neuroloop::hot`) — the live
//! loop and emitter threads of a whole session, and the model's per-bin functions driven
//! directly (including the covariance-jitter path).

use nalgebra::DVector;
use neuroloop::model::ekf::PointProcessEkf;
use neuroloop::model::embedding::{EmbeddingConfig, EmbeddingUpdater};
use neuroloop::model::hypernet::HypernetScratch;
use neuroloop::model::taskid::{TaskIdConfig, TaskIdentifier};
use neuroloop::model::{Dims, ModelParams, Theta};
use neuroloop::rig::Rig;
use neuroloop::session::{self, RunOptions};

mod common;

#[global_allocator]
static A: neuroloop::hot::CountingAlloc = neuroloop::hot::CountingAlloc;

/// Allocations while hot, this thread only.
fn my_hot_allocs() -> u64 {
    neuroloop::hot::thread_hot_allocations()
}

#[test]
fn hot_path_does_not_allocate() {
    // The counter must be able to fail.
    let before = my_hot_allocs();
    neuroloop::hot::enter();
    let v: Vec<u64> = std::hint::black_box(vec![1, 2, 3]);
    neuroloop::hot::leave();
    assert!(my_hot_allocs() > before, "the counting allocator does not see hot allocations");
    drop(v);
    let start = neuroloop::hot::hot_allocations();

    // d = 8 as well: nalgebra's matrix products allocate above 5×5 (see linalg.rs).
    for (controller, latent) in [("mppi", 4), ("lqr", 4), ("mppi", 8), ("lqr", 8)] {
        let dir = tempfile::tempdir().unwrap();
        let rig = common::SimRig::new("alloc");
        let mut text = rig.toml(controller, "events", "events", "switch_every_s = 1.0", "[model.task_id]\nenabled = true");
        if latent == 8 {
            text = text
                .replace("latent_dim = 4", "latent_dim = 8")
                .replace("target = [0.3, -0.3, 0.2, -0.1]", "target = [0.3, -0.3, 0.2, -0.1, 0.0, 0.1, 0.0, -0.2]");
        }
        let path = common::write(dir.path(), "rig.toml", &text);
        let rig = Rig::load(&path).unwrap();
        // Recording on: the recorder's taps sit on the hot path too.
        let xdf = dir.path().join("run.xdf");
        let report = session::run(&rig, &RunOptions { bins: Some(300), with_sim: true, record: Some(xdf), ..Default::default() }).unwrap();
        assert_eq!(report.bins, 300);
        let recording = report.recording.as_ref().expect("recorded");
        assert!(recording.streams.iter().any(|s| s.samples == 300), "the recording has every bin");
        assert!(report.ingest.spikes > 0);
        assert_eq!(
            neuroloop::hot::hot_allocations() - start,
            0,
            "{controller}, d = {latent}: the loop or emitter allocated on the hot path"
        );
    }
    // An identification session: the probe in place of a model, recording on.
    let dir = tempfile::tempdir().unwrap();
    let tag = common::unique("alloc-probe");
    let text = common::rename_utah96_streams(&std::fs::read_to_string(common::repo().join("rigs/sim-utah96-probe.toml")).unwrap(), &tag);
    let rig = Rig::load(&common::write(dir.path(), "probe.toml", &text)).unwrap();
    let xdf = dir.path().join("probe.xdf");
    let report = session::run(&rig, &RunOptions { bins: Some(300), with_sim: true, record: Some(xdf), ..Default::default() }).unwrap();
    assert_eq!(report.bins, 300);
    assert!(report.ingest.spikes > 0);
    assert_eq!(neuroloop::hot::hot_allocations() - start, 0, "probe session: the loop or emitter allocated on the hot path");
}

/// The model's per-bin functions, driven directly for many bins (jumps, skipped updates,
/// the jitter path), allocate nothing.
#[test]
fn per_bin_model_path_does_not_allocate() {
    for latent in [4, 8] {
        let dims = Dims { n_units: 96, latent, embed: 3, control: 2, hidden: 16 };
        let p = ModelParams::synthetic(dims, 3, 0.01, 1);
        let mut z = p.z_init.clone();
        let mut theta = Theta::zeros(&dims);
        let mut hs = HypernetScratch::new(&dims);
        let mut ekf = PointProcessEkf::new(&dims, p.initial_state_var);
        let mut upd = EmbeddingUpdater::new(&dims, EmbeddingConfig::default());
        let mut tid = TaskIdentifier::new(&p, TaskIdConfig { margin: -1e9, min_bins_between_switches: 0, ..Default::default() });
        let mut grad_z = DVector::zeros(dims.embed);
        let u = DVector::from_vec(vec![0.3, -0.2]);
        let y: Vec<f64> = (0..dims.n_units).map(|i| (i % 3) as f64).collect();
        let mut bad = p.process_noise.clone();
        bad[0] = -10.0; // forces the covariance jitter path now and then

        p.hypernet.decode(&z, &mut theta, &mut hs);
        let before = my_hot_allocs();
        neuroloop::hot::enter();
        for k in 0..500 {
            let q = if k % 97 == 0 { &bad } else { &p.process_noise };
            ekf.predict(&theta, p.alpha, q, &u);
            if k % 10 == 3 {
                ekf.skip_update();
                continue;
            }
            let ll = ekf.update(&p.obs_c, &p.obs_d, p.log_rate_max, p.bin_s, &y);
            if let Some(j) = tid.score(&p, &ekf.x_prev, &u, &y, ll) {
                z.copy_from(&p.task_library[j]);
                p.hypernet.decode(&z, &mut theta, &mut hs);
                tid.jumped_to(j);
                upd.reset();
            }
            upd.gradient(&p, &z, &theta, &ekf.x_prev, &u, &y, &mut hs, &mut grad_z);
            upd.step(&p, &mut z, &mut theta, &ekf.x_prev, &u, &y, &mut hs);
            let _ = tid.best();
        }
        neuroloop::hot::leave();
        let after = my_hot_allocs();
        assert_eq!(after - before, 0, "d = {latent}: the per-bin model path allocated {} times", after - before);
        assert!(ekf.x.iter().all(|v| v.is_finite()));
        assert!(ekf.jitter_events > 0, "the jitter path was not exercised");
    }
}

/// 300 bins through `backend` while hot (a gap every 17th bin; `want_control(k)`): the
/// allocations this thread made, and the last bin's output.
fn step_hot(backend: &mut dyn neuroloop::backend::Backend, want_control: impl Fn(u64) -> bool) -> (u64, neuroloop::backend::BinOutput) {
    use neuroloop::backend::{BinInput, BinOutput};
    let dims = backend.dims();
    let mut out = BinOutput::new(&dims);
    let counts: Vec<f64> = (0..dims.n_units).map(|i| (i % 3) as f64).collect();
    let u_prev = vec![0.1; dims.control];
    let before = my_hot_allocs();
    neuroloop::hot::enter();
    for k in 0..300u64 {
        let input = BinInput { bin: k, counts: &counts, u_prev: &u_prev, has_data: k % 17 != 5, want_control: want_control(k) };
        backend.step(&input, &mut out);
    }
    neuroloop::hot::leave();
    (my_hot_allocs() - before, out)
}

/// Every backend that says its `step` is allocation-free (`Backend::step_allocates`) is held
/// to it, bin by bin, through the real construction path (`session::backend`); the CPU
/// backend (EKF and particle filter, each controller) and the probe must say so.
#[test]
fn backends_that_claim_an_allocation_free_step_do_not_allocate() {
    use neuroloop::backend::{BinInput, BinOutput};
    let dir = tempfile::tempdir().unwrap();
    let sim = common::SimRig::new("alloc-backends");
    let cases = [("mppi", false), ("lqr", false), ("mppi", true), ("lqr", true)];
    for (controller, particles) in cases {
        let extra = if particles { "[model.particles]\ncount = 256" } else { "[model.task_id]\nenabled = true" };
        let mut text = sim.toml(controller, "events", "events", "switch_every_s = 1.0", extra);
        if particles {
            text = text.replace("backend = \"cpu\"", "backend = \"cpu\"\nfilter = \"particles\"");
        }
        let rig = Rig::load(&common::write(dir.path(), "rig.toml", &text)).unwrap();
        let model = session::SessionModel::resolve(&rig).unwrap();
        let mut backend = model.backend(&rig).unwrap();
        assert!(!backend.step_allocates(), "the cpu backend ({controller}, particles {particles}) must be allocation-free");
        let (allocs, _) = step_hot(backend.as_mut(), |k| k % 23 != 7);
        assert_eq!(allocs, 0, "{} backend ({controller}, particles {particles}) allocated in step", backend.name());
    }
    // A model with the per-unit history term, under a controller and as a monitor.
    for controller in ["mppi", "monitor"] {
        use neuroloop::model::history::{History, DEFAULT_TAUS_S};
        let text = sim.toml(controller, "events", "events", "switch_every_s = 1.0", "[model.task_id]\nenabled = true");
        let rig = Rig::load(&common::write(dir.path(), "rig-history.toml", &text)).unwrap();
        let (mut params, _) = session::load_model(&rig).unwrap();
        let n = params.dims.n_units;
        params.history = Some(History {
            taus_s: DEFAULT_TAUS_S.to_vec(),
            weight: nalgebra::DMatrix::from_fn(n, DEFAULT_TAUS_S.len(), |i, b| -0.5 + 0.1 * ((i + b) % 5) as f64),
            mean_count: DVector::from_element(n, 0.2),
        });
        let mut backend = session::backend(&rig, params).unwrap();
        assert!(!backend.step_allocates());
        let (allocs, out) = step_hot(backend.as_mut(), |_| true);
        assert_eq!(allocs, 0, "the cpu backend with a history term ({controller}) allocated in step");
        assert!(out.x.iter().all(|v| v.is_finite()), "{:?}", out.x);
        if controller == "monitor" {
            assert!(out.control_valid && out.u.iter().all(|v| *v == 0.0), "a monitor emits its hold command: {:?}", out.u);
        }
    }
    // The probe (an identification session).
    let text = std::fs::read_to_string(common::repo().join("rigs/sim-utah96-probe.toml")).unwrap();
    let rig = Rig::load(&common::write(dir.path(), "probe.toml", &text)).unwrap();
    let mut probe = session::SessionModel::resolve(&rig).unwrap().backend(&rig).unwrap();
    assert!(!probe.step_allocates());
    let dims = probe.dims();
    let mut out = BinOutput::new(&dims);
    let (counts, u_prev) = (vec![1.0; dims.n_units], vec![0.0; dims.control]);
    let before = my_hot_allocs();
    neuroloop::hot::enter();
    for k in 0..300u64 {
        probe.step(&BinInput { bin: k, counts: &counts, u_prev: &u_prev, has_data: true, want_control: true }, &mut out);
    }
    neuroloop::hot::leave();
    assert_eq!(my_hot_allocs() - before, 0, "the probe allocated in step");
}

/// The hot path stays allocation-free with the control plane on: a dashboard client on the
/// WebSocket the whole run, and every kind of command applied by the loop and the emitter
/// (objectives of both kinds, a task lock and unlock, tighter limits, a new fallback, the
/// gate), with the recording on.
#[test]
fn hot_path_does_not_allocate_with_the_control_plane_and_a_websocket_client() {
    let start = neuroloop::hot::hot_allocations();
    let dir = tempfile::tempdir().unwrap();
    let sim = common::SimRig::new("alloc-control");
    let text = sim.toml("lqr", "events", "events", "", "[model.task_id]\nenabled = true");
    let rig = Rig::load(&common::write(dir.path(), "rig.toml", &text)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let xdf = dir.path().join("run.xdf");
    let opts = RunOptions { bins: Some(800), with_sim: true, record: Some(xdf), control: Some(addr.clone()), ..Default::default() };
    let session = std::thread::spawn(move || session::run(&rig, &opts).unwrap());
    let status = format!("http://{addr}/api/status");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while common::http_get_ok(&status).is_none() {
        assert!(std::time::Instant::now() < until, "the control plane never answered");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/api/stream")).expect("WebSocket");
    let reader = std::thread::spawn(move || {
        let mut frames = 0u64;
        while let Ok(m) = ws.read() {
            frames += m.is_text() as u64;
        }
        frames
    });
    let commands = [
        r#"{"command": "set_objective", "kind": "latent", "target": [0.1, -0.1, 0.0, 0.2]}"#,
        r#"{"command": "lock_task", "task": 1}"#,
        r#"{"command": "unlock_task"}"#,
        r#"{"command": "set_objective", "kind": "rates", "target": [10.0]}"#,
        r#"{"command": "set_limits", "upper": [0.6], "max_step": 0.2}"#,
        r#"{"command": "set_fallback", "fallback": "vector", "vector": [0.1, 0.0, 0.1, 0.0]}"#,
        r#"{"command": "disarm"}"#,
        r#"{"command": "arm"}"#,
    ];
    for c in commands {
        let (code, reply) = common::http_post(&format!("http://{addr}/api/commands"), c);
        assert_eq!(code, 202, "{c}: {reply}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let report = session.join().unwrap();
    let frames = reader.join().unwrap();
    assert_eq!(report.bins, 800);
    assert_eq!(report.commands.accepted, commands.len() as u64);
    assert!(frames > 10, "the WebSocket client got {frames} frames");
    assert_eq!(neuroloop::hot::hot_allocations() - start, 0, "the loop or emitter allocated on the hot path with the control plane on");
}
