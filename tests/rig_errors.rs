//! Malformed rig files are errors that name the key and the file.

mod common;
use common::*;
use std::collections::HashMap;
use std::path::Path;

/// The model file `model` written again as `out`: only the tensors `keep_tensor` keeps, and
/// the metadata as `edit_metadata` leaves it.
fn rewrite_model(model: &Path, out: &Path, keep_tensor: impl Fn(&str) -> bool, edit_metadata: impl FnOnce(&mut HashMap<String, String>)) {
    let bytes = std::fs::read(model).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut m = meta.metadata().clone().unwrap();
    edit_metadata(&mut m);
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st.tensors().into_iter().filter(|(n, _)| keep_tensor(n)).collect();
    safetensors::serialize_to_file(kept, &Some(m), out).unwrap();
}

fn check(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "bad-rig.toml", text);
    let out = run(&["check", "--rig", p.to_str().unwrap()]);
    assert!(!out.status.success(), "a bad rig file must be rejected");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn shipped_rigs_check_out() {
    for rig in ["rigs/sim-utah96.toml", "rigs/sim-1khz.toml"] {
        let out = run(&["check", "--rig", repo().join(rig).to_str().unwrap()]);
        assert!(out.status.success(), "{rig}");
    }
}

#[test]
fn unknown_key_names_the_key_and_file() {
    let good = SimRig::new("rigerr").events_toml("lqr");
    let err = check(&edit(&good, "grace_ms = 4\n", "grace_ms = 4\nbin_msec = 3.0\n"));
    assert!(err.contains("bin_msec") && err.contains("bad-rig.toml"), "{err}");
}

#[test]
fn out_of_range_values_name_the_key() {
    let good = SimRig::new("rigerr").events_toml("lqr");
    let err = check(&edit(&good, "deadline_ms = 5\n", "deadline_ms = 15\n"));
    assert!(err.contains("timing.deadline_ms") && err.contains("bad-rig.toml"), "{err}");
    let err = check(&edit(&good, "max_step = 0.25", "max_step = -1.0"));
    assert!(err.contains("safety.max_step"), "{err}");
    let err = check(&edit(&good, "target = [0.3, -0.3, 0.2, -0.1]", "target = [0.3, -0.3]"));
    assert!(err.contains("objective.target") && err.contains("d = 4"), "{err}");
}

#[test]
fn model_file_with_a_missing_tensor_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("modelerr");
    let model = rig.write_model(dir.path());
    // Rewrite the file without `observation.bias`, keeping everything else.
    let broken = dir.path().join("broken.safetensors");
    rewrite_model(&model, &broken, |n| n != "observation.bias", |_| {});
    let p = write(dir.path(), "rig.toml", &rig.controller_toml("events", &broken));
    let out = run(&["check", "--rig", p.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("observation.bias") && err.contains("96") && err.contains("broken.safetensors"), "{err}");
}

/// `cmd` on a rig file under a 2 GB address-space limit: a size from the file that were
/// allocated before it is checked would abort here instead of being refused.
fn limited(cmd: &str, text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "bad-rig.toml", text);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v 2000000; exec \"$0\" {cmd} --rig \"$1\" {}", if cmd == "run" { "--bins 5 --quiet" } else { "" }))
        .arg(bin())
        .arg(&p)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every size and every numeric key a rig file gives is range-checked before anything is
