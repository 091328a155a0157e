"""neuroloop's per-bin model and controller in Python + numpy: the baseline "what many labs
run today", a line-by-line port of the plain-Rust CPU backend (src/backend/cpu.rs,
`CpuBackend::step`).

Per bin, as `CpuBackend::step` does with data and a controller wanted:
  point-process EKF predict with the command emitted last bin (src/model/ekf.rs, dynamics in
  src/model/dynamics.rs, θ(z) from the hypernetwork in src/model/hypernet.rs)
  → EKF update with the counts, returning log p(y | x⁻) (src/model/observation.rs)
  → one online embedding step (src/model/embedding.rs) and re-decode of θ(z)
  → task identification over the model file's library (src/model/taskid.rs)
  → controller: `mppi` (src/control/mppi.rs) or `lqr` (src/control/lqr.rs).

Everything is f64 (numpy) except MPPI's exploration noise, which is the same counter-based
Philox4x32-10 stream as kernels/src/philox.rs with its f32 Box–Muller, bit for bit: Rust's
f32 ln / cos / sin are glibc's logf / cosf / sinf, whose algorithms are ported below (checked
against glibc on all 2^24 inputs Box–Muller can give each of them).
Only numpy and the standard library are used; the safetensors file is parsed by hand.

Library use (bench/baselines/pyloop.py):

    import ssm
    loop = ssm.Loop(ssm.load_model("model.safetensors"), ssm.load_rig_config("rig.toml"), lo, hi)
    u = loop.step(counts, u_prev, bin)      # the proposal, before the safety layer
    loop.x, loop.z, loop.loglik, loop.task_jump

Offline (tests/baseline_python.rs compares this with the Rust backend bin by bin):

    python bench/baselines/ssm.py --offline --rig RIG.toml --model MODEL.safetensors \
        --inputs IN.f64 --out OUT.f64 [--timing]

IN.f64: raw little-endian f64 rows [counts (N) …, u_prev (m) …], one per bin, bins 0, 1, 2, …
OUT.f64: rows [x (d) …, z (e) …, loglik, u (m) …, task_jump (−1 for none)].
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import time
import tomllib
from dataclasses import dataclass, field, fields

import numpy as np

# ---------------------------------------------------------------------------------------
# Model file (src/model/file/mod.rs, `ModelParams::load`)
# ---------------------------------------------------------------------------------------

FORMAT = "neuroloop-model"
FORMAT_VERSION = "1"
DEFAULT_PROCESS_NOISE = 1e-3
DEFAULT_INITIAL_STATE_VAR = 0.1
DEFAULT_LOG_RATE_MAX = 7.0
DEFAULT_Z_PRIOR_SIGMA = 1.0
DEFAULT_POLICY_SCALE = 1.0
LOG_RATE_MIN = -20.0  # src/model/observation.rs LOG_RATE_MIN

GENERATORS = ("w_hh_generator", "w_xu_generator", "b_generator")
CONTROLLER_TENSORS = ("controller.0.weight", "controller.0.bias", "controller.2.weight", "controller.2.bias")


class ModelFileError(Exception):
    pass


@dataclass
class Dims:
    """src/model/mod.rs `Dims`."""

    n_units: int
    latent: int
    embed: int
    control: int
    hidden: int


@dataclass
class Generator:
    """src/model/mod.rs `Generator`: Linear(e→h) → ReLU → Linear(h→out), PyTorch layout."""

    w1: np.ndarray  # (h, e)
    b1: np.ndarray  # (h)
    w2: np.ndarray  # (out, h)
    b2: np.ndarray  # (out)


@dataclass
class Policy:
    """src/model/mod.rs `Policy` (loaded for completeness; the `policy` controller is not ported)."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    scale: float


