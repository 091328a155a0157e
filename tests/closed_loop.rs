//! The whole loop on the simulated rig, over real LSL on loopback, through the real CLI.

mod common;
use common::*;
use neuroloop::bench::CpuTimes;

/// The R² a live run must reach, given how much of the data reached the filter in time.
///
/// 0.9 when (nearly) every spike made its bin. A spike that misses its bin's close is lost
/// to the filter, and a shared 2-vCPU VM whose host steals CPU time stalls the simulator,
/// the ingest and the loop for tens to hundreds of ms: measured here, 11 % late spikes gave
/// R² 0.93, 30 % gave 0.81, 35–49 % gave 0.68–0.74 (with 15–25 % CPU steal). So the bound
/// falls with the late fraction f, 0.9 − 0.6 f, down to 0.6 at f = 50 %. Beyond half the
/// spikes late the run says nothing about the model and only the loop's invariants are
/// checked. The deterministic R² ≥ 0.9 check without timing noise is tests/offline_loop.rs.
fn required_r2(r: &serde_json::Value, cpu_at_start: CpuTimes) -> Option<f64> {
    let late = r["late_spikes"].as_f64().unwrap();
    let spikes = r["ingest"]["spikes"].as_f64().unwrap().max(1.0);
    let f = late / spikes;
    if f <= 0.05 {
        return Some(0.9);
    }
    let steal = cpu_at_start.steal_percent_since();
    if f > 0.5 {
        eprintln!("note: {:.1} % of spikes were late on this machine (CPU steal {steal:.0} %); the R² check is skipped", 100.0 * f);
        return None;
    }
    let bound = 0.9 - 0.6 * f;
    eprintln!("note: {:.1} % of spikes were late on this machine (CPU steal {steal:.0} %); R² bound relaxed to {bound:.2}", 100.0 * f);
    Some(bound)
}

fn assert_r2(r: &serde_json::Value, cpu_at_start: CpuTimes) {
    let r2 = r["latent_r2"].as_f64().unwrap();
    if let Some(bound) = required_r2(r, cpu_at_start) {
        assert!(r2 >= bound, "latent R² {r2} < {bound}");
    }
}

/// The report's tracking error in closed-loop blocks is clearly below the open-loop blocks'.
fn assert_control_beats_open_loop(r: &serde_json::Value) {
    let t = &r["tracking"];
    let (closed, open) = (t["closed_loop_mse"].as_f64().unwrap(), t["open_loop_mse"].as_f64().unwrap());
    assert!(closed < 0.5 * open, "closed-loop tracking error {closed} is not clearly below open loop {open}");
}

/// Closed loop with the simulator's true model: the filter tracks the latent, the
/// embedding re-identifies after task switches, and control beats open loop.
///
/// 50 ms bins with 30 ms grace: the CI machines are shared 2-vCPU VMs whose sleeps overshoot
/// by 5–25 ms at p99 (and stall for 100+ ms now and then), and a spike that misses its
/// bin's close is lost to the filter. The same loop at 10 ms bins is exercised by the other
/// tests here; the model's quality without timing noise is pinned by tests/offline_loop.rs.
#[test]
fn closed_loop_tracks_reidentifies_and_controls() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("cl");
    let rig_path = write(
        dir.path(),
        "rig.toml",
        &rig.toml_timed(
            (50.0, 30.0, 15.0),
            "mppi",
            "events",
            "events",
            "switch_every_s = 15.0\nopen_loop_block_bins = 100",
            "[model.task_id]\nenabled = true",
        ),
    );
    let cpu = CpuTimes::now();
    let (_, r) = run_bins(&rig_path, 900, &dir.path().join("report.json"), &[]);
    eprintln!("{r:#}");
    assert_eq!(r["bins"], 900);
    assert_eq!(r["bins_computed"], 900);
    assert_eq!(r["control_samples"], 900);
    assert_r2(&r, cpu);
    let reid = r["reidentification"].as_array().unwrap();
    assert!(reid.len() >= 2, "expected task switches, got {reid:?}");
    for s in reid {
        let bins = s["bins_to_reidentify"].as_u64();
        assert!(bins.is_some_and(|b| b < 150), "no re-identification after switch {s}");
    }
    assert_control_beats_open_loop(&r);
}

