//! The JEDI hypernetwork decoder z ↦ θ(z) = (W_hh, W_xu, b) and its reverse pass.
//!
//! Each generator is `Linear(e→h) → ReLU → Linear(h→out)` (PyTorch layout, see
//! [`Generator`]). The forward pass keeps its pre-activations in a [`HypernetScratch`] so
//! the online embedding update can back-propagate dL/dθ to dL/dz in one allocation-free
//! pass per bin (docs/model.md, "Online embedding update").

use super::{Dims, Generator, Hypernet, Theta};
use nalgebra::{DMatrix, DVector};

/// Preallocated buffers for one generator's forward and reverse pass.
#[derive(Debug, Clone)]
pub struct GeneratorScratch {
    /// w1 z + b1 (h), kept from the forward pass (its sign is the ReLU mask).
    pub pre: DVector<f64>,
    /// relu(pre) (h).
    pub hidden: DVector<f64>,
    /// w2 hidden + b2 (out), flat.
    pub out: DVector<f64>,
    /// dL/d out (out), flat, in the generator's output order.
    pub grad_out: DVector<f64>,
    /// dL/d hidden, then dL/d pre (h).
    pub grad_hidden: DVector<f64>,
}

impl GeneratorScratch {
    fn new(hidden: usize, out: usize) -> Self {
        GeneratorScratch {
            pre: DVector::zeros(hidden),
            hidden: DVector::zeros(hidden),
            out: DVector::zeros(out),
            grad_out: DVector::zeros(out),
            grad_hidden: DVector::zeros(hidden),
        }
    }
}

/// Scratch for [`Hypernet::decode`] / [`Hypernet::backprop`]: one [`GeneratorScratch`] per
/// generator. After a `decode(z, ..)` it holds that forward pass, which `backprop` at the
/// same z reuses.
#[derive(Debug, Clone)]
pub struct HypernetScratch {
    pub w_hh: GeneratorScratch,
    pub w_xu: GeneratorScratch,
    pub b: GeneratorScratch,
}

impl HypernetScratch {
    pub fn new(dims: &Dims) -> Self {
        let (d, m, h) = (dims.latent, dims.control, dims.hidden);
        HypernetScratch { w_hh: GeneratorScratch::new(h, d * d), w_xu: GeneratorScratch::new(h, d * m), b: GeneratorScratch::new(h, d) }
    }
}

impl Generator {
    /// Forward pass into `s.pre`, `s.hidden`, `s.out`. Allocation-free.
    #[inline]
    pub fn forward(&self, z: &DVector<f64>, s: &mut GeneratorScratch) {
        s.pre.copy_from(&self.b1);
        s.pre.gemv(1.0, &self.w1, z, 1.0);
        for i in 0..s.pre.len() {
            s.hidden[i] = s.pre[i].max(0.0);
        }
        s.out.copy_from(&self.b2);
        s.out.gemv(1.0, &self.w2, &s.hidden, 1.0);
    }

    /// Reverse pass: grad_z += w1ᵀ (mask ⊙ w2ᵀ s.grad_out), with the ReLU mask from the
    /// forward pass held in `s.pre`. Allocation-free.
    #[inline]
    pub fn backward_acc(&self, s: &mut GeneratorScratch, grad_z: &mut DVector<f64>) {
        s.grad_hidden.gemv_tr(1.0, &self.w2, &s.grad_out, 0.0);
        for i in 0..s.grad_hidden.len() {
            if s.pre[i] <= 0.0 {
                s.grad_hidden[i] = 0.0;
            }
        }
        grad_z.gemv_tr(1.0, &self.w1, &s.grad_hidden, 1.0);
    }
}

/// Copies a flat row-major buffer into a (rows × cols) matrix: M[i][j] = flat[i*cols + j].
#[inline]
fn unflatten_row_major(flat: &DVector<f64>, m: &mut DMatrix<f64>) {
    let cols = m.ncols();
    for i in 0..m.nrows() {
        for j in 0..cols {
            m[(i, j)] = flat[i * cols + j];
        }
    }
}

/// Inverse of [`unflatten_row_major`].
#[inline]
fn flatten_row_major(m: &DMatrix<f64>, flat: &mut DVector<f64>) {
    let cols = m.ncols();
    for i in 0..m.nrows() {
        for j in 0..cols {
            flat[i * cols + j] = m[(i, j)];
        }
    }
}

impl Hypernet {
    /// θ(z) into `theta` (hot, allocation-free). `scratch` keeps the forward pass for
    /// [`Hypernet::backprop`] at the same z.
    pub fn decode(&self, z: &DVector<f64>, theta: &mut Theta, scratch: &mut HypernetScratch) {
        self.w_hh.forward(z, &mut scratch.w_hh);
        unflatten_row_major(&scratch.w_hh.out, &mut theta.w_hh);
        self.w_xu.forward(z, &mut scratch.w_xu);
        unflatten_row_major(&scratch.w_xu.out, &mut theta.w_xu);
        self.b.forward(z, &mut scratch.b);
        theta.b.copy_from(&scratch.b.out);
    }

