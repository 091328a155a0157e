//! The one path every interface's commands take into a running session (HTTP, LSL Markers,
//! the simulated rig's open/closed-loop schedule, Ctrl-C): parse, check against the
//! session, hand to the loop or the emitter through their preallocated queues, wait for the
//! bin it took effect at, and journal it (the recording's commands stream). Commands are
//! taken one at a time, so each one's reply is the next on its queue; nothing here runs on
//! the loop's or the emitter's thread.

use super::command::{CommandError, Request, SessionLimits};
use crate::clock::{self, BinGrid};
use crate::control::Objective;
use crate::emit::EmitQueues;
use crate::events::{EmitterCommand, LoopCommand, LoopQueues, LoopStatus};
use crate::rig::{FallbackKind, ObjectiveKind};
use crate::MAX_CONTROL;
use nalgebra::DVector;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Where a command came from (recorded with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Http,
    Websocket,
    Markers,
    /// The simulated rig's open/closed-loop schedule.
    Schedule,
    /// Ctrl-C, SIGTERM or SIGHUP.
    Signal,
}

/// A command and its outcome, as the recording's commands stream holds it (one JSON object
/// per marker) and as replay reads it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub id: u64,
    pub source: Source,
    /// Local (LSL) clock time it was received.
    pub received_at: f64,
    /// The command as applied: checked, every per-channel list at full length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Request>,
    /// What was sent, when it was refused (it may not parse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The bin it took effect at (its reply's `applied_at_bin`); for `stop`, the first bin
    /// not run; for `mark`, the bin in progress when it came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at_bin: Option<u64>,
    /// The bin the loop applied its part at, before stepping it (replay applies it there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_bin: Option<u64>,
    /// The bin the emitter applied its part at, before pushing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emitter_bin: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<CommandError>,
}

/// A command that took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub id: u64,
    pub applied_at_bin: u64,
}

/// Why a command did not take effect (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed, unknown or out of range (HTTP 400).
    Invalid(CommandError),
    /// More commands than the session takes per second (HTTP 429).
    RateLimited(CommandError),
    /// The session ended, or the loop did not take it in time (HTTP 503).
    Unavailable(CommandError),
}

impl Refusal {
    pub fn error(&self) -> &CommandError {
        match self {
            Refusal::Invalid(e) | Refusal::RateLimited(e) | Refusal::Unavailable(e) => e,
        }
    }
}

/// The control plane's counts, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CommandCounts {
    /// Commands that took effect (the schedule's and Ctrl-C's among them).
    pub accepted: u64,
    /// Commands refused: malformed, out of range, rate-limited, or too late.
    pub rejected: u64,
    /// Of those, refused by the rate limit.
    pub rate_limited: u64,
    /// Of those, HTTP requests refused before they were read as commands (no token, another
    /// site's origin, not JSON, too big); these are not in the recording.
    pub refused_requests: u64,
    /// Journal records the recording could not take (its queue was full).
    pub journal_dropped: u64,
    /// The HTTP server's own refusals (none is a command, so none is in `rejected`):
    /// connections closed on arrival because `MAX_OPEN_CONNECTIONS` were open,
    pub connections_refused: u64,
    /// requests whose headers or body did not arrive within their timeout (408 or closed),
    pub timed_out_requests: u64,
    /// requests answered 503 because every slot of their kind was busy,
    pub busy_refusals: u64,
    /// WebSocket clients dropped for not reading for 2 s,
    pub slow_clients_dropped: u64,
    /// and status frames not sent to a client that was still behind (it gets the newest).
    pub stale_frames_skipped: u64,
}

/// What the HTTP server counts (see [`CommandCounts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent {
    ConnectionRefused,
    TimedOut,
    Busy,
    SlowClientDropped,
    StaleFrameSkipped,
}

/// What the operator has set so far (the rig file's values until a command changes them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// None: an identification session (the probe) has no objective.
    pub objective_kind: Option<ObjectiveKind>,
    pub objective_target: Vec<f64>,
    /// The library task the embedding is held on.
    pub locked_task: Option<usize>,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    pub max_step: f64,
    pub fallback: FallbackKind,
    pub fallback_vector: Vec<f64>,
    /// The enable gate as last commanded (the live frame's `gate` is what went out).
    pub armed: bool,
}

