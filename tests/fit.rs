//! Fitting a lab's own population, through the real CLI and real files, with the simulator
//! as ground truth: an identification session under the probe (`run --record` with
//! rigs/sim-utah96-probe.toml), `neuroloop fit`, then closed loop with the fitted model.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Bins per simulated task in the shared identification session (3 tasks).
const BINS_PER_TASK: u64 = 1500;

/// The probe rig with stream names of its own and `edit` applied to its text.
fn probe_rig(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("rigs/sim-utah96-probe.toml")).unwrap();
    let tag = unique("fit");
    let text = text
        .replace("\"neuroloop-sim-utah96\"", &format!("\"{tag}-spikes\""))
        .replace("neuroloop-control-sim-utah96", &format!("{tag}-control"))
        .replace("neuroloop-status-sim-utah96", &format!("{tag}-status"))
        .replace("switch_every_s = 20.0", &format!("switch_every_s = {}", BINS_PER_TASK as f64 * 0.01));
    write(dir, name, &edit(text))
}

struct Session {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    rig: PathBuf,
    xdf: PathBuf,
}

/// One identification session in each of the simulator's 3 tasks, recorded once for
/// every test in this file.
fn session() -> &'static Session {
    static S: OnceLock<Session> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rig = probe_rig(dir.path(), "probe.toml", |t| t);
        let xdf = dir.path().join("probe.xdf");
        let report = dir.path().join("run.json");
        let bins = (3 * BINS_PER_TASK).to_string();
        let out = run(&["run", "--rig", rig.to_str().unwrap(), "--bins", &bins, "--quiet", "--record", xdf.to_str().unwrap(), "--report", report.to_str().unwrap()]);
        assert!(out.status.success(), "the identification session failed");
        let r = common::report(&report);
        assert_eq!(r["bins"], 3 * BINS_PER_TASK, "{r}");
        assert!(r["backend"] == "probe" && r["latent_r2"].is_null() && r["tracking"].is_null(), "{r}");
        Session { dir: dir.path().to_path_buf(), _dir: dir, rig, xdf }
    })
}

