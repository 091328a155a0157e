//! The model file: round trips, PyTorch-named files, and every refusal.
use super::*;

fn dims() -> Dims {
    Dims { n_units: 12, latent: 3, embed: 2, control: 2, hidden: 5 }
}

fn write(path: &Path, tensors: &[NamedTensor], meta: HashMap<String, String>, dtype: Dtype) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            let b = match dtype {
                Dtype::F32 => d.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect(),
                _ => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            (n.clone(), s.clone(), b)
        })
        .collect();
    let views: Vec<(String, TensorView)> =
        bytes.iter().map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, &Some(meta), path).unwrap();
}

fn load_err(p: &ModelParams, edit: impl FnOnce(&mut Vec<NamedTensor>, &mut HashMap<String, String>)) -> (String, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edited.safetensors");
    let mut t = p.named_tensors();
    let mut m = p.metadata();
    edit(&mut t, &mut m);
    write(&path, &t, m, Dtype::F64);
    let err = ModelParams::load(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    (err, path)
}

#[test]
fn round_trip_with_policy_and_library() {
    let p = ModelParams::synthetic(dims(), 3, 0.01, 4);
    assert!(p.policy.is_some());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    p.save(&path).unwrap();
    assert_eq!(ModelParams::load(&path).unwrap(), p);
}

#[test]
fn the_same_model_gives_the_same_bytes() {
    let p = ModelParams::synthetic(dims(), 3, 0.01, 4);
    let dir = tempfile::tempdir().unwrap();
    let extra: Vec<(String, String)> = (0..20).map(|i| (format!("fit.key{i}"), format!("v{i}"))).collect();
    let mut files = Vec::new();
    for i in 0..3 {
        let path = dir.path().join(format!("m{i}.safetensors"));
        p.save_with_metadata(&path, &extra).unwrap();
        files.push(std::fs::read(&path).unwrap());
    }
    assert!(files.windows(2).all(|w| w[0] == w[1]), "the same model wrote different bytes");
    let q = ModelParams::load(&dir.path().join("m0.safetensors")).unwrap();
    assert_eq!(q, p);
}

#[test]
fn round_trip_without_policy_or_library() {
    let mut p = ModelParams::synthetic(dims(), 0, 0.02, 5);
    p.policy = None;
    p.process_noise[1] = 3e-3;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    p.save(&path).unwrap();
    let q = ModelParams::load(&path).unwrap();
    assert_eq!(q, p);
    assert!(q.task_library.is_empty() && q.policy.is_none());
}

#[test]
fn missing_tensor_names_it_and_its_shape() {
    let p = ModelParams::synthetic(dims(), 2, 0.01, 1);
    let (err, _) = load_err(&p, |t, _| t.retain(|(n, _, _)| n != "decoder.w_xu_generator.2.weight"));
    assert!(err.contains("decoder.w_xu_generator.2.weight") && err.contains("[6, 5]"), "{err}");
}

#[test]
fn wrong_shape_names_expected_and_found() {
    let p = ModelParams::synthetic(dims(), 2, 0.01, 1);
    let (err, _) = load_err(&p, |t, _| {
        let obs = t.iter_mut().find(|(n, _, _)| n == "observation.weight").unwrap();
        obs.1 = vec![3, 12];
    });
    assert!(err.contains("observation.weight") && err.contains("[12, 3]") && err.contains("[3, 12]"), "{err}");
}

#[test]
fn other_errors_name_the_culprit() {
    let p = ModelParams::synthetic(dims(), 2, 0.01, 1);
    let (err, _) = load_err(&p, |t, _| {
        let obs = t.iter_mut().find(|(n, _, _)| n == "observation.bias").unwrap();
        obs.0 = "observation.bais".into();
    });
    assert!(err.contains("unknown tensors") && err.contains("observation.bais"), "{err}");
    let (err, _) = load_err(&p, |_, m| {
        m.remove("alpha");
    });
    assert!(err.contains("missing metadata key `alpha`"), "{err}");
    let (err, _) = load_err(&p, |_, m| {
        m.insert("latent_dim".into(), "three".into());
    });
    assert!(err.contains("latent_dim") && err.contains("three"), "{err}");
    let (err, _) = load_err(&p, |t, _| {
        let b = t.iter_mut().find(|(n, _, _)| n == "decoder.b_generator.2.bias").unwrap();
        b.2[1] = f64::NAN;
    });
    assert!(err.contains("decoder.b_generator.2.bias") && err.contains("non-finite"), "{err}");
    let (err, _) = load_err(&p, |t, _| t.retain(|(n, _, _)| n != "controller.2.bias"));
    assert!(err.contains("controller.2.bias") && err.contains("all of"), "{err}");
    let (err, _) = load_err(&p, |_, m| {
        m.insert("alpha".into(), "1.5".into());
    });
    assert!(err.contains("alpha"), "{err}");
    let (err, _) = load_err(&p, |_, m| {
        m.insert("format".into(), "something-else".into());
    });
    assert!(err.contains("format"), "{err}");
    let missing = Path::new("/nonexistent/dir/model.safetensors");
    let err = ModelParams::load(missing).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/dir/model.safetensors"), "{err}");
}

/// A file as PyTorch would write it: F32, only the required metadata, no optional
/// tensors except the controller.
#[test]
fn loads_a_float32_file_from_another_writer() {
    let p = ModelParams::synthetic(dims(), 2, 0.01, 9);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("torch.safetensors");
    let tensors: Vec<NamedTensor> = p
        .named_tensors()
        .into_iter()
        .filter(|(n, _, _)| n != "embedding.initial" && n != "embedding.library" && n != "dynamics.process_noise")
        .collect();
    let mut meta = HashMap::new();
    for (k, v) in [("n_units", "12"), ("latent_dim", "3"), ("embed_dim", "2"), ("control_dim", "2"), ("hidden_dim", "5")] {
        meta.insert(k.to_string(), v.to_string());
    }
    meta.insert("bin_s".into(), "0.01".into());
    meta.insert("alpha".into(), "0.1".into());
    meta.insert("process_noise".into(), "0.002".into());
    write(&path, &tensors, meta, Dtype::F32);
    let q = ModelParams::load(&path).unwrap();
    assert_eq!(q.dims, p.dims);
    assert_eq!(q.z_init, DVector::zeros(2));
    assert!(q.task_library.is_empty());
    assert_eq!(q.process_noise, DVector::from_element(3, 0.002));
    assert_eq!(q.log_rate_max, DEFAULT_LOG_RATE_MAX);
    let close = |a: &DMatrix<f64>, b: &DMatrix<f64>| (a - b).amax() <= 1e-6 * b.amax().max(1.0);
    assert!(close(&q.hypernet.w_hh.w2, &p.hypernet.w_hh.w2));
    assert!(close(&q.obs_c, &p.obs_c));
    let (qp, pp) = (q.policy.unwrap(), p.policy.unwrap());
    assert!(close(&qp.w1, &pp.w1) && close(&qp.w2, &pp.w2));
    assert_eq!(qp.scale, 1.0);
}

#[test]
fn validate_rejects_inconsistent_params() {
    let mut p = ModelParams::synthetic(dims(), 2, 0.01, 1);
    assert!(p.validate().is_ok());
    p.obs_d = DVector::zeros(11);
    let err = p.validate().unwrap_err().to_string();
    assert!(err.contains("observation.bias") && err.contains(IN_MEMORY), "{err}");
}

/// The per-unit history term round-trips; an old file without it loads with none; a file
/// with the weights but not the time constants, or of the wrong shape, is refused by name.
#[test]
fn history_term_round_trips_and_bad_history_is_named() {
    use crate::model::history::{History, DEFAULT_TAUS_S};
    let mut p = ModelParams::synthetic(dims(), 2, 0.01, 6);
    let n = p.dims.n_units;
    assert!(p.history.is_none());
    p.history = Some(History {
        taus_s: DEFAULT_TAUS_S.to_vec(),
        weight: DMatrix::from_fn(n, DEFAULT_TAUS_S.len(), |i, b| 0.1 * i as f64 - 0.2 * b as f64),
        mean_count: DVector::from_fn(n, |i, _| 0.05 * (i + 1) as f64),
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.safetensors");
    p.save(&path).unwrap();
    assert_eq!(ModelParams::load(&path).unwrap(), p);
    let (err, _) = load_err(&p, |_, m| {
        m.remove("history_taus_s");
    });
    assert!(err.contains("history_taus_s"), "{err}");
    let (err, _) = load_err(&p, |_, m| {
        m.insert("history_taus_s".into(), "[0.0, 0.05]".into());
    });
    assert!(err.contains("history.weight"), "{err}");
    let (err, _) = load_err(&p, |_, m| {
        m.insert("history_taus_s".into(), "[0.0, -1, 0.2, 1.0]".into());
    });
    assert!(err.contains("history_taus_s") || err.contains("τ"), "{err}");
}
