//! neuroloop: a real-time closed-loop controller for BCI experiments.
//!
//! Data flow, a module per stage: [`ingest`] (LSL inlet → ring) → [`binning`] (counts per
//! bin on the local clock) → [`model`] via a [`backend`] (filter, embedding update, task
//! identification) → [`control`] → [`safety`] → [`emit`] (one Control sample per bin, on
//! time). [`runloop`] is the per-bin loop thread, [`session`] wires a run together,
//! [`telemetry`] is the side channel (status line, Status stream, report) with [`latency`]
//! its per-stage histograms, [`sim`] is the built-in simulated rig, [`rig`] reads rig
//! files, [`record`] writes a session to XDF, [`replay`] runs one
//! back through the loop, and [`bench`] is the latency benchmarking harness (`neuroloop bench`).
//!
//! Stages never import their observers. What they share lives in leaf modules: [`events`]
//! (the per-bin records a stage hands on), [`tap`] (the drop-and-count hand-offs to an
//! observer) and [`schema`] (the shapes of the published and recorded streams). Only
//! [`session`] knows both sides and wires them together.

pub mod backend;
pub mod bench;
pub mod binning;
pub mod clock;
pub mod control;
pub mod control_plane;
pub mod emit;
pub mod eval;
pub mod events;
pub mod fit;
pub mod fuzz;
pub mod hot;
pub mod ingest;
pub mod latency;
pub mod linalg;
pub mod lslutil;
pub mod model;
pub mod outfile;
pub mod realtime;
pub mod record;
pub mod replay;
pub mod rig;
pub mod runloop;
pub mod safety;
pub mod schema;
pub mod session;
pub mod sim;
pub mod tap;
pub mod telemetry;
pub mod units;

/// The library's unit tests count allocations (the controllers' "no allocation per bin").
#[cfg(test)]
#[global_allocator]
static COUNTING_ALLOC: hot::CountingAlloc = hot::CountingAlloc;

/// An error and its causes on one line, each said once: errors that already print their
/// source (`cannot read rig file X: No such file or directory (os error 2)`) do not get it
/// repeated after them, as `{:#}` would.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if !text.contains(&c) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&c);
        }
    }
    text
}

pub use outfile::ensure_writable;

/// The message a caught panic carried (`panic!` with a string or a format).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown error".into())
}

/// Largest latent dimension d supported (fixed-size per-bin records).
pub const MAX_LATENT: usize = 64;
/// Largest embedding dimension e supported.
pub const MAX_EMBED: usize = 32;
/// Largest control dimension m supported.
pub const MAX_CONTROL: usize = 64;
/// Largest number of model units N (and of input channels) a rig or model file may give:
/// far above any array (a 4-shank Neuropixels 2.0 probe has 5 120 sites), and small enough
/// that every table sized by it is a few MB. Sizes from files are checked against these
/// limits before anything is allocated.
pub const MAX_UNITS: usize = 65_536;
/// Largest hypernetwork hidden width h.
pub const MAX_HIDDEN: usize = 4096;
/// Largest task library (embeddings in a model file, tasks of the simulated rig).
pub const MAX_TASKS: usize = 1024;
/// Largest ingest → loop ring, in spikes (16 M spikes ≈ 256 MB).
pub const MAX_RING_CAPACITY: usize = 1 << 24;
