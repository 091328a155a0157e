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

pub mod backend;
pub mod bench;
pub mod binning;
pub mod clock;
pub mod control;
pub mod emit;
pub mod fit;
pub mod hot;
pub mod ingest;
pub mod latency;
pub mod linalg;
pub mod lslutil;
pub mod model;
pub mod record;
pub mod replay;
pub mod rig;
pub mod runloop;
pub mod safety;
pub mod session;
pub mod sim;
pub mod telemetry;
pub mod units;

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
