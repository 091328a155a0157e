//! `neuroloop bench` through the real CLI, short: the report, the table, the interval log
//! and the plots are produced and agree with each other. Never asserts a timing.

mod common;
use common::*;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;

const STAGES: [&str; 5] = ["ingest_lag", "compute", "done_to_push", "close_to_push", "end_to_end"];

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
    let rig_path = write(dir.path(), "rig.toml", &rig.toml("lqr", "events", "events", "", ""));
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
    let count = |k: &str| r[k]["count"].as_u64().unwrap();
    assert_eq!(count("compute_us"), bins, "one compute time per measured bin");
    assert_eq!(count("close_to_push_us"), bins, "one push per measured bin");
    let misses = r["deadline_misses"].as_u64().unwrap();
    assert!(count("done_to_push_us") <= bins && count("done_to_push_us") + misses >= bins, "on-time bins only");
    assert!(count("end_to_end_us") <= bins, "at most one received sample per measured bin");
    assert!(count("ingest_lag_us") <= r["ingest"]["spikes"].as_u64().unwrap(), "at most one lag per spike");
    assert!(r["ingest_lag_early"].as_u64().unwrap() <= count("ingest_lag_us"), "early spikes are among the measured ones");
    assert!(r["fallbacks"].as_u64().unwrap() >= misses);
    for k in ["ingest_lag_us", "compute_us", "done_to_push_us", "close_to_push_us", "end_to_end_us"] {
        assert_ordered(k, &r[k]);
    }

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

    // Both plots are SVG and show the stages.
    for f in ["latency-distribution.svg", "latency-over-time.svg"] {
        let svg = std::fs::read_to_string(out_dir.join(f)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{f} is not an SVG document");
        assert!(svg.contains("bin close → model done") && svg.contains("<polyline"), "{f} lacks the compute line");
    }
}

#[test]
fn bench_rejects_zero_bins_and_a_rig_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("bench-bad");
    let rig_path = write(dir.path(), "rig.toml", &rig.toml("lqr", "events", "events", "", ""));
    let out = run(&["bench", "--rig", rig_path.to_str().unwrap(), "--bins", "0", "--out", dir.path().join("o").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bins must be at least 1"));
    let out = run(&["bench", "--rig", dir.path().join("missing.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}
