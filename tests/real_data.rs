//! Real public recordings (tests/data/real/README.md), fitted through the real CLI and
//! scored by the field's measure beside the baselines a lab already has: the model must
//! hold its own on populations it was not drawn from.
//!
//! - a locust antennal lobe tetrode (10 units) with 1 s odour puffs as the Control stream;
//! - a developing mouse retina (65 units, spontaneous waves), no stimulation: a model
//!   without an input path (m = 0), then run live as a monitor;
//! - model selection over d on the locust.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/real").join(name)
}

/// `neuroloop fit FILE --rig RIG` with the defaults (and `extra`); the report, the stdout.
fn fit(file: &str, rig: &str, dir: &Path) -> (Value, String) {
    fit_with(file, rig, dir, &[])
}

fn fit_with(file: &str, rig: &str, dir: &Path, extra: &[&str]) -> (Value, String) {
    let model = dir.join("model.safetensors");
    let report = dir.join("fit.json");
    let (file, rig) = (data(file), data(rig));
    let args = [
        &["fit", file.to_str().unwrap(), "--rig", rig.to_str().unwrap(), "--out", model.to_str().unwrap()][..],
        &["--report", report.to_str().unwrap(), "--quiet"],
        extra,
    ]
    .concat();
    let out = run(&args);
    assert!(out.status.success(), "fit of {} failed", file.display());
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{stdout}");
    (report_of(&report), stdout)
}

fn report_of(path: &Path) -> Value {
    common::report(path)
}

fn score(r: &Value, metric: &str, method: &str) -> Option<f64> {
    r["comparison"]["scores"].as_array().unwrap().iter().find(|s| s["metric"] == metric && s["method"] == method)?["bits_per_spike"]
        .as_f64()
}

/// The table a lab would look at, printed for the test log (and RESULTS.md).
fn print_table(name: &str, r: &Value) {
    eprintln!("{name}:");
    for s in r["comparison"]["scores"].as_array().unwrap() {
        eprintln!("  {:15} {:22} {}", s["metric"].as_str().unwrap(), s["method"].as_str().unwrap(), s["bits_per_spike"]);
    }
}

#[test]
fn a_locust_odour_recording_is_predicted_as_well_as_by_each_units_own_history_and_far_better_than_a_psth() {
    let dir = tempfile::tempdir().unwrap();
    let (r, stdout) = fit("locust-c3h3.xdf", "locust.toml", dir.path());
    print_table("locust antennal lobe, C3H odour", &r);
    assert_eq!(r["dims"]["control"], 1);
    assert_eq!(r["dims"]["n_units"], 10);
    // Every baseline was scored on the same bins, and the report says how each was set up.
    let pred = score(&r, "predictive_bps", "model").unwrap();
    let history = score(&r, "predictive_bps", "causal history GLM").unwrap();
    let psth = score(&r, "predictive_bps", "input-locked PSTH").unwrap();
    let co = score(&r, "co_bps", "model").unwrap();
    let smoothing = score(&r, "co_bps", "smoothing + GLM").unwrap();
    assert!(psth > 0.0 && history > psth, "the baselines themselves: PSTH {psth}, history {history}");
    // The model's one-step-ahead prediction: well above the odour-locked PSTH, and level
    // with each unit's own history (which it contains).
    assert!(pred > 3.0 * psth, "model {pred} vs input-locked PSTH {psth}");
    assert!(pred > 0.95 * history, "model {pred} vs causal history GLM {history}");
    // Co-smoothing from 7 units to 3 is weak for every method here; the model's is scored
    // and explains more than the null model.
    assert!(co > 0.0 && smoothing > 0.0, "co-bps: model {co}, smoothing {smoothing}");
    // The ratios and the chart come with the report.
    let versus = r["comparison"]["versus"].as_array().unwrap();
    assert_eq!(versus.len(), 3, "{versus:?}");
    assert!(stdout.contains("input-locked PSTH") && stdout.contains("(model ×"), "{stdout}");
    let svg = std::fs::read_to_string(r["comparison_plot"].as_str().unwrap()).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("co-smoothing") && svg.contains("causal history GLM"));
    // The model carries the per-unit history term, saved with the model.
    let model = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    assert!(String::from_utf8_lossy(&model[..4096.min(model.len())]).contains("history.weight"));
}

