//! The recorder thread: drains the taps, encodes the streams and writes chunks every
//! `flush_s`; a write error stops the recording (counted), never the run.

use super::*;
use ringbuf::traits::{Consumer, Observer};

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

pub(super) struct RecorderThread {
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
    /// The control plane's command records (JSON).
    commands: (Vec<f64>, Vec<String>),
    last_task: Option<usize>,
    counts: Vec<f64>,
}

impl RecorderThread {
    pub(super) fn new(s: RecorderSetup, src: Sources, w: XdfWriter) -> RecorderThread {
        let n = s.n_units;
        let mut t = RecorderThread {
            bins: Pending::new(STREAM_BINS),
            control: Pending::new(STREAM_CONTROL),
            status: Pending::new(STREAM_STATUS),
            timing: Pending::new(STREAM_TIMING),
            truth: Pending::new(STREAM_SIM_TRUTH),
            markers: (Vec::new(), Vec::new()),
            commands: (Vec::new(), Vec::new()),
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
        };
        t.declare_local_streams();
        t
    }

    /// Headers of the streams neuroloop itself produces (local clock: offset 0).
    fn declare_local_streams(&mut self) {
        let s = &self.s;
        let bin_s = s.clock.bin_s;
        let source = &s.source_id;
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
        specs.push((
            STREAM_COMMANDS,
            StreamSpec {
                name: format!("{}-commands", s.rig_name),
                stream_type: "Markers".into(),
                srate: lsl::IRREGULAR_RATE,
                format: lsl::ChannelFormat::String,
                source_id: format!("{source}-commands"),
                labels: vec![COMMANDS_LABEL.into()],
                channel_type: "marker".into(),
            },
            Format::String,
        ));
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
        let ids: Vec<u32> = self.names.iter().map(|(id, _)| *id).filter(|id| (STREAM_BINS..=STREAM_COMMANDS).contains(id)).collect();
        for id in ids {
            self.w.clock_offset(id, now, 0.0);
        }
    }

    fn flush(&mut self) {
        if self.error.is_none() {
            if let Err(e) = self.w.flush() {
                self.error = Some(format!(
                    "writing {} failed: {e}; the recording stops here: what was written is in {} ({} was not replaced)",
                    self.s.path.display(),
                    self.w.partial_path().display(),
                    self.s.path.display()
                ));
                eprintln!("[neuroloop] {}", self.error.as_ref().unwrap());
            }
        }
    }

    pub(super) fn run(mut self, stop: &AtomicBool) -> RecordingSummary {
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
        self.write_pending();
        self.flush();
        let streams: Vec<RecordedStream> =
            self.names.iter().map(|(id, name)| RecordedStream { id: *id, name: name.clone(), samples: self.w.sample_count(*id) }).collect();
        let samples_lost_after_error = self.names.iter().map(|(id, _)| self.w.samples_lost(*id)).sum();
        let mut error = self.error.take();
        let partial = self.w.partial_path().to_path_buf();
        let bytes = if error.is_none() {
            match self.w.finish() {
                Ok(b) => b,
                Err(e) => {
                    error = Some(format!(
                        "closing {} failed: {e}; the recording is in {} ({} was not replaced)",
                        self.s.path.display(),
                        partial.display(),
                        self.s.path.display()
                    ));
                    0
                }
            }
        } else {
            self.w.bytes_written()
        };
        RecordingSummary {
            samples_lost_after_error,
            // Where the recording is: its path, or its partial file after an error.
            path: if error.is_none() { self.s.path.display().to_string() } else { partial.display().to_string() },
            bytes,
            streams,
            dropped_input_samples: self.src.input_dropped.load(Ordering::Relaxed),
            dropped_bins: self.src.records.dropped.load(Ordering::Relaxed),
            dropped_control: self.src.emitted.dropped.load(Ordering::Relaxed),
            dropped_truth: self.src.truth.as_ref().map_or(0, |t| t.dropped.load(Ordering::Relaxed)),
            dropped_status: self.src.status.dropped.load(Ordering::Relaxed),
            dropped_timing: self.src.joined.dropped.load(Ordering::Relaxed),
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
        self.w.text_samples(STREAM_COMMANDS, &self.commands.0, &self.commands.1);
        self.commands.0.clear();
        self.commands.1.clear();
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
        }
        while let Some(e) = self.src.emitted.queue.pop() {
            let p = &mut self.control;
            p.timestamps.push(self.s.clock.bin_end(e.bin));
            // The outlet pushed these f32 values; the writer rounds f64 → f32 the same way.
            p.values.extend_from_slice(&e.u[..self.s.control]);
        }
        while let Some(j) = self.src.joined.queue.pop() {
            self.timing.timestamps.push(self.s.clock.bin_end(j.bin));
            self.timing.values.extend_from_slice(&crate::schema::timing_row(&self.s.clock, &j));
        }
        while let Ok(c) = self.src.commands.try_recv() {
            self.commands.0.push(c.received_at);
            self.commands.1.push(serde_json::to_string(&c).unwrap_or_default());
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
}
