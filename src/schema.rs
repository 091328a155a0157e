//! The shapes of the streams neuroloop publishes and records: the Control stream, the
//! Status stream (its channels, flag bits and sample), the recording's timing channels, and
//! how long an outlet lingers. The outlets, the recorder and replay read them from here.

use crate::clock::BinGrid;
use crate::events::{Emitted, JoinedBin, LoopBin, Proposal};
use crate::{MAX_EMBED, MAX_LATENT};

/// The Control stream's description (the outlet and the recording share it).
pub fn control_stream_spec(name: &str, source_id: &str, bin_s: f64, labels: &[String]) -> crate::lslutil::StreamSpec {
    crate::lslutil::StreamSpec {
        name: name.into(),
        stream_type: "Control".into(),
        srate: 1.0 / bin_s,
        format: lsl::ChannelFormat::Float32,
        source_id: source_id.into(),
        labels: labels.to_vec(),
        channel_type: "control".into(),
    }
}

/// Status flag bits (the Status stream's `flags` channel; docs/streams.md).
pub const FLAG_FALLBACK: u32 = 1;
pub const FLAG_DEADLINE_MISS: u32 = 1 << 1;
/// No live input (stream gap).
pub const FLAG_GAP: u32 = 1 << 2;
pub const FLAG_LATE_SPIKES: u32 = 1 << 3;
pub const FLAG_TASK_JUMP: u32 = 1 << 4;

/// A bin's Status flags from what the loop and the emitter reported (either may be missing
/// when its queue was full).
pub fn status_flags(rec: Option<&LoopBin>, emitted: Option<&Emitted>) -> u32 {
    let mut flags = 0;
    if let Some(e) = emitted {
        flags |= if e.pushed.fallback() { FLAG_FALLBACK } else { 0 } | if e.pushed.deadline_miss() { FLAG_DEADLINE_MISS } else { 0 };
    }
    if let Some(r) = rec {
        flags |= if r.has_data() { 0 } else { FLAG_GAP }
            | if r.late_spikes > 0 { FLAG_LATE_SPIKES } else { 0 }
            | if r.task_jump.is_some() { FLAG_TASK_JUMP } else { 0 };
    }
    flags
}

/// Channels of the Status stream: bin, x (d), z (e), loglik, compute_us, flags.
pub fn status_channels(latent: usize, embed: usize) -> usize {
    4 + latent + embed
}

/// The Status stream's description (the outlet and the recording share it).
pub fn status_stream_spec(name: &str, source_id: &str, bin_s: f64, latent: usize, embed: usize) -> crate::lslutil::StreamSpec {
    let mut labels = vec!["bin".to_string()];
    labels.extend((0..latent).map(|i| format!("x{i}")));
    labels.extend((0..embed).map(|i| format!("z{i}")));
    labels.extend(["loglik", "compute_us", "flags"].map(String::from));
    crate::lslutil::StreamSpec {
        name: name.into(),
        stream_type: "NeuroloopStatus".into(),
        srate: 1.0 / bin_s,
        format: lsl::ChannelFormat::Double64,
        source_id: source_id.into(),
        labels,
        channel_type: "status".into(),
    }
}

/// The most channels a Status sample has (d ≤ MAX_LATENT, e ≤ MAX_EMBED).
pub const MAX_STATUS_CHANNELS: usize = 4 + MAX_LATENT + MAX_EMBED;

/// One Status sample as telemetry built and pushed it (its first `status_channels(d, e)`
/// values), handed to the Status stream's observers: the recording holds what went out.
#[derive(Debug, Clone, Copy)]
pub struct StatusSample {
    /// Its LSL timestamp: the bin's end.
    pub timestamp: f64,
    pub values: [f64; MAX_STATUS_CHANNELS],
}

/// One Status sample (`status_channels` long) for bin `r.bin`.
pub fn fill_status_sample(s: &mut [f64], r: &LoopBin, flags: u32, latent: usize, embed: usize) {
    let (d, e) = (latent, embed);
    s[0] = r.bin as f64;
    s[1..1 + d].copy_from_slice(&r.x[..d]);
    s[1 + d..1 + d + e].copy_from_slice(&r.z[..e]);
    s[1 + d + e] = r.loglik;
    s[2 + d + e] = (r.done_at - r.started_at) * 1e6;
    s[3 + d + e] = flags as f64;
}

/// The timing stream's channels, in order (times on the local clock, s; flags 0/1;
/// `u_prev_from` −1 before the first emitted command; NaN where the loop's or the emitter's
/// record for the bin is missing).
pub const TIMING_LABELS: [&str; 14] = [
    "bin",
    "close_at",
    "started_at",
    "done_at",
    "deadline_at",
    "pushed_at",
    "has_data",
    "want_control",
    "control_valid",
    "on_time",
    "deadline_miss",
    "fallback",
    "enabled",
    "u_prev_from",
];

/// One bin's timing row ([`TIMING_LABELS`]) from the loop's and the emitter's records.
pub fn timing_row(c: &BinGrid, j: &JoinedBin) -> [f64; TIMING_LABELS.len()] {
    let k = j.bin;
    let b = |v: bool| v as u8 as f64;
    let nan = f64::NAN;
    let (started, done, has_data, want, valid, on_time, from) = match &j.loop_bin {
        Some(r) => (
            r.started_at,
            r.done_at,
            b(r.has_data()),
            b(r.delivery.wanted_control()),
            b(r.proposal == Proposal::Command),
            b(r.delivery.on_time()),
            r.u_prev_from.map_or(-1.0, |b| b as f64),
        ),
        None => (nan, nan, nan, nan, nan, nan, nan),
    };
    let (pushed, miss, fallback, enabled) = match &j.emitted {
        Some(e) => (e.pushed_at, b(e.pushed.deadline_miss()), b(e.pushed.fallback()), b(e.enabled)),
        None => (nan, nan, nan, nan),
    };
    [k as f64, c.close(k), started, done, c.deadline(k), pushed, has_data, want, valid, on_time, miss, fallback, enabled, from]
}

/// How long outlets stay up after their last sample (liblsl does not flush on destroy).
pub const OUTLET_LINGER_MS: u64 = 300;
