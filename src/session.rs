//! A session wires the stages together for one run: (simulator) → ingest → loop
//! (binning, backend) → emitter, with telemetry on the side and the control plane on
//! the calling thread.

#[cfg(any(feature = "wgpu", feature = "cuda"))]
use crate::backend::gpu::GpuBackend;
use crate::backend::{cpu::CpuBackend, probe::ProbeBackend, Backend, BackendConfig};
use crate::clock;
use crate::control::Objective;
use crate::control_plane::http::{ControlServer, ServerSetup};
use crate::control_plane::markers::MarkersSetup;
use crate::control_plane::{Dispatcher, DispatcherSetup, Request, SessionLimits, Settings, Source};
use crate::emit::{self, EmitCounts, EmitQueues, EmitterSetup};
use crate::events::{LoopQueues, LoopStatus};
use crate::ingest::{self, IngestSetup, IngestStats};
use crate::model::{Dims, ModelParams};
use crate::record::{Provenance, Recorder, RecorderSetup};
use crate::rig::{BackendKind, ObjectiveKind, Rig};
use crate::runloop::{self, LoopSetup};
use crate::safety::Safety;
use crate::sim::{self, SimSetup};
use crate::tap::FanOut;
use crate::telemetry::{Report, Telemetry, TelemetryConfig, TelemetryInputs, TrackingTarget};
use crate::units::UnitMap;
use anyhow::{bail, Context};
use nalgebra::DVector;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop after this many bins (None: run until Ctrl-C).
    pub bins: Option<u64>,
    pub report: Option<PathBuf>,
    /// Start the rig's built-in simulator in this process (when the rig has `[sim]`).
    pub with_sim: bool,
    /// Print the live status line.
    pub status_line: bool,
    /// Bins at the start left out of the latency histograms.
    pub warmup_bins: u64,
    /// Keep per-bin latencies in the report (for plots).
    pub keep_series: bool,
    /// Write an HdrHistogram interval log of every stage here.
    pub interval_log: Option<PathBuf>,
    /// Record the session to this XDF file (src/record).
    pub record: Option<PathBuf>,
    /// Serve the control plane (dashboard, HTTP API, Markers commands) on this address
    /// (None: no control plane).
    pub control: Option<String>,
}

/// What a session runs per bin: a model, or (an identification session) the probe.
#[allow(clippy::large_enum_variant)] // one per session, moved into the backend
pub enum SessionModel {
    Model {
        params: ModelParams,
        source: String,
    },
    /// `[controller] kind = "probe"`: N from the unit map, m from the rig file, no model.
    Probe {
        dims: Dims,
    },
}

impl SessionModel {
    /// The model a rig runs: its model file, the simulator's truth, or none for the probe.
    pub fn resolve(rig: &Rig) -> anyhow::Result<SessionModel> {
        if rig.is_probe() {
            let n = UnitMap::from_config(&rig.units).n_units();
            let m = rig.control_dim().context("an identification session needs output.control_dim")?;
            return Ok(SessionModel::Probe { dims: Dims { n_units: n, latent: 0, embed: 0, control: m, hidden: 0 } });
        }
        let (params, source) = load_model(rig)?;
        Ok(SessionModel::Model { params, source })
    }

    pub fn dims(&self) -> Dims {
        match self {
            SessionModel::Model { params, .. } => params.dims,
            SessionModel::Probe { dims } => *dims,
        }
    }

    pub fn params(&self) -> Option<&ModelParams> {
        match self {
            SessionModel::Model { params, .. } => Some(params),
            SessionModel::Probe { .. } => None,
        }
    }

    /// Where the model came from, for the start-up line and reports.
    pub fn source(&self) -> String {
        match self {
            SessionModel::Model { source, .. } => source.clone(),
            SessionModel::Probe { .. } => "none (identification session: the probe drives the rig)".into(),
        }
    }