/// The same closed loop through the CLI with the GPU backend (wgpu: Mesa lavapipe on a
/// machine without a GPU, as in CI): kernels in the loop over real LSL, one control sample
/// per bin, and the model still tracks and controls.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[test]
fn closed_loop_on_the_gpu_backend() {
    let backend = if cfg!(feature = "cuda") { "cuda" } else { "wgpu" };
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("gpu");
    let text = rig
        // 100 ms bins: lavapipe runs the kernels on the same two CPU cores as everything
        // else (≈ 15 ms per bin at p50 here), so the bin is sized for that, not for a GPU.
        .toml_timed((100.0, 40.0, 50.0), "mppi", "events", "events", "switch_every_s = 0.0\nopen_loop_block_bins = 100", "")
        .replace("backend = \"cpu\"", &format!("backend = \"{backend}\""));
    let rig_path = write(dir.path(), "rig.toml", &text);
    let cpu = CpuTimes::now();
    let (_, r) = run_bins(&rig_path, 400, &dir.path().join("report.json"), &[]);
    eprintln!("{r:#}");
    assert_eq!(r["bins"], 400);
    assert_eq!(r["control_samples"], 400);
    assert_r2(&r, cpu);
    assert_control_beats_open_loop(&r);
}

/// With an injected slow model, every bin still gets exactly one Control sample, in
/// order; the late bins get the fallback (hold) and are counted as deadline misses.
#[test]
fn one_sample_per_bin_with_a_slow_model() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("slow");
    // A long lead-in: the test's inlet is connected well before bin 0.
    let rig_path =
        write(dir.path(), "rig.toml", &long_lead_in(&rig.toml("lqr", "events", "events", "", "[fault]\nslow_every = 10\nslow_ms = 12.0")));
    let rx = record::<f32>(&rig.control);
    let status_rx = record::<f64>(&rig.status);
    let (_, r) = run_bins(&rig_path, 300, &dir.path().join("report.json"), &[]);
    let samples = rx.join().unwrap();
    assert_eq!(r["control_samples"], 300);
    assert_eq!(samples.len(), 300, "the inlet must see one sample per bin");
    for w in samples.windows(2) {
        let dt = w[1].0 - w[0].0;
        assert!((dt - 0.010).abs() < 1e-6, "timestamps must be consecutive bin ends, got Δt = {dt}");
    }
    let misses = r["deadline_misses"].as_u64().unwrap();
    assert!(misses >= 30, "every 10th bin is slow: expected ≥ 30 deadline misses, got {misses}");
    assert!(r["fallbacks"].as_u64().unwrap() >= misses);
    // Bins 9, 19, … were late: their sample is the held previous one.
    for k in (9..300).step_by(10) {
        assert_eq!(samples[k].1, samples[k - 1].1, "bin {k} should hold bin {}'s command", k - 1);
    }
    // The Status stream says so too: [bin, x (4), z (3), loglik, compute_us, flags], flags
    // bit 0 = fallback, bit 1 = deadline miss.
    let status = status_rx.join().unwrap();
    assert_eq!(
        status.len(),
        300,
        "one Status sample per bin; received bins {:?} … {:?}",
        status.first().map(|s| s.1[0]),
        status.last().map(|s| s.1[0])
    );
    for (k, (_, s)) in status.iter().enumerate() {
        assert_eq!(s.len(), 11);
        assert_eq!(s[0], k as f64, "Status samples in bin order");
        if k % 10 == 9 {
            assert_eq!(s[10] as u32 & 0b11, 0b11, "bin {k} is flagged as a fallback and a deadline miss");
            assert!(s[9] >= 12_000.0, "bin {k}'s compute time includes the injected 12 ms");
        }
    }
}

/// `[realtime]` and `[timing] wait` reach the session's threads: a run that asks for
/// SCHED_FIFO, pinning to CPU 0 and locked memory, waiting with clock_nanosleep, says in its
/// report what each thread was granted or refused (refused is a warning, never an error:
/// the run goes on), and every bin still gets its one sample.
#[test]
fn a_realtime_section_is_applied_to_the_threads_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("rt");
    let text = edit(&rig.events_toml("lqr"), "grace_ms = 4\n", "grace_ms = 4\nwait = \"abs-sleep\"\n");
    let text = format!("{text}\n[realtime]\npriority = 10\ncpus = [0]\nlock_memory = true\n");
    let rig_path = write(dir.path(), "rig.toml", &text);
    let bins = 200u64;
    let (out, r) = run_bins(&rig_path, bins, &dir.path().join("report.json"), &[]);
    assert_eq!(r["control_samples"], bins);
    let lines: Vec<&str> = r["realtime"].as_array().expect("report.realtime").iter().map(|l| l.as_str().unwrap()).collect();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(lines.iter().any(|l| l.starts_with("mlockall: ")), "{lines:?}");
    for role in ["loop", "emitter", "ingest"] {
        let fifo: Vec<_> = lines.iter().filter(|l| l.starts_with(&format!("{role}: SCHED_FIFO"))).collect();
        assert_eq!(fifo.len(), 1, "{role}: {lines:?}");
        assert!(fifo[0].contains("granted") || fifo[0].contains("refused"), "{}", fifo[0]);
        // Affinity needs no privilege.
        assert!(lines.iter().any(|l| l.starts_with(&format!("{role}: pinned to CPUs [0]"))), "{role}: {lines:?}");
    }
    for l in &lines {
        assert!(stderr.contains(&format!("[neuroloop] realtime: {l}")), "said on stderr too: {l}");
    }
    assert_eq!(r["rig_control"]["lost"], 0);
}

