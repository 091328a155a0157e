//! Malformed rig files are errors that name the key and the file.

mod common;
use common::*;

/// `text` with `from` replaced by `to` (which must be there: a silent no-op would test nothing).
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the template has no `{from}`");
    text.replace(from, to)
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
    let good = SimRig::new("rigerr").toml("lqr", "events", "events", "", "");
    let err = check(&edit(&good, "grace_ms = 4\n", "grace_ms = 4\nbin_msec = 3.0\n"));
    assert!(err.contains("bin_msec") && err.contains("bad-rig.toml"), "{err}");
}

#[test]
fn out_of_range_values_name_the_key() {
    let good = SimRig::new("rigerr").toml("lqr", "events", "events", "", "");
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
    let bytes = std::fs::read(&model).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| n != "observation.bias").collect();
    let broken = dir.path().join("broken.safetensors");
    safetensors::serialize_to_file(kept, &meta.metadata().clone(), &broken).unwrap();
    let p = write(dir.path(), "rig.toml", &rig.controller_toml("events", &broken));
    let out = run(&["check", "--rig", p.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("observation.bias") && err.contains("96") && err.contains("broken.safetensors"), "{err}");
}
