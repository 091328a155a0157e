//! `neuroloop bench` through the real CLI, short: the report, the table, the interval log
//! and the plots are produced and agree with each other. Never asserts a timing.

mod common;
use common::*;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;

const STAGES: [&str; 6] = ["ingest_lag", "loop_wake", "compute", "done_to_push", "close_to_push", "end_to_end"];

fn assert_ordered(name: &str, p: &serde_json::Value) {
    let v = |k: &str| p[k].as_f64().unwrap_or_else(|| panic!("{name}.{k} missing in {p}"));
    assert!(v("count") > 0.0, "{name}: nothing recorded");
    assert!(
        v("p50") <= v("p90") && v("p90") <= v("p99") && v("p99") <= v("p999") && v("p999") <= v("max"),
        "{name}: percentiles out of order: {p}"
    );
    assert!(v("mean") <= v("max") && v("p50") >= 1.0, "{name}: {p}");
}

/// Counts per tag in an HdrHistogram interval log, read with hdrhistogram's own parser.
fn interval_counts(path: &std::path::Path) -> (BTreeMap<String, u64>, usize) {
    use base64::Engine;
    let text = std::fs::read(path).unwrap();
    let mut de = Deserializer::new();
    let mut counts = BTreeMap::new();
    let (mut intervals, mut last_start) = (0, 0.0);
    for entry in IntervalLogIterator::new(&text) {
        match entry.unwrap_or_else(|e| panic!("{} does not parse: {e:?}", path.display())) {
            LogEntry::Interval(h) => {
                intervals += 1;
                let start = h.start_timestamp().as_secs_f64();
                assert!(start + 1e-3 >= last_start, "intervals out of order");
                last_start = last_start.max(start);
                let bytes = base64::engine::general_purpose::STANDARD.decode(h.encoded_histogram()).unwrap();
                let hist: Histogram<u64> = de.deserialize(&mut &bytes[..]).unwrap();
                assert_eq!(h.max(), hist.max() as f64, "Interval_Max is the histogram's max (µs)");
                *counts.entry(h.tag().expect("every interval is tagged").as_str().to_string()).or_default() += hist.len();
            }
            LogEntry::StartTime(_) | LogEntry::BaseTime(_) => {}
        }
    }
    (counts, intervals)
}