@dataclass
class Model:
    """src/model/mod.rs `ModelParams`: everything a model file holds."""

    dims: Dims
    bin_s: float
    alpha: float
    process_noise: np.ndarray  # diag(Q) (d)
    initial_state_var: float
    log_rate_max: float
    obs_c: np.ndarray  # C (N, d)
    obs_d: np.ndarray  # d (N), log Hz
    w_hh: Generator
    w_xu: Generator
    b: Generator
    z_init: np.ndarray  # (e)
    z_prior_sigma: float
    task_library: np.ndarray  # (T, e), T may be 0
    policy: Policy | None = None


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A safetensors file by hand: u64 LE header length, JSON header (dtype, shape,
    data_offsets per tensor; `__metadata__` of strings), then the raw LE bytes. F64 and F32
    tensors become float64 arrays of their shape (row-major)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelFileError(f"model file {path}: {e}") from None
    bad = lambda msg: ModelFileError(f"model file {path}: not a valid safetensors file: {msg}")
    if len(data) < 8:
        raise bad("shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise bad(f"header length {n} exceeds the file")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"header is not JSON: {e}") from None
    meta = header.pop("__metadata__", None) or {}
    body = data[8 + n :]
    tensors = {}
    for name, info in header.items():
        dtype, shape, (a, b) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
        width = {"F64": 8, "F32": 4}.get(dtype)
        if width is None:
            raise ModelFileError(f"model file {path}: tensor `{name}` has dtype {dtype}, expected F32 or F64")
        count = int(np.prod(shape)) if shape else 1
        if not (0 <= a <= b <= len(body)) or b - a != count * width:
            raise bad(f"tensor `{name}`: data_offsets {[a, b]} do not match shape {shape} × {width} bytes")
        arr = np.frombuffer(body[a:b], dtype="<f8" if width == 8 else "<f4").astype(np.float64)
        tensors[name] = arr.reshape(shape)
    return tensors, {str(k): str(v) for k, v in meta.items()}


def load_model(path: str) -> Model:
    """src/model/file/mod.rs `ModelParams::load`: same tensor names, metadata keys, defaults and
    checks (shapes, finiteness, unknown tensor names, the all-or-none controller group,
    `format` / `format_version`, ranges of the constants)."""
    tensors, meta = read_safetensors(path)
    err = lambda msg: ModelFileError(f"model file {path}: {msg}")
    for key, want in (("format", FORMAT), ("format_version", FORMAT_VERSION)):
        if key in meta and meta[key].strip() != want:
            raise err(f"metadata key `{key}` = {meta[key]!r}: expected {want!r}")

    def parse(key, kind, default=None):
        if key not in meta:
            if default is None:
                raise err(f"missing metadata key `{key}`")
            return default
        v = meta[key].strip()
        try:
            return int(v) if kind is int else float(v)
        except ValueError as e:
            raise err(f"metadata key `{key}` = {meta[key]!r}: {e}") from None

    dims = Dims(parse("n_units", int), parse("latent_dim", int), parse("embed_dim", int), parse("control_dim", int), parse("hidden_dim", int))
    bin_s = parse("bin_s", float)
    alpha = parse("alpha", float)
    pn_scalar = parse("process_noise", float, DEFAULT_PROCESS_NOISE)
    initial_state_var = parse("initial_state_var", float, DEFAULT_INITIAL_STATE_VAR)
    log_rate_max = parse("log_rate_max", float, DEFAULT_LOG_RATE_MAX)
    z_prior_sigma = parse("z_prior_sigma", float, DEFAULT_Z_PRIOR_SIGMA)
    policy_scale = parse("policy_scale", float, DEFAULT_POLICY_SCALE)

    n, d, e, m, h = dims.n_units, dims.latent, dims.embed, dims.control, dims.hidden
    known = {f"decoder.{g}.{t}" for g in GENERATORS for t in ("0.weight", "0.bias", "2.weight", "2.bias")}
    known |= {"observation.weight", "observation.bias", "embedding.initial", "embedding.library", "dynamics.process_noise"}
    known |= set(CONTROLLER_TENSORS)
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise err(f"unknown tensors {unknown} (a typo? expected names follow PyTorch's state_dict)")

    def get(name, shape):
        if name not in tensors:
            raise err(f"missing tensor `{name}` (expected shape {[s or 0 for s in shape]})")
        t = tensors[name]
        if t.ndim != len(shape) or any(s is not None and s != f for s, f in zip(shape, t.shape)):
            raise err(f"tensor `{name}` has shape {list(t.shape)}, expected {[s if s is not None else f for s, f in zip(shape, t.shape)]}")
        if not np.all(np.isfinite(t)):
            raise err(f"tensor `{name}` holds non-finite values (NaN or ±inf)")
        return np.array(t, dtype=np.float64)

    def generator(which, out):
        return Generator(get(f"decoder.{which}.0.weight", (h, e)), get(f"decoder.{which}.0.bias", (h,)),
                         get(f"decoder.{which}.2.weight", (out, h)), get(f"decoder.{which}.2.bias", (out,)))

    w_hh, w_xu, b = generator("w_hh_generator", d * d), generator("w_xu_generator", d * m), generator("b_generator", d)
    obs_c = get("observation.weight", (n, d))
    obs_d = get("observation.bias", (n,))
    z_init = get("embedding.initial", (e,)) if "embedding.initial" in tensors else np.zeros(e)
    library = get("embedding.library", (None, e)) if "embedding.library" in tensors else np.zeros((0, e))
    process_noise = get("dynamics.process_noise", (d,)) if "dynamics.process_noise" in tensors else np.full(d, pn_scalar)
    present = [k for k in CONTROLLER_TENSORS if k in tensors]
    policy = None
    if present and len(present) < len(CONTROLLER_TENSORS):
        missing = [k for k in CONTROLLER_TENSORS if k not in present]
        raise err(f"the controller (policy) needs all of {list(CONTROLLER_TENSORS)} or none; missing {missing}")
    if present:
        w1 = get("controller.0.weight", (None, 2 * d))
        hp = w1.shape[0]
        policy = Policy(w1, get("controller.0.bias", (hp,)), get("controller.2.weight", (m, hp)), get("controller.2.bias", (m,)), policy_scale)

    # `validate_at`: dimensions and the ranges of the constants.
    if min(n, d, e, h) == 0:
        raise err(f"invalid model: n_units, latent_dim, embed_dim and hidden_dim must be ≥ 1 (got {dims})")
    for key, v, ok, want in (
        ("bin_s", bin_s, bin_s > 0.0, "must be > 0 (seconds)"),
        ("alpha", alpha, 0.0 < alpha <= 1.0, "must be in (0, 1]"),
        ("initial_state_var", initial_state_var, initial_state_var > 0.0, "must be > 0"),
        ("log_rate_max", log_rate_max, log_rate_max > LOG_RATE_MIN, "must be > the lower clamp (−20)"),
        ("z_prior_sigma", z_prior_sigma, z_prior_sigma > 0.0, "must be > 0"),
    ):
        if not (math.isfinite(v) and ok):
            raise err(f"metadata key `{key}` = {v!r}: {want}")
    if np.any(process_noise < 0.0):
        raise err("invalid model: dynamics.process_noise must be ≥ 0")
    return Model(dims, bin_s, alpha, process_noise, initial_state_var, log_rate_max, obs_c, obs_d,
                 w_hh, w_xu, b, z_init, z_prior_sigma, library, policy)


# ---------------------------------------------------------------------------------------
# Rig file settings (src/rig/sections.rs and the serde Default impls)
# ---------------------------------------------------------------------------------------


@dataclass
class EmbeddingConfig:
    """src/model/embedding.rs `EmbeddingConfig` and its Default."""

    learning_rate: float = 0.02
    rms_decay: float = 0.99
    trust_radius: float = 0.05
    enabled: bool = True
    prior_weight: float = 0.01


# src/model/embedding.rs `DEFAULTS_BIN_S`: the bin width the defaults above are tuned at.
EMBEDDING_DEFAULTS_BIN_S = 0.01


def embedding_config(table, bin_ms: float, where: str, path: str) -> "EmbeddingConfig":
    """src/rig/mod.rs `Rig::scale_embedding_defaults` with `EmbeddingConfig::defaults_for_bin`:
    below 10 ms, the keys the file leaves out scale as η, trust radius ∝ Δ/10 ms and
    w ∝ (Δ/10 ms)²; the keys it sets stay as written."""
    cfg = _section(EmbeddingConfig, table, where, path)
    bin_s = bin_ms * 1e-3
    r = min(bin_s / EMBEDDING_DEFAULTS_BIN_S, 1.0) if math.isfinite(bin_s) and bin_s > 0.0 else 1.0
    d = EmbeddingConfig()
    given = dict(table or {})
    if "learning_rate" not in given:
        cfg.learning_rate = d.learning_rate * r
    if "trust_radius" not in given:
        cfg.trust_radius = d.trust_radius * r
    if "prior_weight" not in given:
        cfg.prior_weight = d.prior_weight * r * r
    return cfg


@dataclass
class TaskIdConfig:
    """src/model/taskid.rs `TaskIdConfig` and its Default."""

    enabled: bool = True
    window_bins: int = 50
    margin: float = 5.0
    min_bins_between_switches: int = 25


@dataclass
class ControllerConfig:
    """src/control/mod.rs `ControllerConfig` and its Default."""

    kind: str = "mppi"
    horizon: int = 25
    samples: int = 256
    temperature: float = 0.3
    rate_temperature: float = 0.1
    noise_std: float = 0.5
    seed: int = 1
    q_latent: float = 1.0
    r_control: float = 0.01
    rate_weight: float = 1.0
    riccati_iterations: int = 200
    probe: dict = field(default_factory=dict)  # [controller.probe]: the baseline refuses kind = "probe" below


@dataclass
class ObjectiveConfig:
    """src/rig/sections.rs `ObjectiveConfig` (both keys required)."""

    kind: str
    target: list


@dataclass
class SafetyConfig:
    """src/rig/sections.rs `SafetyConfig` (`enabled` defaults to true, `fallback_vector` to none)."""

    lower: list
    upper: list
    max_step: float
    fallback: str
    enabled: bool = True
    fallback_vector: list | None = None


@dataclass
class RigConfig:
    """The parts of a rig file the model and controller read (src/rig/mod.rs `Rig`)."""

    path: str
    name: str
    bin_ms: float
    filter: str
    model_path: str | None  # [model] path resolved against the rig file's folder
    embedding: EmbeddingConfig
    task_id: TaskIdConfig
    controller: ControllerConfig
    objective: ObjectiveConfig
    safety: SafetyConfig
    raw: dict = field(repr=False, default_factory=dict)


class RigConfigError(Exception):
    pass


def _section(cls, table, where, path):
    """A dataclass from a TOML table with the Rust serde defaults; unknown keys are errors
    (`deny_unknown_fields`), as are missing keys without a default."""
    table = dict(table or {})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise RigConfigError(f"rig file {path}: [{where}]: unknown field(s) {unknown}; expected one of {sorted(names)}")
    try:
        obj = cls(**table)
    except TypeError as e:
        raise RigConfigError(f"rig file {path}: [{where}]: {e}") from None
    for f in fields(cls):  # TOML integers where Rust takes f64
        if f.type == "float" and isinstance(getattr(obj, f.name), int) and not isinstance(getattr(obj, f.name), bool):
            setattr(obj, f.name, float(getattr(obj, f.name)))
    return obj


def load_rig_config(rig_toml_path: str) -> RigConfig:
    """[model.embedding], [model.task_id], [controller], [objective], [safety] of a rig file,
    with exactly the Rust serde defaults for missing keys. Only `filter = "ekf"` and the
    `mppi` / `lqr` controllers are ported; anything else is a clear error."""
    path = str(rig_toml_path)
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    model = raw.get("model", {})
    filt = model.get("filter", "ekf")
    if filt != "ekf":
        raise RigConfigError(f"rig file {path}: [model] filter = {filt!r}: the Python baseline ports only the point-process EKF (filter = \"ekf\")")
    ctrl = _section(ControllerConfig, raw.get("controller"), "controller", path)
    if ctrl.kind not in ("mppi", "lqr"):
        raise RigConfigError(f"rig file {path}: [controller] kind = {ctrl.kind!r}: the Python baseline ports only \"mppi\" and \"lqr\"")
    obj = _section(ObjectiveConfig, raw.get("objective"), "objective", path)
    if obj.kind not in ("latent", "rates"):
        raise RigConfigError(f"rig file {path}: [objective] kind = {obj.kind!r}: expected \"latent\" or \"rates\"")
    obj.target = [float(v) for v in obj.target]
    safety = _section(SafetyConfig, raw.get("safety"), "safety", path)
    model_path = model.get("path")
    if model_path is not None and not os.path.isabs(model_path):
        model_path = os.path.join(os.path.dirname(path) or ".", model_path)
    return RigConfig(
        path=path,
        name=raw.get("name", ""),
        bin_ms=float(raw.get("timing", {}).get("bin_ms", float("nan"))),
        filter=filt,
        model_path=model_path,
        embedding=embedding_config(model.get("embedding"), float(raw.get("timing", {}).get("bin_ms", float("nan"))), "model.embedding", path),
        task_id=_section(TaskIdConfig, model.get("task_id"), "model.task_id", path),
        controller=ctrl,
        objective=obj,
        safety=safety,
        raw=raw,
    )


def broadcast(values, n: int, key: str = "value") -> np.ndarray:
    """src/rig/mod.rs `Rig::broadcast`: one value for all channels, or exactly n."""
    if len(values) == 1:
        return np.full(n, float(values[0]))
    if len(values) == n:
        return np.asarray(values, dtype=np.float64)
    raise RigConfigError(f"{key} has {len(values)} values; the model needs {n} (or 1 for all)")


class Safety:
    """src/safety.rs `Safety`: per-channel bounds, maximum step per bin, enable gate."""

    def __init__(self, rig: RigConfig, m: int):
        s = rig.safety
        self.lower = broadcast(s.lower, m, "safety.lower")
        self.upper = broadcast(s.upper, m, "safety.upper")
        if np.any(self.lower > self.upper):
            raise RigConfigError(f"rig file {rig.path}: safety.lower > safety.upper")
        self.max_step = float(s.max_step)
        self.kind = s.fallback
        self.fallback_vector = np.asarray(s.fallback_vector if s.fallback_vector is not None else np.zeros(m), dtype=np.float64)

    def apply(self, proposed, last, enabled: bool) -> np.ndarray:
        """`Safety::apply`: clamp to ±max_step around `last`, then to the bounds; a disabled
        gate or a non-finite proposal heads for the safe zero."""
        proposed, last = np.asarray(proposed, dtype=np.float64), np.asarray(last, dtype=np.float64)
        zero = np.clip(0.0, self.lower, self.upper)
        want = np.where(np.isfinite(proposed), proposed, zero) if enabled else zero
        return np.clip(np.clip(want, last - self.max_step, last + self.max_step), self.lower, self.upper)

    def fallback(self, last) -> np.ndarray:
        """`Safety::fallback` (before `apply`)."""
        if self.kind == "hold":
            return np.array(last, dtype=np.float64)
        if self.kind == "zero":
            return np.zeros_like(self.lower)
        return self.fallback_vector.copy()


# ---------------------------------------------------------------------------------------
# Philox4x32-10 (kernels/src/philox.rs)
# ---------------------------------------------------------------------------------------

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)
_TAU_F32 = np.float32(2.0 * math.pi)  # core::f32::consts::TAU