    /// The rig's checks against the dimensions (a probe session's come from the rig itself).
    pub fn check(&self, rig: &Rig) -> anyhow::Result<()> {
        let units = UnitMap::from_config(&rig.units);
        if let SessionModel::Model { params, .. } = self {
            rig.check_against_model(&params.dims, units.n_units())?;
            if params.dims.control == 0 && !rig.is_monitor() {
                bail!(
                    "rig file {}: [controller] kind = \"{}\", but the model has no input (m = 0, fitted without stimulation): nothing to control; use kind = \"monitor\"",
                    rig.path.display(),
                    format!("{:?}", rig.controller.kind).to_lowercase()
                );
            }
            // What the backend will be built with: the objective against the model.
            objective(rig, params)?
                .validate(&params.dims)
                .map_err(|m| anyhow::anyhow!("rig file {}: `objective`: {m}", rig.path.display()))?;
        }
        // Bounds, fallback vector: exactly what `run` builds.
        Safety::from_rig(rig, self.dims().control)?;
        Ok(())
    }

    /// The backend for this model (the rig's backend kind), or the probe.
    pub fn backend(self, rig: &Rig) -> anyhow::Result<Box<dyn Backend>> {
        match self {
            SessionModel::Model { params, .. } => backend(rig, params),
            SessionModel::Probe { dims } => Ok(Box::new(ProbeBackend::new(dims, rig.controller.probe.clone()))),
        }
    }
}

/// What a model can and cannot do in this rig, in words (`neuroloop check`).
pub fn capabilities(rig: &Rig, p: &ModelParams) -> String {
    let mut can = vec!["filter the latent state"];
    if !p.task_library.is_empty() {
        can.push("identify the task among its library");
    }
    if p.history.is_some() {
        can.push("predict each unit with its own spike history");
    }
    let control = if p.dims.control == 0 && rig.is_monitor() {
        "it has no input (m = 0): it monitors, and no Control stream is emitted".to_string()
    } else if p.dims.control == 0 {
        "it cannot control: it was fitted without an input (m = 0); run it with [controller] kind = \"monitor\"".to_string()
    } else if rig.is_monitor() {
        format!("it could steer {} inputs, but kind = \"monitor\" emits the rig's fallback command every bin", p.dims.control)
    } else {
        format!("it steers {} inputs with kind = \"{:?}\"", p.dims.control, rig.controller.kind).to_lowercase()
    };
    format!("the model can {}; {control}", can.join(", "))
}

/// Load the model a rig names, or the simulator's truth when it names none.
pub fn load_model(rig: &Rig) -> anyhow::Result<(ModelParams, String)> {
    match (rig.model_path(), &rig.sim) {
        (Some(p), _) => {
            let m = ModelParams::load(&p)?;
            Ok((m, p.display().to_string()))
        }
        (None, Some(sim)) => Ok((sim::truth_model(sim, rig.timing.bin_ms * 1e-3), "the simulator's true model".into())),
        (None, None) => bail!("rig file {}: [model] path is required (only a simulated rig may omit it)", rig.path.display()),
    }
}

pub fn objective(rig: &Rig, params: &ModelParams) -> anyhow::Result<Objective> {
    if rig.is_monitor() && rig.objective.is_none() {
        // A monitor has no controller; the latent origin stands in (never pursued).
        return Ok(Objective::Latent(DVector::zeros(params.dims.latent)));
    }
    let o = rig.objective()?;
    Ok(match o.kind {
        ObjectiveKind::Latent => Objective::Latent(DVector::from_vec(o.target.clone())),
        ObjectiveKind::Rates => Objective::Rates(DVector::from_vec(rig.broadcast("objective.target", &o.target, params.dims.n_units)?)),
    })
}

/// The rig's settings for a backend, resolved and checked against the model.
pub fn backend_config(rig: &Rig, params: &ModelParams) -> anyhow::Result<BackendConfig> {
    let safety = Safety::from_rig(rig, params.dims.control)?;
    Ok(BackendConfig {
        filter: rig.model.filter_choice(),
        embedding: rig.model.embedding.clone(),
        task_id: rig.model.task_id.clone(),
        controller: rig.controller.clone(),
        objective: objective(rig, params)?,
        lower: safety.lower().to_vec(),
        upper: safety.upper().to_vec(),
        hold: rig.safety.fallback_vector.clone().unwrap_or_default(),
    })
}

