//! The Python + numpy baseline (bench/baselines/ssm.py, what `neuroloop bench` compares
//! against) computes the same numbers as the CPU backend: both run the same bins — the
//! simulated population in closed loop with the Rust backend, the Python port offline on
//! the recorded counts and emitted commands — and every bin's filtered mean x, embedding z,
//! predictive log-likelihood, proposed command u and task jump are compared.
//!
//! Both sides are f64 with different summation orders (nalgebra vs numpy/BLAS), so x, z and
//! the log-likelihood agree to a few ulps (measured ≤ 1e-15) and LQR's u to ~1e-13. MPPI's
//! exploration noise is the same Philox stream, bit for bit (ssm.py ports glibc's logf /
//! sinf / cosf, which Rust's f32 Box–Muller calls); its u still drifts where the warm-started
//! nominal sequence amplifies rounding differences (see the MPPI tests).
//!
//! ssm.py prints its per-bin step time (`--timing`); `--nocapture` shows it with the
//! measured differences.

mod common;
use common::{python, repo};
use neuroloop::backend::{BinInput, BinOutput};
use neuroloop::rig::Rig;
use neuroloop::safety::Safety;
use neuroloop::session;
use neuroloop::sim::Population;
use std::path::Path;
use std::process::Command;

/// Largest allowed |Python − Rust| per quantity (loglik relative to max(1, |loglik|)).
struct Tolerance {
    x: f64,
    z: f64,
    loglik: f64,
    u: f64,
}

#[derive(Default, Debug)]
struct MaxDiff {
    x: f64,
    z: f64,
    loglik: f64,
    u: f64,
}

fn write_f64(path: &Path, values: &[f64]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn read_f64(path: &Path) -> Vec<f64> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
}

/// Runs `bins` bins of the rig (with `edits` applied to its text) through the Rust CPU
/// backend and through ssm.py; returns the largest differences and the Rust task jumps.
fn compare(rig_file: &str, edits: &[(&str, &str)], bins: u64, tol: &Tolerance) -> (MaxDiff, Vec<(u64, usize)>) {
    let mut text = std::fs::read_to_string(repo().join(rig_file)).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{rig_file} has no `{from}` to edit");
        text = text.replace(from, to);
    }
    // Both sides load the same model file: the simulator's true model, saved by Rust.
    let text = text.replace("[model]\n", "[model]\npath = \"model.safetensors\"\n");
    let dir = tempfile::tempdir().unwrap();
    let rig_path = dir.path().join("rig.toml");
    std::fs::write(&rig_path, &text).unwrap();
    let rig = Rig::load(&rig_path).unwrap();
    let sim = rig.sim.clone().unwrap();
    let bin_s = rig.timing.bin_ms * 1e-3;
    let truth = neuroloop::sim::truth_model(&sim, bin_s);
    truth.save(&dir.path().join("model.safetensors")).unwrap();
    let (params, _) = session::load_model(&rig).unwrap();
    assert_eq!(params, truth);
    let dims = params.dims;
    let (n, d, e, m) = (dims.n_units, dims.latent, dims.embed, dims.control);
    let tasks = truth.task_library.len();
    let mut pop = Population::new(truth, sim.seed);
    let safety = Safety::from_rig(&rig, m).unwrap();
    let mut backend = session::backend(&rig, params).unwrap();
    let mut out = BinOutput::new(&dims);
    let switch = if sim.switch_every_s > 0.0 { (sim.switch_every_s / bin_s).round() as u64 } else { u64::MAX };
    let block = if sim.open_loop_block_bins > 0 { sim.open_loop_block_bins } else { u64::MAX };

    let mut inputs = Vec::with_capacity(bins as usize * (n + m));
    let mut rust: Vec<BinOutput> = Vec::with_capacity(bins as usize);
    let mut emitted = vec![0.0; m];
    let mut next = vec![0.0; m];
    let mut counts = vec![0.0; n];
    for j in 0..bins {
        let task = ((j / switch) as usize) % tasks;
        pop.advance(j, &emitted, task);
        for i in 0..n {
            counts[i] = pop.counts[i] as f64;
        }
        inputs.extend_from_slice(&counts);
        inputs.extend_from_slice(&emitted);
        backend.step(&BinInput { bin: j, counts: &counts, u_prev: &emitted, has_data: true, want_control: true }, &mut out);
        assert!(out.control_valid);
        rust.push(out.clone());
        let enabled = block == u64::MAX || (j / block) % 2 == 1;
        safety.apply(&out.u, &emitted, enabled, &mut next);
        emitted.copy_from_slice(&next);
    }
    let in_path = dir.path().join("inputs.f64");
    let out_path = dir.path().join("python.f64");
    write_f64(&in_path, &inputs);

    let script = repo().join("bench/baselines/ssm.py");
    let result = Command::new(python())
        .arg(&script)
        .args(["--offline", "--timing", "--rig"])
        .arg(&rig_path)
        .arg("--model")
        .arg(dir.path().join("model.safetensors"))
        .arg("--inputs")
        .arg(&in_path)
        .arg("--out")
        .arg(&out_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{} failed ({}):\n{stderr}", script.display(), result.status);
    eprint!("{stderr}");

    let py = read_f64(&out_path);
    let row = d + e + 1 + m + 1;
    assert_eq!(py.len(), bins as usize * row, "ssm.py wrote {} values, expected {bins} rows of {row}", py.len());
    let mut max = MaxDiff::default();
    let mut jumps = Vec::new();
    for (j, (r, p)) in rust.iter().zip(py.chunks_exact(row)).enumerate() {
        let (px, rest) = p.split_at(d);
        let (pz, rest) = rest.split_at(e);
        let (pll, rest) = rest.split_at(1);
        let (pu, pjump) = rest.split_at(m);
        let diff = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let dx = diff(px, &r.x);
        let dz = diff(pz, &r.z);
        let dll = (pll[0] - r.loglik).abs() / r.loglik.abs().max(1.0);
        let du = diff(pu, &r.u);
        let rust_jump = r.task_jump.map_or(-1.0, |t| t as f64);
        assert!(
            dx <= tol.x && dz <= tol.z && dll <= tol.loglik && du <= tol.u && pjump[0] == rust_jump,
            "{rig_file} bin {j}: Python and Rust differ\n  x  py {px:?}\n     rs {:?}\n  z  py {pz:?}\n     rs {:?}\n  \
             loglik py {} rs {}\n  u  py {pu:?}\n     rs {:?}\n  task_jump py {} rs {rust_jump}",
            r.x,
            r.z,
            pll[0],
            r.loglik,
            r.u,
            pjump[0]
        );
        max.x = max.x.max(dx);
        max.z = max.z.max(dz);
        max.loglik = max.loglik.max(dll);
        max.u = max.u.max(du);
        if let Some(t) = r.task_jump {
            jumps.push((j as u64, t));
        }
    }
    eprintln!(
        "{rig_file}: {bins} bins, max |Δx| {:.2e}, max |Δz| {:.2e}, max |Δloglik|/max(1, |loglik|) {:.2e}, max |Δu| {:.2e}, task jumps {jumps:?}",
        max.x, max.z, max.loglik, max.u
    );
    (max, jumps)
}

