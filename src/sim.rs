//! The built-in simulated rig: a ground-truth population of the model class that
//! publishes spikes over LSL (events or counts), takes the controller's Control stream
//! as its stimulation input, and switches task embedding on a schedule.
//!
//! Causality matches the model: x_j = f(x_{j−1}, u_{j−1}; θ(z_task)) + ε, where u_{j−1} is
//! the newest Control sample received. The simulator advances bin j as soon as u_{j−1} is
//! due — at the controller's deadline for bin j−1 (plus a small margin) — and publishes
//! bin j's spikes right away, each stamped with its true time inside bin j. That gives the
//! spikes most of a bin of transport slack before bin j closes, so that a machine whose
//! timers jitter by milliseconds (shared VMs, CI) still delivers whole bins.

use crate::clock::{self, BinGrid};
use crate::events::TruthBin;
use crate::model::hypernet::HypernetScratch;
use crate::model::{dynamics, observation, ModelParams, Theta};
use crate::rig::{SimConfig, SimOutput};
use crate::tap::{FanOut, Tap};
use crate::{MAX_EMBED, MAX_LATENT};
use lsl::{ExPushable, Pullable};
use nalgebra::DVector;
use neuroloop_kernels::philox;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The simulator's ground-truth model for a rig's `[sim]` section.
pub fn truth_model(cfg: &SimConfig, bin_s: f64) -> ModelParams {
    let dims = crate::model::Dims {
        n_units: cfg.n_units,
        latent: cfg.latent_dim,
        embed: cfg.embed_dim,
        control: cfg.control_dim,
        hidden: cfg.hidden_dim,
    };
    ModelParams::synthetic(dims, cfg.tasks, bin_s, cfg.seed)
}

/// The simulated rig's open/closed-loop schedule (`[sim] open_loop_block_bins`): blocks of
/// B bins, open loop first (gate closed), then closed, alternating — so a session measures
/// what control does against what the population does on its own. A client of the control
/// plane: it asks for `arm` and `disarm` like an operator (session.rs).
pub struct GateSchedule {
    block: u64,
    armed: bool,
    /// The gate as last asked for.
    sent: bool,
}

impl GateSchedule {
    /// `armed`: the rig file's `safety.enabled` (false: the gate never opens).
    pub fn new(block: u64, armed: bool) -> GateSchedule {
        let mut s = GateSchedule { block, armed, sent: false };
        s.sent = s.initial();
        s
    }

    /// The gate at bin 0.
    pub fn initial(&self) -> bool {
        self.armed && self.block == 0
    }

    /// The command due once `bins_done` bins are done, if the gate is to change.
    pub fn due(&mut self, bins_done: u64) -> Option<crate::control_plane::Request> {
        let blocks = bins_done.checked_div(self.block)?;
        let want = self.armed && blocks % 2 == 1;
        (want != self.sent).then(|| {
            self.sent = want;
            if want {
                crate::control_plane::Request::Arm
            } else {
                crate::control_plane::Request::Disarm
            }
        })
    }
}

/// How long after the controller's deadline for bin j−1 the simulator takes u_{j−1}.
const STEP_MARGIN_S: f64 = 0.5e-3;

pub struct SimSetup {
    pub params: ModelParams,
    pub cfg: SimConfig,
    /// The controller's bin grid (grace and deadline included): the simulator steps on it.
    pub clock: BinGrid,
    /// Name of the Control stream to take stimulation from (type `Control`).
    pub control_stream: String,
    /// Take Control only from the outlet with this source_id (the session's own, or a
    /// baseline's): a rig that subscribes by name alone can latch onto another process's
    /// outlet of the same name, which then closes under it (issue 16: a rig received 70 %
    /// of the samples). None: any outlet of that name (`neuroloop sim`, a separate controller).
    pub control_source_id: Option<String>,
    /// Simulate bins 0..end_bin.
    pub end_bin: Arc<AtomicU64>,
    pub stop: Arc<AtomicBool>,
    /// The true state and task of every bin, to every observer (telemetry's evaluation; the
    /// recording, whose Markers stream holds the task switches).
    pub truth: FanOut<TruthBin>,
    /// End-to-end latency of every Control sample the rig receives: [its timestamp (the
    /// bin's end), received − timestamp] (s).
    pub end_to_end: Option<Tap<[f64; 2]>>,
    /// Pause publishing (but keep simulating) for bins in [from, to): a vanished stream.
    pub outage: Option<(u64, u64)>,
    /// The rig's `[units] labels`: a simulated counts stream labels its channels with them
    /// (else `unit0`, `unit1`, …), so a rig that maps by label runs on the simulator.
    pub channel_labels: Option<Vec<String>>,
    /// How the simulator waits for each step (the rig's `[timing] wait`).
    pub wait: clock::Wait,
}

