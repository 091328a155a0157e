//! neuroloop-kernels: the per-bin model and controller as cubecl kernels, with their
//! launch wrappers ([`runner::DeviceModel`]). No cubecl runtime is turned on here: the
//! neuroloop binary picks `wgpu` (default) and/or `cuda`.
//!
//! Data layout on the device: [`layout`]. The CPU reference for every kernel is the
//! neuroloop crate's `model` and `control` modules; the tests that hold the kernels to it
//! live there (`tests/gpu_kernels.rs`).

pub mod filter;
pub mod layout;
pub mod mppi;
pub mod particle;
pub mod philox;
pub mod rng;
pub mod runner;
pub mod util;
