//! Telemetry: the side channel. Joins what the loop, the emitter and (in simulation) the
//! simulator report per bin; keeps hdrhistograms; prints a live status line; publishes the
//! Status stream; and builds the end-of-run report. Runs on its own thread, fed through
//! lock-free queues that the hot path never waits on.

use crate::clock::BinGrid;
use crate::emit::EmitCounts;
use crate::events::{Emitted, JoinedBin, LoopBin, LoopStatus, TruthBin};
use crate::ingest::{IngestNotice, IngestStats};
pub use crate::latency::Percentiles;
use crate::latency::{Stage, StageLatencies};
use crate::schema::{
    fill_status_sample, status_channels, status_flags, status_stream_spec, StatusSample, MAX_STATUS_CHANNELS, OUTLET_LINGER_MS,
};
use crate::tap::{FanOut, Tap};
use lsl::ExPushable;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub mod evaluation;
pub mod join;
mod lateness;
pub mod live;
pub mod report;
mod status_line;
pub mod threads;
pub use evaluation::{affine_r2, r_squared};
use evaluation::{EvalRow, Evaluation};
use join::{BinJoiner, Parts};
use lateness::InputLateness;
pub use report::{IngestCounts, Reidentification, Report, Tracking};

/// What telemetry is fed through.
pub struct TelemetryInputs {
    pub bins: Tap<LoopBin>,
    pub emitted: Tap<Emitted>,
    /// The emitter's counts (exact even when records are dropped).
    pub emit: Arc<EmitCounts>,
    pub truth: Tap<TruthBin>,
    /// End-to-end latency samples [Control sample timestamp (bin end), received − timestamp] (s).
    pub end_to_end: Tap<[f64; 2]>,
    pub ingest: Arc<IngestStats>,
    pub notices: crossbeam_channel::Receiver<IngestNotice>,
    pub loop_status: Arc<LoopStatus>,
    /// Every Status sample telemetry builds (and pushes, when its outlet exists), to the
    /// Status stream's observers (the recorder).
    pub status_observers: FanOut<StatusSample>,
    /// Every bin as telemetry joined it (loop and emitter records), in bin order, to its
    /// observers (the recorder's timing stream).
    pub joined_observers: FanOut<JoinedBin>,
    /// The control plane's live view, when it runs.
    pub live: Option<live::LiveInputs>,
}

impl TelemetryInputs {
    pub fn new(
        capacity: usize,
        emit: Arc<EmitCounts>,
        ingest: Arc<IngestStats>,
        notices: crossbeam_channel::Receiver<IngestNotice>,
        loop_status: Arc<LoopStatus>,
    ) -> Self {
        TelemetryInputs {
            loop_status,
            bins: Tap::new(capacity),
            emitted: Tap::new(capacity),
            emit,
            truth: Tap::new(capacity),
            end_to_end: Tap::new(capacity),
            ingest,
            notices,
            status_observers: FanOut::default(),
            joined_observers: FanOut::default(),
            live: None,
        }
    }
}

/// What the tracking error is measured against.
#[derive(Debug, Clone)]
pub enum TrackingTarget {
    Latent(Vec<f64>),
    /// Target rates (Hz) with the observation model to turn true latents into rates.
    Rates {
        target_hz: Vec<f64>,
        c: nalgebra::DMatrix<f64>,
        d: nalgebra::DVector<f64>,
        log_rate_max: f64,
    },
}

pub struct TelemetryConfig {
    pub clock: BinGrid,
    pub latent: usize,
    pub embed: usize,
    /// Control channels m.
    pub control: usize,
    /// The simulator's latent dimension (its truth records' length; may differ from a
    /// fitted model's `latent`).
    pub truth_latent: usize,
    pub status_stream: Option<(String, String)>,
    pub status_line: bool,
    pub expect_truth: bool,
    pub library: Vec<Vec<f64>>,
    /// None: no objective (an identification session), no tracking error.
    pub target: Option<TrackingTarget>,
    /// Bins after an enable-gate change excluded from tracking error (transient).
    pub settle_bins: u64,
    pub rig_name: String,
    pub backend: String,
    /// Bins left out of every latency histogram (start-up: connections, caches).
    pub warmup_bins: u64,
    /// Keep per-bin latencies for plots (`Report::series`).
    pub keep_series: bool,
    /// Write an HdrHistogram interval log here (one interval per second, a tag per stage).
    pub interval_log: Option<std::path::PathBuf>,
}