pub struct SimHandles {
    pub sim: std::thread::JoinHandle<()>,
    pub receiver: std::thread::JoinHandle<()>,
    /// The simulated rig's Control inlet is subscribed: it receives every sample pushed from
    /// now on (the session waits for this before bin 0, so the rig hears every bin).
    pub control_connected: Arc<AtomicBool>,
    /// What the rig's Control inlet received.
    pub control: Arc<RigControlCounts>,
}

/// What the simulated rig's Control inlet received, counted on its own thread.
#[derive(Debug)]
pub struct RigControlCounts {
    /// Control samples received (stamped at or after bin 0's end).
    pub received: AtomicU64,
    /// Times the inlet lost its outlet and subscribed again.
    pub reconnects: AtomicU64,
    /// The bin of the first sample received (u64::MAX: none yet).
    pub first_bin: AtomicU64,
}

impl Default for RigControlCounts {
    fn default() -> Self {
        RigControlCounts { received: AtomicU64::new(0), reconnects: AtomicU64::new(0), first_bin: AtomicU64::new(u64::MAX) }
    }
}

impl RigControlCounts {
    /// Against the samples the controller pushed for its bins: what the rig missed.
    pub fn summary(&self, pushed: u64) -> RigControlSummary {
        let received = self.received.load(Ordering::Acquire);
        let first = self.first_bin.load(Ordering::Acquire);
        RigControlSummary {
            received,
            lost: pushed.saturating_sub(received),
            reconnects: self.reconnects.load(Ordering::Acquire),
            first_bin: (first != u64::MAX).then_some(first),
        }
    }

    /// Whether the rig has every one of `pushed` samples it can still get: those before its
    /// first (it subscribed late) never come, and with none received there is nothing to
    /// wait for.
    pub fn has_all(&self, pushed: u64) -> bool {
        let first = self.first_bin.load(Ordering::Acquire).min(pushed);
        self.received.load(Ordering::Acquire) + first >= pushed
    }

    /// Waits (at most `limit_s`) until the rig has the `pushed` samples ([`Self::has_all`]):
    /// the last ones are still in flight when the controller's outlet reports them pushed.
    pub fn wait_for(&self, pushed: u64, limit_s: f64) {
        let until = clock::now() + limit_s;
        while !self.has_all(pushed) && clock::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// The simulated rig's side of the Control stream, in the session report: a rig that loses
/// Control samples is the failure that matters most (each lost sample is a bin whose
/// stimulation never arrived).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RigControlSummary {
    pub received: u64,
    /// Samples pushed that the rig never received.
    pub lost: u64,
    pub reconnects: u64,
    /// The bin of the first sample it received (0 unless it subscribed late).
    pub first_bin: Option<u64>,
}

/// Start the simulator (publisher thread + Control receiver thread). Returns once the
/// spike outlet exists.
pub fn start(setup: SimSetup) -> anyhow::Result<SimHandles> {
    let latest_u = Arc::new(Mutex::new(vec![0.0f64; setup.params.dims.control]));
    let control_connected = Arc::new(AtomicBool::new(false));
    let control = Arc::new(RigControlCounts::default());
    let receiver = {
        let rx = ControlReceiver {
            pred: control_predicate(&setup.control_stream, setup.control_source_id.as_deref()),
            t0_end: setup.clock.bin_end(0),
            bin_s: setup.clock.bin_s,
            latest: latest_u.clone(),
            stop: setup.stop.clone(),
            e2e: setup.end_to_end.clone(),
            connected: control_connected.clone(),
            counts: control.clone(),
        };
        std::thread::Builder::new().name("sim-control-rx".into()).spawn(move || rx.run())?
    };
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let sim = std::thread::Builder::new().name("sim".into()).spawn(move || run(setup, latest_u, ready_tx))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(SimHandles { sim, receiver, control_connected, control }),
        Ok(Err(e)) => Err(anyhow::anyhow!(e)),
        Err(_) => Err(anyhow::anyhow!("the simulator thread died at start-up")),
    }
}