/// allocated or started, with the same message from `check` and from `run`.
#[test]
fn every_out_of_range_key_is_refused_by_check_and_run_alike() {
    let good = SimRig::new("ranges").events_toml("mppi");
    let embedding =
        |kv: &str| edit(&good, "[model]\nbackend = \"cpu\"\n", &format!("[model]\nbackend = \"cpu\"\n[model.embedding]\n{kv}\n"));
    let task_id = |kv: &str| edit(&good, "[model]\nbackend = \"cpu\"\n", &format!("[model]\nbackend = \"cpu\"\n[model.task_id]\n{kv}\n"));
    let controller = |kv: &str| edit(&good, "kind = \"mppi\"\n", &format!("kind = \"mppi\"\n{kv}\n"));
    let cases: Vec<(String, &str)> = vec![
        // Sizes: each would allocate gigabytes if it were believed.
        (edit(&good, "channels = 96", "channels = 1000000000"), "units.channels"),
        (edit(&good, "channels = 96", "map = [[4000000000, 0]]"), "units.map"),
        (edit(&good, "channels = 96", "map = [[0, 4000000]]"), "units.map"),
        (edit(&good, "resolve_timeout_s = 10.0", "resolve_timeout_s = 10.0\nring_capacity = 1000000000000"), "input.ring_capacity"),
        (edit(&good, "n_units = 96", "n_units = 1000000000"), "sim.n_units"),
        (edit(&good, "tasks = 3", "tasks = 100000000"), "sim.tasks"),
        (edit(&good, "tasks = 3", "tasks = 3\nhidden_dim = 100000000"), "sim.hidden_dim"),
        (controller("samples = 1048576\nhorizon = 10000"), "controller.samples × controller.horizon"),
        (task_id("window_bins = 1000000000"), "model.task_id.window_bins"),
        // The online embedding update: NaN or a runaway for the whole run otherwise.
        (embedding("learning_rate = nan"), "model.embedding.learning_rate"),
        (embedding("learning_rate = -0.1"), "model.embedding.learning_rate"),
        (embedding("rms_decay = 2.0"), "model.embedding.rms_decay"),
        (embedding("trust_radius = -1.0"), "model.embedding.trust_radius"),
        (embedding("prior_weight = inf"), "model.embedding.prior_weight"),
        (task_id("margin = nan"), "model.task_id.margin"),
        // Safety: what `run` would have clamped silently.
        (edit(&good, "lower = [-1.0]", "lower = [2.0]"), "safety.lower"),
        (edit(&good, "lower = [-1.0]\nupper = [1.0]", "lower = [-1.0, -1.0, 0.5, -1.0]\nupper = [1.0, 1.0, 0.2, 1.0]"), "safety.lower"),
        (edit(&good, "fallback = \"hold\"", "fallback = \"vector\"\nfallback_vector = [0.0, nan, 0.0, 0.0]"), "safety.fallback_vector"),
        (edit(&good, "fallback = \"hold\"", "fallback = \"vector\"\nfallback_vector = [0.0, 5.0, 0.0, 0.0]"), "safety.fallback_vector"),
        (edit(&good, "fallback = \"hold\"", "fallback = \"vector\"\nfallback_vector = [0.0, 0.0]"), "safety.fallback_vector"),
    ];
    for (text, key) in &cases {
        for cmd in ["check", "run"] {
            let (code, err) = limited(cmd, text);
            assert_eq!(code, Some(2), "{cmd} with bad `{key}`: exit {code:?}: {err}");
            assert!(err.contains(key) && err.contains("bad-rig.toml"), "{cmd}: the error does not name `{key}`: {err}");
            assert!(!err.contains("panicked") && !err.contains("memory allocation"), "{err}");
            // Refused before anything started: no stream was resolved or created.
            assert!(!err.contains("liblsl"), "{cmd} started before refusing `{key}`: {err}");
        }
    }
}

/// A model file's dimensions are bounded before any shape is computed from them, and the
/// error names the metadata key.
#[test]
fn absurd_model_dimensions_name_the_metadata_key() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("modeldims");
    let model = rig.write_model(dir.path());
    for (key, value) in [("latent_dim", "4294967296"), ("n_units", "1000000000000"), ("hidden_dim", "99999999"), ("control_dim", "-1")] {
        let broken = dir.path().join(format!("{key}.safetensors"));
        rewrite_model(
            &model,
            &broken,
            |_| true,
            |m| {
                m.insert(key.into(), value.into());
            },
        );
        let (code, err) = limited("check", &rig.controller_toml("events", &broken));
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(&format!("metadata key `{key}`")) && err.contains(value), "{key}: {err}");
    }
}