fn fit(args: &[&str]) -> (std::process::Output, Option<Value>) {
    let out = run(&[&["fit"], args].concat());
    let report = args.iter().position(|a| *a == "--report").map(|i| common::report(Path::new(args[i + 1])));
    (out, report)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The fitted model file and its report, fitted once (d = 4, e = 3).
fn fitted() -> &'static (PathBuf, Value) {
    static F: OnceLock<(PathBuf, Value)> = OnceLock::new();
    F.get_or_init(|| {
        let s = session();
        let model = s.dir.join("fitted.safetensors");
        let report = s.dir.join("fit.json");
        let (out, r) = fit(&[
            s.xdf.to_str().unwrap(),
            "--rig",
            s.rig.to_str().unwrap(),
            "--tasks",
            "markers",
            "--latent",
            "4",
            "--embed",
            "3",
            "--out",
            model.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "fit failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("bits/spike") && stdout.contains("true model"), "{stdout}");
        (model, r.unwrap())
    })
}

#[test]
fn the_fitted_model_explains_held_out_bins_as_well_as_the_truth() {
    let (model, r) = fitted();
    eprintln!("{}", serde_json::to_string_pretty(r).unwrap());
    let bps = f(&r["heldout_bits_per_spike"]);
    let true_bps = f(&r["true_model_heldout_bits_per_spike"]);
    assert!(true_bps > 0.1, "the true model itself explains little: {true_bps}");
    assert!(bps >= 0.9 * true_bps, "held-out bits/spike {bps} < 0.9 × the true model's {true_bps}");
    let pred = f(&r["heldout_predictive_bits_per_spike"]);
    let true_pred = f(&r["true_model_heldout_predictive_bits_per_spike"]);
    assert!(pred >= 0.9 * true_pred, "one-step-ahead bits/spike {pred} < 0.9 × the true model's {true_pred}");
    let r2 = f(&r["latent_r2"]);
    assert!(r2 >= 0.9, "filtered latent vs truth R² {r2} < 0.9 after the best affine map");
    // Every task was both fitted and evaluated; the held-out bins are the last 20 % of each.
    let input = &r["inputs"][0];
    assert_eq!(input["bins"], 3 * BINS_PER_TASK);
    assert_eq!(input["heldout_bins"], 3 * BINS_PER_TASK / 5);
    assert_eq!(r["dims"]["tasks"], 3);
    // The objective fell from the first iteration to the last.
    let its = r["iterations"].as_array().unwrap();
    assert_eq!(its.len(), 25);
    let ll = |i: &Value| f(&i["train_predictive_loglik_per_bin"]);
    assert!(ll(its.last().unwrap()) > ll(&its[0]), "the E-step's likelihood did not rise");
    // Distinct task embeddings.
    for row in r["embedding_distances"].as_array().unwrap().iter().enumerate() {
        for (j, dist) in row.1.as_array().unwrap().iter().enumerate() {
            if j != row.0 {
                assert!(f(dist) > 0.05, "tasks {} and {j} got the same embedding", row.0);
            }
        }
    }
    // The training curve was drawn, and the model file loads as `run` would load it.
    let svg = std::fs::read_to_string(r["training_curve"].as_str().unwrap()).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("EM iteration"));
    assert!(r["peak_memory_bytes"].as_u64().unwrap() > 0);
    assert!(model.exists());
}

#[test]
fn task_identification_with_the_fitted_library_finds_the_true_task_after_a_switch() {
    let (_, r) = fitted();
    let t = &r["task_identification"];
    let switches = t["switches"].as_array().unwrap();
    assert_eq!(switches.len(), 2, "{t}");
    for s in switches {
        let bins = s["bins_to_reidentify"].as_u64().unwrap_or_else(|| panic!("task {} was never re-identified: {t}", s["true_task"]));
        assert!(bins <= 300, "re-identification took {bins} bins: {t}");
    }
    assert!(f(&t["accuracy"]) >= 0.8, "{t}");
}

#[test]
fn the_same_fit_writes_the_same_bytes_and_its_provenance() {
    let (model, r) = fitted();
    let s = session();
    let again = s.dir.join("again.safetensors");
    let (out, _) = fit(&[s.xdf.to_str().unwrap(), "--rig", s.rig.to_str().unwrap(), "--tasks", "markers", "--out", again.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success());
    assert!(std::fs::read(model).unwrap() == std::fs::read(&again).unwrap(), "two fits with the same inputs and seed differ");
    // Provenance: the input's hash, the seed, the iterations, the final objective, the version.
    let bytes = std::fs::read(model).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = &header["__metadata__"];
    let sha = r["inputs"][0]["sha256"].as_str().unwrap();
    assert!(meta["fit.inputs"].as_str().unwrap().contains(sha), "{meta}");
    assert_eq!(meta["fit.seed"], "1");
    assert_eq!(meta["fit.iterations"], "25");
    assert_eq!(meta["fit.neuroloop_version"], env!("CARGO_PKG_VERSION"));
    assert!(meta["fit.final_objective"].as_str().unwrap().parse::<f64>().is_ok());
    // Another seed is another fit.
    let other = s.dir.join("other.safetensors");
    let (out, _) = fit(&[s.xdf.to_str().unwrap(), "--rig", s.rig.to_str().unwrap(), "--out", other.to_str().unwrap(), "--quiet", "--seed", "2", "--iterations", "2"]);
    assert!(out.status.success());
    assert!(std::fs::read(model).unwrap() != std::fs::read(&other).unwrap());
}

/// Rates the true population reaches in task 0 under a constant input: a target the
/// controller can reach (true model, Hz, one per unit).
fn reachable_target_rates(probe_rig: &Path) -> Vec<f64> {
    use nalgebra::DVector;
    use neuroloop::model::{dynamics, observation};
    let rig = neuroloop::rig::Rig::load(probe_rig).unwrap();
    let truth = neuroloop::sim::truth_model(rig.sim.as_ref().unwrap(), 0.01);
    let theta = truth.theta_at(&truth.task_library[0]);
    let d = truth.dims.latent;
    let u = DVector::from_vec(vec![0.6, -0.6, 0.6, -0.6]);
    let (mut x, mut next, mut t) = (DVector::zeros(d), DVector::zeros(d), DVector::zeros(d));
    for _ in 0..3000 {
        dynamics::step(&theta, truth.alpha, &x, &u, &mut next, &mut t);
        x.copy_from(&next);
    }
    let mut eta = DVector::zeros(truth.dims.n_units);
    observation::log_rates(&truth.obs_c, &truth.obs_d, truth.log_rate_max, &x, &mut eta);
    eta.iter().map(|e| e.exp()).collect()
}

/// A closed-loop rig on the simulated utah96 population (task 0 throughout), alternating
/// open- and closed-loop blocks, with a rate objective and the given model (None: the
/// simulator's true model).
fn closed_loop_rig(dir: &Path, name: &str, model: Option<&Path>, controller: &str, target: &[f64]) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("rigs/sim-utah96.toml")).unwrap();
    let tag = unique("fitcl");
    let target: Vec<String> = target.iter().map(|v| format!("{v:.4}")).collect();
    let model_line = model.map_or(String::new(), |p| format!("path = \"{}\"\n", p.display()));
    let text = text
        .replace("\"neuroloop-sim-utah96\"", &format!("\"{tag}-spikes\""))
        .replace("neuroloop-control-sim-utah96", &format!("{tag}-control"))
        .replace("neuroloop-status-sim-utah96", &format!("{tag}-status"))
        .replace("backend = \"cpu\"", &format!("{model_line}backend = \"cpu\""))
        .replace("kind = \"mppi\"", &format!("kind = \"{controller}\""))
        .replace("kind = \"latent\"\ntarget = [0.3, -0.3, 0.2, -0.1]", &format!("kind = \"rates\"\ntarget = [{}]", target.join(", ")))
        .replace("switch_every_s = 20.0", "switch_every_s = 0.0")
        .replace("open_loop_block_bins = 1000", "open_loop_block_bins = 400");
    assert!(text.contains("kind = \"rates\""));
    write(dir, name, &text)
}