/// The LSL query for the Control stream the rig takes (single quotes in a name are
/// LSL-escaped by doubling, as XPath wants).
fn control_predicate(name: &str, source_id: Option<&str>) -> String {
    let q = |v: &str| v.replace('\'', "''");
    match source_id {
        Some(id) => format!("name='{}' and type='Control' and source_id='{}'", q(name), q(id)),
        None => format!("name='{}' and type='Control'", q(name)),
    }
}

/// The simulated rig's Control inlet, on its own thread ("sim-control-rx").
struct ControlReceiver {
    pred: String,
    /// Samples stamped before bin 0's end are not the session's.
    t0_end: f64,
    bin_s: f64,
    latest: Arc<Mutex<Vec<f64>>>,
    stop: Arc<AtomicBool>,
    e2e: Option<Tap<[f64; 2]>>,
    connected: Arc<AtomicBool>,
    counts: Arc<RigControlCounts>,
}

impl ControlReceiver {
    fn run(self) {
        let mut subscribed_before = false;
        while !self.stop.load(Ordering::Relaxed) {
            let Ok(found) = lsl::resolve_bypred(&self.pred, 1, 0.5) else { continue };
            let Some(info) = found.into_iter().next() else { continue };
            // A 6-minute buffer (not 10 s) so a stalled rig thread loses nothing, and
            // recover = true: if the connection drops, liblsl re-subscribes to the same
            // outlet by itself instead of handing back an error that costs a full
            // re-resolve (and with recover = false, the samples already buffered).
            let Ok(inlet) = lsl::StreamInlet::new(&info, 360, 0, true) else { continue };
            // Keep waiting on the same inlet: its connection goes on in liblsl's thread, and
            // a fresh one would start the handshake over (on a loaded machine it can take
            // seconds, and a rig that subscribes late never hears the bins before).
            let mut opened = false;
            while !opened && !self.stop.load(Ordering::Relaxed) {
                opened = inlet.open_stream(0.5).is_ok();
            }
            if !opened {
                return;
            }
            if subscribed_before {
                self.counts.reconnects.fetch_add(1, Ordering::AcqRel);
            }
            subscribed_before = true;
            self.connected.store(true, Ordering::Release);
            let mut buf: Vec<f32> = Vec::new();
            while !self.stop.load(Ordering::Relaxed) {
                match inlet.pull_sample_buf(&mut buf, 0.05) {
                    Ok(ts) if ts != 0.0 => {
                        let received = clock::now();
                        if ts >= self.t0_end - 1e-9 && self.counts.received.fetch_add(1, Ordering::AcqRel) == 0 {
                            let bin = ((ts - self.t0_end) / self.bin_s).round().max(0.0) as u64;
                            self.counts.first_bin.store(bin, Ordering::Release);
                        }
                        if let Some(tap) = &self.e2e {
                            tap.offer([ts, received - ts]);
                        }
                        let mut l = self.latest.lock().unwrap();
                        for (dst, src) in l.iter_mut().zip(&buf) {
                            *dst = *src as f64;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break, // the outlet is gone for good: resolve again
                }
            }
        }
    }
}

/// Poisson draw from counter-addressed uniforms (Knuth for small λ, normal approximation above).
fn poisson(lambda: f64, seed: u64, stream: u64, base: u64) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        let g = philox::normal_at(seed, stream, base) as f64;
        return (lambda + lambda.sqrt() * g).round().max(0.0) as u32;
    }
    let l = (-lambda).exp();
    let mut p = 1.0;
    let mut k = 0u32;
    loop {
        p *= philox::uniform_at(seed, stream, base + k as u64) as f64;
        if p <= l || k >= 127 {
            return k;
        }
        k += 1;
    }
}