#[test]
fn a_retina_without_stimulation_fits_a_model_without_inputs_that_beats_the_history_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let (r, stdout) = fit("retina-p5-waves.xdf", "retina.toml", dir.path());
    print_table("mouse retina P5, spontaneous waves", &r);
    assert_eq!(r["dims"]["control"], 0, "no Control stream: no input path");
    assert!(r["notices"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("m = 0")), "{}", r["notices"]);
    let pred = score(&r, "predictive_bps", "model").unwrap();
    let history = score(&r, "predictive_bps", "causal history GLM").unwrap();
    assert!(pred > 1.2 * history, "model {pred} vs causal history GLM {history}");
    let co = score(&r, "co_bps", "model").unwrap();
    let smoothing = score(&r, "co_bps", "smoothing + GLM").unwrap();
    assert!(co > 0.85 * smoothing, "co-bps: model {co} vs smoothing + GLM {smoothing}");
    // No input: the input-locked baseline says why it has no score (never NaN).
    let locked = r["comparison"]["scores"].as_array().unwrap().iter().find(|s| s["method"] == "input-locked PSTH").unwrap().clone();
    assert!(locked["bits_per_spike"].is_null() && locked["detail"].as_str().unwrap().contains("no input"), "{locked}");
    // Near-silent units are named, not hidden.
    assert!(!r["comparison"]["near_silent_units"].as_array().unwrap().is_empty());
    assert!(stdout.contains("near-silent units"), "{stdout}");
    assert!(!serde_json::to_string(&r).unwrap().contains("NaN"));

    // Live, as a monitor: a 65-unit simulated population stands in for the retina; the
    // model filters every bin, and there is no Control stream to emit (m = 0).
    let model = dir.path().join("model.safetensors");
    let text = std::fs::read_to_string(repo().join("rigs/sim-utah96.toml")).unwrap();
    let text = rename_utah96_streams(&text, &unique("monitor"))
        .replace("kind = \"mppi\"", "kind = \"monitor\"")
        .replace("control_labels = [\"stim_a\", \"stim_b\", \"stim_c\", \"stim_d\"]", "")
        .replace("[model]\n", &format!("[model]\npath = {:?}\n", model.to_str().unwrap()))
        .replace("bin_ms = 10.0", "bin_ms = 50.0")
        .replace("deadline_ms = 5.0", "deadline_ms = 10.0")
        .replace("channels = 96", "channels = 65")
        .replace("n_units = 96", "n_units = 65");
    let rig = dir.path().join("monitor.toml");
    std::fs::write(&rig, &text).unwrap();
    let check = run(&["check", "--rig", rig.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && said.contains("m=0") && said.contains("it monitors"), "{said}");
    let (_, live) = run_bins(&rig, 100, &dir.path().join("monitor.json"), &[]);
    assert_eq!(live["bins"], 100, "{live}");
    assert_eq!(live["controller_faults"], 0, "{live}");
    assert_eq!(live["deadline_misses"], 0, "{live}");
    // The same model with a controller is refused, and the message says what to use.
    std::fs::write(&rig, text.replace("kind = \"monitor\"", "kind = \"lqr\"")).unwrap();
    let out = run(&["check", "--rig", rig.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("kind = \"monitor\""), "{err}");
}

/// A monitor of a model with inputs emits the rig's fallback command, every bin, and takes
/// no objective.
#[test]
fn a_monitor_emits_the_fallback_command_every_bin() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("rigs/sim-utah96.toml")).unwrap();
    let text = rename_utah96_streams(&text, &unique("monitor4")).replace("kind = \"mppi\"", "kind = \"monitor\"");
    let rig = dir.path().join("monitor.toml");
    std::fs::write(&rig, &text).unwrap();
    let check = run(&["check", "--rig", rig.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&check.stdout).contains("emits the rig's fallback command"));
    let rec = dir.path().join("monitor.xdf");
    let (_, r) = run_bins(&rig, 200, &dir.path().join("r.json"), &["--record", rec.to_str().unwrap()]);
    assert_eq!(r["controller_faults"], 0, "{r}");
    assert!(r["latent_r2"].as_f64().unwrap() > 0.3, "the monitor filters: {}", r["latent_r2"]);
    let file = xdf::XDFFile::from_bytes(&std::fs::read(&rec).unwrap()).unwrap();
    let control = file.streams.iter().find(|s| s.r#type.as_deref() == Some("Control")).unwrap();
    assert!(control.samples.len() >= 200);
    for smp in &control.samples {
        match &smp.values {
            xdf::Values::Float32(v) => assert!(v.iter().all(|x| *x == 0.0), "{v:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn model_selection_fits_each_latent_dimension_and_keeps_one_by_held_out_co_smoothing() {
    let dir = tempfile::tempdir().unwrap();
    let (r, stdout) = fit_with("locust-c3h3.xdf", "locust.toml", dir.path(), &["--latent", "1,2", "--iterations", "3"]);
    let sel = &r["selection"];
    let cands = sel["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 2, "{sel}");
    assert_eq!(cands[0]["latent"], 1);
    assert_eq!(cands[1]["latent"], 2);
    for c in cands {
        assert!(c["co_bits_per_spike"].is_number() && c["co_bits_per_spike_se"].is_number() && c["failed"].is_null(), "{c}");
    }
    let chosen = sel["chosen"].as_u64().unwrap() as usize;
    assert_eq!(r["dims"]["latent"], cands[chosen]["latent"], "the model written is the chosen one");
    assert!(sel["rule"].as_str().unwrap().contains("co-smoothing"), "{sel}");
    assert!(stdout.contains("model selection") && stdout.contains("<- chosen"), "{stdout}");

    // Nonsense lists are refused, naming the option and the value.
    for (bad, want) in [("2,abc", "'abc'"), ("4,4", "listed twice"), ("0,2", "1..=64"), ("2,", "''")] {
        let out = run(&[
            "fit",
            data("locust-c3h3.xdf").to_str().unwrap(),
            "--rig",
            data("locust.toml").to_str().unwrap(),
            "--out",
            "/tmp/never.safetensors",
            "--latent",
            bad,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("--latent") && err.contains(want), "--latent {bad}: {err}");
    }
}
