//! The end-of-run report (`--report FILE.json`, also printed at the end of a run): what
//! telemetry counted and measured, the ingest counters, and the recording's summary. The
//! README's "The report" section says what each field means.

use crate::latency::{BinLatency, Percentiles, Stage};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Reidentification {
    pub switch_bin: u64,
    pub task: usize,
    /// Bins from the switch until the estimate's nearest library task is the true task
    /// (and stays so for 10 bins); None if it never did.
    pub bins_to_reidentify: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tracking {
    /// Mean squared error to the objective (latent units², or Hz² per unit for rates).
    pub closed_loop_mse: Option<f64>,
    pub open_loop_mse: Option<f64>,
    pub closed_loop_bins: u64,
    pub open_loop_bins: u64,
    /// closed / open (< 1: control helps).
    pub ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestCounts {
    pub samples: u64,
    pub spikes: u64,
    pub unknown_units: u64,
    pub nonfinite: u64,
    pub invalid: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    /// Samples that arrived more than stall_ms after their own timestamps (not binned).
    pub stale: u64,
    /// Times liblsl's inlet buffer was found full (it then drops samples without a count).
    pub inlet_full: u64,
}

/// The end-of-run summary (`--report FILE.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rig: String,
    pub backend: String,
    pub bin_ms: f64,
    /// Bins in the session: each got exactly one Control sample (see `control_samples`).
    pub bins: u64,
    /// Bins the model ran on (fewer than `bins` only when a run is interrupted while the
    /// loop is behind; those last bins got the fallback).
    pub bins_computed: u64,
    pub control_samples: u64,
    pub fallbacks: u64,
    pub deadline_misses: u64,
    /// Bins with no live input (stream gap): fallback emitted, filter predicted only.
    pub gap_bins: u64,
    /// Stream gaps as [first_bin, last_bin] ranges.
    pub gaps: Vec<[u64; 2]>,
    pub late_results: u64,
    /// Spikes in the bins' counts (as telemetry received the bins; exact when
    /// `telemetry_dropped` is 0).
    pub binned_spikes: f64,
    pub late_spikes: u64,
    pub future_spikes: u64,
    /// Spikes stamped before the session's first bin (while it started, or stamped far in
    /// the past): received, never binned.
    pub pre_session_spikes: u64,
    /// Spikes that arrived after the last bin had closed (the input runs on until the session
    /// has stopped): received, never binned. binned + late + future + pre_session + after_end
    /// = `ingest.spikes` exactly when `telemetry_dropped` is 0.
    pub after_end_spikes: u64,
    pub ring_overflows: u64,
    pub telemetry_dropped: u64,
    /// Bins whose device work failed (GPU backends; each got the fallback).
    pub device_errors: u64,
    /// Bins whose controller had no usable command (a non-finite cost or command): the
    /// fallback went out for each, and the first was said on stderr and the dashboard.
    pub controller_faults: u64,
    /// The control plane's commands: accepted, and rejected (malformed, out of range,
    /// rate-limited or too late).
    pub commands: crate::control_plane::CommandCounts,
    /// The simulator's truth records telemetry could not take (they leave those bins out of
    /// the evaluation).
    pub truth_dropped: u64,
    /// End-to-end latency samples the simulated rig could not hand telemetry (they leave
    /// those bins out of `end_to_end_us`).
    pub end_to_end_dropped: u64,
    pub ingest: IngestCounts,
    /// Bins at the start left out of the latency histograms below.
    pub warmup_bins: u64,
    /// Deadline misses among the bins after the warm-up (as telemetry saw their pushes).
    pub measured_deadline_misses: u64,
    /// Spike timestamp → handed to the loop's ring by the ingest thread (µs; per spike, or
    /// per sample of a counts stream).
    pub ingest_lag_us: Option<Percentiles>,
    /// Ingest-lag samples not recorded (telemetry fell behind; the spikes themselves were kept).
    pub ingest_lag_dropped: u64,
    /// Measured spikes that arrived before their own timestamp (recorded as 1 µs of lag).
    /// The simulated rig publishes a bin's spikes ahead of their in-bin stamps (src/sim.rs);
    /// on a real rig this should be 0, else its clock mapping is off.
    pub ingest_lag_early: u64,
    /// Bin close → the loop thread started on the bin (µs): its wake-up lateness, the part
    /// of `compute_us` that is not the model.
    pub loop_wake_us: Option<Percentiles>,
    /// Bin close → model and controller done (µs; the loop's wake-up included).
    pub compute_us: Percentiles,
    /// Model and controller done → Control sample pushed (µs; bins whose result was on time).
    pub done_to_push_us: Option<Percentiles>,
    /// Bin close → Control sample pushed (µs).
    pub close_to_push_us: Percentiles,
    /// Bin end → Control sample received by the rig (µs); simulated rig only.
    pub end_to_end_us: Option<Percentiles>,
    pub latent_r2: Option<f64>,
    /// The same after the best affine map from the estimate to the truth: the number that
    /// means something for a fitted model, whose latent space is defined only up to one.
    pub latent_r2_affine: Option<f64>,
    pub reidentification: Vec<Reidentification>,
    pub tracking: Option<Tracking>,
    pub notices: Vec<String>,
    /// The session's XDF recording (`run --record`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<crate::record::RecordingSummary>,
    /// The simulated rig's side of the Control stream (with the built-in simulator only):
    /// samples received, lost, re-subscriptions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rig_control: Option<crate::sim::RigControlSummary>,
    /// What `[realtime]` asked for and what the kernel granted or refused, one line each
    /// (empty, and left out, when the section is off).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub realtime: Vec<String>,
    /// Every thread of the process while the loop ran, from the kernel's accounting: its
    /// share of a core, how long its wake-ups waited for a CPU, how often it woke
    /// (src/telemetry/threads.rs). Left out where the kernel has no per-thread schedstat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<super::threads::ThreadsSummary>,
    /// Per-bin latencies after warm-up (`keep_series`; for plots, not in the JSON).
    #[serde(skip)]
    pub series: Vec<BinLatency>,
    /// (stage, [(quantile, µs)]) for the percentile plot (not in the JSON).
    #[serde(skip)]
    pub quantile_curves: Vec<(Stage, Vec<(f64, f64)>)>,
}