def philox4x32(c0, c1, c2, c3, key0: int, key1: int):
    """`philox4x32`: ten rounds on counters (uint arrays, one block per element) under a
    key; returns the four output words as uint32 arrays."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in (c0, c1, c2, c3))
    k0, k1 = key0 & 0xFFFFFFFF, key1 & 0xFFFFFFFF
    for rnd in range(10):
        if rnd > 0:
            k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & _MASK32, (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & _MASK32
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def _blocks(seed: int, stream: int, blocks: np.ndarray):
    blocks = blocks.astype(np.uint64)
    return philox4x32(blocks & _MASK32, blocks >> np.uint64(32), np.full(blocks.shape, stream & 0xFFFFFFFF, np.uint64),
                      np.full(blocks.shape, (stream >> 32) & 0xFFFFFFFF, np.uint64), seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)


def u32_to_open01(x: np.ndarray) -> np.ndarray:
    """`u32_to_open01`: 24 significant bits centred in their cell, f32 in (0, 1)."""
    return ((x >> np.uint32(8)).astype(np.float32) + np.float32(0.5)) * np.float32(1.0 / 16777216.0)


# Rust's f32 ln / cos / sin are the C library's logf / cosf / sinf. glibc's (since 2.27/2.28,
# from Arm's optimized-routines) evaluate a table and a short polynomial in double and round
# once to float; they are not correctly rounded (up to 0.82 / 0.56 ulp), so numpy's own f32
# (or f64-then-rounded) ln / cos / sin disagree with them on about 1 % of the draws. The
# three functions below are those algorithms (sysdeps/ieee754/flt-32/e_logf.c,
# e_logf_data.c, s_sinf.c, s_cosf.c, s_sincosf.h, s_sincosf_data.c), vectorised, for the
# inputs Box–Muller gives them (u in (0, 1), angles in [0, 2π)). Their double arithmetic
# differs from glibc's only by fused multiply-adds, far below the final rounding to float.

_LOGF_INVC = np.array([float.fromhex(v) for v in (
    "0x1.661ec79f8f3bep+0", "0x1.571ed4aaf883dp+0", "0x1.49539f0f010bp+0", "0x1.3c995b0b80385p+0",
    "0x1.30d190c8864a5p+0", "0x1.25e227b0b8eap+0", "0x1.1bb4a4a1a343fp+0", "0x1.12358f08ae5bap+0",
    "0x1.0953f419900a7p+0", "0x1p+0", "0x1.e608cfd9a47acp-1", "0x1.ca4b31f026aap-1",
    "0x1.b2036576afce6p-1", "0x1.9c2d163a1aa2dp-1", "0x1.886e6037841edp-1", "0x1.767dcf5534862p-1")])
_LOGF_LOGC = np.array([float.fromhex(v) for v in (
    "-0x1.57bf7808caadep-2", "-0x1.2bef0a7c06ddbp-2", "-0x1.01eae7f513a67p-2", "-0x1.b31d8a68224e9p-3",
    "-0x1.6574f0ac07758p-3", "-0x1.1aa2bc79c81p-3", "-0x1.a4e76ce8c0e5ep-4", "-0x1.1973c5a611cccp-4",
    "-0x1.252f438e10c1ep-5", "0x0p+0", "0x1.aa5aa5df25984p-5", "0x1.c5e53aa362eb4p-4",
    "0x1.526e57720db08p-3", "0x1.bc2860d22477p-3", "0x1.1058bc8a07ee1p-2", "0x1.4043057b6ee09p-2")])
_LOGF_LN2 = float.fromhex("0x1.62e42fefa39efp-1")
_LOGF_A = [float.fromhex(v) for v in ("-0x1.00ea348b88334p-2", "0x1.5575b0be00b6ap-2", "-0x1.ffffef20a4123p-2")]


def logf(x: np.ndarray) -> np.ndarray:
    """glibc's `__logf` for positive normal f32 (e_logf.c): x = 2^k z, log1p(z/c − 1) by a
    degree-4 polynomial around the table's c, + log c + k ln 2, rounded once to f32."""
    ix = np.asarray(x, dtype=np.float32).view(np.uint32)
    if np.any((ix - np.uint32(0x00800000)) >= np.uint32(0x7F800000 - 0x00800000)):
        raise ValueError("logf: only positive normal finite inputs are ported")
    tmp = ix - np.uint32(0x3F330000)
    i = ((tmp >> np.uint32(19)) % np.uint32(16)).astype(np.intp)
    k = (tmp.view(np.int32) >> np.int32(23)).astype(np.float64)
    iz = ix - (tmp & np.uint32(0x1FF << 23))
    z = iz.view(np.float32).astype(np.float64)
    r = z * _LOGF_INVC[i] - 1.0
    y0 = _LOGF_LOGC[i] + k * _LOGF_LN2
    r2 = r * r
    y = _LOGF_A[1] * r + _LOGF_A[2]
    y = _LOGF_A[0] * r2 + y
    y = y * r2 + (y0 + r)
    return np.where(ix == np.uint32(0x3F800000), np.float32(0.0), y.astype(np.float32))