/// What the control plane checks a command against: the model's dimensions and library, the
/// rig file's limits, and what the backend can do.
pub fn session_limits(rig: &Rig, safety: &Safety, tasks: usize, backend: &dyn Backend) -> SessionLimits {
    let dims = backend.dims();
    SessionLimits {
        n_units: dims.n_units,
        latent: dims.latent,
        control: dims.control,
        tasks,
        lower: safety.lower().to_vec(),
        upper: safety.upper().to_vec(),
        max_step: safety.max_step(),
        max_rate_hz: rig.objective.as_ref().map_or(crate::control::objective::DEFAULT_MAX_RATE_HZ, |o| o.max_rate_hz()),
        probe: rig.is_probe(),
        lock_refusal: (tasks > 0 && !backend.can_lock_task())
            .then(|| format!("the {} backend cannot hold the embedding on a task; lock_task runs on backend = \"cpu\"", backend.name())),
    }
}

/// Build the backend the rig selects.
pub fn backend(rig: &Rig, params: ModelParams) -> anyhow::Result<Box<dyn Backend>> {
    let cfg = backend_config(rig, &params)?;
    let in_rig = || format!("rig file {}", rig.path.display());
    match rig.model.backend {
        BackendKind::Cpu => Ok(Box::new(CpuBackend::new(params, &cfg).with_context(in_rig)?)),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
            let dev = WgpuDevice::DefaultDevice;
            Ok(Box::new(GpuBackend::<WgpuRuntime>::new("wgpu", &dev, params, &cfg).with_context(in_rig)?))
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            use cubecl::cuda::{CudaDevice, CudaRuntime};
            let dev = CudaDevice::new(0);
            Ok(Box::new(GpuBackend::<CudaRuntime>::new("cuda", &dev, params, &cfg).with_context(in_rig)?))
        }
        #[allow(unreachable_patterns)]
        other => bail!(
            "rig file {}: backend = \"{}\" is not compiled into this neuroloop; rebuild with `--features {}` or use backend = \"cpu\"",
            rig.path.display(),
            other.name(),
            other.name(),
        ),
    }
}

/// Sets the stop flags when dropped (an early `?` return from [`run`]).
struct StopOnDrop {
    stop: Arc<AtomicBool>,
    markers_stop: Arc<AtomicBool>,
    sim_stop: Arc<AtomicBool>,
    end_bin: Arc<AtomicU64>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.markers_stop.store(true, Ordering::Release);
        self.sim_stop.store(true, Ordering::Release);
        self.end_bin.store(0, Ordering::Release);
    }
}

