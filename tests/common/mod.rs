//! Shared helpers for the integration tests: unique stream names, temporary rig and
//! model files, running the real `neuroloop` binary, the Python peers in tests/py, and
//! (in [`source`]) a test's own LSL spike sources.
#![allow(dead_code)]

mod control;
mod source;
#[allow(unused_imports)] // each test binary uses a subset, as with everything here
pub use control::*;
#[allow(unused_imports)]
pub use source::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_neuroloop")
}

/// A stream name no other test (or test run) uses, so parallel runs never cross-talk.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn python() -> PathBuf {
    let p = repo().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run ./scripts/setup.sh first (it creates .venv with pylsl, numpy and pyxdf)", p.display());
    p
}

/// tests/py/`script` under the venv's Python.
pub fn py_script(script: &str) -> Command {
    let mut c = Command::new(python());
    c.arg(repo().join("tests/py").join(script));
    c
}

/// A pylsl (PyPI) outlet publishing 96 channels of spike events as `name` for `duration_s`
/// once a consumer connects, then lingering 1 s (tests/py/spike_outlet.py; `extra`: more of
/// its options). It prints `{"pushed": N}` when done.
pub fn pylsl_spike_outlet(name: &str, duration_s: u32, extra: &[&str]) -> Child {
    py_script("spike_outlet.py")
        .args(["--name", name, "--channels", "96", "--duration", &duration_s.to_string(), "--linger", "1"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A pylsl inlet on the Control stream `name` for up to `seconds` (tests/py/control_inlet.py).
/// It prints what it received as JSON.
pub fn pylsl_control_inlet(name: &str, seconds: u32) -> Child {
    py_script("control_inlet.py").args(["--name", name, "--seconds", &seconds.to_string()]).stdout(Stdio::piped()).spawn().unwrap()
}

/// `text` with `from` replaced by `to` (which must be there: a silent no-op would test nothing).
pub fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the template has no `{from}`");
    text.replace(from, to)
}

/// A rig text with a 4 s lead-in before bin 0 instead of 1.5 s: the Control and Status
/// outlets exist that long before their first sample, so the test's own inlets are
/// connected by then even on a slow machine.
pub fn long_lead_in(text: &str) -> String {
    edit(text, "start_delay_ms = 1500.0", "start_delay_ms = 4000.0")
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `args`, with a control plane on a free port for `neuroloop run` (the rig's default,
/// 127.0.0.1:7878, may be taken on a test machine) unless the test chose one.
fn with_free_control_port<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut a = args.to_vec();
    if a.first() == Some(&"run") && !a.iter().any(|x| *x == "--control" || *x == "--no-control") {
        a.extend(["--control", "127.0.0.1:0"]);
    }
    a
}

pub fn run(args: &[&str]) -> Output {
    let args = &with_free_control_port(args)[..];
    let out = Command::new(bin()).args(args).output().expect("run neuroloop");
    eprintln!("--- neuroloop {:?}: {}\n{}", args, out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// Start `neuroloop` in the background (e.g. a `run` with no `--bins`, stopped by [`interrupt`]).
pub fn spawn(args: &[&str]) -> Child {
    Command::new(bin()).args(with_free_control_port(args)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start neuroloop")
}

/// Ctrl-C (SIGINT) a spawned `neuroloop`, as an operator would, and collect its output.
/// The run finishes its current bin and writes its report.
pub fn interrupt(child: Child) -> Output {
    signal(child, "INT")
}

/// Send a spawned `neuroloop` the signal `sig` (`INT`, `TERM`, `KILL`, …) and collect its output.
pub fn signal(child: Child, sig: &str) -> Output {
    let ok = Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().expect("kill").success();
    assert!(ok, "could not signal neuroloop (SIG{sig})");
    let out = child.wait_with_output().expect("wait for neuroloop");
    eprintln!("--- neuroloop (SIG{sig}): {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

pub fn report(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("report {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// `neuroloop run --rig RIG --bins BINS --report REPORT --quiet EXTRA…`, which must succeed;
/// its output and its report.
pub fn run_bins(rig: &Path, bins: u64, report_path: &Path, extra: &[&str]) -> (Output, serde_json::Value) {
    let bins = bins.to_string();
    let out =
        run(&[&["run", "--rig", rig.to_str().unwrap(), "--bins", &bins, "--report", report_path.to_str().unwrap(), "--quiet"], extra]
            .concat());
    assert!(out.status.success(), "neuroloop run failed: {}", out.status);
    (out, report(report_path))
}

/// `neuroloop run --rig RIG --report REPORT --quiet EXTRA…` fed by the test's own source: it
/// runs until `source_done` returns (the source has pushed all it will), then gets a Ctrl-C,
/// so the run lasts as long as the input, however fast the machine. The run must succeed.
/// Returns what `source_done` returned, the run's output and its report.
pub fn run_until_source_done<T>(
    rig: &Path,
    report_path: &Path,
    extra: &[&str],
    source_done: impl FnOnce() -> T,
) -> (T, Output, serde_json::Value) {
    let child = spawn(&[&["run", "--rig", rig.to_str().unwrap(), "--report", report_path.to_str().unwrap(), "--quiet"], extra].concat());
    let done = source_done();
    let out = interrupt(child);
    assert!(out.status.success(), "neuroloop run failed: {}", out.status);
    (done, out, report(report_path))
}

/// `neuroloop run --rig RIG --bins 10 --quiet` while `sources` hold the streams it should
/// refuse at connect: it must fail. Its stderr, once every source has closed.
pub fn run_refused_at_connect(rig: &Path, sources: impl IntoIterator<Item = std::thread::JoinHandle<()>>) -> String {
    let out = run(&["run", "--rig", rig.to_str().unwrap(), "--bins", "10", "--quiet"]);
    for s in sources {
        s.join().unwrap();
    }
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A small simulated-rig section (the model the tests use), parameterised by stream names.
pub struct SimRig {
    pub spikes: String,
    pub control: String,
    pub status: String,
}

impl SimRig {
    pub fn new(tag: &str) -> SimRig {
        SimRig {
            spikes: unique(&format!("{tag}-spikes")),
            control: unique(&format!("{tag}-control")),
            status: unique(&format!("{tag}-status")),
        }
    }

    /// The simulator's true model, saved by the real CLI (`neuroloop sim --write-model`).
    pub fn write_model(&self, dir: &Path) -> PathBuf {
        let sim_rig = write(dir, "sim.toml", &self.toml("lqr", "events", "events", "", ""));
        let model = dir.join("model.safetensors");
        assert!(run(&["sim", "--rig", sim_rig.to_str().unwrap(), "--write-model", model.to_str().unwrap()]).status.success());
        model
    }

    /// A controller-only rig body (no [sim]): LQR, `input_kind` input, the model from `model`.
    pub fn controller_toml(&self, input_kind: &str, model: &Path) -> String {
        let text = self.toml("lqr", input_kind, "events", "", "");
        text[..text.find("[sim]").unwrap()].replace("[model]\n", &format!("[model]\npath = \"{}\"\n", model.display()))
    }

    /// dir/rig.toml: a controller-only rig ([`controller_toml`](Self::controller_toml)) reading
    /// an `input_kind` stream, with the simulator's true model saved beside it.
    pub fn write_controller_rig(&self, dir: &Path, input_kind: &str) -> PathBuf {
        let model = self.write_model(dir);
        write(dir, "rig.toml", &self.controller_toml(input_kind, &model))
    }

    /// The simulated closed loop as it comes: `controller`, spike events in and out of the
    /// simulator, nothing added.
    pub fn events_toml(&self, controller: &str) -> String {
        self.toml(controller, "events", "events", "", "")
    }

    /// A rig file body with 10 ms bins. `extra_sim` is appended inside [sim]; `sections` after it.
    pub fn toml(&self, controller: &str, input_kind: &str, sim_output: &str, extra_sim: &str, sections: &str) -> String {
        self.toml_timed((10.0, 4.0, 5.0), controller, input_kind, sim_output, extra_sim, sections)
    }

    /// Same, with (bin_ms, grace_ms, deadline_ms).
    pub fn toml_timed(
        &self,
        (bin_ms, grace_ms, deadline_ms): (f64, f64, f64),
        controller: &str,
        input_kind: &str,
        sim_output: &str,
        extra_sim: &str,
        sections: &str,
    ) -> String {
        let ty = if input_kind == "events" { "SpikeEvents" } else { "SpikeCounts" };
        format!(
            r#"
name = "test"
[timing]
bin_ms = {bin_ms}
grace_ms = {grace_ms}
deadline_ms = {deadline_ms}
start_delay_ms = 1500.0
[input]
kind = "{input_kind}"
name = "{spikes}"
type = "{ty}"
resolve_timeout_s = 10.0
[units]
channels = 96
[output]
control_name = "{control}"
status_name = "{status}"
control_labels = ["left", "right", "up", "down"]
[model]
backend = "cpu"
[controller]
kind = "{controller}"
[objective]
kind = "latent"
target = [0.3, -0.3, 0.2, -0.1]
[safety]
lower = [-1.0]
upper = [1.0]
max_step = 0.25
fallback = "hold"
[sim]
seed = 7
n_units = 96
latent_dim = 4
embed_dim = 3
control_dim = 4
tasks = 3
output = "{sim_output}"
stream_name = "{spikes}"
{extra_sim}
{sections}
"#,
            spikes = self.spikes,
            control = self.control,
            status = self.status,
        )
    }
}

/// Record every sample of a stream (by name) with a real LSL inlet until it stops.
pub fn record<T: Clone + Default + Send + 'static>(name: &str) -> std::thread::JoinHandle<Vec<(f64, Vec<T>)>>
where
    lsl::StreamInlet: lsl::Pullable<T>,
{
    let name = name.to_string();
    use lsl::Pullable;
    std::thread::spawn(move || {
        let found = lsl::resolve_bypred(&format!("name='{name}'"), 1, 30.0).unwrap();
        let inlet = lsl::StreamInlet::new(&found[0], 360, 0, false).unwrap();
        inlet.open_stream(10.0).unwrap();
        let mut got = Vec::new();
        let mut buf: Vec<T> = Vec::new();
        // Wait up to 30 s for the first sample, then until 3 s pass without one.
        let mut idle = 0.0;
        while idle < if got.is_empty() { 30.0 } else { 3.0 } {
            match inlet.pull_sample_buf(&mut buf, 0.1) {
                Ok(ts) if ts != 0.0 => {
                    got.push((ts, buf.clone()));
                    idle = 0.0;
                }
                Ok(_) => idle += 0.1,
                Err(_) => break,
            }
        }
        got
    })
}

/// Every stream of an XDF file as pyxdf (a reader no one here wrote) loads it:
/// tests/py/xdf_dump.py's JSON (values and timestamps as exact f64 bits).
pub fn xdf_dump(xdf: &Path) -> serde_json::Value {
    let out = Command::new(python()).arg(repo().join("tests/py/xdf_dump.py")).arg(xdf).output().unwrap();
    assert!(out.status.success(), "pyxdf could not load {}: {}", xdf.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The stream of type `ty` in an [`xdf_dump`].
pub fn xdf_stream<'a>(d: &'a serde_json::Value, ty: &str) -> &'a serde_json::Value {
    d["streams"].as_array().unwrap().iter().find(|s| s["type"] == ty).unwrap_or_else(|| panic!("no {ty} stream in the recording"))
}

/// Row `row`, column `col` of an [`xdf_dump`] stream's values.
pub fn bits_col(s: &serde_json::Value, row: usize, col: usize) -> f64 {
    f64::from_bits(s["value_bits"][row][col].as_u64().unwrap())
}

/// Every timestamp of an [`xdf_dump`] stream.
pub fn xdf_timestamps(s: &serde_json::Value) -> Vec<f64> {
    s["timestamp_bits"].as_array().unwrap().iter().map(|b| f64::from_bits(b.as_u64().unwrap())).collect()
}

/// `text` (a rig file from rigs/ on the simulated utah96 population: sim-utah96.toml,
/// sim-utah96-probe.toml) with stream names of its own, `<tag>-spikes`, `<tag>-control` and
/// `<tag>-status`, so that it runs beside any other test.
pub fn rename_utah96_streams(text: &str, tag: &str) -> String {
    text.replace("\"neuroloop-sim-utah96\"", &format!("\"{tag}-spikes\""))
        .replace("neuroloop-control-sim-utah96", &format!("{tag}-control"))
        .replace("neuroloop-status-sim-utah96", &format!("{tag}-status"))
}

/// The firing rates (Hz, one per unit) the true population `truth` settles at in task 0 under
/// the constant input [0.6, −0.6, 0.6, −0.6], without noise: a rate target a controller can
/// reach.
pub fn reachable_rates(truth: &neuroloop::model::ModelParams) -> Vec<f64> {
    use nalgebra::DVector;
    use neuroloop::model::{dynamics, observation};
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

/// Damages an XDF file's bytes as a crashed or buggy writer does: the `nth` samples chunk
/// of the stream of type `ty` declares one more sample than it holds (its length is right).
/// Returns the byte offset of that chunk.
pub fn declare_one_more_sample(bytes: &mut [u8], ty: &str, nth: usize) -> usize {
    let varlen = |b: &[u8], at: usize| -> (u64, usize) {
        let nb = b[at] as usize;
        (b[at + 1..at + 1 + nb].iter().enumerate().fold(0u64, |v, (i, x)| v | (*x as u64) << (8 * i)), at + 1 + nb)
    };
    let mut id = None;
    let mut seen = 0;
    let mut at = 4;
    while at < bytes.len() {
        let (len, tag_at) = varlen(bytes, at);
        let end = tag_at + len as usize;
        let tag = u16::from_le_bytes([bytes[tag_at], bytes[tag_at + 1]]);
        let content = tag_at + 2;
        let chunk_id = u32::from_le_bytes(bytes[content..content + 4].try_into().unwrap_or([0; 4]));
        if tag == 2 && String::from_utf8_lossy(&bytes[content + 4..end]).contains(&format!("<type>{ty}</type>")) {
            id = Some(chunk_id);
        }
        if tag == 3 && Some(chunk_id) == id {
            if seen == nth {
                let count_at = content + 4;
                let nb = bytes[count_at] as usize;
                let (count, _) = varlen(bytes, count_at);
                bytes[count_at + 1..count_at + 1 + nb].copy_from_slice(&(count + 1).to_le_bytes()[..nb]);
                return at;
            }
            seen += 1;
        }
        at = end;
    }
    panic!("no samples chunk {nth} of a {ty} stream");
}
