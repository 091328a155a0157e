//! Shared helpers for the integration tests: unique stream names, temporary rig and
//! model files, and running the real `neuroloop` binary.
#![allow(dead_code)]

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
    assert!(p.exists(), "{} is missing: run ./scripts/setup.sh first", p.display());
    p
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

pub fn run(args: &[&str]) -> Output {
    let out = Command::new(bin()).args(args).output().expect("run neuroloop");
    eprintln!("--- neuroloop {:?}: {}\n{}", args, out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// Start `neuroloop` in the background (e.g. a `run` with no `--bins`, stopped by [`interrupt`]).
pub fn spawn(args: &[&str]) -> Child {
    Command::new(bin()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start neuroloop")
}

/// Ctrl-C (SIGINT) a spawned `neuroloop`, as an operator would, and collect its output.
/// The run finishes its current bin and writes its report.
pub fn interrupt(child: Child) -> Output {
    let ok = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill -INT").success();
    assert!(ok, "could not signal neuroloop");
    let out = child.wait_with_output().expect("wait for neuroloop");
    eprintln!("--- neuroloop (interrupted): {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

pub fn report(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("report {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A small simulated-rig section (the model the tests use), parameterised by stream names.
pub struct SimRig {
    pub spikes: String,
    pub control: String,
    pub status: String,
}

impl SimRig {
    pub fn new(tag: &str) -> SimRig {
        SimRig { spikes: unique(&format!("{tag}-spikes")), control: unique(&format!("{tag}-control")), status: unique(&format!("{tag}-status")) }
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