#[test]
fn bench_writes_a_consistent_report_log_table_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("bench");
    let rig_path = write(dir.path(), "rig.toml", &rig.events_toml("lqr"));
    let out_dir = dir.path().join("out");
    let (bins, warmup) = (300u64, 60u64);
    let out = run(&[
        "bench",
        "--rig",
        rig_path.to_str().unwrap(),
        "--bins",
        &bins.to_string(),
        "--warmup",
        &warmup.to_string(),
        "--out",
        out_dir.to_str().unwrap(),
        "--quiet",
        "--baselines",
        "floor,echo,python",
        "--python",
        python().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);

    // The report: every bin got its sample; the histograms hold exactly the measured bins.
    let r = report(&out_dir.join("report.json"));
    eprintln!("{r:#}");
    let total = bins + warmup;
    assert_eq!(r["bins"], total);
    assert_eq!(r["control_samples"], total);
    assert_eq!(r["bins_computed"], total);
    assert_eq!(r["warmup_bins"], warmup);
    assert_eq!(r["telemetry_dropped"], 0);
    assert_eq!(
        (&r["truth_dropped"], &r["end_to_end_dropped"]),
        (&serde_json::json!(0), &serde_json::json!(0)),
        "the simulated rig's records all reached telemetry"
    );
    let count = |k: &str| r[k]["count"].as_u64().unwrap();
    assert_eq!(count("compute_us"), bins, "one compute time per measured bin");
    assert_eq!(count("loop_wake_us"), bins, "one wake-up per measured bin");
    assert!(r["loop_wake_us"]["p50"].as_f64() <= r["compute_us"]["p50"].as_f64(), "close → done includes the wake-up");
    assert_eq!(count("close_to_push_us"), bins, "one push per measured bin");
    let misses = r["deadline_misses"].as_u64().unwrap();
    assert!(count("done_to_push_us") <= bins && count("done_to_push_us") + misses >= bins, "on-time bins only");
    assert!(count("end_to_end_us") <= bins, "at most one received sample per measured bin");
    assert!(count("ingest_lag_us") <= r["ingest"]["spikes"].as_u64().unwrap(), "at most one lag per spike");
    assert!(r["ingest_lag_early"].as_u64().unwrap() <= count("ingest_lag_us"), "early spikes are among the measured ones");
    assert!(r["fallbacks"].as_u64().unwrap() >= misses);
    for k in ["ingest_lag_us", "loop_wake_us", "compute_us", "done_to_push_us", "close_to_push_us", "end_to_end_us"] {
        assert_ordered(k, &r[k]);
    }

    // Which thread the time went to: the kernel's accounting names the loop thread, which
    // woke at least once per bin and ran.
    let threads = r["threads"]["by_name"].as_array().expect("report.threads");
    let lp = threads.iter().find(|t| t["name"] == "neuroloop-loop").unwrap_or_else(|| panic!("no loop thread in {threads:?}"));
    assert!(lp["wakeups_per_bin"].as_f64().unwrap() >= 0.5, "{lp}");
    let cpu = lp["cpu_percent"].as_f64().unwrap();
    assert!(cpu > 0.0 && cpu <= 100.0, "{lp}");
    assert!(lp["runqueue_wait_us"].as_f64().unwrap() >= 0.0, "{lp}");
    assert!(threads.iter().any(|t| t["name"] == "neuroloop-emit"), "{threads:?}");

    // The interval log has every sample of every stage, read back by hdrhistogram's parser.
    let (per_tag, intervals) = interval_counts(&out_dir.join("latency.hlog"));
    assert!(intervals >= 5, "expected intervals of several stages, got {intervals}");
    for tag in STAGES {
        assert_eq!(per_tag.get(tag).copied().unwrap_or(0), count(&format!("{tag}_us")), "interval log vs report for {tag}");
    }

    // The table (also on stdout) names every stage with the report's counts.
    let table = std::fs::read_to_string(out_dir.join("latency.md")).unwrap();
    assert!(stdout.contains(table.trim()), "the table is printed");
    for (stage, key) in [("bin close → model done", "compute_us"), ("end to end", "end_to_end_us"), ("ingest lag", "ingest_lag_us")] {
        let line = table.lines().find(|l| l.contains(stage)).unwrap_or_else(|| panic!("no row for {stage} in\n{table}"));
        assert!(line.contains(&format!("| {} |", count(key))), "{line}");
    }
    assert!(table.contains(&format!("deadline misses {misses}")));
    assert!(table.contains("| neuroloop-loop | 1 |"), "the threads table names the loop thread:\n{table}");

    // Both plots are SVG and show the stages.
    for f in ["latency-distribution.svg", "latency-over-time.svg"] {
        let svg = std::fs::read_to_string(out_dir.join(f)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{f} is not an SVG document");
        assert!(svg.contains("bin close → model done") && svg.contains("<polyline"), "{f} lacks the compute line");
    }

    // The baselines ran in the same run against the same rig, and their numbers add up.
    let b = report(&out_dir.join("baselines.json"));
    assert_eq!(b["bins"], bins);
    assert_eq!(b["neuroloop"]["control_samples"], r["end_to_end_us"]["count"]);
    let measured_misses = r["measured_deadline_misses"].as_u64().unwrap();
    assert!(measured_misses <= misses && measured_misses <= bins, "misses after the warm-up are among all misses");
    assert_eq!(b["neuroloop"]["past_deadline"], measured_misses);
    let baselines = b["baselines"].as_array().unwrap();
    assert_eq!(baselines.iter().map(|x| x["kind"].as_str().unwrap()).collect::<Vec<_>>(), ["floor", "echo", "python"]);
    assert_eq!(b["neuroloop"]["control_lost"], 0, "the simulated rig received every sample neuroloop pushed");
    for x in baselines {
        let kind = x["kind"].as_str().unwrap();
        let n = |k: &str| x[k].as_u64().unwrap_or_else(|| panic!("{kind}.{k} missing: {x}"));
        assert_eq!(n("bins"), total);
        // Every bin on the grid is processed or skipped (bins before the loop was ready count as skipped).
        assert_eq!(n("bins_processed") + n("bins_skipped"), total, "{kind}: {x}");
        assert!(n("control_samples") <= bins, "{kind}: at most one received sample per measured bin");
        assert!(n("control_samples") > 0, "{kind}: the rig received nothing");
        for k in ["compute_us", "close_to_push_us", "end_to_end_us"] {
            assert_ordered(&format!("{kind}.{k}"), &x[k]);
        }
        assert_eq!(x["end_to_end_us"]["count"].as_u64(), Some(n("control_samples")));
        assert!(x["close_to_push_us"]["count"].as_u64().unwrap() <= bins);
        assert!(n("past_deadline") <= x["close_to_push_us"]["count"].as_u64().unwrap());
        // Each loop's Control stream had a source_id of its own: the rig took every sample.
        assert_eq!(n("control_lost"), 0, "{kind}: the simulated rig lost Control samples: {x}");
    }
    // The model baseline tracks the simulated population's latent state (floor and echo have no model).
    assert!(baselines[0]["latent_r2"].is_null() && baselines[1]["latent_r2"].is_null());
    // Its R² is there (the model's numbers are pinned by tests/baseline_python.rs; how well it
    // tracks live depends on how late this machine runs it, which a test must not judge).
    let r2 = baselines[2]["latent_r2"].as_f64().expect("python baseline R²");
    assert!(r2.is_finite() && r2 <= 1.0, "R² {r2}");
    // Ratios are neuroloop's percentile over the baseline's.
    for (i, ratio) in b["ratios"].as_array().unwrap().iter().enumerate() {
        let want = r["end_to_end_us"]["p99"].as_f64().unwrap() / baselines[i]["end_to_end_us"]["p99"].as_f64().unwrap();
        assert!((ratio["end_to_end_p99"].as_f64().unwrap() - want).abs() < 1e-9 * want.max(1.0), "{ratio} vs {want}");
    }
    let table = std::fs::read_to_string(out_dir.join("latency.md")).unwrap();
    for name in ["native floor", "pylsl echo", "Python + numpy loop", "neuroloop / baseline"] {
        assert!(table.contains(name), "the table has no '{name}':\n{table}");
    }
}

/// Two interleaved rounds against the native floor and the pylsl echo: each round's files in
/// round-NN/ (the second round starts with a baseline, which writes there first), in the
/// reverse order, and the merged numbers the sums of the rounds'.
#[test]
fn bench_rounds_interleave_the_loops_and_merge_what_they_measured() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("rounds");
    let rig_path = write(dir.path(), "rig.toml", &rig.events_toml("lqr"));
    let out_dir = dir.path().join("out");
    let (bins, warmup) = (200u64, 40u64);
    let out = run(&[
        "bench",
        "--rig",
        rig_path.to_str().unwrap(),
        "--bins",
        &bins.to_string(),
        "--warmup",
        &warmup.to_string(),
        "--rounds",
        "2",
        "--out",
        out_dir.to_str().unwrap(),
        "--quiet",
        "--baselines",
        "floor,echo",
        "--python",
        python().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let b = report(&out_dir.join("baselines.json"));
    assert_eq!(b["rounds"], 2);
    let rounds = b["per_round"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    assert_eq!(rounds[0]["order"], serde_json::json!(["neuroloop", "floor", "echo"]));
    assert_eq!(rounds[1]["order"], serde_json::json!(["echo", "floor", "neuroloop"]));
    let mut samples = 0;
    for (i, round) in rounds.iter().enumerate() {
        let r = report(&out_dir.join(format!("round-{:02}/report.json", i + 1)));
        assert_eq!(r["bins"], bins + warmup, "round {}", i + 1);
        assert_eq!(round["neuroloop"]["control_samples"], r["end_to_end_us"]["count"]);
        assert_eq!(round["neuroloop"]["control_lost"], 0);
        assert_eq!(round["baselines"][0]["kind"], "floor");
        assert_eq!(round["baselines"][0]["control_lost"], 0);
        assert_eq!(round["baselines"][1]["kind"], "echo");
        assert!(out_dir.join(format!("round-{:02}/baseline-echo.log", i + 1)).is_file());
        samples += round["neuroloop"]["control_samples"].as_u64().unwrap();
    }
    // Merged: counts summed, the percentiles of the merged histogram.
    assert_eq!(b["neuroloop"]["control_samples"], samples);
    assert_eq!(b["neuroloop"]["end_to_end_us"]["count"], samples);
    let floor = &b["baselines"][0];
    let floor_samples: u64 = rounds.iter().map(|r| r["baselines"][0]["control_samples"].as_u64().unwrap()).sum();
    assert_eq!(floor["control_samples"], floor_samples);
    assert_eq!(floor["bins"], 2 * (bins + warmup));
    for k in ["compute_us", "close_to_push_us", "end_to_end_us"] {
        assert_ordered(&format!("merged neuroloop {k}"), &b["neuroloop"][k]);
        assert_ordered(&format!("merged floor {k}"), &floor[k]);
    }
    // The ratios name the rounds they are over.
    let ratio = &b["ratios"][0];
    assert!(!ratio["rounds"].as_array().unwrap().is_empty(), "{ratio}");
    let table = std::fs::read_to_string(out_dir.join("latency.md")).unwrap();
    assert!(table.contains("round by round") && table.contains("2 interleaved rounds"), "{table}");
    assert!(out_dir.join("latency-distribution.svg").is_file());
}

#[test]
fn sweep_times_every_grid_point_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("sweep");
    let rig_path = write(dir.path(), "rig.toml", &rig.events_toml("mppi"));
    let out_dir = dir.path().join("sweep");
    let backends = if cfg!(feature = "wgpu") { "cpu,wgpu" } else { "cpu" };
    let bins = 12u64;
    let out = run(&[
        "sweep",
        "--rig",
        rig_path.to_str().unwrap(),
        "--backends",
        backends,
        "--bins",
        &bins.to_string(),
        "--warmup",
        "2",
        "--units",
        "16,48",
        "--latent",
        "2,3",
        "--particles",
        "32",
        "--samples",
        "8,24",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = report(&out_dir.join("sweep.json"));
    let rows = s["rows"].as_array().unwrap();
    let n_backends = backends.split(',').count();
    assert_eq!(rows.len(), 7 * n_backends, "one row per grid point and backend");
    for row in rows {
        assert!(row["note"].is_null(), "a point did not run: {row}");
        assert_eq!(row["step_us"]["count"].as_u64(), Some(bins), "{row}");
        assert_ordered("step_us", &row["step_us"]);
        // Each axis changes only its own size.
        let (axis, value) = (row["axis"].as_str().unwrap(), row["value"].as_u64().unwrap());
        let want = |k: &str, base: u64| if axis == k { value } else { base };
        assert_eq!(row["n_units"].as_u64(), Some(want("units", 96)), "{row}");
        assert_eq!(row["latent"].as_u64(), Some(want("latent", 4)), "{row}");
        assert_eq!(row["particles"].as_u64(), Some(if axis == "particles" { value } else { 0 }), "{row}");
        assert_eq!(row["mppi_samples"].as_u64(), Some(want("samples", 256)), "{row}");
    }
    let md = std::fs::read_to_string(out_dir.join("sweep.md")).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(md.trim()), "the table is printed");
    for axis in ["units", "latent", "particles", "samples"] {
        let svg = std::fs::read_to_string(out_dir.join(format!("sweep-{axis}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("cpu p50"), "sweep-{axis}.svg");
    }
    if n_backends > 1 {
        assert!(md.contains("wgpu / cpu (p50)"));
    }
}

#[test]
fn sweep_and_bench_reject_bad_lists_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("sweep-bad");
    let rig_path = write(dir.path(), "rig.toml", &rig.events_toml("lqr"));
    let rig_arg = rig_path.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["sweep", "--rig", rig_arg, "--units", "96,abc"], "--units: 'abc' is not a positive whole number"),
        (&["sweep", "--rig", rig_arg, "--latent", "0"], "--latent: '0' is not a positive whole number"),
        (&["sweep", "--rig", rig_arg, "--backends", "tpu"], "unknown backend 'tpu'"),
        (&["sweep", "--rig", rig_arg, "--axes", "units,speed"], "unknown axis 'speed'"),
        (&["bench", "--rig", rig_arg, "--baselines", "matlab"], "unknown baseline 'matlab'"),
    ];
    for (args, want) in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn bench_rejects_zero_bins_and_a_rig_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("bench-bad");
    let rig_path = write(dir.path(), "rig.toml", &rig.events_toml("lqr"));
    let out = run(&["bench", "--rig", rig_path.to_str().unwrap(), "--bins", "0", "--out", dir.path().join("o").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bins must be at least 1"));
    let out = run(&["bench", "--rig", dir.path().join("missing.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}
