//! Launch wrappers: a model resident on one device, and the few launches of one bin.
//!
//! Per bin with data: upload (counts, u_{k−1}) → `predict` → `obs_reduce` (a grid over
//! unit chunks × candidates) → `update` → [`mppi_rollout` (a grid over samples) →
//! `mppi_update`] → one read-back of `out` (u_k and the status vector). Everything else
//! stays in `mem`.

use crate::filter::{obs_reduce_kernel, predict_kernel, update_kernel};
use crate::layout::{Layout, CFG_LEN, CUBE, FLAGS, FLAG_RATES};
use crate::mppi::{mppi_rate_cost_kernel, mppi_rollout_kernel, mppi_update_kernel};
use crate::particle::{pf_propagate_kernel, pf_resample_kernel, pf_weigh_kernel};
use crate::util::{copy_into_kernel, decode_kernel};
use cubecl::prelude::*;
use cubecl::server::Handle;

/// Errors from the device (launch or read-back failures).
#[derive(Debug)]
pub struct DeviceError(pub String);

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeviceError {}

/// One model resident on a device: `mem`, `lay`, `cfg`, `out` and the per-bin upload.
pub struct DeviceModel<R: Runtime> {
    client: ComputeClient<R>,
    pub layout: Layout,
    mem: Handle,
    lay: Handle,
    cfg: Handle,
    out: Handle,
    bin: Handle,
}

fn cubes(n: usize) -> u32 {
    n.div_ceil(CUBE).max(1) as u32
}

/// A 1-D launch of at least `n` threads in cubes of CUBE.
fn over(n: usize) -> (CubeCount, CubeDim) {
    (CubeCount::Static(cubes(n), 1, 1), CubeDim::new_1d(CUBE as u32))
}

/// `h` as a kernel argument of `len` elements (never more than `h` was created with).
fn arg<R: Runtime>(h: &Handle, len: usize) -> ArrayArg<R> {
    unsafe { ArrayArg::from_raw_parts(h.clone(), len) }
}

/// The (low, high) words of a Philox stream, as the kernels take it.
fn halves(x: u64) -> (u32, u32) {
    (x as u32, (x >> 32) as u32)
}

/// Launches a model kernel on `grid` (a `(CubeCount, CubeDim)`). Every such kernel takes
/// `mem`, then the buffers named in brackets (of `bin_arg`, `out_arg`, in that order), then
/// `lay` and `cfg`, then its scalars: each wrapper names only what is its own.
macro_rules! launch_model {
    ($self:ident, $kernel:ident, $grid:expr, [$($buf:ident),*] $(, $scalar:expr)* $(,)?) => {{
        let (count, dim) = $grid;
        $kernel::launch::<R>(&$self.client, count, dim, $self.mem_arg(), $($self.$buf(),)* $self.lay_arg(), $self.cfg_arg() $(, $scalar)*)
    }};
}

impl<R: Runtime> DeviceModel<R> {
    /// Uploads `mem` (laid out by `layout`) and `cfg`; decodes θ(z) on the device.
    pub fn new(device: &R::Device, layout: Layout, mem: &[f32], cfg: &[f32]) -> DeviceModel<R> {
        assert_eq!(mem.len(), layout.mem_len, "mem does not match its layout");
        assert_eq!(cfg.len(), CFG_LEN, "cfg has {} values, expected {CFG_LEN}", cfg.len());
        let client = R::client(device);
        let shape = layout.shape;
        let mem_h = client.create_from_slice(f32::as_bytes(mem));
        let lay_h = client.create_from_slice(u32::as_bytes(&layout.lay));
        let cfg_h = client.create_from_slice(f32::as_bytes(cfg));
        // `empty` is not zeroed on every runtime: upload zeros.
        let out_h = client.create_from_slice(f32::as_bytes(&vec![0.0f32; shape.out_len()]));
        let bin_h = client.create_from_slice(f32::as_bytes(&vec![0.0f32; shape.bin_len()]));
        DeviceModel { client, layout, mem: mem_h, lay: lay_h, cfg: cfg_h, out: out_h, bin: bin_h }
    }

    fn mem_arg(&self) -> ArrayArg<R> {
        arg(&self.mem, self.layout.mem_len)
    }
    fn lay_arg(&self) -> ArrayArg<R> {
        arg(&self.lay, self.layout.lay.len())
    }
    fn cfg_arg(&self) -> ArrayArg<R> {
        arg(&self.cfg, CFG_LEN)
    }
    fn out_arg(&self) -> ArrayArg<R> {
        arg(&self.out, self.layout.shape.out_len())
    }
    fn bin_arg(&self) -> ArrayArg<R> {
        arg(&self.bin, self.layout.shape.bin_len())
    }

    fn one_cube() -> (CubeCount, CubeDim) {
        over(1)
    }

    /// Reads a buffer back and hands it to `take` (no copy of its own); `what` names the
    /// read in the error.
    fn read<T>(&self, h: &Handle, what: &str, take: impl FnOnce(&[f32]) -> T) -> Result<T, DeviceError> {
        let bytes = self.client.read_one(h.clone()).map_err(|e| DeviceError(format!("{what} failed: {e:?}")))?;
        Ok(take(f32::from_bytes(&bytes)))
    }

    /// Uploads this bin's counts (N) and the emitted u_{k−1} (m), as one buffer.
    pub fn upload_bin(&mut self, bin: &[f32]) {
        assert_eq!(bin.len(), self.layout.shape.bin_len());
        self.bin = self.client.create_from_slice(f32::as_bytes(bin));
    }