/// The model at 1 kHz (docs/model.md, "How informative is the population"): a recorded 1 ms
/// session of a 64-unit population, scored by `neuroloop filters` against the simulator's
/// truth. The offline EKF with the true θ is as good as a particle filter that knows the
/// truth (so the EKF is not what limits R² at 1 ms), and the live estimate is as good as
/// the offline EKF: the embedding update's defaults at 1 ms no longer drag z off the task
/// (with the 10 ms defaults the live R² was 0.42 against 0.83 offline). The rig file's
/// explicit keys are still honoured: the 10 ms prior weight, written out, drags z again.
#[test]
fn at_1khz_the_live_estimate_is_as_good_as_the_offline_ekf_and_a_particle_reference() {
    let dir = tempfile::tempdir().unwrap();
    let tag = unique("filters1k");
    let text = std::fs::read_to_string(repo().join("rigs/sim-1khz.toml")).unwrap();
    let text = text
        .replace("neuroloop-control-sim-1khz", &format!("{tag}-control"))
        .replace("neuroloop-status-sim-1khz", &format!("{tag}-status"))
        .replace("\"neuroloop-sim-1khz\"", &format!("\"{tag}-spikes\""));
    let text = edit(&edit(&text, "channels = 256", "channels = 64"), "n_units = 256", "n_units = 64");
    let text = edit(&text, "start_delay_ms = 500.0", "start_delay_ms = 3000.0");
    let scaled = write(dir.path(), "rig.toml", &text);
    let old = write(
        dir.path(),
        "rig-10ms-prior.toml",
        &edit(&text, "[model.task_id]", "[model.embedding]\nprior_weight = 0.01\n\n[model.task_id]"),
    );
    let score = |rig: &std::path::Path, name: &str| {
        let rec = dir.path().join(format!("{name}.xdf"));
        let (_, r) = run_bins(rig, 6000, &dir.path().join(format!("{name}.json")), &["--record", rec.to_str().unwrap()]);
        let scores = dir.path().join(format!("{name}-filters.json"));
        let out = run(&[
            "filters",
            rec.to_str().unwrap(),
            "--rig",
            rig.to_str().unwrap(),
            "--particles",
            "256",
            "--skip",
            "1000",
            "--report",
            scores.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(out.status.success(), "neuroloop filters failed");
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(table.contains("| particles 256 |") && table.contains("| live |"), "{table}");
        let s = report(&scores);
        let f = &s[0]["filters"];
        let r2 = |i: usize| f[i]["all"]["r2"].as_f64().unwrap_or_else(|| panic!("filter {i} has no R²: {}", f[i]));
        assert_eq!(f.as_array().unwrap().len(), 4, "live, EKF at z_init, EKF true, particles: {f}");
        let late = r["late_spikes"].as_f64().unwrap() / r["ingest"]["spikes"].as_f64().unwrap().max(1.0);
        eprintln!(
            "{name}: live {:.3}, EKF at z_init {:.3}, EKF true θ {:.3}, particles {:.3}; late spikes {:.1} %",
            r2(0),
            r2(1),
            r2(2),
            r2(3),
            100.0 * late
        );
        (r2(0), r2(2), r2(3), late)
    };
    let (live, ekf, pf, late) = score(&scaled, "scaled");
    // Bad input: a clear error naming what was wrong.
    let fails = |args: &[&str], want: &str| {
        let out = run(&[&["filters"], args, &["--rig", scaled.to_str().unwrap(), "--quiet"]].concat());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && err.contains(want), "filters {args:?}: want '{want}' in: {err}");
    };
    let rec = dir.path().join("scaled.xdf");
    fails(&[dir.path().join("none.xdf").to_str().unwrap()], "none.xdf");
    fails(&[rec.to_str().unwrap(), "--particles", "0"], "--particles");
    fails(&[rec.to_str().unwrap(), "--skip", "100000"], "--skip");
    assert!(ekf > 0.6, "the EKF with the true model recovers the latent at 1 ms (R² {ekf:.3})");
    assert!((ekf - pf).abs() < 0.05, "EKF {ekf:.3} vs the particle reference {pf:.3}");
    // Late spikes lower the live R² on a loaded machine; say nothing about the model then.
    if late <= 0.05 {
        assert!(live > ekf - 0.08, "live R² {live:.3} against the offline EKF's {ekf:.3}");
        let (live_old, ekf_old, _, late_old) = score(&old, "prior-0.01");
        if late_old <= 0.05 {
            assert!(live_old < ekf_old - 0.1, "the 10 ms prior weight at 1 ms: live {live_old:.3}, offline EKF {ekf_old:.3}");
        }
    }
}