    /// dL/dz from dL/dθ (hot, allocation-free).
    ///
    /// `grad_theta` holds dL/dW_hh (d × d), dL/dW_xu (d × m), dL/db (d) in θ's shapes.
    /// `scratch` must hold the forward pass of a [`Hypernet::decode`] at this same `z`
    /// (`z` itself is not read again: the ReLU masks come from the scratch).
    /// `grad_z` is **overwritten** with dL/dz (it is not accumulated into).
    pub fn backprop(&self, _z: &DVector<f64>, grad_theta: &Theta, scratch: &mut HypernetScratch, grad_z: &mut DVector<f64>) {
        grad_z.fill(0.0);
        flatten_row_major(&grad_theta.w_hh, &mut scratch.w_hh.grad_out);
        self.w_hh.backward_acc(&mut scratch.w_hh, grad_z);
        if !grad_theta.w_xu.is_empty() {
            flatten_row_major(&grad_theta.w_xu, &mut scratch.w_xu.grad_out);
            self.w_xu.backward_acc(&mut scratch.w_xu, grad_z);
        }
        scratch.b.grad_out.copy_from(&grad_theta.b);
        self.b.backward_acc(&mut scratch.b, grad_z);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{randn_matrix, randn_vector};
    use super::*;

    fn generator(seed: u64, stream: u64, e: usize, h: usize, out: usize) -> Generator {
        Generator {
            w1: randn_matrix(seed, stream, h, e, 1.0),
            b1: randn_vector(seed, stream + 1, h, 0.5),
            w2: randn_matrix(seed, stream + 2, out, h, 0.5),
            b2: randn_vector(seed, stream + 3, out, 0.5),
        }
    }

    fn hypernet(dims: &Dims, seed: u64) -> Hypernet {
        let (d, m, e, h) = (dims.latent, dims.control, dims.embed, dims.hidden);
        Hypernet { w_hh: generator(seed, 0, e, h, d * d), w_xu: generator(seed, 10, e, h, d * m), b: generator(seed, 20, e, h, d) }
    }

    fn dims() -> Dims {
        Dims { n_units: 7, latent: 3, embed: 4, control: 2, hidden: 5 }
    }

    fn loss(theta: &Theta, g: &Theta) -> f64 {
        theta.w_hh.component_mul(&g.w_hh).sum() + theta.w_xu.component_mul(&g.w_xu).sum() + theta.b.dot(&g.b)
    }

    #[test]
    fn decode_matches_direct_mlp_row_major() {
        let dims = dims();
        let net = hypernet(&dims, 3);
        let z = randn_vector(3, 99, dims.embed, 1.0);
        let mut theta = Theta::zeros(&dims);
        let mut s = HypernetScratch::new(&dims);
        net.decode(&z, &mut theta, &mut s);
        let mlp = |g: &Generator| &g.w2 * (&g.w1 * &z + &g.b1).map(|v| v.max(0.0)) + &g.b2;
        let (d, m) = (dims.latent, dims.control);
        let o_hh = mlp(&net.w_hh);
        let o_xu = mlp(&net.w_xu);
        let o_b = mlp(&net.b);
        for i in 0..d {
            for j in 0..d {
                assert!((theta.w_hh[(i, j)] - o_hh[i * d + j]).abs() < 1e-14);
            }
            for j in 0..m {
                assert!((theta.w_xu[(i, j)] - o_xu[i * m + j]).abs() < 1e-14);
            }
            assert!((theta.b[i] - o_b[i]).abs() < 1e-14);
        }
    }

    #[test]
    fn backprop_matches_finite_differences() {
        let dims = dims();
        for seed in 0..5u64 {
            let net = hypernet(&dims, seed);
            let z = randn_vector(seed, 50, dims.embed, 1.0);
            let g = Theta {
                w_hh: randn_matrix(seed, 60, dims.latent, dims.latent, 1.0),
                w_xu: randn_matrix(seed, 61, dims.latent, dims.control, 1.0),
                b: randn_vector(seed, 62, dims.latent, 1.0),
            };
            let mut theta = Theta::zeros(&dims);
            let mut s = HypernetScratch::new(&dims);
            net.decode(&z, &mut theta, &mut s);
            let mut grad = DVector::from_element(dims.embed, 123.0); // overwritten, not accumulated
            net.backprop(&z, &g, &mut s, &mut grad);
            let h = 1e-6;
            for k in 0..dims.embed {
                let mut zp = z.clone();
                zp[k] += h;
                let mut zm = z.clone();
                zm[k] -= h;
                let mut tp = Theta::zeros(&dims);
                let mut tm = Theta::zeros(&dims);
                let mut s2 = HypernetScratch::new(&dims);
                net.decode(&zp, &mut tp, &mut s2);
                net.decode(&zm, &mut tm, &mut s2);
                let fd = (loss(&tp, &g) - loss(&tm, &g)) / (2.0 * h);
                let err = (fd - grad[k]).abs() / grad[k].abs().max(1.0);
                assert!(err < 1e-6, "seed {seed} k {k}: fd {fd} vs {}", grad[k]);
            }
        }
    }
}