    /// Switches MPPI's cost between the latent objective and the rate objective (the
    /// targets themselves are in `mem`: write them first). Re-uploads `lay`.
    pub fn set_rate_objective(&mut self, rates: bool) {
        let flags = &mut self.layout.lay[FLAGS];
        if rates {
            *flags |= FLAG_RATES;
        } else {
            *flags &= !FLAG_RATES;
        }
        self.lay = self.client.create_from_slice(u32::as_bytes(&self.layout.lay));
    }

    /// Writes `data` into `mem` at `at` (for start-up, objective changes and tests).
    pub fn write_mem(&self, at: usize, data: &[f32]) {
        assert!(at + data.len() <= self.layout.mem_len, "write past the end of mem");
        if data.is_empty() {
            return;
        }
        let src = self.client.create_from_slice(f32::as_bytes(data));
        let (count, dim) = over(data.len());
        copy_into_kernel::launch::<R>(&self.client, count, dim, arg(&src, data.len()), self.mem_arg(), at as u32, data.len() as u32);
    }

    /// θ = decode(z) and the hypernetwork's pre-activations, from `mem`'s z.
    pub fn decode(&self) {
        let (count, dim) = Self::one_cube();
        decode_kernel::launch::<R>(&self.client, count, dim, self.mem_arg(), self.lay_arg());
    }

    /// EKF predict and the candidates' predictions (one cube).
    pub fn predict(&self) {
        launch_model!(self, predict_kernel, Self::one_cube(), [bin_arg, out_arg]);
    }

    /// Observation reduction over units × candidates (grid).
    pub fn obs_reduce(&self) {
        let s = self.layout.shape;
        let grid = (CubeCount::Static(s.chunks() as u32, (s.tasks + 1) as u32, 1), CubeDim::new_1d(CUBE as u32));
        launch_model!(self, obs_reduce_kernel, grid, [bin_arg]);
    }

    /// EKF update, embedding step, task identification, re-decode (one cube).
    pub fn update(&self) {
        launch_model!(self, update_kernel, Self::one_cube(), [bin_arg, out_arg]);
    }

    /// MPPI for bin `bin` (its Philox stream): rollouts, then the weighted update.
    pub fn mppi(&self, bin: u64) {
        self.mppi_rollout(bin);
        self.mppi_update();
    }

    /// MPPI rollouts and costs (grid over samples).
    pub fn mppi_rollout(&self, bin: u64) {
        let s = self.layout.shape;
        let (lo, hi) = halves(bin);
        launch_model!(self, mppi_rollout_kernel, over(s.samples), [], lo, hi);
        if self.layout.lay[FLAGS] & FLAG_RATES != 0 {
            launch_model!(self, mppi_rate_cost_kernel, over(s.samples * s.horizon), []);
        }
    }

    /// MPPI softmin weights, nominal update, u_k and shift (one cube).
    pub fn mppi_update(&self) {
        launch_model!(self, mppi_update_kernel, Self::one_cube(), [out_arg]);
    }

    /// Particle filter, bin `bin`: propagate every particle with process noise.
    pub fn pf_propagate(&self, bin: u64) {
        let (lo, hi) = halves(bin);
        launch_model!(self, pf_propagate_kernel, over(self.layout.shape.particles), [bin_arg], lo, hi);
    }

    /// Particle filter: add each particle's Poisson log-likelihood of the counts.
    pub fn pf_weigh(&self) {
        launch_model!(self, pf_weigh_kernel, over(self.layout.shape.particles), [bin_arg]);
    }

    /// Particle filter: normalise, estimate, and (with data, low ESS) resample; the
    /// resampling uniform comes from stream bin + 2⁶³.
    pub fn pf_resample(&self, has_data: bool, bin: u64) {
        let (lo, hi) = halves(bin.wrapping_add(1 << 63));
        launch_model!(self, pf_resample_kernel, Self::one_cube(), [out_arg], has_data as u32, lo, hi);
    }

    /// Reads `out` back (u_k and the status vector) into `dst`.
    pub fn read_out(&self, dst: &mut [f32]) -> Result<(), DeviceError> {
        self.read(&self.out, "reading the result back from the device", |v| dst.copy_from_slice(v))
    }

    /// The whole of `mem` (tests and diagnostics).
    pub fn read_mem(&self) -> Result<Vec<f32>, DeviceError> {
        self.read(&self.mem, "reading device memory", |v| v.to_vec())
    }
}

/// Draws `n` Philox normals and uniforms at indices first.. on the device (tests).
pub fn draw<R: Runtime>(device: &R::Device, seed: u64, stream: u64, first: u32, n: usize) -> (Vec<f32>, Vec<f32>) {
    let client = R::client(device);
    let key = crate::philox::key_from_seed(seed);
    let zeros = vec![0.0f32; n];
    let normals = client.create_from_slice(f32::as_bytes(&zeros));
    let uniforms = client.create_from_slice(f32::as_bytes(&zeros));
    let (count, dim) = over(n);
    let (lo, hi) = halves(stream);
    crate::rng::draw_kernel::launch::<R>(&client, count, dim, arg(&normals, n), arg(&uniforms, n), key[0], key[1], lo, hi, first, n as u32);
    let a = f32::from_bytes(&client.read_one(normals).expect("read back")).to_vec();
    let b = f32::from_bytes(&client.read_one(uniforms).expect("read back")).to_vec();
    (a, b)
}