/// Run a closed-loop session; returns the report (also written to `opts.report`).
pub fn run(rig: &Rig, opts: &RunOptions) -> anyhow::Result<Report> {
    if let Some(path) = &opts.report {
        crate::ensure_writable(path, "report")?;
    }
    // A busy port or a missing token stops the run before anything starts.
    let control_listener = opts.control.as_deref().map(|addr| crate::control_plane::bind(rig, addr)).transpose()?;
    let model = SessionModel::resolve(rig)?;
    let model_source = model.source();
    let dims = model.dims();
    let units = UnitMap::from_config(&rig.units);
    model.check(rig)?;
    let bin_s = rig.timing.bin_ms * 1e-3;
    let mut library: Vec<Vec<f64>> = Vec::new();
    let mut target = None;
    if let Some(params) = model.params() {
        if (params.bin_s - bin_s).abs() > 1e-9 {
            eprintln!(
                "[neuroloop] warning: the model was fitted at Δ = {} ms but the rig bins at {} ms",
                params.bin_s * 1e3,
                rig.timing.bin_ms
            );
        }
        library = params.task_library.iter().map(|z| z.as_slice().to_vec()).collect();
        let o = rig.objective()?;
        // Tracking is scored on the simulator's true latent, so rates come from the true
        // observation model (a fitted model's latent frame is its own).
        let truth = rig.sim.as_ref().filter(|_| opts.with_sim).map(|sc| sim::truth_model(sc, bin_s));
        let obs = truth.as_ref().filter(|t| t.dims.n_units == dims.n_units).unwrap_or(params);
        target = Some(match o.kind {
            ObjectiveKind::Latent => TrackingTarget::Latent(o.target.clone()),
            ObjectiveKind::Rates => TrackingTarget::Rates {
                target_hz: rig.broadcast("objective.target", &o.target, dims.n_units)?,
                c: obs.obs_c.clone(),
                d: obs.obs_d.clone(),
                log_rate_max: obs.log_rate_max,
            },
        });
    }
    let safety = Safety::from_rig(rig, dims.control)?;
    let tasks = model.params().map_or(0, |p| p.task_library.len());
    // Fault injection (rig [fault]) wraps the backend; the loop itself has no test branch.
    let backend = crate::backend::fault::Faulty::wrap(model.backend(rig)?, &rig.fault);
    let backend_name = backend.name().to_string();
    let session_limits = session_limits(rig, &safety, tasks, backend.as_ref());
    eprintln!(
        "[neuroloop] liblsl {}; rig '{}': N={} d={} e={} m={}, Δ={} ms, grace {} ms, deadline {} ms, backend {}, model: {}",
        lsl::library_version(),
        rig.name,
        dims.n_units,
        dims.latent,
        dims.embed,
        dims.control,
        rig.timing.bin_ms,
        rig.timing.grace_ms,
        rig.timing.deadline_ms,
        backend_name,
        model_source
    );

    let end_bin = Arc::new(AtomicU64::new(opts.bins.unwrap_or(u64::MAX)));
    let stop = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    // On an early error return, threads already started wind down instead of running on.
    // The simulated rig stops last, so the ingest never sees it vanish at the end of a run.
    let sim_stop = Arc::new(AtomicBool::new(false));
    let markers_stop = Arc::new(AtomicBool::new(false));
    let _stop_guard =
        StopOnDrop { stop: stop.clone(), markers_stop: markers_stop.clone(), sim_stop: sim_stop.clone(), end_bin: end_bin.clone() };
    {
        let interrupted = interrupted.clone();
        // Only one handler per process; a second session in the same process keeps the first.
        let _ = ctrlc::set_handler(move || interrupted.store(true, Ordering::Release));
    }

    // Stages, in data-flow order. The bin grid starts once everything is connected.
    let ingest_stats = Arc::new(IngestStats::default());
    let (notice_tx, notice_rx) = crossbeam_channel::bounded(256);
    // Side-channel queues hold a few seconds of bins, so a briefly starved telemetry
    // thread loses nothing.
    let queue_bins = ((4.0 / bin_s).ceil() as usize).max(1024);
    let emit_queues = Arc::new(EmitQueues::new(queue_bins));
    let loop_queues = Arc::new(LoopQueues::default());
    let emit_counts = Arc::new(EmitCounts::default());
    let loop_status = Arc::new(LoopStatus::default());
    let mut queues =
        TelemetryInputs::new(queue_bins.max(1 << 14), emit_counts.clone(), ingest_stats.clone(), notice_rx, loop_status.clone());

    // The clock's t0 is fixed now so the simulator and the loop share one bin grid.
    let t0 = clock::now() + rig.timing.start_delay_ms * 1e-3 + 1.0;
    let bin_clock = rig.timing.grid(t0);

    let sim_cfg = rig.sim.clone().filter(|_| opts.with_sim);
    // The recorder starts before the stages so it sees their first records. The file is
    // created now: a path that cannot be written stops the run before it starts.
    let mut recorder = None;
    let mut taps = None;
    let mut journal = None;
    let source_id = rig.source_id();
    let labels = rig.output.control_labels_or_default(dims.control);
    if let Some(path) = &opts.record {
        let setup = RecorderSetup {
            path: path.clone(),
            provenance: Provenance::of(rig, &backend_name)?,
            clock: bin_clock,
            n_units: dims.n_units,
            latent: dims.latent,
            embed: dims.embed,
            control: dims.control,
            unit_labels: units.unit_labels(),
            control_spec: crate::schema::control_stream_spec(&rig.output.control_name, &source_id, bin_s, &labels),
            status_spec: crate::schema::status_stream_spec(
                &rig.output.status_name,
                &format!("{source_id}-status"),
                bin_s,
                dims.latent,
                dims.embed,
            ),
            rig_name: rig.name.clone(),
            source_id: source_id.clone(),
            flush_s: 0.25,
            sim_truth_latent: rig.sim.as_ref().filter(|_| opts.with_sim).map(|s| s.latent_dim),
        };
        let (r, t) = Recorder::start(setup, queue_bins)?;
        journal = Some(t.commands.clone());
        eprintln!("[neuroloop] recording to {} (written as {} until the session ends)", path.display(), r.partial_path().display());
        recorder = Some(r);
        taps = Some(t);
    }
    let mut sim_handles = None;
    if let Some(sc) = &sim_cfg {
        let truth = sim::truth_model(sc, bin_s);
        sim_handles = Some(sim::start(SimSetup {
            params: truth,
            cfg: sc.clone(),
            clock: bin_clock,
            control_stream: rig.output.control_name.clone(),
            control_source_id: Some(source_id.clone()),
            // The simulated rig outlives the loop (stopped by `stop`), so the loop's last
            // bins still see a live stream.
            end_bin: Arc::new(AtomicU64::new(u64::MAX)),
            stop: sim_stop.clone(),
            truth: FanOut::default()
                .with(queues.truth.clone())
                .with_opt(taps.as_mut().and_then(|t: &mut crate::record::RecorderTaps| t.truth.take())),
            end_to_end: Some(queues.end_to_end.clone()),
            outage: sc.dropout_bins.map(|[a, b]| (a, b)),
            channel_labels: rig.units.labels.clone(),
            wait: rig.timing.wait,
        })?);
    }

    let live = control_listener.as_ref().map(|_| {
        let (tap, reader) = crate::tap::BinTap::pair(queue_bins, dims.n_units);
        let shared = Arc::new(crate::telemetry::live::LiveShared::default());
        queues.live = Some(crate::telemetry::live::LiveInputs { shared: shared.clone(), counts: reader, n_units: dims.n_units });
        (shared, tap)
    });
    let (input_tap, bin_tap, emitted_tap) = match taps {
        Some(t) => {
            queues.status_observers = FanOut::default().with(t.status);
            queues.joined_observers = FanOut::default().with(t.joined);
            (Some(t.input), Some(t.bins), Some(t.emitted))
        }
        None => (None, None, None),
    };

    // `[realtime]`: memory locked now, before the stages allocate their buffers; each
    // real-time thread applies its own scheduling as it starts.
    let realtime = crate::realtime::ThreadSetup::new(rig.realtime.clone());
    realtime.lock_memory();
    // The Control outlet first: the simulated rig's inlet subscribes while ingest connects
    // (on a loaded machine each can take seconds, and a rig that subscribes after bin 0
    // never hears the bins before). With the simulated rig, the outlet stays up until the
    // rig has every sample.
    let release_outlet = sim_handles.as_ref().map(|_| Arc::new(AtomicBool::new(false)));
    let emitter = emit::start(EmitterSetup {
        clock: bin_clock,
        m: dims.control,
        stream_name: rig.output.control_name.clone(),
        source_id: source_id.clone(),
        labels,
        safety,
        // With an open/closed-loop schedule, the session starts open loop.
        enabled: sim_cfg
            .as_ref()
            .map_or(rig.safety.enabled, |s| sim::GateSchedule::new(s.open_loop_block_bins, rig.safety.enabled).initial()),
        queues: emit_queues.clone(),
        counts: emit_counts.clone(),
        end_bin: end_bin.clone(),
        observers: FanOut::default().with(queues.emitted.clone()).with_opt(emitted_tap),
        realtime: realtime.clone(),
        release: release_outlet.clone(),
    })?;
    let (producer, consumer) = ingest::spike_ring(rig.input.ring_capacity);
    let ingest_handle = ingest::start(IngestSetup {
        input: rig.input.clone(),
        units,
        producer,
        stats: ingest_stats.clone(),
        stop: stop.clone(),
        notices: notice_tx,
        record: input_tap,
        realtime: realtime.clone(),
    })
    .with_context(|| format!("rig file {}: [input]", rig.path.display()));
    let ingest_handle = match ingest_handle {
        Ok(h) => h,
        Err(e) => {
            // The emitter is running: end it (it lingers, then returns).
            end_bin.store(0, Ordering::Release);
            if let Some(r) = &release_outlet {
                r.store(true, Ordering::Release);
            }
            return Err(e);
        }
    };
    let bins_q = queues.bins.clone();
    let (live_shared, live_tap) = live.unzip();
    let telemetry_stop = Arc::new(AtomicBool::new(false));
    let telemetry_cfg = TelemetryConfig {
        clock: bin_clock,
        latent: dims.latent,
        embed: dims.embed,
        control: dims.control,
        truth_latent: sim_cfg.as_ref().map_or(dims.latent, |s| s.latent_dim),
        status_stream: Some((rig.output.status_name.clone(), format!("{source_id}-status"))),
        status_line: opts.status_line,
        expect_truth: sim_cfg.is_some(),
        library,
        target,
        settle_bins: 50,
        rig_name: rig.name.clone(),
        backend: backend_name.clone(),
        warmup_bins: opts.warmup_bins,
        keep_series: opts.keep_series,
        interval_log: opts.interval_log.clone(),
    };
    let telemetry_handle = {
        let s = telemetry_stop.clone();
        // Built on its own thread: it owns the Status outlet, which must stay on one thread.
        std::thread::Builder::new().name("neuroloop-telemetry".into()).spawn(move || Telemetry::new(telemetry_cfg, queues).run(s))?
    };
    // Telemetry (and with it the Status outlet) is up before this wait, so the Status
    // stream's consumers get the same lead before bin 0 as the Control stream's.
    if let Some(h) = &sim_handles {
        // The simulated rig must hear every Control sample: wait (at most until bin 0
        // starts) for its inlet to subscribe to the outlet that now exists.
        while !h.control_connected.load(Ordering::Acquire) && clock::now() < t0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    let loop_handle = runloop::start(
        LoopSetup {
            clock: bin_clock,
            backend,
            ring: consumer,
            ingest: ingest_stats.clone(),
            stall_s: rig.input.stall_ms * 1e-3,
            emit: emit_queues.clone(),
            commands: loop_queues.clone(),
            emitter: emitter.thread().clone(),
            observers: FanOut::default().with(bins_q),
            end_bin: end_bin.clone(),
            lookahead_bins: rig.timing.lookahead_bins(),
            with_counts: bin_tap.into_iter().chain(live_tap).collect(),
            wait: rig.timing.wait,
            realtime: realtime.clone(),
        },
        loop_status.clone(),
    )?;

    // Control plane: every command takes effect at a known bin, through the loop's and the
    // emitter's queues, and is journaled into the recording. Its clients here: Ctrl-C and the
    // simulated rig's open/closed-loop schedule.
    let settings = Settings {
        objective_kind: rig.objective.as_ref().filter(|_| !rig.is_probe()).map(|o| o.kind),
        objective_target: match rig.objective.as_ref().filter(|_| !rig.is_probe()) {
            Some(o) if o.kind == ObjectiveKind::Rates => rig.broadcast("objective.target", &o.target, dims.n_units)?,
            Some(o) => o.target.clone(),
            None => Vec::new(),
        },
        locked_task: None,
        lower: session_limits.lower.clone(),
        upper: session_limits.upper.clone(),
        max_step: session_limits.max_step,
        fallback: rig.safety.fallback,
        fallback_vector: rig.safety.fallback_vector.clone().unwrap_or_else(|| vec![0.0; dims.control]),
        armed: sim_cfg
            .as_ref()
            .map_or(rig.safety.enabled, |s| sim::GateSchedule::new(s.open_loop_block_bins, rig.safety.enabled).initial()),
    };
    let config = crate::control_plane::session_config(rig, &session_limits, &backend_name, &model_source);
    let dispatcher = Arc::new(Dispatcher::new(DispatcherSetup {
        limits: session_limits,
        clock: bin_clock,
        loop_queues,
        emit_queues: emit_queues.clone(),
        end_bin: end_bin.clone(),
        status: loop_status.clone(),
        journal: journal.take(),
        rate_per_s: rig.control.max_commands_per_s,
        settings,
    }));
    let control_plane = match (control_listener, live_shared) {
        (Some((listener, token)), Some(live)) => {
            let server = ControlServer::start(ServerSetup { listener, dispatcher: dispatcher.clone(), live, config, token })?;
            eprintln!(
                "[neuroloop] control plane: dashboard http://{}/ (API: /api/status, /api/config, /api/commands, /api/stream)",
                server.addr
            );
            let markers = crate::control_plane::markers::start(MarkersSetup {
                name: rig.control.markers_name_or_default(&rig.name),
                source_id: format!("{source_id}-replies"),
                dispatcher: dispatcher.clone(),
                stop: markers_stop.clone(),
            })?;
            eprintln!(
                "[neuroloop] control plane: commands also on the LSL Markers stream '{}' (replies on '{}')",
                rig.control.markers_name_or_default(&rig.name),
                crate::control_plane::markers::replies_name(&rig.control.markers_name_or_default(&rig.name))
            );
            Some((server, markers))
        }
        _ => None,
    };
    let mut schedule = sim_cfg.as_ref().map(|s| sim::GateSchedule::new(s.open_loop_block_bins, rig.safety.enabled));
    let mut thread_watch = crate::telemetry::threads::ThreadWatch::default();
    while !loop_handle.is_finished() {
        let done = loop_status.bins_done.load(Ordering::Acquire);
        thread_watch.poll(done);
        if interrupted.swap(false, Ordering::AcqRel) {
            eprintln!("[neuroloop] interrupted: finishing bin {done} and writing the report");
            let _ = dispatcher.submit(Source::Signal, Request::Stop);
        }
        if let Some(request) = schedule.as_mut().and_then(|s| s.due(done)) {
            if let Err(r) = dispatcher.submit(Source::Schedule, request) {
                // The session is ending (or the loop has stalled): the schedule stops here.
                if !dispatcher.session_over() {
                    eprintln!("[neuroloop] warning: the open/closed-loop schedule stopped: {}", r.error());
                }
                schedule = None;
            }
        }
        // Coarse on purpose: every wake-up costs CPU the loop may need on a small machine.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut loop_end = loop_handle.join().map_err(|_| anyhow::anyhow!("the loop thread panicked"))?;
    if let (Some(h), Some(release)) = (&sim_handles, &release_outlet) {
        // The emitter has pushed its last sample when its count reaches the session's
        // bins; the rig has it all when its count does.
        let until = clock::now() + emit::MAX_LINGER_S;
        while !emitter.is_finished() && clock::now() < until {
            let pushed = emit_counts.pushed.load(Ordering::Acquire);
            if pushed >= end_bin.load(Ordering::Acquire) && h.control.has_all(pushed) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        release.store(true, Ordering::Release);
    }
    emitter.join().map_err(|_| anyhow::anyhow!("the emitter thread panicked"))?;
    stop.store(true, Ordering::Release);
    let _ = ingest_handle.join();
    loop_status.after_end_spikes.store(loop_end.count_after_end(), Ordering::Release);
    // The rig takes the last Control samples (still in flight when the emitter returned)
    // before it stops, so that what it missed is what it really missed.
    let pushed = emit_counts.pushed.load(Ordering::Acquire);
    let rig_control = sim_handles.as_ref().map(|h| {
        h.control.wait_for(pushed, 0.5);
        h.control.summary(pushed)
    });
    sim_stop.store(true, Ordering::Release);
    if let Some(h) = sim_handles {
        let _ = h.sim.join();
        let _ = h.receiver.join();
    }
    telemetry_stop.store(true, Ordering::Release);
    let mut report = telemetry_handle.join().map_err(|_| anyhow::anyhow!("the telemetry thread panicked"))?;
    report.device_errors = loop_end.backend.stats().device_errors;
    // The loop's own count, final (telemetry's report may predate the loop's last bins).
    report.controller_faults = loop_status.controller_faults.load(Ordering::Relaxed);
    report.realtime = realtime.grants();
    report.threads = thread_watch.summary();
    if let Some(rc) = rig_control {
        // A model without inputs (m = 0) has no Control stream for the simulator to hear.
        if (rc.lost > 0 || rc.reconnects > 0) && loop_end.backend.dims().control > 0 {
            let msg = format!(
                "the simulated rig did not receive {} of {} Control samples (it heard from bin {} on; its inlet subscribed again {} times){}",
                rc.lost,
                pushed,
                rc.first_bin.map_or("none".into(), |b| b.to_string()),
                rc.reconnects,
                if rc.first_bin.is_some_and(|b| b > 0) { "; a longer [timing] start_delay_ms gives it time to subscribe" } else { "" }
            );
            eprintln!("[neuroloop] warning: {msg}");
            report.notices.push(msg);
        }
        report.rig_control = Some(rc);
    }
    if let Some((server, markers)) = control_plane {
        // After telemetry's last frame, so that the dashboard shows how the session ended.
        server.stop();
        markers_stop.store(true, Ordering::Release);
        let _ = markers.join();
    }
    report.commands = dispatcher.counts();
    if report.commands.journal_dropped > 0 {
        let msg = format!(
            "{} command records could not be journaled into the recording (its queue was full): replay will not re-apply them",
            report.commands.journal_dropped
        );
        eprintln!("[neuroloop] warning: {msg}");
        report.notices.push(msg);
    }
    if report.device_errors > 0 {
        let msg = format!(
            "the {} backend failed on {} bins (each got the fallback; their x and z are NaN)",
            report.backend, report.device_errors
        );
        eprintln!("[neuroloop] warning: {msg}");
        report.notices.push(msg);
    }
    if let Some(r) = recorder {
        let mut summary = r.finish();
        // The timing rows are telemetry's joined bins: a record telemetry lost is a row's
        // missing half.
        summary.dropped_timing += report.telemetry_dropped;
        let samples: Vec<String> = summary.streams.iter().map(|s| format!("{} {}", s.name, s.samples)).collect();
        eprintln!("[neuroloop] recorded {} ({} bytes): {}", summary.path, summary.bytes, samples.join(", "));
        let lost = summary.dropped_input_samples
            + summary.dropped_bins
            + summary.dropped_control
            + summary.dropped_status
            + summary.dropped_timing
            + summary.dropped_truth;
        if lost > 0 {
            let msg = format!(
                "the recording lost records (its queues were full): {} input samples, {} bins, {} control samples, {} status samples, {} timing rows, {} simulator truth records",
                summary.dropped_input_samples, summary.dropped_bins, summary.dropped_control, summary.dropped_status, summary.dropped_timing, summary.dropped_truth
            );
            eprintln!("[neuroloop] warning: {msg}");
            report.notices.push(msg);
        }
        if let Some(e) = &summary.error {
            report.notices.push(format!("recording: {e}"));
        }
        report.recording = Some(summary);
    }
    if let Some(path) = &opts.report {
        crate::outfile::write_output(path, serde_json::to_string_pretty(&report)?.as_bytes(), "report")?;
        eprintln!("[neuroloop] report written to {}", path.display());
    }
    Ok(report)
}

/// Run only the simulated rig (a separate process from the controller).
pub fn run_sim_only(rig: &Rig, truth: ModelParams, bins: Option<u64>) -> anyhow::Result<()> {
    let sc = rig.sim.clone().context("the rig has no [sim] section")?;
    let end_bin = Arc::new(AtomicU64::new(bins.unwrap_or(u64::MAX)));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let end_bin = end_bin.clone();
        let _ = ctrlc::set_handler(move || end_bin.store(0, Ordering::Release));
    }
    // The controller's timing from the same rig file: the simulator steps when u_{j−1} is due.
    let clock = rig.timing.grid(clock::now() + 0.5);
    let h = sim::start(SimSetup {
        params: truth,
        cfg: sc.clone(),
        clock,
        control_stream: rig.output.control_name.clone(),
        control_source_id: None,
        end_bin,
        stop: stop.clone(),
        truth: FanOut::default(),
        end_to_end: None,
        outage: sc.dropout_bins.map(|[a, b]| (a, b)),
        channel_labels: rig.units.labels.clone(),
        wait: rig.timing.wait,
    })?;
    eprintln!("[neuroloop] simulator publishing '{}' ({:?}); Ctrl-C to stop", sc.stream_name, sc.output);
    let _ = h.sim.join();
    stop.store(true, Ordering::Release);
    let _ = h.receiver.join();
    Ok(())
}