impl Settings {
    fn apply(&mut self, request: &Request) {
        match request {
            Request::Arm => self.armed = true,
            Request::Disarm => self.armed = false,
            Request::SetObjective { kind, target } => {
                self.objective_kind = Some(*kind);
                self.objective_target.clone_from(target);
            }
            Request::LockTask { task } => self.locked_task = Some(*task),
            Request::UnlockTask => self.locked_task = None,
            Request::SetLimits { lower, upper, max_step } => {
                if let Some(l) = lower {
                    self.lower.clone_from(l);
                }
                if let Some(u) = upper {
                    self.upper.clone_from(u);
                }
                self.max_step = max_step.unwrap_or(self.max_step);
            }
            Request::SetFallback { fallback, vector } => {
                self.fallback = *fallback;
                if let Some(v) = vector {
                    self.fallback_vector.clone_from(v);
                }
            }
            Request::Mark { .. } | Request::Stop => {}
        }
    }
}

/// What the loop and the emitter are each sent for a checked request.
pub struct Plan {
    pub loop_command: Option<LoopCommand>,
    pub emitter_command: Option<EmitterCommand>,
}

/// The loop's and the emitter's parts of a checked request (`Request::check`), with m
/// control channels. `mark` and `stop` have neither: the control plane does them itself.
pub fn plan(request: &Request, m: usize) -> Plan {
    let fixed = |v: &[f64]| {
        let mut a = [0.0; MAX_CONTROL];
        a[..m].copy_from_slice(&v[..m]);
        a
    };
    let (loop_command, emitter_command) = match request {
        Request::Arm => (None, Some(EmitterCommand::Arm)),
        Request::Disarm => (None, Some(EmitterCommand::Disarm)),
        Request::SetObjective { kind, target } => {
            let target = DVector::from_column_slice(target);
            let objective = match kind {
                ObjectiveKind::Latent => Objective::Latent(target),
                ObjectiveKind::Rates => Objective::Rates(target),
            };
            (Some(LoopCommand::SetObjective(objective)), None)
        }
        Request::LockTask { task } => (Some(LoopCommand::LockTask(Some(*task))), None),
        Request::UnlockTask => (Some(LoopCommand::LockTask(None)), None),
        Request::SetLimits { lower, upper, max_step } => {
            // Checked: all three are set, at full length.
            let (lower, upper) = (fixed(lower.as_deref().unwrap_or(&[])), fixed(upper.as_deref().unwrap_or(&[])));
            let max_step = max_step.unwrap_or(f64::NAN);
            (Some(LoopCommand::SetLimits { lower, upper }), Some(EmitterCommand::SetLimits { lower, upper, max_step }))
        }
        Request::SetFallback { fallback, vector } => {
            let vector = match (fallback, vector) {
                (FallbackKind::Vector, Some(v)) => fixed(v),
                _ => [0.0; MAX_CONTROL],
            };
            (None, Some(EmitterCommand::SetFallback { fallback: *fallback, vector }))
        }
        Request::Mark { .. } | Request::Stop => (None, None),
    };
    Plan { loop_command, emitter_command }
}

/// The bin the operator's intent is visible at: what goes out (the emitter's part) when there
/// is one, else the loop's.
fn applied_at(r: &CommandRecord) -> u64 {
    r.emitter_bin.or(r.loop_bin).unwrap_or(0)
}

/// The session's ends of the queues, and what a command is checked against.
pub struct DispatcherSetup {
    pub limits: SessionLimits,
    pub clock: BinGrid,
    pub loop_queues: Arc<LoopQueues>,
    pub emit_queues: Arc<EmitQueues>,
    pub end_bin: Arc<AtomicU64>,
    pub status: Arc<LoopStatus>,
    /// Where each command's record goes (the recorder's commands stream), if anywhere.
    pub journal: Option<crossbeam_channel::Sender<CommandRecord>>,
    /// Operator commands accepted per second, sustained (a burst of twice as many is taken).
    pub rate_per_s: f64,
    /// The settings the session starts with.
    pub settings: Settings,
}

/// Commands the operator may send per second by default: far more than a person clicks or
/// an experiment script marks, far fewer than would keep the control plane busy.
pub const DEFAULT_RATE_PER_S: f64 = 50.0;

struct Serial {
    next_id: u64,
    /// Token bucket: tokens and when it was last filled.
    tokens: f64,
    filled_at: f64,
}

/// The control plane's command path (module docs). Shared by every interface's thread.
pub struct Dispatcher {
    s: DispatcherSetup,
    serial: Mutex<Serial>,
    settings: Mutex<Settings>,
    accepted: AtomicU64,
    rejected: AtomicU64,
    rate_limited: AtomicU64,
    refused_requests: AtomicU64,
    journal_dropped: AtomicU64,
    /// Indexed by `ServerEvent as usize`.
    server: [AtomicU64; 5],
}

impl Dispatcher {
    pub fn new(setup: DispatcherSetup) -> Dispatcher {
        let burst = 2.0 * setup.rate_per_s;
        Dispatcher {
            settings: Mutex::new(setup.settings.clone()),
            s: setup,
            serial: Mutex::new(Serial { next_id: 0, tokens: burst, filled_at: clock::now() }),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            refused_requests: AtomicU64::new(0),
            journal_dropped: AtomicU64::new(0),
            server: Default::default(),
        }
    }

