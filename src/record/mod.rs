//! Session recording (`neuroloop run --record FILE.xdf`): everything a closed-loop session
//! saw and did, in XDF, the format the LSL world reads.
//!
//! Streams in a recording (ids fixed so replay and analysis scripts can rely on them):
//! - 1 **input**: the rig's spike stream exactly as the inlet received it: its own header
//!   XML, channel format, remote timestamps and the clock offsets ingest measured (as
//!   LabRecorder records it). A reconnect to a different stream opens ids 10, 11, ….
//! - 2 **bins**: the counts each bin was closed with, live, then its late and future spikes.
//! - 3 **Control**: what the emitter pushed (float32, timestamp = bin end).
//! - 4 **Status**: the Status stream's samples, as telemetry pushed them (handed over, not recomputed).
//! - 5 **timing**: per bin, when it closed, started, finished and was pushed, and the
//!   decisions that replay needs to repeat the bin (data present, on time, gate, …).
//!
//! The stages hand records to the recorder thread through preallocated lock-free queues
//! and rings (`crate::tap`: [`InputTap`], [`BinTap`], [`Tap`]); a full queue drops the record and counts
//! it (reported at the end), it never makes a stage wait. The recorder thread encodes and
//! writes chunks every `flush_s`; a killed process leaves everything up to the last flush.

pub mod read;
pub mod xdf;

use crate::clock::BinGrid;
use crate::events::{BinRecord, Emitted, TruthRecord};
use crate::lslutil::StreamSpec;
use crate::schema::{StatusSample, TIMING_LABELS};
use crate::tap::{BinTap, InputConnection, InputTap, Tap, TOKEN_SAMPLE};
use ringbuf::traits::{Consumer, Observer, Split};
use serde::Serialize;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use xdf::{Format, XdfWriter};

pub const STREAM_INPUT: u32 = 1;
pub const STREAM_BINS: u32 = 2;
pub const STREAM_CONTROL: u32 = 3;
pub const STREAM_STATUS: u32 = 4;
pub const STREAM_TIMING: u32 = 5;
/// The simulated rig's task switches (a Markers stream, `task=<index>`), simulated rigs only.
pub const STREAM_MARKERS: u32 = 6;
/// The simulated rig's true state per bin (bin, task, x…), simulated rigs only.
pub const STREAM_SIM_TRUTH: u32 = 7;
/// What a task-switch marker says: `task=<label>` from its timestamp on.
pub const TASK_MARKER_PREFIX: &str = "task=";
/// Input streams after a reconnect to a different source get ids from here on.
pub const STREAM_INPUT_NEXT: u32 = 10;

/// Where a recording comes from (written into the file header and every stream's desc).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Provenance {
    pub neuroloop_version: String,
    pub rig_name: String,
    pub rig_path: String,
    pub rig_sha256: String,
    /// The rig file's text (so a recording says exactly what ran).
    #[serde(skip)]
    pub rig_toml: String,
    pub model: String,
    /// Empty for the simulator's built-in truth.
    pub model_sha256: String,
    pub backend: String,
}

impl Provenance {
    /// Hashes the rig file and the model file (when it is one).
    pub fn of(rig: &crate::rig::Rig, backend: &str) -> anyhow::Result<Provenance> {
        use anyhow::Context;
        let rig_bytes = std::fs::read(&rig.path).with_context(|| format!("cannot read the rig file {}", rig.path.display()))?;
        let (model, model_sha256) = match rig.model_path() {
            Some(p) => {
                let bytes = std::fs::read(&p).with_context(|| format!("cannot read the model file {}", p.display()))?;
                (p.display().to_string(), sha256_hex(&bytes))
            }
            None => ("the simulator's true model".to_string(), String::new()),
        };
        Ok(Provenance {
            neuroloop_version: env!("CARGO_PKG_VERSION").into(),
            rig_name: rig.name.clone(),
            rig_path: rig.path.display().to_string(),
            rig_sha256: sha256_hex(&rig_bytes),
            rig_toml: String::from_utf8_lossy(&rig_bytes).into_owned(),
            model,
            model_sha256,
            backend: backend.into(),
        })
    }

