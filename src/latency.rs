//! Per-stage latency accounting with hdrhistogram: whole-run histograms for the report,
//! interval histograms for an HdrHistogram interval log (`.hlog`), and a per-bin series
//! for the plots of `neuroloop bench`. Owned by the telemetry thread; nothing here runs on
//! the hot path.

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The measured stages of one bin, in data-flow order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Spike timestamp (local clock) → handed to the loop's ring by the ingest thread.
    IngestLag,
    /// Bin close → the loop thread started on the bin: its wake-up lateness.
    LoopWake,
    /// Bin close → model and controller done (the wake-up included).
    Compute,
    /// Model done → Control sample pushed.
    DoneToPush,
    /// Bin close → Control sample pushed.
    CloseToPush,
    /// Bin end (the Control sample's timestamp) → sample received by the rig's inlet.
    EndToEnd,
}

pub const STAGES: [Stage; 6] = [Stage::IngestLag, Stage::LoopWake, Stage::Compute, Stage::DoneToPush, Stage::CloseToPush, Stage::EndToEnd];

impl Stage {
    /// The tag in the interval log and the key stem in reports.
    pub fn tag(self) -> &'static str {
        match self {
            Stage::IngestLag => "ingest_lag",
            Stage::LoopWake => "loop_wake",
            Stage::Compute => "compute",
            Stage::DoneToPush => "done_to_push",
            Stage::CloseToPush => "close_to_push",
            Stage::EndToEnd => "end_to_end",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Stage::IngestLag => "ingest lag (spike stamp → loop's ring)",
            Stage::LoopWake => "bin close → loop thread awake",
            Stage::Compute => "bin close → model done",
            Stage::DoneToPush => "model done → pushed",
            Stage::CloseToPush => "bin close → pushed",
            Stage::EndToEnd => "end to end (bin end → rig received)",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Percentiles of one histogram (µs).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5) as f64,
            p90: h.value_at_quantile(0.9) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            p999: h.value_at_quantile(0.999) as f64,
            max: h.max() as f64,
            mean: h.mean(),
        }
    }
}

/// 1 µs .. 100 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("histogram bounds")
}

/// A histogram's values (µs) at quantiles 1 − 10^(−x), x = 0, 0.05, … up to the resolution
/// of its count (the HdrHistogram percentile plot). Empty when nothing was recorded.
pub fn quantile_curve_of(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let top = (h.len() as f64).log10().clamp(1.0, 6.0);
    (0..=(top / 0.05).round() as usize)
        .map(|i| {
            let q = 1.0 - 10f64.powf(-(i as f64) * 0.05);
            (q, h.value_at_quantile(q) as f64)
        })
        .collect()
}

/// One bin's latencies for the over-time plot (µs; NaN = not measured).
#[derive(Debug, Clone, Copy)]
pub struct BinLatency {
    pub loop_wake_us: f32,
    pub compute_us: f32,
    pub close_to_push_us: f32,
    pub end_to_end_us: f32,
}

const NO_BIN: BinLatency = BinLatency { loop_wake_us: f32::NAN, compute_us: f32::NAN, close_to_push_us: f32::NAN, end_to_end_us: f32::NAN };

/// An HdrHistogram interval log being written: one histogram per stage per interval.
struct IntervalLog {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    serializer: V2DeflateSerializer,
    /// Local-clock time the log's BaseTime corresponds to.
    base: f64,
    interval_s: f64,
    interval_start: f64,
    histograms: Vec<Histogram<u64>>,
    error: Option<String>,
}

impl IntervalLog {
    fn create(path: &Path, interval_s: f64, now: f64, comment: &str) -> std::io::Result<IntervalLog> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        // The Java tools' header: format version, start/base time, then the legend line.
        let wall = SystemTime::now();
        let mut builder = IntervalLogWriterBuilder::new();
        builder
            .add_comment("[Histogram log format version 1.3]")
            .add_comment(&format!("[{comment}]"))
            .add_comment("[values and Interval_Max are in microseconds]")
            .with_start_time(wall)
            .with_base_time(wall);
        let mut serializer = V2DeflateSerializer::new();
        builder.begin_log_with(&mut file, &mut serializer)?;
        writeln!(file, "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"")?;
        Ok(IntervalLog {
            path: path.to_path_buf(),
            file,
            serializer,
            base: now,
            interval_s,
            interval_start: now,
            histograms: STAGES.iter().map(|_| histogram()).collect(),
            error: None,
        })
    }

    /// Writes the current interval's histograms (the non-empty ones) and starts the next.
    fn flush_interval(&mut self, now: f64) {
        let start = Duration::from_secs_f64((self.interval_start - self.base).max(0.0));
        let length = Duration::from_secs_f64((now - self.interval_start).max(0.0));
        for stage in STAGES {
            let h = &mut self.histograms[stage.index()];
            if h.is_empty() {
                continue;
            }
            if self.error.is_none() {
                // A writer without headers: one interval line per call.
                let written = IntervalLogWriterBuilder::new()
                    .begin_log_with(&mut self.file, &mut self.serializer)
                    .map_err(|e| e.to_string())
                    .and_then(|mut w| w.write_histogram(h, start, length, Tag::new(stage.tag())).map_err(|e| format!("{e:?}")));
                if let Err(e) = written {
                    self.error = Some(format!("cannot write the interval log {}: {e}", self.path.display()));
                }
            }
            h.reset();
        }
        self.interval_start = now;
    }
}

/// Everything measured about the stages of a run.
pub struct StageLatencies {
    total: Vec<Histogram<u64>>,
    log: Option<IntervalLog>,
    /// Per-bin latencies from bin `first_bin` on (for plots), when kept.
    series: Option<Vec<BinLatency>>,
    first_bin: u64,
}

