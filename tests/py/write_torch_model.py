"""Write a neuroloop model file the way PyTorch training code would: a state_dict of float32
arrays under the seed's module names, saved with the `safetensors` package (its numpy API,
which writes the same bytes as `safetensors.torch.save_file(model.state_dict(), ...)`)."""
import argparse

import numpy as np
from safetensors.numpy import save_file

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--units", type=int, default=96)
ap.add_argument("--latent", type=int, default=4)
ap.add_argument("--embed", type=int, default=3)
ap.add_argument("--control", type=int, default=4)
ap.add_argument("--hidden", type=int, default=16)
ap.add_argument("--tasks", type=int, default=3)
a = ap.parse_args()
rng = np.random.default_rng(5)
n, d, e, m, h = a.units, a.latent, a.embed, a.control, a.hidden


def r(*shape, s=0.3):
    return (s * rng.standard_normal(shape)).astype(np.float32)


sd = {}
for name, out in [("w_hh_generator", d * d), ("w_xu_generator", d * m), ("b_generator", d)]:
    sd[f"decoder.{name}.0.weight"] = r(h, e)
    sd[f"decoder.{name}.0.bias"] = r(h)
    sd[f"decoder.{name}.2.weight"] = r(out, h, s=0.05)
    sd[f"decoder.{name}.2.bias"] = r(out, s=0.1)
sd["observation.weight"] = r(n, d, s=0.7)
sd["observation.bias"] = np.log(np.full(n, 20.0)).astype(np.float32)
sd["embedding.library"] = r(a.tasks, e, s=1.0)
sd["embedding.initial"] = sd["embedding.library"][0].copy()
meta = {"n_units": str(n), "latent_dim": str(d), "embed_dim": str(e), "control_dim": str(m), "hidden_dim": str(h), "bin_s": "0.01", "alpha": "0.05"}
save_file(sd, a.out, metadata=meta)