_SC_HPI_INV = float.fromhex("0x1.45F306DC9C883p+23")  # 2/π · 2^24 (no TOINT_INTRINSICS on x86-64)
_SC_HPI = float.fromhex("0x1.921FB54442D18p0")
_SC_C = [float.fromhex(v) for v in ("0x1p0", "-0x1.ffffffd0c621cp-2", "0x1.55553e1068f19p-5",
                                    "-0x1.6c087e89a359dp-10", "0x1.99343027bf8c3p-16")]
_SC_S = [float.fromhex(v) for v in ("-0x1.555545995a603p-3", "0x1.1107605230bc4p-7", "-0x1.994eb3774cf24p-13")]


def sincosf(y: np.ndarray):
    """glibc's `__sinf` and `__cosf` (s_sinf.c, s_cosf.c) for finite |y| < 120, both from
    one range reduction: no reduction below π/4 (coarsely: the top 12 bits), else
    `reduce_fast` to [−π/4, π/4] with quadrant n; then `sinf_poly`'s sine polynomial for
    even quadrants and its cosine polynomial (negated by the 2nd table entry when n & 2) for
    odd ones (cosf uses quadrant n ^ 1). Returns (sinf(y), cosf(y))."""
    y = np.asarray(y, dtype=np.float32)
    top = (y.view(np.uint32) >> np.uint32(20)) & np.uint32(0x7FF)
    if np.any(top >= np.uint32(0x42F)):  # abstop12(120.0f)
        raise ValueError("sincosf: only |y| < 120 is ported")
    x = y.astype(np.float64)
    small = top < np.uint32(0x3F4)  # abstop12(pio4)
    n = (((x * _SC_HPI_INV).astype(np.int32) + np.int32(0x800000)) >> np.int32(24)).astype(np.int64)
    n = np.where(small, 0, n)
    xr = np.where(small, x, x - n * _SC_HPI)
    xs = np.where(((n + 1) & 2) != 0, -xr, xr)  # x · sign[n & 3], sign = (1, −1, −1, 1)
    x2 = xr * xr
    # sine polynomial (identical in both table entries)
    x3 = xs * x2
    s1 = _SC_S[1] + x2 * _SC_S[2]
    x7 = x3 * x2
    sin_p = (xs + x3 * _SC_S[0]) + x7 * s1
    # cosine polynomial; the 2nd entry's coefficients are all negated, which negates it exactly
    x4 = x2 * x2
    c2 = _SC_C[3] + x2 * _SC_C[4]
    c1 = _SC_C[0] + x2 * _SC_C[1]
    x6 = x4 * x2
    cos_p = (c1 + x4 * _SC_C[2]) + x6 * c2
    cos_p = np.where((n & 2) != 0, -cos_p, cos_p)
    odd = (n & 1) != 0
    sin = np.where(odd, cos_p, sin_p).astype(np.float32)
    cos = np.where(odd, sin_p, cos_p).astype(np.float32)
    tiny = top < np.uint32(0x398)  # abstop12(0x1p-12f): sinf returns y, cosf 1
    return np.where(tiny, y, sin), np.where(tiny, np.float32(1.0), cos)


def _box_muller(u1: np.ndarray, u2: np.ndarray):
    """`box_muller` in f32, with glibc's logf / cosf / sinf as Rust calls them."""
    radius = np.sqrt(np.float32(-2.0) * logf(u1))
    sin, cos = sincosf(_TAU_F32 * u2)
    return radius * cos, radius * sin


def normal4(seed: int, stream: int, blocks: np.ndarray) -> np.ndarray:
    """`normal4` for many blocks: (len(blocks), 4) f32 standard normals."""
    r = _blocks(seed, stream, blocks)
    a0, a1 = _box_muller(u32_to_open01(r[0]), u32_to_open01(r[1]))
    b0, b1 = _box_muller(u32_to_open01(r[2]), u32_to_open01(r[3]))
    return np.stack([a0, a1, b0, b1], axis=-1)