pub struct Telemetry {
    cfg: TelemetryConfig,
    q: TelemetryInputs,
    joiner: BinJoiner,
    lat: StageLatencies,
    ingest_early: u64,
    bins: u64,
    fallbacks: u64,
    misses: u64,
    measured_misses: u64,
    gap_bins: u64,
    gaps: Vec<[u64; 2]>,
    late_spikes: u64,
    future_spikes: u64,
    binned_spikes: f64,
    eval: Evaluation,
    lateness: InputLateness,
    notices: Vec<String>,
    controller_fault_noticed: bool,
    status_outlet: Option<lsl::StreamOutlet>,
    /// The Status sample being built (liblsl's Rust binding pushes a Vec).
    status_sample: Vec<f64>,
    last_line: f64,
    live: Option<live::LiveView>,
}

/// Bins the joiner waits for a bin's simulator truth: a second of bins, and at least 50.
fn join_horizon(clock: &BinGrid) -> u64 {
    ((1.0 / clock.bin_s).ceil() as u64).max(50)
}

impl Telemetry {
    pub fn new(cfg: TelemetryConfig, q: TelemetryInputs) -> Telemetry {
        let eval = Evaluation::new(cfg.latent, cfg.truth_latent, cfg.target.clone(), cfg.settle_bins, cfg.library.clone());
        let mut q = q;
        let live = q.live.take().map(|inputs| live::LiveView::new(inputs, cfg.library.clone(), cfg.clock.bin_s * 1e3));
        Telemetry {
            live,
            lat: StageLatencies::new(cfg.warmup_bins, cfg.keep_series),
            ingest_early: 0,
            status_sample: vec![0.0; status_channels(cfg.latent, cfg.embed)],
            joiner: BinJoiner::new(cfg.expect_truth, join_horizon(&cfg.clock)),
            cfg,
            q,
            bins: 0,
            fallbacks: 0,
            misses: 0,
            measured_misses: 0,
            gap_bins: 0,
            gaps: Vec::new(),
            late_spikes: 0,
            future_spikes: 0,
            binned_spikes: 0.0,
            eval,
            lateness: InputLateness::default(),
            notices: Vec::new(),
            controller_fault_noticed: false,
            status_outlet: None,
            last_line: 0.0,
        }
    }

    fn open_status_outlet(&mut self) {
        let Some((name, source_id)) = &self.cfg.status_stream else { return };
        let spec = status_stream_spec(name, source_id, self.cfg.clock.bin_s, self.cfg.latent, self.cfg.embed);
        let Ok(info) = spec.info() else { return };
        self.status_outlet = lsl::StreamOutlet::new(&info, 0, 360).ok();
    }