/// The ground-truth population, stepped bin by bin. Deterministic in its seed: the same
/// stimulation gives the same latents and spikes, with or without LSL around it.
pub struct Population {
    pub params: ModelParams,
    thetas: Vec<Theta>,
    /// The true latent of the current bin.
    pub x: DVector<f64>,
    x_next: DVector<f64>,
    tanh_a: DVector<f64>,
    eta: DVector<f64>,
    u: DVector<f64>,
    /// Spike counts of the current bin (N).
    pub counts: Vec<u32>,
    seed_noise: u64,
    seed_spikes: u64,
    seed_times: u64,
}

impl Population {
    pub fn new(params: ModelParams, seed: u64) -> Population {
        let dims = params.dims;
        let mut scratch = HypernetScratch::new(&dims);
        let thetas: Vec<Theta> = params
            .task_library
            .iter()
            .map(|z| {
                let mut th = Theta::zeros(&dims);
                params.hypernet.decode(z, &mut th, &mut scratch);
                th
            })
            .collect();
        let mut p = Population {
            thetas,
            x: DVector::zeros(dims.latent),
            x_next: DVector::zeros(dims.latent),
            tanh_a: DVector::zeros(dims.latent),
            eta: DVector::zeros(dims.n_units),
            u: DVector::zeros(dims.control),
            counts: vec![0; dims.n_units],
            seed_noise: seed ^ 0x5157_0000_0000_0001,
            seed_spikes: seed ^ 0x5157_0000_0000_0002,
            seed_times: seed ^ 0x5157_0000_0000_0003,
            params,
        };
        // Start at task 0's resting state.
        for _ in 0..2000 {
            dynamics::step(&p.thetas[0], p.params.alpha, &p.x, &p.u, &mut p.x_next, &mut p.tanh_a);
            std::mem::swap(&mut p.x, &mut p.x_next);
        }
        p
    }

    pub fn tasks(&self) -> usize {
        self.thetas.len()
    }

    /// Bin j: advance x_j = f(x_{j−1}, u; θ(task)) + ε (not for j = 0), then draw the counts.
    pub fn advance(&mut self, j: u64, u: &[f64], task: usize) {
        if j > 0 {
            self.u.as_mut_slice().copy_from_slice(u);
            dynamics::step(&self.thetas[task], self.params.alpha, &self.x, &self.u, &mut self.x_next, &mut self.tanh_a);
            for i in 0..self.x.len() {
                let q = self.params.process_noise[i].sqrt();
                self.x[i] = self.x_next[i] + q * philox::normal_at(self.seed_noise, j, i as u64) as f64;
            }
        }
        let p = &self.params;
        observation::log_rates(&p.obs_c, &p.obs_d, p.log_rate_max, &self.x, &mut self.eta);
        for i in 0..self.counts.len() {
            self.counts[i] = poisson(p.bin_s * self.eta[i].exp(), self.seed_spikes, j, i as u64 * 128);
        }
    }

    /// Where in bin j (fraction of the bin) the r-th spike of unit i falls.
    pub fn spike_phase(&self, j: u64, unit: usize, r: u32) -> f64 {
        philox::uniform_at(self.seed_times, j, unit as u64 * 128 + r as u64) as f64
    }
}