    pub fn limits(&self) -> &SessionLimits {
        &self.s.limits
    }

    /// What the operator has set so far.
    pub fn settings(&self) -> Settings {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn counts(&self) -> CommandCounts {
        CommandCounts {
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            refused_requests: self.refused_requests.load(Ordering::Relaxed),
            journal_dropped: self.journal_dropped.load(Ordering::Relaxed),
            connections_refused: self.server[ServerEvent::ConnectionRefused as usize].load(Ordering::Relaxed),
            timed_out_requests: self.server[ServerEvent::TimedOut as usize].load(Ordering::Relaxed),
            busy_refusals: self.server[ServerEvent::Busy as usize].load(Ordering::Relaxed),
            slow_clients_dropped: self.server[ServerEvent::SlowClientDropped as usize].load(Ordering::Relaxed),
            stale_frames_skipped: self.server[ServerEvent::StaleFrameSkipped as usize].load(Ordering::Relaxed),
        }
    }

    /// Counts one of the HTTP server's refusals.
    pub fn count_server(&self, event: ServerEvent) {
        self.server[event as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request refused at the door (HTTP 401, 403, 413, 415 on a command endpoint).
    pub fn count_refused_request(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.refused_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A JSON command (an HTTP body, a WebSocket frame).
    pub fn submit_json(&self, source: Source, text: &str) -> Result<Accepted, Refusal> {
        self.submit_parsed(source, Request::from_json(text), text)
    }

    /// A command as an LSL marker (JSON or the short text form).
    pub fn submit_marker(&self, source: Source, text: &str) -> Result<Accepted, Refusal> {
        self.submit_parsed(source, Request::from_marker(text), text)
    }

    /// A command built in code (the schedule, Ctrl-C).
    pub fn submit(&self, source: Source, request: Request) -> Result<Accepted, Refusal> {
        self.submit_parsed(source, Ok(request), "")
    }

    fn submit_parsed(&self, source: Source, parsed: Result<Request, CommandError>, text: &str) -> Result<Accepted, Refusal> {
        let received_at = clock::now();
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let id = serial.next_id;
        serial.next_id += 1;
        let mut record = CommandRecord {
            id,
            source,
            received_at,
            command: None,
            text: None,
            applied_at_bin: None,
            loop_bin: None,
            emitter_bin: None,
            refused: None,
        };
        let outcome = self.rate_limit(&mut serial, source, &parsed, received_at).and_then(|()| {
            let request = parsed.and_then(|r| r.check(&self.s.limits)).map_err(Refusal::Invalid)?;
            record.command = Some(request.clone());
            let accepted = self.apply(id, &request, &mut record)?;
            self.settings.lock().unwrap_or_else(|p| p.into_inner()).apply(&request);
            Ok(accepted)
        });
        drop(serial);
        match &outcome {
            Ok(a) => {
                record.applied_at_bin = Some(a.applied_at_bin);
                self.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(refusal) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                self.rate_limited.fetch_add(matches!(refusal, Refusal::RateLimited(_)) as u64, Ordering::Relaxed);
                if record.command.is_none() {
                    // At most a mark's worth of what was sent: the record is an annotation.
                    let cut = (0..=text.len().min(super::command::MAX_MARK_BYTES)).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
                    record.text = Some(text[..cut].to_string());
                }
                record.refused = Some(refusal.error().clone());
            }
        }
        // A flood's refusals are counted, not journaled: they cannot crowd out the commands
        // that took effect.
        let journaled = !matches!(outcome, Err(Refusal::RateLimited(_)));
        if let Some(j) = self.s.journal.as_ref().filter(|_| journaled) {
            if j.try_send(record).is_err() {
                self.journal_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        outcome
    }

    /// Operators' commands are rate-limited; the session's own (schedule, signals) are not,
    /// and neither are `disarm` and `stop`, which must get through a runaway script's flood.
    fn rate_limit(&self, serial: &mut Serial, source: Source, parsed: &Result<Request, CommandError>, now: f64) -> Result<(), Refusal> {
        if matches!(source, Source::Schedule | Source::Signal) || matches!(parsed, Ok(Request::Disarm | Request::Stop)) {
            return Ok(());
        }
        let (rate, burst) = (self.s.rate_per_s, 2.0 * self.s.rate_per_s);
        serial.tokens = (serial.tokens + (now - serial.filled_at) * rate).min(burst);
        serial.filled_at = now;
        if serial.tokens < 1.0 {
            return Err(Refusal::RateLimited(CommandError {
                field: "command".into(),
                message: format!("too many commands: this session takes {rate} per second (bursts of {burst}); try again shortly"),
            }));
        }
        serial.tokens -= 1.0;
        Ok(())
    }

    fn apply(&self, id: u64, request: &Request, record: &mut CommandRecord) -> Result<Accepted, Refusal> {
        let status = &self.s.status;
        match request {
            Request::Mark { .. } => return Ok(Accepted { id, applied_at_bin: status.bins_done.load(Ordering::Acquire) }),
            Request::Stop => {
                let done = status.bins_done.load(Ordering::Acquire);
                let before = self.s.end_bin.fetch_min(done + 1, Ordering::AcqRel);
                return Ok(Accepted { id, applied_at_bin: before.min(done + 1) });
            }
            _ => {}
        }
        let Plan { loop_command, emitter_command } = plan(request, self.s.limits.control);
        let unavailable = |message: String| Refusal::Unavailable(CommandError { field: "session".into(), message });
        if self.session_over() {
            return Err(unavailable("the session has ended".into()));
        }
        let (wants_loop, wants_emitter) = (loop_command.is_some(), emitter_command.is_some());
        if let Some(c) = loop_command {
            // Serial: at most one command is ever in the queue, so this never fails.
            self.s.loop_queues.commands.push((id, c)).map_err(|_| unavailable("the loop's command queue is full".into()))?;
        }
        if let Some(c) = emitter_command {
            self.s.emit_queues.commands.push((id, c)).map_err(|_| unavailable("the emitter's command queue is full".into()))?;
        }
        // A command waits for at most a few bins: the loop takes it at its next bin, the
        // emitter before its next push.
        let give_up = clock::now() + 2.0 + 4.0 * self.s.clock.bin_s;
        let done = |r: &CommandRecord| r.loop_bin.is_some() == wants_loop && r.emitter_bin.is_some() == wants_emitter;
        loop {
            if let Some(why) = self.collect_replies(id, record) {
                // The loop refused its part: take back the emitter's, if still queued.
                let _ = self.s.emit_queues.commands.pop();
                return Err(Refusal::Invalid(CommandError { field: "command".into(), message: why.to_string() }));
            }
            if done(record) {
                return Ok(Accepted { id, applied_at_bin: applied_at(record) });
            }
            if self.session_over() || clock::now() > give_up {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Too late. Take back each part no stage has taken (commands are serial: a queued
        // command is this one); a part a stage did take is applied and answered at once, so
        // wait for that answer. The record then says exactly which parts took effect where,
        // and replay repeats just those.
        let loop_pending = wants_loop && record.loop_bin.is_none() && self.s.loop_queues.commands.pop().is_none();
        let emitter_pending = wants_emitter && record.emitter_bin.is_none() && self.s.emit_queues.commands.pop().is_none();
        let settle = clock::now() + 1.0;
        while ((loop_pending && record.loop_bin.is_none()) || (emitter_pending && record.emitter_bin.is_none())) && clock::now() < settle {
            if let Some(why) = self.collect_replies(id, record) {
                return Err(Refusal::Invalid(CommandError { field: "command".into(), message: why.to_string() }));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if done(record) {
            return Ok(Accepted { id, applied_at_bin: applied_at(record) });
        }
        let what = if self.session_over() { "the session ended" } else { "the loop did not take it in time" };
        Err(unavailable(match (record.loop_bin, record.emitter_bin) {
            (None, None) => format!("{what} before the command took effect; nothing changed"),
            (Some(k), _) => format!("{what}: only the controller's part took effect (at bin {k})"),
            (None, Some(k)) => format!("{what}: only the safety layer's part took effect (at bin {k})"),
        }))
    }

    /// Takes the loop's and the emitter's replies; returns the loop's refusal of command `id`.
    fn collect_replies(&self, id: u64, record: &mut CommandRecord) -> Option<&'static str> {
        self.free_retired();
        let mut refused = None;
        while let Some((applied, why)) = self.s.loop_queues.applied.pop() {
            if applied.id == id {
                match why {
                    Some(w) => refused = Some(w),
                    None => record.loop_bin = Some(applied.at_bin),
                }
            }
        }
        while let Some(applied) = self.s.emit_queues.applied.pop() {
            if applied.id == id {
                record.emitter_bin = Some(applied.at_bin);
            }
        }
        refused
    }

    /// Objectives the loop replaced: freed here, not on the loop thread.
    fn free_retired(&self) {
        while self.s.loop_queues.retired.pop().is_some() {}
    }

    /// The loop has run its last bin.
    pub fn session_over(&self) -> bool {
        self.s.status.bins_done.load(Ordering::Acquire) >= self.s.end_bin.load(Ordering::Acquire)
    }
}