    /// Run until `stop` is set and the queues are drained; returns the report.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Report {
        self.open_status_outlet();
        if let Some(path) = self.cfg.interval_log.clone() {
            let comment = format!("neuroloop {} rig '{}' backend {}", env!("CARGO_PKG_VERSION"), self.cfg.rig_name, self.cfg.backend);
            if let Err(e) = self.lat.log_intervals_to(&path, 1.0, crate::clock::now(), &comment) {
                self.notices.push(format!("cannot create the interval log {}: {e}", path.display()));
            }
        }
        loop {
            let stopping = stop.load(Ordering::Acquire);
            self.poll();
            if stopping {
                self.poll();
                self.flush_all();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if self.cfg.status_line {
            self.print_line(true);
        }
        self.publish_live(true);
        if self.status_outlet.is_some() {
            std::thread::sleep(std::time::Duration::from_millis(OUTLET_LINGER_MS));
        }
        if let Err(e) = self.lat.finish(crate::clock::now()) {
            eprintln!("[neuroloop] {e}");
            self.notices.push(e);
        }
        self.report()
    }

    fn poll(&mut self) {
        while let Ok(n) = self.q.notices.try_recv() {
            let msg = match n {
                IngestNotice::Connected { description } => format!("input connected: {description}"),
                IngestNotice::Lost { description } => format!("input LOST: {description}"),
                IngestNotice::Rejected { what } => format!("input: {what}"),
            };
            eprintln!("[neuroloop] {msg}");
            self.notices.push(msg);
        }
        while let Some(r) = self.q.bins.queue.pop() {
            self.joiner.add_record(r);
        }
        while let Some(e) = self.q.emitted.queue.pop() {
            if let Some(late) = self.joiner.add_emitted(e) {
                // Its bin was finalised without it (the emitter ran far behind the loop): its
                // push, fallback and miss still count — they are the worst latencies.
                self.account_push(late.bin, &late, None);
            }
        }
        while let Some(t) = self.q.truth.queue.pop() {
            self.joiner.add_truth(t);
        }
        let clock = self.cfg.clock;
        while let Some([ts, lag]) = self.q.end_to_end.queue.pop() {
            // The sample's timestamp is its bin's end.
            let bin = clock.bin_ending_at(ts);
            if bin >= 0 {
                self.lat.record(Stage::EndToEnd, bin as u64, lag);
                if let Some(l) = &mut self.live {
                    l.end_to_end(lag);
                }
            }
        }
        while let Some([t, lag, t_binned]) = self.q.ingest.lag.0.pop() {
            let bin = clock.bin_of(t);
            if bin >= 0 && self.lat.counts(bin as u64) {
                self.ingest_early += (lag < 0.0) as u64;
                self.lat.record(Stage::IngestLag, bin as u64, lag);
                self.lateness.add(&clock, t, t + lag, t_binned);
            }
        }
        if let Some(msg) = self.lateness.notice(&clock, self.late_spikes as f64, self.binned_spikes) {
            eprintln!("[neuroloop] {msg}");
            self.notices.push(msg);
        }
        self.notice_controller_faults();
        self.lat.tick(crate::clock::now());
        while let Some((k, parts)) = self.joiner.next_ready() {
            self.finalise(k, parts);
        }
        if self.cfg.status_line && crate::clock::now() - self.last_line > 1.0 {
            self.print_line(false);
        }
        self.publish_live(false);
    }

    /// Said once, the first time the controller had no usable command (the loop counts each
    /// such bin; the emitter sent the fallback for it).
    fn notice_controller_faults(&mut self) {
        let first = self.q.loop_status.first_controller_fault.load(Ordering::Relaxed);
        if first > 0 && !self.controller_fault_noticed {
            self.controller_fault_noticed = true;
            let msg = format!(
                "WARNING: at bin {} the controller had no usable command (a cost or a command that is not finite: check the objective and the model); the fallback went out instead, and every such bin is counted (controller_faults)",
                first - 1
            );
            eprintln!("[neuroloop] {msg}");
            self.notices.push(msg);
        }
    }

    /// The live view's frame, when one is due (`last`: the session's final frame).
    fn publish_live(&mut self, last: bool) {
        let Some(mut l) = self.live.take() else { return };
        l.drain_counts();
        l.maybe_publish(crate::clock::now(), last, || live::Totals {
            bins: self.bins,
            deadline_misses: self.misses,
            fallbacks: self.fallbacks,
            controller_faults: self.q.loop_status.controller_faults.load(Ordering::Relaxed),
            gap_bins: self.gap_bins,
            late_spikes: self.late_spikes,
            late_results: self.q.emit.late_results.load(Ordering::Relaxed),
            compute_us: self.lat.percentiles(Stage::Compute),
            close_to_push_us: self.lat.percentiles(Stage::CloseToPush),
            end_to_end_us: self.lat.percentiles(Stage::EndToEnd),
            ingest: Some(self.ingest_counts()),
        });
        self.live = Some(l);
    }

    fn flush_all(&mut self) {
        while let Some((k, parts)) = self.joiner.next_any() {
            self.finalise(k, parts);
        }
    }

    /// Counts bin k's push: fallback, deadline miss, and its latencies.
    fn account_push(&mut self, k: u64, e: &Emitted, rec: Option<&LoopBin>) {
        self.fallbacks += e.pushed.fallback() as u64;
        self.misses += e.pushed.deadline_miss() as u64;
        self.measured_misses += (e.pushed.deadline_miss() && self.lat.counts(k)) as u64;
        self.lat.record(Stage::CloseToPush, k, e.pushed_at - self.cfg.clock.close(k));
        if let Some(l) = &mut self.live {
            l.close_to_push(e.pushed_at - self.cfg.clock.close(k));
        }
        if let Some(r) = rec.filter(|r| r.delivery.on_time()) {
            self.lat.record(Stage::DoneToPush, k, e.pushed_at - r.done_at);
        }
    }

    fn finalise(&mut self, k: u64, j: Parts) {
        if j.loop_bin.is_none() && j.emitted.is_none() {
            return; // the simulator's truth for a bin the loop never ran
        }
        self.q.joined_observers.offer(JoinedBin { bin: k, loop_bin: j.loop_bin, emitted: j.emitted });
        self.bins += 1;
        if let Some(l) = &mut self.live {
            l.add_bin(k, j.loop_bin.as_ref(), j.emitted.as_ref(), self.cfg.latent, self.cfg.embed, self.cfg.control);
        }
        let flags = status_flags(j.loop_bin.as_ref(), j.emitted.as_ref());
        // Without the emitted record (dropped on a full queue) the gate state is unknown:
        // such a bin stays out of the open/closed-loop comparison.
        let mut enabled = None;
        if let Some(e) = &j.emitted {
            self.account_push(k, e, j.loop_bin.as_ref());
            enabled = Some(e.enabled);
        }
        if let Some(r) = &j.loop_bin {
            // From the bin's close, not from the loop's start: a loop that wakes late is late.
            let close = self.cfg.clock.close(k);
            self.lat.record(Stage::LoopWake, k, r.started_at - close);
            self.lat.record(Stage::Compute, k, r.done_at - close);
            self.late_spikes += r.late_spikes;
            self.binned_spikes += r.spikes;
            self.future_spikes += r.future_spikes;
            if !r.has_data() {
                self.gap_bins += 1;
                match self.gaps.last_mut() {
                    Some(g) if g[1] + 1 == k => g[1] = k,
                    _ => self.gaps.push([k, k]),
                }
            }
            // A bin whose state is unknown (NaN: a failed GPU read-back) is not evaluated.
            let state_known = r.x[..self.cfg.latent].iter().all(|v| v.is_finite());
            if let (true, Some(enabled), true) = (r.has_data(), enabled, state_known) {
                self.eval.add(EvalRow {
                    enabled,
                    x: &r.x[..self.cfg.latent],
                    x_true: j.truth.as_ref().map(|t| &t.x[..self.cfg.truth_latent]),
                    z: &r.z[..self.cfg.embed],
                    task_true: j.truth.map(|t| t.task),
                });
            }
            if self.status_outlet.is_some() || !self.q.status_observers.is_empty() {
                // Built once: what the outlet pushes is what the observers get.
                let t = self.cfg.clock.bin_end(k);
                fill_status_sample(&mut self.status_sample, r, flags, self.cfg.latent, self.cfg.embed);
                if let Some(out) = &self.status_outlet {
                    let _ = out.push_sample_ex(&self.status_sample, t, true);
                }
                let mut pushed = StatusSample { timestamp: t, values: [0.0; MAX_STATUS_CHANNELS] };
                pushed.values[..self.status_sample.len()].copy_from_slice(&self.status_sample);
                self.q.status_observers.offer(pushed);
            }
        }
    }

    fn print_line(&mut self, last: bool) {
        self.last_line = crate::clock::now();
        let counts = status_line::Counts { bins: self.bins, misses: self.misses, fallbacks: self.fallbacks, gap_bins: self.gap_bins };
        eprintln!("{}", status_line::line(last, &counts, &self.lat, &self.eval));
    }

    fn ingest_counts(&self) -> IngestCounts {
        let st = &self.q.ingest;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IngestCounts {
            samples: ld(&st.samples),
            spikes: ld(&st.spikes),
            unknown_units: ld(&st.unknown_units),
            nonfinite: ld(&st.nonfinite),
            invalid: ld(&st.invalid),
            out_of_order: ld(&st.out_of_order),
            duplicates: ld(&st.duplicates),
            disconnects: ld(&st.disconnects),
            reconnects: ld(&st.reconnects),
            stale: ld(&st.stale),
            inlet_full: ld(&st.inlet_full),
        }
    }

    fn report(&mut self) -> Report {
        let st = &self.q.ingest;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let has_truth = self.eval.has_truth();
        Report {
            rig: self.cfg.rig_name.clone(),
            backend: self.cfg.backend.clone(),
            bin_ms: self.cfg.clock.bin_s * 1e3,
            bins: ld(&self.q.emit.pushed),
            bins_computed: self.q.loop_status.bins_done.load(Ordering::Acquire),
            control_samples: ld(&self.q.emit.pushed),
            fallbacks: ld(&self.q.emit.fallbacks),
            deadline_misses: ld(&self.q.emit.deadline_misses),
            measured_deadline_misses: self.measured_misses,
            gap_bins: self.gap_bins,
            gaps: self.gaps.clone(),
            late_results: ld(&self.q.emit.late_results),
            binned_spikes: self.binned_spikes,
            late_spikes: self.late_spikes,
            future_spikes: self.future_spikes,
            pre_session_spikes: self.q.loop_status.pre_session_spikes.load(Ordering::Relaxed),
            after_end_spikes: self.q.loop_status.after_end_spikes.load(Ordering::Acquire),
            ring_overflows: ld(&st.ring_overflows),
            telemetry_dropped: ld(&self.q.bins.dropped) + ld(&self.q.emitted.dropped),
            device_errors: 0,
            controller_faults: self.q.loop_status.controller_faults.load(Ordering::Relaxed),
            commands: Default::default(),
            truth_dropped: ld(&self.q.truth.dropped),
            end_to_end_dropped: ld(&self.q.end_to_end.dropped),
            ingest: self.ingest_counts(),
            warmup_bins: self.cfg.warmup_bins,
            ingest_lag_us: self.lat.percentiles(Stage::IngestLag),
            loop_wake_us: self.lat.percentiles(Stage::LoopWake),
            ingest_lag_dropped: ld(&st.lag_dropped),
            ingest_lag_early: self.ingest_early,
            compute_us: Percentiles::of(self.lat.histogram(Stage::Compute)),
            done_to_push_us: self.lat.percentiles(Stage::DoneToPush),
            close_to_push_us: Percentiles::of(self.lat.histogram(Stage::CloseToPush)),
            end_to_end_us: self.lat.percentiles(Stage::EndToEnd),
            latent_r2: if has_truth { self.eval.latent_r2() } else { None },
            latent_r2_affine: if has_truth { self.eval.latent_r2_affine() } else { None },
            reidentification: if has_truth { self.eval.reidentification() } else { Vec::new() },
            tracking: if has_truth { self.eval.tracking() } else { None },
            notices: self.notices.clone(),
            recording: None,
            rig_control: None,
            realtime: Vec::new(),
            threads: None,
            series: self.lat.take_series(),
            quantile_curves: crate::latency::STAGES.iter().map(|&st| (st, self.lat.quantile_curve(st))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::Stage;
    use crate::{MAX_EMBED, MAX_LATENT};

    fn record(k: u64, clock: &BinGrid) -> LoopBin {
        LoopBin {
            bin: k,
            started_at: clock.close(k),
            done_at: clock.close(k) + 1e-4,
            spikes: 0.0,
            late_spikes: 0,
            future_spikes: 0,
            proposal: crate::events::Proposal::Command,
            delivery: crate::events::Delivery::OnTime,
            u_prev_from: k.checked_sub(1),
            loglik: 0.0,
            task_jump: None,
            embed_step: 0.0,
            x: [0.0; MAX_LATENT],
            z: [0.0; MAX_EMBED],
            u: [0.0; crate::MAX_CONTROL],
        }
    }

    fn emitted(k: u64, clock: &BinGrid, late_s: f64) -> Emitted {
        Emitted {
            bin: k,
            u: [0.0; crate::MAX_CONTROL],
            pushed: if late_s > 0.0 { crate::events::Pushed::MissedDeadline } else { crate::events::Pushed::Command },
            enabled: true,
            pushed_at: clock.deadline(k) + late_s,
        }
    }

    /// An emitter stalled far behind the loop: its push for a bin comes after telemetry has
    /// finalised the bin. That push is the worst latency of the run and must still count.
    #[test]
    fn a_push_that_comes_after_its_bin_was_finalised_still_counts() {
        let clock = BinGrid { t0: 100.0, bin_s: 1e-3, grace_s: 5e-4, deadline_s: 4e-4 };
        let (_tx, rx) = crossbeam_channel::bounded(1);
        let emit = Arc::new(EmitCounts::default());
        let q = TelemetryInputs::new(8192, emit.clone(), Arc::new(IngestStats::default()), rx, Arc::new(LoopStatus::default()));
        let (bins_q, emitted_q) = (q.bins.queue.clone(), q.emitted.queue.clone());
        let cfg = TelemetryConfig {
            clock,
            latent: 2,
            truth_latent: 2,
            embed: 1,
            control: 1,
            status_stream: None,
            status_line: false,
            expect_truth: false,
            library: Vec::new(),
            target: Some(TrackingTarget::Latent(vec![0.0, 0.0])),
            settle_bins: 0,
            rig_name: "test".into(),
            backend: "cpu".into(),
            warmup_bins: 0,
            keep_series: false,
            interval_log: None,
        };
        let mut t = Telemetry::new(cfg, q);
        let n = 3000u64;
        let stalled = 7u64;
        for k in 0..n {
            bins_q.push(record(k, &clock)).unwrap();
            if k != stalled {
                emitted_q.push(emitted(k, &clock, 0.0)).unwrap();
            }
        }
        t.poll();
        assert!(t.joiner.first_open() > stalled, "bin {stalled} should have been finalised without its push");
        // The emitter finally pushes bin 7, 2.5 s late.
        emitted_q.push(emitted(stalled, &clock, 2.5)).unwrap();
        t.poll();
        t.flush_all();
        let h = t.lat.histogram(Stage::CloseToPush);
        assert_eq!(h.len(), n, "every push is in the close → pushed histogram");
        assert!(h.max() >= 2_500_000, "the stalled push is its maximum: {} µs", h.max());
        assert_eq!((t.misses, t.measured_misses), (1, 1));
    }
}