impl StageLatencies {
    /// `first_bin`: bins before it (warm-up) are not recorded at all.
    pub fn new(first_bin: u64, keep_series: bool) -> StageLatencies {
        StageLatencies { total: STAGES.iter().map(|_| histogram()).collect(), log: None, series: keep_series.then(Vec::new), first_bin }
    }

    /// Also write an interval log to `path`, one interval every `interval_s` of `now`.
    pub fn log_intervals_to(&mut self, path: &Path, interval_s: f64, now: f64, comment: &str) -> std::io::Result<()> {
        self.log = Some(IntervalLog::create(path, interval_s, now, comment)?);
        Ok(())
    }

    /// Whether bin `bin` is past the warm-up.
    #[inline]
    pub fn counts(&self, bin: u64) -> bool {
        bin >= self.first_bin
    }

    /// Records one latency (s) of `stage` for bin `bin` (ignored during warm-up).
    pub fn record(&mut self, stage: Stage, bin: u64, seconds: f64) {
        if !self.counts(bin) || !seconds.is_finite() {
            return;
        }
        let us = (seconds * 1e6).round().clamp(1.0, 100_000_000.0) as u64;
        let _ = self.total[stage.index()].record(us);
        if let Some(log) = &mut self.log {
            let _ = log.histograms[stage.index()].record(us);
        }
        if let Some(series) = &mut self.series {
            let i = (bin - self.first_bin) as usize;
            if series.len() <= i {
                series.resize(i + 1, NO_BIN);
            }
            let v = (seconds * 1e6) as f32;
            match stage {
                Stage::LoopWake => series[i].loop_wake_us = v,
                Stage::Compute => series[i].compute_us = v,
                Stage::CloseToPush => series[i].close_to_push_us = v,
                Stage::EndToEnd => series[i].end_to_end_us = v,
                Stage::IngestLag | Stage::DoneToPush => {}
            }
        }
    }

    /// Closes the interval if it is due (call regularly with the local clock).
    pub fn tick(&mut self, now: f64) {
        if let Some(log) = &mut self.log {
            if now - log.interval_start >= log.interval_s {
                log.flush_interval(now);
            }
        }
    }

    /// Writes the last interval and flushes the log; returns the first write error, if any.
    pub fn finish(&mut self, now: f64) -> Result<(), String> {
        let Some(log) = &mut self.log else { return Ok(()) };
        log.flush_interval(now);
        if let Err(e) = log.file.flush() {
            log.error.get_or_insert(format!("cannot write the interval log {}: {e}", log.path.display()));
        }
        log.error.clone().map_or(Ok(()), Err)
    }

    pub fn histogram(&self, stage: Stage) -> &Histogram<u64> {
        &self.total[stage.index()]
    }

    pub fn percentiles(&self, stage: Stage) -> Option<Percentiles> {
        let h = self.histogram(stage);
        (!h.is_empty()).then(|| Percentiles::of(h))
    }

    /// Quantile of a stage in µs (0 when nothing was recorded), for the status line.
    pub fn quantile_us(&self, stage: Stage, q: f64) -> f64 {
        let h = self.histogram(stage);
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64
        }
    }

    /// The stage's latency (µs) at quantiles 1 − 10^(−x), x = 0, 0.05, … up to the
    /// resolution of its count (the HdrHistogram percentile plot). Empty when nothing was
    /// recorded.
    pub fn quantile_curve(&self, stage: Stage) -> Vec<(f64, f64)> {
        quantile_curve_of(self.histogram(stage))
    }

    /// Per-bin series from the first bin after warm-up (empty unless kept).
    pub fn take_series(&mut self) -> Vec<BinLatency> {
        self.series.take().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn warm_up_is_excluded_and_the_interval_log_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.hlog");
        let mut lat = StageLatencies::new(10, true);
        lat.log_intervals_to(&path, 1.0, 100.0, "test").unwrap();
        for bin in 0..40u64 {
            lat.record(Stage::Compute, bin, 1e-3 * (bin + 1) as f64);
            lat.record(Stage::EndToEnd, bin, 2e-3);
            lat.tick(100.0 + bin as f64 * 0.1);
        }
        lat.finish(104.0).unwrap();
        let c = lat.percentiles(Stage::Compute).unwrap();
        assert_eq!(c.count, 30, "bins 0..10 are warm-up");
        assert!((c.max - 40_000.0).abs() <= 40.0 && c.p50 >= 11_000.0);
        assert!(lat.percentiles(Stage::IngestLag).is_none());
        let series = lat.take_series();
        assert_eq!(series.len(), 30);
        assert!((series[0].compute_us - 11_000.0).abs() < 1.0 && (series[29].end_to_end_us - 2_000.0).abs() < 1.0);

        let text = std::fs::read(&path).unwrap();
        let mut per_tag = std::collections::BTreeMap::<String, u64>::new();
        let mut intervals = 0;
        let mut de = Deserializer::new();
        for entry in IntervalLogIterator::new(&text) {
            if let LogEntry::Interval(h) = entry.unwrap() {
                intervals += 1;
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD.decode(h.encoded_histogram()).unwrap();
                let hist: Histogram<u64> = de.deserialize(&mut &bytes[..]).unwrap();
                *per_tag.entry(h.tag().unwrap().as_str().to_string()).or_default() += hist.len();
            }
        }
        assert!(intervals >= 6, "about one interval per second for each stage, got {intervals}");
        assert_eq!(per_tag["compute"], 30);
        assert_eq!(per_tag["end_to_end"], 30);
    }
}