fn run(s: SimSetup, latest_u: Arc<Mutex<Vec<f64>>>, ready: crossbeam_channel::Sender<Result<(), String>>) {
    let dims = s.params.dims;
    let n = dims.n_units;
    let (channels, stype, rate, fmt) = match s.cfg.output {
        SimOutput::Events => (2u32, "SpikeEvents", lsl::IRREGULAR_RATE, lsl::ChannelFormat::Int32),
        SimOutput::Counts => (n as u32, "SpikeCounts", 1.0 / s.clock.bin_s, lsl::ChannelFormat::Float32),
    };
    let source_id = format!("neuroloop-sim-{}-{}", s.cfg.stream_name, std::process::id());
    let labels: Vec<String> = match s.cfg.output {
        SimOutput::Events => vec!["channel".into(), "unit".into()],
        SimOutput::Counts => match &s.channel_labels {
            Some(l) if l.len() == n => l.clone(),
            _ => (0..n).map(|i| format!("unit{i}")).collect(),
        },
    };
    let make_outlet = || -> Result<lsl::StreamOutlet, String> {
        let mut info = lsl::StreamInfo::new(&s.cfg.stream_name, stype, channels, rate, fmt, &source_id).map_err(|e| format!("{e:?}"))?;
        crate::lslutil::add_channel_labels(&mut info, &labels, "spikes");
        lsl::StreamOutlet::new(&info, 0, 360).map_err(|e| format!("{e:?}"))
    };
    let mut outlet = match make_outlet() {
        Ok(o) => Some(o),
        Err(e) => {
            let _ = ready.send(Err(format!("simulator: cannot create the spike outlet: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));

    let mut pop = Population::new(s.params, s.cfg.seed);
    let switch_bins = if s.cfg.switch_every_s > 0.0 { (s.cfg.switch_every_s / s.clock.bin_s).round() as u64 } else { u64::MAX };
    let mut events: Vec<(f64, i32)> = Vec::with_capacity(4 * n);
    let mut ev_sample: Vec<i32> = vec![0, 0];
    let mut counts_sample: Vec<f32> = vec![0.0; n];
    let mut u = vec![0.0; dims.control];
    let mut j: u64 = 0;
    clock::precise_timers();
    while j < s.end_bin.load(Ordering::Acquire) && !s.stop.load(Ordering::Relaxed) {
        // u_{j−1} is due at deadline(j−1); never later than the end of bin j.
        let step_at = if j == 0 { s.clock.bin_start(0) } else { (s.clock.deadline(j - 1) + STEP_MARGIN_S).min(s.clock.bin_end(j)) };
        s.wait.until(step_at);
        let task = ((j / switch_bins) as usize) % pop.tasks();
        // The stimulation received for bin j−1 drives x_j.
        u.copy_from_slice(&latest_u.lock().unwrap());
        pop.advance(j, &u, task);
        let publishing = !matches!(s.outage, Some((a, b)) if j >= a && j < b);
        if !publishing {
            outlet = None; // the stream vanishes from the network
        } else if outlet.is_none() {
            outlet = make_outlet().ok();
        }
        if let Some(out) = &outlet {
            match s.cfg.output {
                SimOutput::Events => {
                    let (t_start, bin_s) = (s.clock.bin_start(j), s.clock.bin_s);
                    events.clear();
                    for i in 0..n {
                        for r in 0..pop.counts[i] {
                            events.push((t_start + pop.spike_phase(j, i, r) * bin_s, i as i32));
                        }
                    }
                    events.sort_by(|a, b| a.0.total_cmp(&b.0));
                    for (idx, (t, ch)) in events.iter().enumerate() {
                        ev_sample[0] = *ch;
                        ev_sample[1] = 0;
                        let _ = out.push_sample_ex(&ev_sample, *t, idx + 1 == events.len());
                    }
                }
                SimOutput::Counts => {
                    for i in 0..n {
                        counts_sample[i] = pop.counts[i] as f32;
                    }
                    let _ = out.push_sample_ex(&counts_sample, s.clock.bin_end(j), true);
                }
            }
        }
        if !s.truth.is_empty() {
            let mut rec = TruthBin { bin: j, x: [0.0; MAX_LATENT], z: [0.0; MAX_EMBED], task };
            rec.x[..dims.latent].copy_from_slice(pop.x.as_slice());
            rec.z[..dims.embed].copy_from_slice(pop.params.task_library[task].as_slice());
            s.truth.offer(rec);
        }
        j += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_sampler_has_the_right_mean() {
        for &lambda in &[0.05, 0.3, 2.0, 12.0, 50.0] {
            let n = 20_000u64;
            let sum: u64 = (0..n).map(|s| poisson(lambda, 9, s, 0) as u64).sum();
            let mean = sum as f64 / n as f64;
            assert!((mean - lambda).abs() < 4.0 * (lambda / n as f64).sqrt() + 1e-3, "λ={lambda} mean={mean}");
        }
    }
}