const UTAH_LATENT: &str = "kind = \"latent\"\ntarget = [0.3, -0.3, 0.2, -0.1]";
const UTAH_RATES: &str = "kind = \"rates\"\ntarget = [12.0]";

/// MPPI towards a latent target, online embedding and task identification, 96 units;
/// the population switches task every 5 s (500 bins) and control is on in alternate
/// 300-bin blocks. MPPI's warm-started nominal sequence amplifies rounding differences for
/// a while in some stretches (the difference in u grows from 1e-16 to ~4e-7 around bins
/// 800–1000 of this run, then shrinks again), hence the looser bound on u.
#[test]
fn python_baseline_matches_cpu_backend_utah96_mppi() {
    let tol = Tolerance { x: 1e-11, z: 1e-11, loglik: 1e-12, u: 1e-5 };
    let (_, jumps) = compare(
        "rigs/sim-utah96.toml",
        &[("switch_every_s = 20.0", "switch_every_s = 5.0"), ("open_loop_block_bins = 1000", "open_loop_block_bins = 300")],
        1500,
        &tol,
    );
    assert!(!jumps.is_empty(), "no task jump in the run: the comparison did not exercise task identification");
}

/// MPPI's rate-space cost: the same rig steering towards 12 Hz on every unit, over a short
/// run. In rate space the cost spread is wide against the temperature (a handful of the 128
/// samples carry the softmin), and the warm-started nominal sequence is chaotic in stretches:
/// the rounding-level difference in u grows ~10× every few bins from bin ~80 of this run
/// (2e-11 by bin 100, 1.6e-8 by 120, 1.5e-5 by 140; with other schedules it reaches the
/// whole actuation range by bin 200). Rust against itself with a one-ulp change would drift
/// the same way. Hence only 100 bins here.
#[test]
fn python_baseline_matches_cpu_backend_utah96_mppi_rates() {
    let tol = Tolerance { x: 1e-11, z: 1e-11, loglik: 1e-12, u: 1e-8 };
    compare("rigs/sim-utah96.toml", &[("open_loop_block_bins = 1000", "open_loop_block_bins = 50"), (UTAH_LATENT, UTAH_RATES)], 100, &tol);
}

/// LQR towards the least-squares latent target of a rate objective (96 units, d = m = 4).
#[test]
fn python_baseline_matches_cpu_backend_utah96_lqr_rates() {
    let tol = Tolerance { x: 1e-11, z: 1e-11, loglik: 1e-12, u: 1e-9 };
    compare(
        "rigs/sim-utah96.toml",
        &[
            ("switch_every_s = 20.0", "switch_every_s = 2.0"),
            ("open_loop_block_bins = 1000", "open_loop_block_bins = 100"),
            ("kind = \"mppi\"", "kind = \"lqr\""),
            (UTAH_LATENT, UTAH_RATES),
        ],
        300,
        &tol,
    );
}

/// LQR, 64 units at 1 ms bins, online embedding (task identification off in this rig); the
/// population switches task every 0.1 s (100 bins) and control is on in alternate 100-bin
/// blocks. At 1 kHz (α = Δ/τ = 0.005) the fixed-point Riccati iteration contracts by only
/// ~0.98 per step, so both sides solve it by doubling (~20 doublings from cold, one warm
/// step once the linearisation settles): the ports must agree on that path too.
#[test]
fn python_baseline_matches_cpu_backend_1khz_lqr() {
    let tol = Tolerance { x: 1e-11, z: 1e-11, loglik: 1e-12, u: 1e-9 };
    compare(
        "rigs/sim-1khz.toml",
        &[("switch_every_s = 0.0", "switch_every_s = 0.1"), ("open_loop_block_bins = 2000", "open_loop_block_bins = 100")],
        300,
        &tol,
    );
}
