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
    let text = rename_utah96_streams(&text, &unique("fit"))
        .replace("switch_every_s = 20.0", &format!("switch_every_s = {}", BINS_PER_TASK as f64 * 0.01));
    write(dir, name, &edit(text))
}

struct Session {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    rig: PathBuf,
    xdf: PathBuf,
}

impl Session {
    /// `neuroloop fit` of this session's recording with its rig, and `args`.
    fn fit(&self, args: &[&str]) -> (std::process::Output, Option<Value>) {
        fit(&[&[self.xdf.to_str().unwrap(), "--rig", self.rig.to_str().unwrap()], args].concat())
    }
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
        let out = run(&[
            "run",
            "--rig",
            rig.to_str().unwrap(),
            "--bins",
            &bins,
            "--quiet",
            "--record",
            xdf.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "the identification session failed");
        let r = common::report(&report);
        assert_eq!(r["bins"], 3 * BINS_PER_TASK, "{r}");
        assert!(r["backend"] == "probe" && r["latent_r2"].is_null() && r["tracking"].is_null(), "{r}");
        // The probe's sequence depends on the seed and the bin only: replay repeats it bit for bit.
        let replay = run(&["replay", xdf.to_str().unwrap(), "--rig", rig.to_str().unwrap(), "--quiet"]);
        assert!(replay.status.success(), "replaying the probe session diverged");
        let rr: Value = serde_json::from_slice(&replay.stdout).unwrap();
        assert!(rr["identical"] == true && rr["compared"] == 3 * BINS_PER_TASK, "{rr}");
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
        let (out, r) = s.fit(&[
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
    // Two fits with the same inputs, options and seed write the same bytes (5 EM iterations
    // each: every iteration runs the same code, so a nondeterminism shows in the first few;
    // the 25-iteration refit this used to do cost 30 s of the suite).
    let fit_twice = |name: &str| {
        let path = s.dir.join(name);
        let (out, _) = s.fit(&["--tasks", "markers", "--iterations", "5", "--out", path.to_str().unwrap(), "--quiet"]);
        assert!(out.status.success());
        std::fs::read(path).unwrap()
    };
    assert!(fit_twice("once.safetensors") == fit_twice("again.safetensors"), "two fits with the same inputs and seed differ");
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
    let (out, _) = s.fit(&["--out", other.to_str().unwrap(), "--quiet", "--seed", "2", "--iterations", "2"]);
    assert!(out.status.success());
    assert!(std::fs::read(model).unwrap() != std::fs::read(&other).unwrap());
}

/// Rates the true population reaches in task 0 under a constant input: a target the
/// controller can reach (true model, Hz, one per unit).
fn reachable_target_rates(probe_rig: &Path) -> Vec<f64> {
    let rig = neuroloop::rig::Rig::load(probe_rig).unwrap();
    reachable_rates(&neuroloop::sim::truth_model(rig.sim.as_ref().unwrap(), 0.01))
}

/// A closed-loop rig on the simulated utah96 population (task 0 throughout), alternating
/// open- and closed-loop blocks, with a rate objective and the given model (None: the
/// simulator's true model).
fn closed_loop_rig(dir: &Path, name: &str, model: Option<&Path>, controller: &str, target: &[f64]) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("rigs/sim-utah96.toml")).unwrap();
    let target: Vec<String> = target.iter().map(|v| format!("{v:.4}")).collect();
    let model_line = model.map_or(String::new(), |p| format!("path = \"{}\"\n", p.display()));
    let text = rename_utah96_streams(&text, &unique("fitcl"))
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
    let out = run(&["run", "--rig", rig.to_str().unwrap(), "--bins", "2400", "--quiet", "--report", report.to_str().unwrap()]);
    assert!(out.status.success(), "{tag}: closed loop failed");
    let r = common::report(&report);
    let t = &r["tracking"];
    eprintln!("{tag}: tracking {t}, latent R² (affine) {}", r["latent_r2_affine"]);
    (f(&t["closed_loop_mse"]), f(&t["open_loop_mse"]))
}

/// The closed loop with the fitted model tracks a rate objective about as well as with the
/// simulator's true model. The comparison runs offline ([`offline_tracking`]: the same
/// backend step and safety layer, deterministic, so a slow machine's fallbacks do not decide
/// it); one live `run` with the fitted model shows the whole path over LSL.
#[test]
fn closing_the_loop_with_the_fitted_model_tracks_rates_as_well_as_the_truth() {
    let s = session();
    let (model, _) = fitted();
    let target = reachable_target_rates(&s.rig);
    let mut results = Vec::new();
    for controller in ["lqr", "mppi"] {
        let fitted_rig = closed_loop_rig(&s.dir, &format!("cl-fitted-{controller}.toml"), Some(model), controller, &target);
        let true_rig = closed_loop_rig(&s.dir, &format!("cl-true-{controller}.toml"), None, controller, &target);
        let (fit_closed, fit_open) = offline_tracking(&fitted_rig, 4000);
        let (true_closed, true_open) = offline_tracking(&true_rig, 4000);
        eprintln!(
            "{controller}: fitted closed {fit_closed:.1} open {fit_open:.1}; true closed {true_closed:.1} open {true_open:.1} (Hz²); ratio {:.3}",
            fit_closed / true_closed
        );
        results.push((controller, fit_closed, fit_open, true_closed));
    }
    for (controller, fit_closed, fit_open, true_closed) in results {
        assert!(
            fit_closed <= 1.3 * true_closed,
            "{controller}: tracking error with the fitted model {fit_closed} > 1.3 × the true model's {true_closed}"
        );
        assert!(
            fit_closed <= 0.5 * fit_open,
            "{controller}: closing the loop with the fitted model barely helps: {fit_closed} vs open loop {fit_open}"
        );
    }
    // Live: `check` and `run` load the fitted model as is; closed-loop blocks beat open-loop ones.
    let live = closed_loop_rig(&s.dir, "cl-live.toml", Some(model), "mppi", &target);
    assert!(run(&["check", "--rig", live.to_str().unwrap()]).status.success(), "the fitted model does not load");
    let (closed, open) = tracking(&s.dir, &live, "live-fitted-mppi");
    assert!(closed <= 0.5 * open, "live closed loop with the fitted model: {closed} vs open loop {open}");
}

/// The same closed loop as `run` computes it, offline and deterministic (no LSL, no clock,
/// so no fallbacks from a busy machine): the backend's step on the simulated population's
/// counts, the safety layer, open- and closed-loop blocks of 400 bins. Returns the rate
/// tracking error (Hz², true rates from the true latent) in closed and open blocks.
fn offline_tracking(rig_path: &Path, bins: u64) -> (f64, f64) {
    use neuroloop::backend::{BinInput, BinOutput};
    use neuroloop::model::observation;
    let rig = neuroloop::rig::Rig::load(rig_path).unwrap();
    let sim = rig.sim.clone().unwrap();
    let truth = neuroloop::sim::truth_model(&sim, 0.01);
    let target = rig.objective.as_ref().unwrap().target.clone();
    let model = neuroloop::session::SessionModel::resolve(&rig).unwrap();
    model.check(&rig).unwrap();
    let dims = model.dims();
    let mut backend = model.backend(&rig).unwrap();
    let safety = neuroloop::safety::Safety::from_rig(&rig, dims.control).unwrap();
    let mut pop = neuroloop::sim::Population::new(truth.clone(), sim.seed);
    let mut out = BinOutput::new(&dims);
    let (mut emitted, mut next) = (vec![0.0; dims.control], vec![0.0; dims.control]);
    let mut counts = vec![0.0; dims.n_units];
    let mut eta = nalgebra::DVector::zeros(dims.n_units);
    let (mut closed, mut open) = ((0.0, 0u64), (0.0, 0u64));
    let block = sim.open_loop_block_bins;
    for j in 0..bins {
        pop.advance(j, &emitted, 0);
        for i in 0..dims.n_units {
            counts[i] = pop.counts[i] as f64;
        }
        backend.step(&BinInput { bin: j, counts: &counts, u_prev: &emitted, has_data: true, want_control: true }, &mut out);
        let enabled = (j / block) % 2 == 1;
        safety.apply(&out.u, &emitted, enabled && out.control_valid, &mut next);
        emitted.copy_from_slice(&next);
        if j % block >= 50 {
            observation::log_rates(&truth.obs_c, &truth.obs_d, truth.log_rate_max, &pop.x, &mut eta);
            let e = eta.iter().zip(&target).map(|(a, b)| (a.exp() - b).powi(2)).sum::<f64>() / dims.n_units as f64;
            let acc = if enabled { &mut closed } else { &mut open };
            acc.0 += e;
            acc.1 += 1;
        }
    }
    (closed.0 / closed.1 as f64, open.0 / open.1 as f64)
}

/// A model trained in PyTorch arrives as `safetensors.torch.save_file(state_dict)`: float32
/// tensors under the module names, dimensions in the metadata. It loads as is.
#[test]
fn a_model_written_by_python_safetensors_with_pytorch_names_loads() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("torch.safetensors");
    let out = py_script("write_torch_model.py").arg(&model).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rig = closed_loop_rig(dir.path(), "torch-rig.toml", Some(&model), "mppi", &[20.0]);
    let check = run(&["check", "--rig", rig.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && stdout.contains("N=96 d=4 e=3 m=4, 3 library tasks"), "{stdout}");
    let params = neuroloop::model::ModelParams::load(&model).unwrap();
    assert_eq!(params.task_library.len(), 3);
    assert!((params.obs_d[0] - 20f64.ln()).abs() < 1e-6);
}

fn fit_fails(args: &[&str], want: &[&str]) {
    let (out, _) = fit(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the fit should have failed: {args:?}");
    assert_eq!(out.status.code(), Some(2), "{err}");
    for w in want {
        assert!(err.contains(w), "the error does not say {w:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// One stream of a crafted file: (id, name, type, channels, srate, timestamps, row-major values).
type XdfStream<'a> = (u32, &'a str, &'a str, usize, f64, Vec<f64>, Vec<f64>);

/// A minimal XDF file of one stream, written with neuroloop's own writer (the tests craft
/// files a real rig could produce).
fn xdf_with(path: &Path, streams: &[XdfStream]) {
    use neuroloop::record::xdf::{Format, XdfWriter};
    let mut w = XdfWriter::create(path, "").unwrap();
    for (id, name, ty, channels, srate, ts, values) in streams {
        let xml = format!(
            "<?xml version=\"1.0\"?><info><name>{name}</name><type>{ty}</type><channel_count>{channels}</channel_count><nominal_srate>{srate}</nominal_srate><channel_format>double64</channel_format><source_id>{name}</source_id><uid>{name}-{id}</uid></info>"
        );
        w.add_stream(*id, &xml, Format::Double64, *channels);
        w.clock_offset(*id, 0.0, 0.0);
        // In chunks, as LabRecorder writes them.
        for (t, v) in ts.chunks(1000).zip(values.chunks(1000 * channels)) {
            w.samples(*id, t, v);
        }
    }
    w.finish().unwrap();
}

#[test]
fn bad_recordings_get_clear_errors() {
    let s = session();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("never.safetensors");
    let o = out.to_str().unwrap();
    let rig = s.rig.to_str().unwrap();
    let xdf = s.xdf.to_str().unwrap();
    let spikes_name = std::fs::read_to_string(&s.rig)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("name = \"fit-"))
        .unwrap()
        .split('"')
        .nth(1)
        .unwrap()
        .to_string();

    // A spike stream without a Control stream: W_xu cannot be identified.
    let no_control = d.join("no-control.xdf");
    let ts: Vec<f64> = (0..5000).map(|i| i as f64 * 0.005).collect();
    let vals: Vec<f64> = (0..5000).flat_map(|i| [(i % 96) as f64, 0.0]).collect();
    xdf_with(&no_control, &[(1, &spikes_name, "SpikeEvents", 2, 0.0, ts.clone(), vals.clone())]);
    fit_fails(&[no_control.to_str().unwrap(), "--rig", rig, "--out", o], &["no-control.xdf", "no Control stream", "W_xu"]);

    // Non-finite stimulation.
    let nan = d.join("nan-control.xdf");
    let cts: Vec<f64> = (0..2000).map(|i| 0.01 * (i + 1) as f64).collect();
    let mut cv = vec![0.1; 2000 * 4];
    cv[4 * 700 + 2] = f64::NAN;
    xdf_with(&nan, &[(1, &spikes_name, "SpikeEvents", 2, 0.0, ts, vals), (3, "ctl", "Control", 4, 100.0, cts, cv)]);
    fit_fails(&[nan.to_str().unwrap(), "--rig", rig, "--out", o], &["nan-control.xdf", "Control stream", "channel 2", "not finite"]);

    // Every spike outside the rig's unit map: nothing to fit, and the message says where to look.
    let unmapped = d.join("unmapped.xdf");
    let cts: Vec<f64> = (0..2000).map(|i| 0.01 * (i + 1) as f64).collect();
    let ets: Vec<f64> = (0..5000).map(|i| i as f64 * 0.004).collect();
    let evals: Vec<f64> = (0..5000).flat_map(|i| [(500 + i % 7) as f64, 0.0]).collect();
    xdf_with(
        &unmapped,
        &[(1, &spikes_name, "SpikeEvents", 2, 0.0, ets.clone(), evals), (3, "ctl", "Control", 4, 100.0, cts.clone(), vec![0.1; 8000])],
    );
    fit_fails(&[unmapped.to_str().unwrap(), "--rig", rig, "--out", o], &["unmapped.xdf", "no spike", "maps to a unit", "[units]"]);

    // The rig does not match the recording: unit count, bin width.
    let rig95 = probe_rig(d, "rig95.toml", |t| t.replace("channels = 96", "channels = 95"));
    fit_fails(&[xdf, "--rig", rig95.to_str().unwrap(), "--out", o], &["N = 96", "maps 95"]);
    let rig20 = probe_rig(d, "rig20.toml", |t| t.replace("bin_ms = 10.0", "bin_ms = 20.0"));
    fit_fails(&[xdf, "--rig", rig20.to_str().unwrap(), "--out", o], &["Δ = 10 ms", "20 ms"]);

    // Too few bins to fit.
    fit_fails(&[xdf, "--rig", rig, "--tasks", "markers", "--heldout", "0.89", "--out", o], &["training bins", "at least 200"]);
    // Options out of range, and markers the file does not have.
    fit_fails(&[xdf, "--rig", rig, "--latent", "0", "--out", o], &["--latent"]);
    // Negative numbers are values of their flag, refused with its range (not "unexpected
    // argument '-3'" with a tip that would pass it as a recording).
    fit_fails(&[xdf, "--rig", rig, "--latent", "-3", "--out", o], &["'--latent <LATENT>'", "1..=64", "got -3"]);
    fit_fails(&[xdf, "--rig", rig, "--iterations", "-1", "--out", o], &["'--iterations <ITERATIONS>'", "1..=100000"]);
    fit_fails(&[xdf, "--rig", rig, "--heldout", "-0.5", "--out", o], &["--heldout must be a fraction in [0, 0.9), got -0.5"]);
    // Outputs that cannot be written are refused before the fit starts, not after it.
    fit_fails(&[xdf, "--rig", rig, "--out", d.to_str().unwrap()], &["cannot write the model", "it is a folder"]);
    fit_fails(&[xdf, "--rig", rig, "--out", "/proc/self/model.safetensors"], &["cannot write the model", "does not accept new files"]);
    fit_fails(&[no_control.to_str().unwrap(), "--rig", rig, "--tasks", "markers", "--out", o], &["no Control stream"]);
    fit_fails(&["/nonexistent/rec.xdf", "--rig", rig, "--out", o], &["/nonexistent/rec.xdf"]);
    assert!(!out.exists(), "a failed fit wrote a model");

    // A recording made with another rig file: a warning naming both hashes, and the fit goes on.
    let other = probe_rig(d, "other.toml", |t| t.replace("# An identification session", "# Another rig file: an identification session"));
    let text = std::fs::read_to_string(&s.rig).unwrap();
    let other_text = std::fs::read_to_string(&other).unwrap();
    let other_text =
        other_text.lines().zip(text.lines()).map(|(o, t)| if o.starts_with("#") { o } else { t }).collect::<Vec<_>>().join("\n");
    std::fs::write(&other, other_text).unwrap();
    let m = d.join("other.safetensors");
    let (res, _) = fit(&[xdf, "--rig", other.to_str().unwrap(), "--iterations", "2", "--out", m.to_str().unwrap(), "--quiet"]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{err}");
    let rec_sha = neuroloop::record::sha256_hex(&std::fs::read(&s.rig).unwrap());
    let our_sha = neuroloop::record::sha256_hex(&std::fs::read(&other).unwrap());
    assert!(err.contains("different rig file") && err.contains(&rec_sha) && err.contains(&our_sha), "{err}");

    // Nothing held out: fitted, and the report says there is no score (never NaN).
    let m = d.join("all.safetensors");
    let report = d.join("all.json");
    let (res, r) = fit(&[
        xdf,
        "--rig",
        rig,
        "--iterations",
        "2",
        "--heldout",
        "0",
        "--out",
        m.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(res.status.success() && stdout.contains("not scored: no held-out bins") && !stdout.contains("NaN"), "{stdout}");
    let r = r.unwrap();
    assert!(
        r["heldout_bits_per_spike"].is_null() && r["heldout"]["unscored"].as_str().unwrap().contains("no held-out bins"),
        "{}",
        r["heldout"]
    );
    assert!(!std::fs::read_to_string(&report).unwrap().contains("NaN"));

    // Stimulation of ±1e30 (a unit mix-up): fitted as recorded, with a warning that says so.
    let huge = d.join("huge-control.xdf");
    let ets: Vec<f64> = (0..5000).map(|i| i as f64 * 0.004).collect();
    let evals: Vec<f64> = (0..5000).flat_map(|i| [(i % 96) as f64, 0.0]).collect();
    let hv: Vec<f64> = (0..8000).map(|i| if i % 2 == 0 { 1e30 } else { -1e30 }).collect();
    xdf_with(&huge, &[(1, &spikes_name, "SpikeEvents", 2, 0.0, ets, evals), (3, "ctl", "Control", 4, 100.0, cts, hv)]);
    let m = d.join("huge.safetensors");
    let (res, _) =
        fit(&[huge.to_str().unwrap(), "--rig", rig, "--iterations", "2", "--heldout", "0.1", "--out", m.to_str().unwrap(), "--quiet"]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("values up to 1e30") && err.contains("far outside the rig's safety bounds"), "{err}");

    // A truncated recording: read up to its last whole chunk, and say how much was used.
    let bytes = std::fs::read(&s.xdf).unwrap();
    let cut = d.join("cut.xdf");
    std::fs::write(&cut, &bytes[..bytes.len() * 7 / 10 + 3]).unwrap();
    let m = d.join("cut.safetensors");
    let (res, _) = fit(&[cut.to_str().unwrap(), "--rig", rig, "--iterations", "2", "--out", m.to_str().unwrap(), "--quiet"]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{err}");
    assert!(err.contains("cut off") && err.contains(&format!("of {} bytes skipped", bytes.len() * 7 / 10 + 3)), "{err}");
    assert!(neuroloop::model::ModelParams::load(&m).is_ok());

    // A damaged chunk in the middle (one NeuroloopBins chunk and one Control chunk declare
    // one sample more than they hold): everything after them is still fitted, the bins in
    // them are left out, and stdout, stderr and the report say so. (It used to stop at the
    // first one and fit half the file without a word.)
    let mut damaged = bytes.clone();
    let bins_at = declare_one_more_sample(&mut damaged, "NeuroloopBins", 40);
    let control_at = declare_one_more_sample(&mut damaged, "Control", 60);
    let bad = d.join("damaged.xdf");
    std::fs::write(&bad, &damaged).unwrap();
    let m = d.join("damaged.safetensors");
    let report = d.join("damaged.json");
    let (res, r) = fit(&[
        bad.to_str().unwrap(),
        "--rig",
        rig,
        "--iterations",
        "2",
        "--out",
        m.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--quiet",
    ]);
    let err = String::from_utf8_lossy(&res.stderr);
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(res.status.success(), "{err}");
    assert!(err.contains(&format!("damaged at byte {bins_at}")) && err.contains(&format!("damaged at byte {control_at}")), "{err}");
    assert!(stdout.contains("DAMAGED FILE"), "{stdout}");
    let input = &r.unwrap()["inputs"][0];
    assert_eq!(input["bins"], 3 * BINS_PER_TASK, "the bins after the damaged chunks are read: {input}");
    let damage = &input["damage"];
    assert_eq!(damage["parts"].as_array().unwrap().len(), 2, "{damage}");
    let lost = input["lost_bins"].as_u64().unwrap();
    let skipped_bins = damage["samples_skipped"].as_object().unwrap().iter().find(|(k, _)| k.contains("NeuroloopBins")).unwrap().1;
    assert!(lost >= skipped_bins.as_u64().unwrap() && lost < 200, "{input}");
    assert_eq!(input["bytes_used"].as_u64().unwrap() + damage["bytes_skipped"].as_u64().unwrap(), bytes.len() as u64);
}

/// The disk fills while the model is written (here: a file-size limit of 4 KiB, the EFBIG a
/// full disk's ENOSPC is to the writer): the fit fails with a message, and the model that was
/// at --out is still there, whole, with no partial file beside it. (It used to be overwritten
/// in place: a full disk or a crash mid-write left 8 KiB of a model `check` rejects.)
#[test]
fn a_full_disk_leaves_the_model_that_was_at_out_whole() {
    let s = session();
    let (fitted_model, _) = fitted();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.safetensors");
    std::fs::copy(fitted_model, &out).unwrap();
    let before = std::fs::read(&out).unwrap();
    assert!(before.len() > 4096);
    let res = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 8; exec \"$0\" fit \"$1\" --rig \"$2\" --iterations 2 --out \"$3\" --quiet")
        .arg(common::bin())
        .args([&s.xdf, &s.rig, &out])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot write the model") && err.contains("File too large"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), before, "the previous model is untouched");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "no partial file is left beside it: {left:?}");
    assert!(neuroloop::model::ModelParams::load(&out).is_ok());
}

/// A fit whose objective goes non-finite stops, says so, exits 1 and keeps the last good
/// parameters: a model file that loads and a report that records why.
#[test]
fn a_diverging_fit_stops_and_keeps_the_last_good_parameters() {
    let s = session();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("diverged.safetensors");
    let report = dir.path().join("diverged.json");
    // Adam at 1000 throws the parameters far past where exp() overflows.
    let (out, r) = s.fit(&[
        "--iterations",
        "3",
        "--learning-rate",
        "1000",
        "--out",
        model.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("STOPPED EARLY") && stdout.contains("not finite") && stdout.contains("last good parameters"), "{stdout}");
    let r = r.unwrap();
    assert!(r["diverged"].as_str().unwrap().contains("not finite"), "{}", r["diverged"]);
    // The last good parameters: here the initialisation (the first iteration already failed),
    // which is still a model that loads and explains the held-out bins better than the null.
    let p = neuroloop::model::ModelParams::load(&model).unwrap();
    assert!(p.validate().is_ok());
    assert!(f(&r["heldout_bits_per_spike"]) > 0.0, "{}", r["heldout_bits_per_spike"]);
    // Out of range: a clear error before anything is read.
    fit_fails(
        &[s.xdf.to_str().unwrap(), "--rig", s.rig.to_str().unwrap(), "--learning-rate", "0", "--out", model.to_str().unwrap()],
        &["--learning-rate", "(0, 1000]"],
    );
}

/// A LabRecorder file holds the raw spike stream and the Control stream, no bins: the fit
/// re-bins the spikes with the replay code and learns as well from them (`--tasks file`).
#[test]
fn a_labrecorder_file_of_the_raw_streams_fits_too() {
    let s = session();
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&s.xdf).unwrap();
    let file = xdf::XDFFile::from_bytes(&bytes).unwrap();
    let pick = |ty: &str| file.streams.iter().find(|st| st.r#type.as_deref() == Some(ty)).unwrap();
    let rows = |samples: &[xdf::Sample]| -> (Vec<f64>, Vec<f64>) {
        let mut ts = Vec::new();
        let mut vals = Vec::new();
        for smp in samples {
            ts.push(smp.timestamp.unwrap());
            match &smp.values {
                xdf::Values::Int32(v) => vals.extend(v.iter().map(|x| *x as f64)),
                xdf::Values::Float32(v) => vals.extend(v.iter().map(|x| *x as f64)),
                other => panic!("unexpected values {other:?}"),
            }
        }
        (ts, vals)
    };
    let spikes = pick("SpikeEvents");
    let control = pick("Control");
    let (sts, svals) = rows(&spikes.samples);
    let (cts, cvals) = rows(&control.samples);
    let lab = dir.path().join("labrecorder.xdf");
    xdf_with(
        &lab,
        &[
            (1, spikes.name.as_deref().unwrap(), "SpikeEvents", 2, 0.0, sts, svals),
            (2, control.name.as_deref().unwrap(), "Control", 4, 100.0, cts, cvals),
        ],
    );
    let model = dir.path().join("lab.safetensors");
    let report = dir.path().join("lab.json");
    let (out, r) = fit(&[
        lab.to_str().unwrap(),
        "--rig",
        s.rig.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(out.status.success());
    let r = r.unwrap();
    assert!(r["inputs"][0]["kind"].as_str().unwrap().contains("LabRecorder"), "{}", r["inputs"][0]);
    let bins = r["inputs"][0]["bins"].as_u64().unwrap();
    // The simulated rig publishes a little past the loop's last bin (it stops last).
    assert!((3 * BINS_PER_TASK - 5..=3 * BINS_PER_TASK + 100).contains(&bins), "re-binned into {bins} bins");
    // One task label for the whole file (no markers): one embedding for three true tasks,
    // evaluated on the file's last 20 % (the third task), so it explains less than the
    // three-task fit; it must still beat the null model clearly. The file holds no
    // simulator truth, so the report must not claim a latent R².
    assert_eq!(r["dims"]["tasks"], 1);
    let bps = f(&r["heldout_bits_per_spike"]);
    eprintln!("LabRecorder-style file: bits/spike {bps}, latent R² {}", r["latent_r2"]);
    assert!(bps > 0.1, "from the raw streams: {bps} bits/spike");
    assert!(r["latent_r2"].is_null(), "no truth stream, yet latent R² {}", r["latent_r2"]);

    // A damaged spike chunk in the middle: the rest is re-binned and fitted, the bins its
    // spikes fell in are left out (not fitted as silence), and the report says so.
    let mut damaged = std::fs::read(&lab).unwrap();
    declare_one_more_sample(&mut damaged, "SpikeEvents", 5);
    let bad = dir.path().join("labrecorder-damaged.xdf");
    std::fs::write(&bad, &damaged).unwrap();
    let report = dir.path().join("lab-damaged.json");
    let (out, r) = fit(&[
        bad.to_str().unwrap(),
        "--rig",
        s.rig.to_str().unwrap(),
        "--iterations",
        "2",
        "--out",
        model.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let input = &r.unwrap()["inputs"][0];
    assert_eq!(input["bins"].as_u64().unwrap(), bins, "{input}");
    let lost = input["lost_bins"].as_u64().unwrap();
    // 1000 spike events of a 96-unit population at ~10–40 Hz span a few bins to tens.
    assert!((1..200).contains(&lost), "{input}");
    assert_eq!(input["damage"]["samples_skipped"]["{} (SpikeEvents)".replace("{}", spikes.name.as_deref().unwrap())], 1000, "{input}");
}