fn tracking(dir: &Path, rig: &Path, tag: &str) -> (f64, f64) {
    let report = dir.join(format!("{tag}.json"));
    let out = run(&["run", "--rig", rig.to_str().unwrap(), "--bins", "3200", "--quiet", "--report", report.to_str().unwrap()]);
    assert!(out.status.success(), "{tag}: closed loop failed");
    let r = common::report(&report);
    let t = &r["tracking"];
    eprintln!("{tag}: tracking {t}, latent R² (affine) {}", r["latent_r2_affine"]);
    (f(&t["closed_loop_mse"]), f(&t["open_loop_mse"]))
}

#[test]
fn closing_the_loop_with_the_fitted_model_tracks_rates_as_well_as_the_truth() {
    let s = session();
    let (model, _) = fitted();
    let target = reachable_target_rates(&s.rig);
    let mut results = Vec::new();
    for controller in ["lqr", "mppi"] {
        let fitted_rig = closed_loop_rig(&s.dir, &format!("cl-fitted-{controller}.toml"), Some(model), controller, &target);
        let check = run(&["check", "--rig", fitted_rig.to_str().unwrap()]);
        assert!(check.status.success(), "the fitted model does not load");
        let true_rig = closed_loop_rig(&s.dir, &format!("cl-true-{controller}.toml"), None, controller, &target);
        let (fit_closed, fit_open) = tracking(&s.dir, &fitted_rig, &format!("fitted-{controller}"));
        let (true_closed, true_open) = tracking(&s.dir, &true_rig, &format!("true-{controller}"));
        eprintln!("{controller}: fitted closed {fit_closed:.2} open {fit_open:.2}; true closed {true_closed:.2} open {true_open:.2} (Hz²)");
        results.push((controller, fit_closed, fit_open, true_closed));
    }
    for (controller, fit_closed, fit_open, true_closed) in results {
        assert!(fit_closed <= 1.3 * true_closed, "{controller}: tracking error with the fitted model {fit_closed} > 1.3 × the true model's {true_closed}");
        assert!(fit_closed <= 0.5 * fit_open, "{controller}: closing the loop with the fitted model barely helps: {fit_closed} vs open loop {fit_open}");
    }
}