    fn add_to(&self, info: &mut lsl::StreamInfo) {
        let mut n = info.desc().append_child("neuroloop");
        n.append_child_value("version", &self.neuroloop_version);
        n.append_child_value("rig", &self.rig_path);
        n.append_child_value("rig_sha256", &self.rig_sha256);
        n.append_child_value("model", &self.model);
        n.append_child_value("model_sha256", &self.model_sha256);
        n.append_child_value("backend", &self.backend);
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// What the recorder thread needs.
pub struct RecorderSetup {
    pub path: PathBuf,
    pub provenance: Provenance,
    pub clock: BinGrid,
    pub n_units: usize,
    pub latent: usize,
    pub embed: usize,
    pub control: usize,
    /// Model unit labels (bins stream channels).
    pub unit_labels: Vec<String>,
    pub control_spec: StreamSpec,
    pub status_spec: StreamSpec,
    pub rig_name: String,
    /// Write what has arrived this often (s): the most a killed process can lose.
    pub flush_s: f64,
    /// The simulated rig's latent dimension, when the session runs the built-in simulator:
    /// its task switches (Markers) and true state are recorded too.
    pub sim_truth_latent: Option<usize>,
}

/// The stages' ends of the recorder's queues (hand each to its stage).
pub struct RecorderTaps {
    pub input: InputTap,
    pub bins: BinTap,
    pub emitted: Tap<Emitted>,
    /// For the simulator (when `sim_truth_latent` is set).
    pub truth: Option<Tap<TruthRecord>>,
    /// For telemetry: the Status samples it pushed.
    pub status: Tap<StatusSample>,
}

/// The recorder's ends.
struct Sources {
    connections: crossbeam_channel::Receiver<InputConnection>,
    input_dropped: Arc<AtomicU64>,
    records: Tap<BinRecord>,
    counts: ringbuf::HeapCons<f64>,
    emitted: Tap<Emitted>,
    truth: Option<Tap<TruthRecord>>,
    status: Tap<StatusSample>,
}

/// The end-of-run summary of a recording (in the run's report).
#[derive(Debug, Clone, Serialize)]
pub struct RecordingSummary {
    pub path: String,
    pub bytes: u64,
    pub streams: Vec<RecordedStream>,
    /// Records the recorder's queues could not take (0 on a machine that keeps up).
    pub dropped_input_samples: u64,
    pub dropped_bins: u64,
    pub dropped_control: u64,
    /// Simulator truth records lost the same way (simulated rigs).
    pub dropped_truth: u64,
    /// Status samples lost the same way.
    pub dropped_status: u64,
    /// A write error that stopped the recording early (the file holds what came before).
    pub error: Option<String>,
    /// Samples (all streams) that came after the write error and are not in the file: the
    /// run goes on, memory stays flat, and the loss is counted here.
    pub samples_lost_after_error: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordedStream {
    pub id: u32,
    pub name: String,
    pub samples: u64,
}

pub struct Recorder {
    handle: Option<std::thread::JoinHandle<RecordingSummary>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Recorder {
    /// A session that ends early on an error still closes its recording.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Recorder {
    /// Create the file (an error here stops the run before it starts) and start the thread.
    /// `bins_capacity` bins of records can queue up before any is dropped.
    pub fn start(setup: RecorderSetup, bins_capacity: usize) -> anyhow::Result<(Recorder, RecorderTaps)> {
        use anyhow::Context;
        let writer = XdfWriter::create(&setup.path, &file_header_body(&setup))
            .with_context(|| format!("cannot create the recording {}", setup.path.display()))?;
        // The counts ring holds `bins_capacity` bins, capped at 256 MiB for huge arrays.
        let bins_capacity = bins_capacity.min(((32usize << 20) / setup.n_units.max(1)).max(64));
        let (counts_prod, counts_cons) = ringbuf::HeapRb::<f64>::new(bins_capacity * setup.n_units.max(1)).split();
        let records = Tap::new(bins_capacity);
        let emitted = Tap::new(bins_capacity);
        let truth = setup.sim_truth_latent.map(|_| Tap::new(bins_capacity));
        let status = Tap::new(bins_capacity);
        let (conn_tx, conn_rx) = crossbeam_channel::unbounded();
        let input_dropped = Arc::new(AtomicU64::new(0));
        let taps = RecorderTaps {
            input: InputTap { connections: conn_tx, dropped: input_dropped.clone() },
            bins: BinTap { records: records.clone(), counts: counts_prod, n_units: setup.n_units },
            emitted: emitted.clone(),
            truth: truth.clone(),
            status: status.clone(),
        };
        let sources = Sources { connections: conn_rx, input_dropped, records, counts: counts_cons, emitted, truth, status };
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("neuroloop-record".into())
            .spawn(move || RecorderThread::new(setup, sources, writer).run(&s))?;
        Ok((Recorder { handle: Some(handle), stop }, taps))
    }

    /// Drain everything queued, write the footers and close the file. Call after the
    /// stages have stopped.
    pub fn finish(mut self) -> RecordingSummary {
        self.stop.store(true, Ordering::Release);
        self.handle.take().expect("finished once").join().unwrap_or_else(|p| RecordingSummary {
            path: String::new(),
            bytes: 0,
            streams: Vec::new(),
            dropped_input_samples: 0,
            dropped_bins: 0,
            dropped_status: 0,
            dropped_control: 0,
            dropped_truth: 0,
            samples_lost_after_error: 0,
            error: Some(format!("the recorder thread panicked: {}", crate::panic_message(&*p))),
        })
    }
}

fn file_header_body(s: &RecorderSetup) -> String {
    use xdf::xml_escape as x;
    let p = &s.provenance;
    let c = &s.clock;
    format!(
        "<datetime>{}</datetime><recorder>neuroloop {}</recorder><neuroloop><version>{}</version>\
         <rig><name>{}</name><path>{}</path><sha256>{}</sha256><toml>{}</toml></rig>\
         <model><path>{}</path><sha256>{}</sha256></model><backend>{}</backend>\
         <dims><units>{}</units><latent>{}</latent><embed>{}</embed><control>{}</control></dims>\
         <bin_grid><t0>{:?}</t0><bin_s>{:?}</bin_s><grace_s>{:?}</grace_s><deadline_s>{:?}</deadline_s></bin_grid>\
         <streams><input>{STREAM_INPUT}</input><bins>{STREAM_BINS}</bins><control>{STREAM_CONTROL}</control>\
         <status>{STREAM_STATUS}</status><timing>{STREAM_TIMING}</timing>{}</streams></neuroloop>",
        utc_now_iso8601(),
        x(&p.neuroloop_version),
        x(&p.neuroloop_version),
        x(&p.rig_name),
        x(&p.rig_path),
        x(&p.rig_sha256),
        x(&p.rig_toml),
        x(&p.model),
        x(&p.model_sha256),
        x(&p.backend),
        s.n_units,
        s.latent,
        s.embed,
        s.control,
        c.t0,
        c.bin_s,
        c.grace_s,
        c.deadline_s,
        if s.sim_truth_latent.is_some() {
            format!("<markers>{STREAM_MARKERS}</markers><sim_truth>{STREAM_SIM_TRUTH}</sim_truth>")
        } else {
            String::new()
        },
    )
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn utc_now_iso8601() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Samples of one stream waiting for the next flush.
struct Pending {
    id: u32,
    timestamps: Vec<f64>,
    values: Vec<f64>,
}

impl Pending {
    fn new(id: u32) -> Pending {
        Pending { id, timestamps: Vec::new(), values: Vec::new() }
    }
    fn write(&mut self, w: &mut XdfWriter) {
        w.samples(self.id, &self.timestamps, &self.values);
        self.timestamps.clear();
        self.values.clear();
    }
}

struct CurrentInput {
    id: u32,
    uid: String,
    channels: usize,
    ring: ringbuf::HeapCons<f64>,
}

struct RecorderThread {
    s: RecorderSetup,
    src: Sources,
    w: XdfWriter,
    error: Option<String>,
    names: Vec<(u32, String)>,
    input: Option<CurrentInput>,
    input_pending: Option<Pending>,
    next_input_id: u32,
    bins: Pending,
    control: Pending,
    status: Pending,
    timing: Pending,
    /// The simulator's true state (bin, task, x…) and its task-switch markers.
    truth: Pending,
    markers: (Vec<f64>, Vec<String>),
    last_task: Option<usize>,
    /// Loop and emitter records not yet joined (timing needs both).
    loop_recs: VecDeque<BinRecord>,
    emitted: VecDeque<Emitted>,
    counts: Vec<f64>,
}

impl RecorderThread {
    fn new(s: RecorderSetup, src: Sources, w: XdfWriter) -> RecorderThread {
        let n = s.n_units;
        let mut t = RecorderThread {
            bins: Pending::new(STREAM_BINS),
            control: Pending::new(STREAM_CONTROL),
            status: Pending::new(STREAM_STATUS),
            timing: Pending::new(STREAM_TIMING),
            truth: Pending::new(STREAM_SIM_TRUTH),
            markers: (Vec::new(), Vec::new()),
            last_task: None,
            counts: vec![0.0; n],
            s,
            src,
            w,
            error: None,
            names: Vec::new(),
            input: None,
            input_pending: None,
            next_input_id: STREAM_INPUT,
            loop_recs: VecDeque::new(),
            emitted: VecDeque::new(),
        };
        t.declare_local_streams();
        t
    }

    /// Headers of the streams neuroloop itself produces (local clock: offset 0).
    fn declare_local_streams(&mut self) {
        let s = &self.s;
        let bin_s = s.clock.bin_s;
        let source = format!("neuroloop-{}", s.rig_name);
        let mut bin_labels: Vec<String> = s.unit_labels.iter().map(|l| format!("count {l}")).collect();
        bin_labels.extend(["late_spikes", "future_spikes"].map(String::from));
        // neuroloop's own per-bin double64 streams, named after the rig.
        let per_bin = |suffix: &str, stream_type: &str, labels: Vec<String>, channel_type: &str| StreamSpec {
            name: format!("{}-{suffix}", s.rig_name),
            stream_type: stream_type.into(),
            srate: 1.0 / bin_s,
            format: lsl::ChannelFormat::Double64,
            source_id: format!("{source}-{suffix}"),
            labels,
            channel_type: channel_type.into(),
        };
        let mut specs = vec![
            (STREAM_BINS, per_bin("bins", "NeuroloopBins", bin_labels, "count"), Format::Double64),
            (STREAM_CONTROL, s.control_spec.clone(), Format::Float32),
            (STREAM_STATUS, s.status_spec.clone(), Format::Double64),
            (STREAM_TIMING, per_bin("timing", "NeuroloopTiming", TIMING_LABELS.map(String::from).to_vec(), "timing"), Format::Double64),
        ];
        if let Some(d) = s.sim_truth_latent {
            let markers = StreamSpec {
                name: format!("{}-tasks", s.rig_name),
                stream_type: "Markers".into(),
                srate: lsl::IRREGULAR_RATE,
                format: lsl::ChannelFormat::String,
                source_id: format!("{source}-tasks"),
                labels: vec!["task".into()],
                channel_type: "marker".into(),
            };
            let mut labels = vec!["bin".to_string(), "task".to_string()];
            labels.extend((0..d).map(|i| format!("x{i}")));
            specs.push((STREAM_MARKERS, markers, Format::String));
            specs.push((STREAM_SIM_TRUTH, per_bin("sim-truth", "NeuroloopSimTruth", labels, "truth"), Format::Double64));
        }
        for (id, spec, format) in specs {
            let xml = match spec.info() {
                Ok(mut info) => {
                    self.s.provenance.add_to(&mut info);
                    info.to_xml().unwrap_or_default()
                }
                Err(e) => {
                    self.error.get_or_insert(e);
                    String::new()
                }
            };
            self.w.add_stream(id, &xml, format, spec.labels.len());
            self.names.push((id, spec.name.clone()));
        }
        self.local_offsets();
        self.flush();
    }

    /// LabRecorder records clock offsets for every stream; neuroloop's own streams are on
    /// the local clock, so theirs are 0.
    fn local_offsets(&mut self) {
        let now = crate::clock::now();
        let ids: Vec<u32> = self.names.iter().map(|(id, _)| *id).filter(|id| (STREAM_BINS..=STREAM_SIM_TRUTH).contains(id)).collect();
        for id in ids {
            self.w.clock_offset(id, now, 0.0);
        }
    }

    fn flush(&mut self) {
        if self.error.is_none() {
            if let Err(e) = self.w.flush() {
                self.error = Some(format!("writing {} failed: {e}; the recording stops here", self.s.path.display()));
                eprintln!("[neuroloop] {}", self.error.as_ref().unwrap());
            }
        }
    }

    fn run(mut self, stop: &AtomicBool) -> RecordingSummary {
        let mut next_flush = crate::clock::now() + self.s.flush_s;
        let mut next_boundary = crate::clock::now() + 10.0;
        loop {
            let stopping = stop.load(Ordering::Acquire);
            self.drain();
            let now = crate::clock::now();
            if now >= next_flush || stopping {
                self.write_pending();
                if now >= next_boundary {
                    self.local_offsets();
                    self.w.boundary();
                    next_boundary = now + 10.0;
                }
                self.flush();
                next_flush = now + self.s.flush_s;
            }
            if stopping {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Records whose partner never came (dropped on a full queue): written as they are.
        self.join_records(true);
        self.write_pending();
        self.flush();
        let streams: Vec<RecordedStream> =
            self.names.iter().map(|(id, name)| RecordedStream { id: *id, name: name.clone(), samples: self.w.sample_count(*id) }).collect();
        let samples_lost_after_error = self.names.iter().map(|(id, _)| self.w.samples_lost(*id)).sum();
        let mut error = self.error.take();
        let bytes = if error.is_none() {
            match self.w.finish() {
                Ok(b) => b,
                Err(e) => {
                    error = Some(format!("closing {} failed: {e}", self.s.path.display()));
                    0
                }
            }
        } else {
            self.w.bytes_written()
        };
        RecordingSummary {
            samples_lost_after_error,
            path: self.s.path.display().to_string(),
            bytes,
            streams,
            dropped_input_samples: self.src.input_dropped.load(Ordering::Relaxed),
            dropped_bins: self.src.records.dropped.load(Ordering::Relaxed),
            dropped_control: self.src.emitted.dropped.load(Ordering::Relaxed),
            dropped_truth: self.src.truth.as_ref().map_or(0, |t| t.dropped.load(Ordering::Relaxed)),
            dropped_status: self.src.status.dropped.load(Ordering::Relaxed),
            error,
        }
    }

    fn write_pending(&mut self) {
        if let Some(p) = &mut self.input_pending {
            p.write(&mut self.w);
        }
        for p in [&mut self.bins, &mut self.control, &mut self.status, &mut self.timing] {
            p.write(&mut self.w);
        }
        if self.s.sim_truth_latent.is_some() {
            self.truth.write(&mut self.w);
            self.w.text_samples(STREAM_MARKERS, &self.markers.0, &self.markers.1);
            self.markers.0.clear();
            self.markers.1.clear();
        }
    }

    fn drain(&mut self) {
        // A new connection: finish the old one's ring first (its ingest end is gone).
        while let Ok(conn) = self.src.connections.try_recv() {
            self.drain_input();
            self.open_input(conn);
        }
        self.drain_input();
        let n = self.s.n_units;
        while let Some(rec) = self.src.records.queue.pop() {
            let got = self.src.counts.pop_slice(&mut self.counts);
            debug_assert_eq!(got, n);
            let p = &mut self.bins;
            p.timestamps.push(self.s.clock.bin_end(rec.bin));
            p.values.extend_from_slice(&self.counts);
            p.values.push(rec.late_spikes as f64);
            p.values.push(rec.future_spikes as f64);
            self.loop_recs.push_back(rec);
        }
        while let Some(e) = self.src.emitted.queue.pop() {
            let p = &mut self.control;
            p.timestamps.push(self.s.clock.bin_end(e.bin));
            // The outlet pushed these f32 values; the writer rounds f64 → f32 the same way.
            p.values.extend_from_slice(&e.u[..self.s.control]);
            self.emitted.push_back(e);
        }
        let width = crate::schema::status_channels(self.s.latent, self.s.embed);
        while let Some(st) = self.src.status.queue.pop() {
            self.status.timestamps.push(st.timestamp);
            self.status.values.extend_from_slice(&st.values[..width]);
        }
        if let (Some(tap), Some(d)) = (&self.src.truth, self.s.sim_truth_latent) {
            while let Some(t) = tap.queue.pop() {
                if self.last_task != Some(t.task) {
                    self.last_task = Some(t.task);
                    self.markers.0.push(self.s.clock.bin_start(t.bin));
                    self.markers.1.push(format!("{TASK_MARKER_PREFIX}{}", t.task));
                }
                self.truth.timestamps.push(self.s.clock.bin_end(t.bin));
                self.truth.values.push(t.bin as f64);
                self.truth.values.push(t.task as f64);
                self.truth.values.extend_from_slice(&t.x[..d]);
            }
        }
        self.join_records(false);
    }

    fn open_input(&mut self, conn: InputConnection) {
        if let Some(p) = &mut self.input_pending {
            p.write(&mut self.w);
        }
        let same = self.input.as_ref().is_some_and(|c| c.uid == conn.uid && c.channels == conn.channels);
        let id = if same {
            self.input.as_ref().unwrap().id
        } else {
            // InputTap takes numeric streams only, and XDF holds every numeric format (were it
            // not so, the writer's ring fills and counts its samples as dropped).
            let Some(format) = Format::from_lsl(conn.format) else { return };
            let id = self.next_input_id;
            self.next_input_id = if id == STREAM_INPUT { STREAM_INPUT_NEXT } else { id + 1 };
            self.w.add_stream(id, &conn.xml, format, conn.channels);
            self.names.push((id, conn.name));
            id
        };
        self.input_pending = Some(Pending::new(id));
        self.input = Some(CurrentInput { id, uid: conn.uid, channels: conn.channels, ring: conn.ring });
    }

    fn drain_input(&mut self) {
        let (Some(c), Some(p)) = (&mut self.input, &mut self.input_pending) else { return };
        let mut head = [0.0f64; 3];
        loop {
            // Tokens are published whole, so a token's rest is there once its head is.
            if c.ring.occupied_len() < 2 || c.ring.pop_slice(&mut head[..2]) < 2 {
                break;
            }
            if head[0] == TOKEN_SAMPLE {
                p.timestamps.push(head[1]);
                let start = p.values.len();
                p.values.resize(start + c.channels, 0.0);
                c.ring.pop_slice(&mut p.values[start..]);
            } else {
                let mut off = [0.0];
                c.ring.pop_slice(&mut off);
                // Samples before this offset go out first, then the offset (chunk order
                // keeps their relation).
                p.write(&mut self.w);
                self.w.clock_offset(c.id, head[1], off[0]);
            }
        }
    }

    /// Pair loop and emitter records by bin (both arrive in bin order) into timing
    /// samples. `all`: also write records left without a partner.
    fn join_records(&mut self, all: bool) {
        loop {
            let (r, e) = match (self.loop_recs.front(), self.emitted.front()) {
                (Some(r), Some(e)) if r.bin == e.bin => (self.loop_recs.pop_front(), self.emitted.pop_front()),
                (Some(r), Some(e)) if r.bin < e.bin => (self.loop_recs.pop_front(), None),
                (Some(_), Some(_)) => (None, self.emitted.pop_front()),
                (Some(_), None) if all => (self.loop_recs.pop_front(), None),
                (None, Some(_)) if all => (None, self.emitted.pop_front()),
                _ => break,
            };
            self.timing_sample(r.as_ref(), e.as_ref());
        }
    }

    fn timing_sample(&mut self, r: Option<&BinRecord>, e: Option<&Emitted>) {
        let k = r.map(|r| r.bin).or(e.map(|e| e.bin)).unwrap();
        let c = &self.s.clock;
        let b = |v: bool| v as u8 as f64;
        let nan = f64::NAN;
        let (started, done, has_data, want, valid, on_time, from) = match r {
            Some(r) => (r.started_at, r.done_at, b(r.has_data), b(r.want_control), b(r.control_valid), b(r.on_time), r.u_prev_from.map_or(-1.0, |b| b as f64)),
            None => (nan, nan, nan, nan, nan, nan, nan),
        };
        let (pushed, miss, fallback, enabled) = match e {
            Some(e) => (e.pushed_at, b(e.deadline_miss), b(e.fallback), b(e.enabled)),
            None => (nan, nan, nan, nan),
        };
        let row = [k as f64, c.close(k), started, done, c.deadline(k), pushed, has_data, want, valid, on_time, miss, fallback, enabled, from];
        self.timing.timestamps.push(c.bin_end(k));
        self.timing.values.extend_from_slice(&row);
    }
}