/// OS errors are said once, and a file that is not XDF says so in XDF's terms.
#[test]
fn errors_say_each_cause_once_in_plain_terms() {
    let out = run(&["check", "--rig", "/nonexistent/rig.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    assert!(err.contains("/nonexistent/rig.toml"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let rig = write(dir.path(), "rig.toml", &SimRig::new("xdferr").events_toml("lqr"));
    let cases: [(&str, &[u8], &str); 3] = [
        ("not.xdf", b"n\xa6 this is not a recording at all", "does not start with \"XDF:\""),
        ("cut.xdf", b"XDF:\x04\x10\x00\x00\x00\x01\x00<?xml", "needs 16 bytes, 7 are left in the file"),
        ("tag.xdf", b"XDF:\x01\x04\x63\x00ab", "unknown tag 99"),
    ];
    for (name, bytes, want) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        for cmd in [
            &["replay", p.to_str().unwrap(), "--rig", rig.to_str().unwrap()][..],
            &["fit", p.to_str().unwrap(), "--rig", rig.to_str().unwrap(), "--out", dir.path().join("m.safetensors").to_str().unwrap()][..],
        ] {
            let out = run(cmd);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
            assert!(err.contains(name) && err.contains(want), "{cmd:?}: {err}");
            assert!(!err.contains("Nom") && !err.contains("Parse("), "parser internals: {err}");
        }
    }
}

#[test]
fn a_map_by_label_is_checked_before_any_stream() {
    let counts = SimRig::new("rigerr").toml("lqr", "counts", "counts", "", "");
    let labels: Vec<String> = (0..96).map(|k| format!("\"e{k}\"")).collect();
    let by_label = format!("[units]\nlabels = [{}]\n", labels.join(", "));
    let err = check(&edit(&counts, "[units]\nchannels = 96\n", &format!("{by_label}channels = 96\n")));
    assert!(err.contains("units") && err.contains("not several"), "{err}");
    let err = check(&edit(&counts, "[units]\nchannels = 96\n", &by_label.replace("\"e7\"", "\"e3\"")));
    assert!(err.contains("units.labels") && err.contains("'e3' appears twice"), "{err}");
    let err = check(&edit(&counts, "[units]\nchannels = 96\n", &by_label.replace("\"e7\", ", "")));
    assert!(err.contains("95") && err.contains("96"), "the model's N is checked against the labels: {err}");
    let err = check(&edit(&counts, "[units]\nchannels = 96\n", &by_label.replace("\"e7\"", "\"e7 \"")));
    assert!(err.contains("units.labels") && err.contains("trailing spaces"), "{err}");
    let err = check(&edit(&counts, "[units]\nchannels = 96\n", &format!("{by_label}merge_sorted = true\n")));
    assert!(err.contains("units.merge_sorted"), "{err}");
    let events = SimRig::new("rigerr").events_toml("lqr");
    let err = check(&edit(&events, "[units]\nchannels = 96\n", &by_label));
    assert!(err.contains("units.labels") && err.contains("counts stream"), "{err}");
    // A simulated counts rig labels its channels with the rig's labels: it checks out.
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "rig.toml", &edit(&counts, "[units]\nchannels = 96\n", &by_label));
    let out = run(&["check", "--rig", p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `[timing] wait` and `[realtime]` are checked like every other key: an unknown strategy,
/// a priority the kernel reserves, a CPU this machine does not have, a CPU listed twice.
#[test]
fn wait_strategy_and_realtime_sections_are_checked() {
    let good = SimRig::new("rterr").events_toml("lqr");
    let err = check(&edit(&good, "grace_ms = 4\n", "grace_ms = 4\nwait = \"nap\"\n"));
    assert!(err.contains("nap") && err.contains("abs-sleep"), "{err}");
    let with = |section: &str| format!("{good}\n[realtime]\n{section}\n");
    let err = check(&with("priority = 99"));
    assert!(err.contains("[realtime] priority = 99") && err.contains("bad-rig.toml"), "{err}");
    let err = check(&with("cpus = [100000]"));
    assert!(err.contains("[realtime] cpus") && err.contains("100000"), "{err}");
    let err = check(&with("cpus = [0, 0]"));
    assert!(err.contains("listed twice"), "{err}");
    let err = check(&with("priorty = 10"));
    assert!(err.contains("priorty"), "{err}");
    // The good ones pass.
    let ok = |text: &str| {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "rig.toml", text);
        run(&["check", "--rig", p.to_str().unwrap()]).status.success()
    };
    assert!(ok(&with("priority = 80\ncpus = [0]\nlock_memory = true")));
    assert!(ok(&edit(&good, "grace_ms = 4\n", "grace_ms = 4\nwait = \"abs-sleep\"\n")));
}