def normal_at(seed: int, stream: int, index) -> np.ndarray:
    """`normal_at`, vectorised over index (block index // 4, lane index % 4)."""
    index = np.asarray(index, dtype=np.uint64)
    flat = index.ravel()
    z = normal4(seed, stream, flat // np.uint64(4))
    return z[np.arange(flat.size), (flat % np.uint64(4)).astype(np.intp)].reshape(index.shape)


def uniform_at(seed: int, stream: int, index) -> np.ndarray:
    """`uniform_at`, vectorised over index."""
    index = np.asarray(index, dtype=np.uint64)
    words = np.stack(_blocks(seed, stream, index.ravel() // np.uint64(4)), axis=-1)
    return u32_to_open01(words[np.arange(index.size), (index.ravel() % np.uint64(4)).astype(np.intp)]).reshape(index.shape)


def fill_normals(seed: int, stream: int, first: int, count: int, scale: float) -> np.ndarray:
    """src/control/mppi.rs `fill_normals`: scale · normal_at(seed, stream, first + i) as f64,
    i < count, drawing whole Philox blocks."""
    if count <= 0:
        return np.zeros(0)
    end = first + count
    b0, b1 = first // 4, (end - 1) // 4
    z = normal4(seed, stream, np.arange(b0, b1 + 1, dtype=np.uint64)).ravel()
    return scale * z[first - 4 * b0 : end - 4 * b0].astype(np.float64)


# ---------------------------------------------------------------------------------------
# Model pieces
# ---------------------------------------------------------------------------------------


def log_rates(model: Model, x: np.ndarray) -> np.ndarray:
    """src/model/observation.rs `log_rates`: clamp(C x + d) (log Hz); x may be (d) or (K, d)."""
    return np.clip(model.obs_d + x @ model.obs_c.T, LOG_RATE_MIN, model.log_rate_max)


def _ln_factorial_table():
    t = np.zeros(16)
    for k in range(2, 16):  # the exact sum of `ln_factorial`, in its order
        s, i = 0.0, 2.0
        while i <= k:
            s += math.log(i)
            i += 1.0
        t[k] = s
    return t


_LN_FACT = _ln_factorial_table()


def ln_factorial(k: np.ndarray) -> np.ndarray:
    """src/model/observation.rs `ln_factorial`: exact sum below 16, Stirling with two
    correction terms above."""
    k = np.asarray(k, dtype=np.float64)
    small = _LN_FACT[np.clip(np.nan_to_num(k), 0, 15).astype(np.intp)]
    k1 = k + 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        big = (k1 - 0.5) * np.log(k1) - k1 + 0.5 * math.log(2.0 * math.pi) + 1.0 / (12.0 * k1) - 1.0 / (360.0 * k1 * k1 * k1)
    return np.where(k < 2.0, 0.0, np.where(k < 16.0, small, big))


def poisson_loglik(y: np.ndarray, eta: np.ndarray, bin_s: float, lnfact: np.ndarray) -> float:
    """src/model/observation.rs `poisson_loglik`: Σ yᵢ log λᵢ − λᵢ − log yᵢ!, λᵢ = Δ exp(ηᵢ),
    with log yᵢ! passed in (it depends on the counts only)."""
    log_lambda = eta + math.log(bin_s)
    return float(np.sum(y * log_lambda - np.exp(log_lambda) - lnfact))


@dataclass
class Theta:
    """src/model/mod.rs `Theta`: W_hh (d, d), W_xu (d, m), b (d)."""

    w_hh: np.ndarray
    w_xu: np.ndarray
    b: np.ndarray


class Hypernet:
    """src/model/hypernet.rs `Hypernet::decode` / `backprop`. `decode` keeps each
    generator's pre-activation (its ReLU mask) for `backprop` at the same z."""

    def __init__(self, model: Model):
        self.gens = (model.w_hh, model.w_xu, model.b)
        self.d, self.m = model.dims.latent, model.dims.control
        self.pre = [None, None, None]

    def decode(self, z: np.ndarray) -> Theta:
        outs = []
        for i, g in enumerate(self.gens):
            pre = g.b1 + g.w1 @ z
            self.pre[i] = pre
            outs.append(g.b2 + g.w2 @ np.maximum(pre, 0.0))
        d, m = self.d, self.m
        return Theta(outs[0].reshape(d, d), outs[1].reshape(d, m), outs[2].copy())

    def backprop(self, g_whh: np.ndarray, g_wxu: np.ndarray, g_b: np.ndarray) -> np.ndarray:
        """dL/dz from dL/dθ through the three generators (row-major flattening)."""
        grad_z = np.zeros(self.gens[0].w1.shape[1])
        for i, grad_out in ((0, g_whh.ravel()), (1, g_wxu.ravel()), (2, g_b)):
            if grad_out.size == 0:
                continue
            g = self.gens[i]
            grad_hidden = g.w2.T @ grad_out
            grad_hidden[self.pre[i] <= 0.0] = 0.0
            grad_z = grad_z + g.w1.T @ grad_hidden
        return grad_z


def dynamics_step(theta: Theta, alpha: float, x: np.ndarray, u: np.ndarray):
    """src/model/dynamics.rs `step`: f(x, u) = x + α(tanh(W_hh x + W_xu u + b) − x) and
    tanh(a); x, u may be (d), (m) or (K, d), (K, m)."""
    a = theta.b + x @ theta.w_hh.T
    if u.shape[-1] > 0:
        a = a + u @ theta.w_xu.T
    t = np.tanh(a)
    return x + alpha * (t - x), t


def jacobian_x(theta: Theta, alpha: float, t: np.ndarray) -> np.ndarray:
    """`jacobian_x`: (1 − α) I + α diag(1 − tanh²a) W_hh."""
    f = (alpha * (1.0 - t * t))[:, None] * theta.w_hh
    f[np.diag_indices_from(f)] += 1.0 - alpha
    return f


def jacobian_u(theta: Theta, alpha: float, t: np.ndarray) -> np.ndarray:
    """`jacobian_u`: α diag(1 − tanh²a) W_xu."""
    return (alpha * (1.0 - t * t))[:, None] * theta.w_xu


def symmetrize(m: np.ndarray) -> np.ndarray:
    """src/model/ekf.rs `symmetrize`: (M + Mᵀ)/2."""
    return 0.5 * (m + m.T)


def _cholesky(m: np.ndarray):
    """nalgebra's Cholesky, or None when the factor has a non-positive / non-finite diagonal."""
    try:
        lo = np.linalg.cholesky(m)
    except np.linalg.LinAlgError:
        return None
    dg = lo.diagonal()
    return lo if 0.0 < dg.min() and dg.max() < math.inf else None  # False on NaN


def _cho_solve(lo: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    return np.linalg.solve(lo.T, np.linalg.solve(lo, rhs))


MAX_JITTER_TRIES = 16


def cholesky_jittered(src: np.ndarray):
    """src/model/ekf.rs `cholesky_jittered`: the factor of src, adding a growing multiple
    of the identity (1e-12 · max|diag|, × 10 per try) until it is positive definite; the
    identity as a last resort. Returns (L, jittered)."""
    n = src.shape[0]
    scale = float(np.max(np.abs(np.diag(src)))) if n else 0.0
    if not (math.isfinite(scale) and scale > 0.0):
        scale = 1.0
    jitter = 0.0
    for attempt in range(MAX_JITTER_TRIES + 1):
        m = np.eye(n) if attempt == MAX_JITTER_TRIES else src + jitter * np.eye(n)
        lo = _cholesky(m)
        if lo is not None and np.all(np.isfinite(np.tril(lo))):
            return lo, attempt > 0
        jitter = 1e-12 * scale if jitter == 0.0 else jitter * 10.0
    raise AssertionError("the identity is always positive definite")


class PointProcessEkf:
    """src/model/ekf.rs `PointProcessEkf` (information-form point-process EKF)."""

    def __init__(self, model: Model):
        d = model.dims.latent
        self.x = np.zeros(d)
        self.p = np.eye(d) * model.initial_state_var
        self.x_prev = np.zeros(d)
        self.jitter_events = 0

    def predict(self, theta: Theta, alpha: float, q_diag: np.ndarray, u: np.ndarray):
        """`predict`: x⁻ = f(x, u; θ), P⁻ = F P Fᵀ + diag(Q), symmetrised."""
        self.x_prev = self.x.copy()
        x_pred, t = dynamics_step(theta, alpha, self.x_prev, u)
        f = jacobian_x(theta, alpha, t)
        p = (f @ self.p) @ f.T
        p[np.diag_indices_from(p)] += q_diag
        self.p = symmetrize(p)
        self.x = x_pred

    def update(self, model: Model, y: np.ndarray, lnfact: np.ndarray) -> float:
        """`update`: one Newton step from x⁻; J = (P⁻)⁻¹ + Cᵀ diag(λ) C, P = J⁻¹,
        x = x⁻ + P Cᵀ (y − λ), clamped units masked. Returns log p(y | x⁻)."""
        c, lmax = model.obs_c, model.log_rate_max
        eta = log_rates(model, self.x)
        ll = poisson_loglik(y, eta, model.bin_s, lnfact)
        live = (eta > LOG_RATE_MIN) & (eta < lmax)
        lam = model.bin_s * np.exp(eta)
        resid = np.where(live, y - lam, 0.0)
        c_weighted = np.where(live[:, None], lam[:, None] * c, 0.0)
        lo, j1 = cholesky_jittered(self.p)
        info = _cho_solve(lo, np.eye(lo.shape[0]))
        info = symmetrize(info + c_weighted.T @ c)
        lo2, j2 = cholesky_jittered(info)
        self.p = symmetrize(_cho_solve(lo2, np.eye(lo2.shape[0])))
        self.x = self.x + _cho_solve(lo2, c.T @ resid)
        self.jitter_events += int(j1) + int(j2)
        return ll


RMS_EPS = 1e-8


class EmbeddingUpdater:
    """src/model/embedding.rs `EmbeddingUpdater`: one RMSProp-normalised ascent step per bin
    on log p(y | x⁻(z)) − w ½‖z‖²/σ_z², through the dynamics and the hypernetwork, with a
    trust region on ‖Δz‖."""

    def __init__(self, model: Model, cfg: EmbeddingConfig):
        self.cfg = cfg
        e = model.dims.embed
        self.v = np.zeros(e)
        self.decay_pow = 1.0
        self.steps = 0

    def reset(self):
        """`reset` (after a task jump)."""
        self.v = np.zeros_like(self.v)
        self.decay_pow = 1.0
        self.steps = 0

    def gradient(self, model: Model, hyper: Hypernet, z, theta, x_prev, u, y) -> np.ndarray:
        """`gradient`: g = ∇_z L(z); `hyper` holds the forward pass at this z."""
        x_pred, t = dynamics_step(theta, model.alpha, x_prev, u)
        eta = log_rates(model, x_pred)
        live = (eta > LOG_RATE_MIN) & (eta < model.log_rate_max)
        resid = np.where(live, y - model.bin_s * np.exp(eta), 0.0)
        dl_dx = model.obs_c.T @ resid
        dl_da = model.alpha * (1.0 - t * t) * dl_dx
        grad = hyper.backprop(np.outer(dl_da, x_prev), np.outer(dl_da, u), dl_da)
        prior = self.cfg.prior_weight / (model.z_prior_sigma * model.z_prior_sigma)
        return grad + (-prior) * z

    def step(self, model: Model, hyper: Hypernet, z, theta, x_prev, u, y):
        """`step`: returns (new z, new θ(z), ‖Δz‖); nothing moves when disabled or when the
        gradient is not finite."""
        if not self.cfg.enabled:
            return z, theta, 0.0
        g = self.gradient(model, hyper, z, theta, x_prev, u, y)
        if not np.all(np.isfinite(g)):
            return z, theta, 0.0
        rho = self.cfg.rms_decay
        self.steps += 1
        self.decay_pow *= rho
        correction = 1.0 / max(1.0 - self.decay_pow, 1e-300)
        self.v = rho * self.v + (1.0 - rho) * g * g
        v_hat = self.v * correction
        delta = self.cfg.learning_rate * g / (np.sqrt(v_hat) + RMS_EPS)
        norm = float(np.sqrt(np.dot(delta, delta)))
        if norm > self.cfg.trust_radius:
            delta = delta * (self.cfg.trust_radius / norm)
            norm = self.cfg.trust_radius
        z = z + delta
        return z, hyper.decode(z), norm


class TaskIdentifier:
    """src/model/taskid.rs `TaskIdentifier`: windowed one-step predictive log-likelihood of
    every library task vs the current model; proposes a jump past a margin and a cool-down."""

    def __init__(self, model: Model, cfg: TaskIdConfig):
        self.cfg = cfg
        hyper = Hypernet(model)
        self.thetas = [hyper.decode(z) for z in model.task_library]
        t, w = len(self.thetas), max(cfg.window_bins, 1)
        self.window = np.zeros((w, t))  # column j = candidate j; row = circular bin slot
        self.current = np.zeros(w)
        self.sums = np.zeros(t)
        self.current_sum = 0.0
        self.head = 0
        self.filled = 0
        self.since_switch = 0
        self.active = next((j for j, z in enumerate(model.task_library) if np.array_equal(z, model.z_init)), None)

    def best(self):
        """`best`: the first candidate with the largest windowed score."""
        return None if self.filled == 0 or len(self.thetas) == 0 else int(np.argmax(self.sums))

    def score(self, model: Model, x_prev, u, y, lnfact, current_loglik: float):
        """`score`: one bin; returns the library index to jump to, or None."""
        if not self.cfg.enabled or not self.thetas or not math.isfinite(current_loglik):
            return None
        w = self.current.shape[0]
        for j, th in enumerate(self.thetas):
            x_pred, _ = dynamics_step(th, model.alpha, x_prev, u)
            ll = poisson_loglik(y, log_rates(model, x_pred), model.bin_s, lnfact)
            self.window[self.head, j] = ll if math.isfinite(ll) else -1e300
        self.current[self.head] = current_loglik
        self.head = (self.head + 1) % w
        self.filled = min(self.filled + 1, w)
        self.since_switch += 1
        self.sums = self.window.sum(axis=0)  # re-summed (slot order), as in Rust
        self.current_sum = float(self.current.sum())
        if self.filled < w or self.since_switch < self.cfg.min_bins_between_switches:
            return None
        best = self.best()
        if best is not None and best != self.active and self.sums[best] - self.current_sum > self.cfg.margin:
            return best
        return None

    def jumped_to(self, j: int):
        """`jumped_to`: the current model's window becomes candidate j's; cool-down restarts."""
        self.current = self.window[:, j].copy()
        self.current_sum = float(self.sums[j])
        self.active = j
        self.since_switch = 0


# ---------------------------------------------------------------------------------------
# Controllers (src/control/)
# ---------------------------------------------------------------------------------------

RATE_FLOOR_HZ = 0.1
RATE_LS_RIDGE = 1e-6
_RIDGES = (0.0, 1e-12, 1e-10, 1e-8, 1e-6, 1e-3)


def spd_solve(m: np.ndarray, rhs: np.ndarray):
    """src/control/mod.rs `spd_solve_mut`: solve M X = rhs by Cholesky, retrying with a
    growing ridge relative to M's mean |diagonal|; None if even the largest ridge fails."""
    n = m.shape[0]
    for rel in _RIDGES:
        buf = m
        if rel > 0.0:
            mean_diag = float(np.sum(np.abs(np.diag(m)))) / max(n, 1)
            buf = m + (rel * max(mean_diag, 1e-300) + rel * 1e-12) * np.eye(n)
        if _cholesky(buf) is not None:  # positive definite: solve (LAPACK gesv, one call)
            return np.linalg.solve(buf, rhs)
    return None


def rates_to_latent(model: Model, rates: np.ndarray) -> np.ndarray:
    """src/control/mod.rs `rates_to_latent`: x* = clip(argmin ‖C x − (ln max(r*, floor) − d)‖²
    + ρ‖x‖², −1, 1)."""
    c, d = model.obs_c, model.obs_c.shape[1]
    log_target = np.clip(np.log(np.maximum(rates, RATE_FLOOR_HZ)), LOG_RATE_MIN, model.log_rate_max) - model.obs_d
    ctc = c.T @ c
    mean_diag = float(np.sum(np.diag(ctc))) / max(d, 1)
    ctc = ctc + RATE_LS_RIDGE * max(mean_diag, 1e-12) * np.eye(d)
    x = spd_solve(ctc, c.T @ log_target)
    if x is None:
        x = np.zeros(d)
    return np.where(np.isfinite(x), np.clip(x, -1.0, 1.0), 0.0)


class ObjectiveTarget:
    """src/control/mod.rs `ObjectiveTarget`: the latent target x*, and for a rate objective
    the rates r* and MPPI's per-unit scales 1 / max(r*, 1)."""

    def __init__(self, model: Model, kind: str, target: np.ndarray):
        target = np.asarray(target, dtype=np.float64)
        self.is_rates = kind == "rates"
        if self.is_rates:
            self.rates = target
            self.rate_scale = 1.0 / np.maximum(target, 1.0)
            self.latent = rates_to_latent(model, target)
        else:
            self.latent = target
            self.rates = np.zeros(model.dims.n_units)
            self.rate_scale = np.zeros(model.dims.n_units)


def clamp_in_place(u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """`ActuationLimits::clamp_in_place`: a non-finite value becomes the clamp of 0."""
    return np.clip(np.where(np.isfinite(u), u, 0.0), lo, hi)


MPPI_MIN_GAP = 1e-6


class Mppi:
    """src/control/mppi.rs `Mppi::compute`, vectorised over the K samples: Philox noise
    (sample 0 unperturbed), clamped perturbations, rollouts from the filtered mean, latent or
    rate cost plus uᵀRu, softmin weights, weighted update of the nominal, warm-start shift."""

    def __init__(self, cfg: ControllerConfig, dims: Dims):
        self.cfg = cfg
        self.u_nom = np.zeros((cfg.horizon, dims.control))  # row h = U_h

    def compute(self, model: Model, theta: Theta, x: np.ndarray, bin: int, target: ObjectiveTarget, lo, hi) -> np.ndarray:
        cfg = self.cfg
        h_len, k_len, m = cfg.horizon, cfg.samples, model.dims.control
        rate_coef = cfg.rate_weight / max(model.dims.n_units, 1)
        self.u_nom = np.clip(np.where(np.isfinite(self.u_nom), self.u_nom, 0.0), lo, hi)
        row = h_len * m
        eps = np.zeros(k_len * row)
        eps[row:] = fill_normals(cfg.seed, bin, row, (k_len - 1) * row, cfg.noise_std)
        eps = eps.reshape(k_len, h_len, m)
        xk = np.broadcast_to(x, (k_len, x.shape[0]))
        cost = np.zeros(k_len)
        for h in range(h_len):
            nominal = self.u_nom[h]
            v = np.clip(nominal + eps[:, h, :], lo, hi)
            eps[:, h, :] = v - nominal
            cost = cost + cfg.r_control * np.sum(v * v, axis=1)
            xk, _ = dynamics_step(theta, model.alpha, xk, v)
            if target.is_rates:
                e = np.exp(log_rates(model, xk)) - target.rates
                cost = cost + rate_coef * np.sum(e * e * target.rate_scale, axis=1)
            else:
                e = xk - target.latent
                cost = cost + cfg.q_latent * np.sum(e * e, axis=1)
        finite = np.isfinite(cost)
        if np.any(finite):
            s_min = np.min(cost[finite])
            if target.is_rates:
                # Relative temperature: rate_temperature × the mean gap to the best sample
                # (kernels/src/mppi.rs MIN_GAP floors the gap).
                tau = cfg.rate_temperature * max(float(np.mean(cost[finite] - s_min)), MPPI_MIN_GAP)
            else:
                tau = cfg.temperature
            w = np.where(finite, np.exp(-(np.where(finite, cost, s_min) - s_min) / tau), 0.0)
            total = np.sum(w)
            acc = np.tensordot(w, eps, axes=(0, 0))  # (H, m)
            self.u_nom = np.clip(self.u_nom + acc / total, lo, hi)
        u = clamp_in_place(self.u_nom[0].copy(), lo, hi)
        self.u_nom[:-1] = self.u_nom[1:].copy()
        return u


RICCATI_TOL = 1e-10
STEADY_STATE_RIDGE = 1e-6
MAX_DOUBLINGS = 60


def _sym_lower(m: np.ndarray) -> np.ndarray:
    """0.5 (M + Mᵀ), as the Riccati code symmetrises."""
    return 0.5 * (m + m.T)


class Lqr:
    """src/control/lqr.rs `Lqr::compute`: linearise at (x, ū) with ū the previous bin's
    clamped steady-state control, steady-state u* by ridge least squares, gain from the DARE
    (one warm fixed-point step, else structure-preserving doubling, else the fixed point),
    u = clamp(u* − K (x − x*))."""

    def __init__(self, cfg: ControllerConfig, dims: Dims):
        d, m = dims.latent, dims.control
        self.iterations = cfg.riccati_iterations
        self.q = np.eye(d) * cfg.q_latent
        self.r = np.eye(m) * cfg.r_control
        self.p = np.zeros((d, d))
        self.p_warm = False
        self.k = np.zeros((m, d))
        self.u_lin = np.zeros(m)
        self.u_lin_valid = False
        self.last_iterations = 0

    def _gain(self, a, b, p):
        """`gain_into_scratch`: PA, BᵀPA and K = (R + BᵀPB)⁻¹ BᵀPA (None if unfactorable)."""
        pa = p @ a
        pb = p @ b
        bpa = b.T @ pa
        s = _sym_lower(b.T @ pb + self.r)
        return pa, bpa, spd_solve(s, bpa)

    def _fixed_point(self, a, b, iterations):
        """`solve_dare_warm` from the P in self.p."""
        for it in range(1, iterations + 1):
            pa, bpa, k = self._gain(a, b, self.p)
            if k is None:
                self.p = np.full_like(self.p, np.nan)
                return it, False
            p_next = _sym_lower(self.q + a.T @ pa - bpa.T @ k)
            diff = float(np.max(np.abs(p_next - self.p)))
            scale = float(np.max(np.abs(p_next)))
            self.p = p_next
            if not (np.all(np.isfinite(p_next)) and math.isfinite(diff) and math.isfinite(scale)):
                return it, False
            if diff <= RICCATI_TOL * max(scale, 1.0):
                return it, True
        return iterations, False

    def _doubling(self, a, b, max_doublings):
        """`solve_dare_doubling`: G = B R⁻¹ Bᵀ, H = Q; W = I + G H; A' = A W⁻¹ A,
        G' = G + A W⁻¹ G Aᵀ, H' = H + Aᵀ H W⁻¹ A until max|ΔH| ≤ tol · max(1, max|H|).
        Returns (P or None on breakdown, doublings used, converged)."""
        d = a.shape[0]
        rinv_bt = spd_solve(self.r, b.T)
        if rinv_bt is None:
            return None, 0, False
        g = _sym_lower(b @ rinv_bt)
        ak = a.copy()
        h = _sym_lower(self.q)
        used = 0
        for k in range(1, max_doublings + 1):
            used = k
            w = np.eye(d) + g @ h
            try:
                wa = np.linalg.solve(w, ak)
                wg = np.linalg.solve(w, g)
            except np.linalg.LinAlgError:
                return None, k, False
            ak_next = ak @ wa
            g = _sym_lower(g + (ak @ wg) @ ak.T)
            dh = _sym_lower(ak.T @ (h @ wa))
            h = _sym_lower(h + dh)
            ak = ak_next
            diff = float(np.max(np.abs(dh)))
            scale = float(np.max(np.abs(h)))
            if not (math.isfinite(diff) and math.isfinite(scale) and np.all(np.isfinite(g)) and np.all(np.isfinite(ak))):
                return None, k, False
            if diff <= RICCATI_TOL * max(scale, 1.0):
                return h, k, True
        return h, used, False

    def _solve_riccati(self, a, b):
        """`Lqr::solve_riccati`: one warm fixed-point step; if that has not converged,
        doubling from scratch; if that breaks down or does not converge, the fixed point."""
        warm_steps = 0
        if self.p_warm:
            warm_steps, converged = self._fixed_point(a, b, 1)
            if converged:
                return warm_steps
        cap = min(self.iterations, MAX_DOUBLINGS)
        p, doublings, converged = self._doubling(a, b, cap)
        if converged:
            self.p = p
            return warm_steps + doublings
        rest = max(self.iterations - warm_steps, 0)
        if not self.p_warm or not np.all(np.isfinite(self.p)):
            self.p = self.q.copy()
            rest = self.iterations
        n, _ = self._fixed_point(a, b, rest)
        return warm_steps + doublings + n

    def compute(self, model: Model, theta: Theta, x: np.ndarray, u_prev: np.ndarray, target: ObjectiveTarget, lo, hi) -> np.ndarray:
        alpha = model.alpha
        if not self.u_lin_valid:
            self.u_lin = np.array(u_prev, dtype=np.float64)
        self.u_lin = clamp_in_place(self.u_lin, lo, hi)
        fx, t = dynamics_step(theta, alpha, x, self.u_lin)
        a = jacobian_x(theta, alpha, t)
        b = jacobian_u(theta, alpha, t)
        c = fx - a @ x - b @ self.u_lin
        xs = target.latent
        rhs = xs - a @ xs - c
        btb = b.T @ b
        n = btb.shape[0]
        btb = btb + (STEADY_STATE_RIDGE * (float(np.sum(np.diag(btb))) / n) + 1e-12) * np.eye(n)
        u_star = spd_solve(btb, b.T @ rhs)
        if u_star is None or not np.all(np.isfinite(u_star)):
            u_star = self.u_lin.copy()
        self.u_lin = clamp_in_place(u_star, lo, hi)
        self.u_lin_valid = True
        if not self.p_warm:
            self.p = self.q.copy()
        self.last_iterations = self._solve_riccati(a, b)
        k = None
        if np.all(np.isfinite(self.p)):
            k = self._gain(a, b, self.p)[2]
        if k is not None and np.all(np.isfinite(k)):
            self.k = k
            self.p_warm = True
        else:
            self.p_warm = False
            self.k = np.zeros_like(self.k)
        return clamp_in_place(u_star - self.k @ (x - xs), lo, hi)


# ---------------------------------------------------------------------------------------
# The per-bin loop (src/backend/cpu.rs `CpuBackend`)
# ---------------------------------------------------------------------------------------


class Loop:
    """src/backend/cpu.rs `CpuBackend`: filter predict → update → embedding step → task
    identification → controller, one bin per `step`.

    After each step: `x` (filtered mean, d), `z` (embedding, e), `loglik` (log p(y | x⁻)),
    `task_jump` (library index or None), `embed_step` (‖Δz‖)."""

    def __init__(self, model: Model, rig: RigConfig, lo=None, hi=None):
        if rig.filter != "ekf":
            raise RigConfigError(f"rig file {rig.path}: only filter = \"ekf\" is ported")
        dims = model.dims
        if dims.control == 0:
            raise RigConfigError("the model has no control channels (m = 0): nothing to control")
        self.model = model
        self.rig = rig
        m = dims.control
        self.lo = np.asarray(lo, dtype=np.float64) if lo is not None else broadcast(rig.safety.lower, m, "safety.lower")
        self.hi = np.asarray(hi, dtype=np.float64) if hi is not None else broadcast(rig.safety.upper, m, "safety.upper")
        if self.lo.shape != (m,) or self.hi.shape != (m,):
            raise ValueError(f"actuation limits need {m} values each")
        ctrl = rig.controller
        if ctrl.kind == "mppi":
            self.controller = Mppi(ctrl, dims)
        elif ctrl.kind == "lqr":
            self.controller = Lqr(ctrl, dims)
        else:
            raise RigConfigError(f"rig file {rig.path}: controller kind {ctrl.kind!r} is not ported (only mppi and lqr)")
        self.set_objective(rig.objective.kind, rig.objective.target)
        self.hyper = Hypernet(model)
        self.z = model.z_init.copy()
        self.theta = self.hyper.decode(self.z)
        self.ekf = PointProcessEkf(model)
        self.embed_cfg = rig.embedding
        self.embed = EmbeddingUpdater(model, rig.embedding)
        tcfg = rig.task_id
        self.taskid = TaskIdentifier(model, tcfg) if tcfg.enabled and len(model.task_library) > 0 else None
        self.x = self.ekf.x.copy()
        self.loglik = 0.0
        self.task_jump = None
        self.embed_step = 0.0

    def set_objective(self, kind: str, target):
        """`Backend::set_objective`: a latent target (d values) or target rates in Hz (N
        values, or one for all)."""
        dims = self.model.dims
        if kind == "rates":
            target = broadcast(list(target), dims.n_units, "objective.target")
            if not np.all(np.isfinite(target)) or np.any(target < 0.0):
                raise ValueError("rate objective values must be finite and ≥ 0 Hz")
        elif kind == "latent":
            target = np.asarray(target, dtype=np.float64)
            if target.shape != (dims.latent,) or not np.all(np.isfinite(target)):
                raise ValueError(f"latent objective needs {dims.latent} finite values")
        else:
            raise ValueError(f"objective kind {kind!r}: expected \"latent\" or \"rates\"")
        self.target = ObjectiveTarget(self.model, kind, target)

    def step(self, counts, u_prev, bin: int, has_data: bool = True, want_control: bool = True):
        """`CpuBackend::step`: returns the proposed command u (m, before the safety layer), or
        None when there is no data or no control is wanted."""
        p = self.model
        u_prev = np.asarray(u_prev, dtype=np.float64)
        self.ekf.predict(self.theta, p.alpha, p.process_noise, u_prev)
        self.task_jump = None
        self.embed_step = 0.0
        if has_data:
            y = np.asarray(counts, dtype=np.float64)
            lnfact = ln_factorial(y)
            self.loglik = self.ekf.update(p, y, lnfact)
            x_prev = self.ekf.x_prev
            if self.embed_cfg.enabled:
                self.z, self.theta, self.embed_step = self.embed.step(p, self.hyper, self.z, self.theta, x_prev, u_prev, y)
            if self.taskid is not None:
                j = self.taskid.score(p, x_prev, u_prev, y, lnfact, self.loglik)
                if j is not None:
                    self.z = p.task_library[j].copy()
                    self.theta = self.hyper.decode(self.z)
                    self.taskid.jumped_to(j)
                    self.embed.reset()
                    self.task_jump = j
        else:
            self.loglik = 0.0
        self.x = self.ekf.x.copy()
        if not (want_control and has_data):
            return None
        if isinstance(self.controller, Mppi):
            return self.controller.compute(p, self.theta, self.x, int(bin), self.target, self.lo, self.hi)
        return self.controller.compute(p, self.theta, self.x, u_prev, self.target, self.lo, self.hi)


# ---------------------------------------------------------------------------------------
# Offline CLI
# ---------------------------------------------------------------------------------------


def run_offline(rig_path: str, model_path: str, inputs: str, out: str, timing: bool) -> None:
    model = load_model(model_path)
    rig = load_rig_config(rig_path)
    dims = model.dims
    n, m, d, e = dims.n_units, dims.control, dims.latent, dims.embed
    safety = Safety(rig, m)
    loop = Loop(model, rig, safety.lower, safety.upper)
    data = np.fromfile(inputs, dtype="<f8")
    if data.size % (n + m):
        raise SystemExit(f"ssm.py: {inputs} holds {data.size} values, not whole rows of N + m = {n + m}")
    rows = data.reshape(-1, n + m)
    result = np.zeros((rows.shape[0], d + e + 1 + m + 1))
    times = np.zeros(rows.shape[0])
    for k, row in enumerate(rows):
        t0 = time.perf_counter()
        u = loop.step(row[:n], row[n:], k)
        times[k] = time.perf_counter() - t0
        result[k, :d] = loop.x
        result[k, d : d + e] = loop.z
        result[k, d + e] = loop.loglik
        result[k, d + e + 1 : d + e + 1 + m] = u
        result[k, -1] = -1.0 if loop.task_jump is None else float(loop.task_jump)
    result.astype("<f8").tofile(out)
    if timing and len(times):
        us = np.sort(times) * 1e6
        q = lambda f: us[int((len(us) - 1) * f)]
        print(f"ssm.py: {rig.name or rig_path} ({rig.controller.kind}, N={n} d={d} e={e} m={m}): {len(us)} bins, "
              f"step mean {us.mean():.1f} µs, p50 {q(0.5):.1f} µs, p99 {q(0.99):.1f} µs, max {us[-1]:.1f} µs",
              file=sys.stderr)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--offline", action="store_true", help="run the model over a file of inputs (the only mode)")
    ap.add_argument("--rig", required=True, help="rig file (TOML)")
    ap.add_argument("--model", help="model file (safetensors); default: the rig's [model] path")
    ap.add_argument("--inputs", required=True, help="raw LE f64 rows [counts (N), u_prev (m)]")
    ap.add_argument("--out", required=True, help="raw LE f64 rows [x (d), z (e), loglik, u (m), task_jump]")
    ap.add_argument("--timing", action="store_true", help="print per-bin step time to stderr")
    a = ap.parse_args(argv)
    if not a.offline:
        ap.error("only --offline is supported here; the live LSL loop is bench/baselines/pyloop.py")
    model_path = a.model or load_rig_config(a.rig).model_path
    if model_path is None:
        ap.error("--model is required when the rig names no [model] path")
    try:
        run_offline(a.rig, model_path, a.inputs, a.out, a.timing)
    except (ModelFileError, RigConfigError) as e:
        raise SystemExit(f"ssm.py: {e}")


if __name__ == "__main__":
    main()
