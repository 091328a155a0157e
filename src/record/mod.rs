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
//!   decisions that replay needs to repeat the bin (data present, on time, gate, …), from
//!   the bins as telemetry joined them (the one by-bin joiner, `telemetry::join`).
//! - 6, 7: the simulated rig's task switches and true state (simulated rigs only).
//! - 8 **commands** (Markers): every control-plane command from any interface, accepted or
//!   refused, with the bins it took effect at (a JSON `CommandRecord` per marker, stamped
//!   when it was received); replay re-applies them at those bins.
//!
//! The stages hand records to the recorder thread through preallocated lock-free queues
//! and rings (`crate::tap`: [`InputTap`], [`BinTap`], [`Tap`]); a full queue drops the record and counts
//! it (reported at the end), it never makes a stage wait. The recorder thread encodes and
//! writes chunks every `flush_s`; a killed process leaves everything up to the last flush.

mod header;
mod provenance;
pub mod read;
pub mod scan;
mod writer;
pub mod xdf;

use header::file_header_body;
pub use provenance::{sha256_hex, Provenance};
use writer::RecorderThread;

use crate::clock::BinGrid;
use crate::control_plane::CommandRecord;
use crate::events::{Emitted, JoinedBin, LoopBin, TruthBin};
use crate::lslutil::StreamSpec;
use crate::schema::{StatusSample, TIMING_LABELS};
use crate::tap::{BinTap, InputConnection, InputTap, Tap, TOKEN_SAMPLE};
use ringbuf::traits::Split;
use serde::Serialize;
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
/// The control plane's commands and their outcomes (a Markers stream, one JSON
/// `control_plane::CommandRecord` per sample; replay re-applies them).
pub const STREAM_COMMANDS: u32 = 8;
/// The commands stream's one channel label (how replay finds the stream).
pub const COMMANDS_LABEL: &str = "neuroloop_command";
/// What a task-switch marker says: `task=<label>` from its timestamp on.
pub const TASK_MARKER_PREFIX: &str = "task=";
/// Input streams after a reconnect to a different source get ids from here on.
pub const STREAM_INPUT_NEXT: u32 = 10;

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
    /// The rig's source_id prefix (`Rig::source_id`); each recorded stream of neuroloop's
    /// own appends its suffix.
    pub source_id: String,
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
    pub truth: Option<Tap<TruthBin>>,
    /// For telemetry: the Status samples it pushed.
    pub status: Tap<StatusSample>,
    /// For telemetry: the bins as it joined them (the timing stream).
    pub joined: Tap<JoinedBin>,
    /// For the control plane: each command and its outcome.
    pub commands: crossbeam_channel::Sender<CommandRecord>,
}

/// The recorder's ends.
pub(super) struct Sources {
    connections: crossbeam_channel::Receiver<InputConnection>,
    input_dropped: Arc<AtomicU64>,
    records: Tap<LoopBin>,
    counts: ringbuf::HeapCons<f64>,
    emitted: Tap<Emitted>,
    truth: Option<Tap<TruthBin>>,
    status: Tap<StatusSample>,
    joined: Tap<JoinedBin>,
    commands: crossbeam_channel::Receiver<CommandRecord>,
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
    /// Timing rows lost the same way, or written with the loop's or the emitter's half
    /// missing because telemetry (which joins them) lost that record.
    pub dropped_timing: u64,
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
    partial: PathBuf,
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
        let partial = writer.partial_path().to_path_buf();
        // The counts ring holds `bins_capacity` bins, capped at 256 MiB for huge arrays.
        let joined = Tap::new(bins_capacity);
        let bins_capacity = bins_capacity.min(((32usize << 20) / setup.n_units.max(1)).max(64));
        let (counts_prod, counts_cons) = ringbuf::HeapRb::<f64>::new(bins_capacity * setup.n_units.max(1)).split();
        let records = Tap::new(bins_capacity);
        let emitted = Tap::new(bins_capacity);
        let truth = setup.sim_truth_latent.map(|_| Tap::new(bins_capacity));
        let status = Tap::new(bins_capacity);
        let (conn_tx, conn_rx) = crossbeam_channel::unbounded();
        let input_dropped = Arc::new(AtomicU64::new(0));
        // Commands come at an operator's pace (rate-limited): this holds minutes of them.
        let (commands_tx, commands_rx) = crossbeam_channel::bounded(4096);
        let taps = RecorderTaps {
            input: InputTap { connections: conn_tx, dropped: input_dropped.clone() },
            bins: BinTap { records: records.clone(), counts: counts_prod, n_units: setup.n_units },
            emitted: emitted.clone(),
            truth: truth.clone(),
            status: status.clone(),
            joined: joined.clone(),
            commands: commands_tx,
        };
        let sources = Sources {
            connections: conn_rx,
            input_dropped,
            records,
            counts: counts_cons,
            emitted,
            truth,
            status,
            joined,
            commands: commands_rx,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("neuroloop-record".into())
            .spawn(move || RecorderThread::new(setup, sources, writer).run(&s))?;
        Ok((Recorder { handle: Some(handle), stop, partial }, taps))
    }

    /// Where the recording is written until it is finished (then renamed to its path).
    pub fn partial_path(&self) -> &std::path::Path {
        &self.partial
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
            dropped_timing: 0,
            dropped_control: 0,
            dropped_truth: 0,
            samples_lost_after_error: 0,
            error: Some(format!("the recorder thread panicked: {}", crate::panic_message(&*p))),
        })
    }
}
