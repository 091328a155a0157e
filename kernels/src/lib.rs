//! neuroloop-kernels: GPU kernels for the per-bin model and controller.
//!
//! The cubecl kernels land with the GPU backend. What lives here already is what the
//! CPU and GPU backends must share bit for bit: the counter-based random number
//! generator, so that MPPI and the particle filter draw the same noise on either side.

pub mod philox;
