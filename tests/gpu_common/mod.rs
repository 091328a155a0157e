//! Shared by the GPU tests: which runtime they run on, a small RNG, comparisons.
#![allow(dead_code)]

use neuroloop_kernels::layout::Layout;

/// With `--features cuda` the GPU suite runs on CUDA (device 0); otherwise on wgpu's
/// default adapter (Mesa lavapipe on a machine without a GPU).
#[cfg(feature = "cuda")]
pub type TestRuntime = cubecl::cuda::CudaRuntime;
#[cfg(not(feature = "cuda"))]
pub type TestRuntime = cubecl::wgpu::WgpuRuntime;

#[cfg(feature = "cuda")]
pub fn test_device() -> cubecl::cuda::CudaDevice {
    cubecl::cuda::CudaDevice::new(0)
}
#[cfg(not(feature = "cuda"))]
pub fn test_device() -> cubecl::wgpu::WgpuDevice {
    cubecl::wgpu::WgpuDevice::DefaultDevice
}

/// The backend name the rig file uses for [`TestRuntime`].
pub const TEST_BACKEND: &str = if cfg!(feature = "cuda") { "cuda" } else { "wgpu" };

/// splitmix64 + Box–Muller: test inputs only.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x1234_5678)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }
    pub fn poisson(&mut self, lambda: f64) -> f64 {
        let limit = (-lambda).exp();
        let (mut k, mut prod) = (0.0, self.uniform());
        while prod > limit && k < 1000.0 {
            k += 1.0;
            prod *= self.uniform();
        }
        k
    }
}

pub fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// `len` values of region `slot` of a read-back `mem`.
pub fn region<'a>(mem: &'a [f32], layout: &Layout, slot: usize, len: usize) -> &'a [f32] {
    &mem[layout.at(slot)..layout.at(slot) + len]
}

/// Normwise relative error max|gpu − cpu| / max|cpu| (absolute below 1e-6).
pub fn rel_err(gpu: &[f32], cpu: &[f64]) -> f64 {
    assert_eq!(gpu.len(), cpu.len(), "length mismatch");
    let scale = cpu.iter().fold(0.0f64, |a, &b| a.max(b.abs())).max(1e-6);
    let diff = gpu.iter().zip(cpu).fold(0.0f64, |a, (&g, &c)| a.max((g as f64 - c).abs()));
    if gpu.iter().any(|g| !g.is_finite()) {
        return f64::INFINITY;
    }
    diff / scale
}

pub fn assert_close(what: &str, gpu: &[f32], cpu: &[f64], tol: f64) {
    let err = rel_err(gpu, cpu);
    assert!(
        err <= tol,
        "{what}: relative error {err:.2e} > {tol:.0e}\n  gpu {:?}\n  cpu {:?}",
        &gpu[..gpu.len().min(8)],
        &cpu[..cpu.len().min(8)]
    );
}
