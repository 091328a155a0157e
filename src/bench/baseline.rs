//! The baselines of `neuroloop bench`, measured in the same run, on the same machine and
//! against the same simulated rig (same seed, same bin grid, same Control stream name):
//!
//! - `floor` — the native floor (floor.rs): one Rust thread on the same liblsl that pulls,
//!   bins and pushes one Control sample per bin with no model: liblsl and this machine;
//! - `echo` — the pylsl floor: bench/baselines/pyloop.py `--mode echo`, the same loop in
//!   Python;
//! - `python` — the same filter, embedding update, task identification and controller as a
//!   plain Python + numpy loop (pyloop.py `--mode model`, the port in bench/baselines/ssm.py).
//!
//! The simulated rig runs in this process and measures end to end (bin end → Control sample
//! received) exactly as it does for neuroloop, and counts the Control samples it received;
//! each loop reports its own per-bin times (bin close → model done, bin close → pushed) and,
//! with a model, its latent estimates. Every run publishes Control under a source_id of its
//! own and the rig subscribes to that one only, so no run can take another's samples.

use super::LoopSummary;
use crate::clock;
use crate::events::TruthBin;
use crate::latency::{histogram, Percentiles};
use crate::rig::Rig;
use crate::sim::{self, SimSetup};
use crate::tap::{FanOut, Tap};
use crate::telemetry::r_squared;
use anyhow::{bail, Context};
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BaselineKind {
    Floor,
    Echo,
    Python,
}

impl BaselineKind {
    pub fn name(self) -> &'static str {
        match self {
            BaselineKind::Floor => "floor",
            BaselineKind::Echo => "echo",
            BaselineKind::Python => "python",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            BaselineKind::Floor => "native floor: one Rust thread on liblsl, no model",
            BaselineKind::Echo => "pylsl echo, no model",
            BaselineKind::Python => "Python + numpy loop, same model",
        }
    }

    /// pyloop.py's `--mode` (None: not a Python loop).
    fn python_mode(self) -> Option<&'static str> {
        match self {
            BaselineKind::Floor => None,
            BaselineKind::Echo => Some("echo"),
            BaselineKind::Python => Some("model"),
        }
    }
}

/// Parses `--baselines floor,echo,python` (`none` for no baselines).
pub fn parse_baselines(text: &str) -> anyhow::Result<Vec<BaselineKind>> {
    if text.trim() == "none" {
        return Ok(Vec::new());
    }
    let mut kinds = Vec::new();
    for t in text.split(',') {
        let kind = match t.trim() {
            "floor" => BaselineKind::Floor,
            "echo" => BaselineKind::Echo,
            "python" => BaselineKind::Python,
            other => bail!("--baselines: unknown baseline '{other}' (expected floor, echo, python, comma-separated, or none)"),
        };
        if kinds.contains(&kind) {
            bail!("--baselines: '{}' is listed twice", kind.name());
        }
        kinds.push(kind);
    }
    Ok(kinds)
}

/// What one baseline run measured (bins before the warm-up left out of every latency).
#[derive(Debug, Clone, Serialize)]
pub struct BaselineResult {
    pub kind: BaselineKind,
    /// Bins on the grid (warm-up included).
    pub bins: u64,
    pub warmup_bins: u64,
    /// Bins the loop processed and pushed a sample for.
    pub bins_processed: u64,
    /// The numbers every loop in the comparison has (`name` is the baseline's description).
    #[serde(flatten)]
    pub summary: LoopSummary,
}

pub struct BaselineOptions<'a> {
    pub bins: u64,
    pub warmup: u64,
    pub python: &'a Path,
    /// Folder for the model file, the loop's output and its log.
    pub out: &'a Path,
    pub status_line: bool,
}

/// What a loop hands back: rows of [bin, close → done (s), close → pushed (s), late spikes,
/// x_0 … x_{d−1} (model loops only)], and its totals.
struct LoopRows {
    row_len: usize,
    values: Vec<f64>,
    skipped: u64,
    late_spikes: u64,
}

/// A baseline loop running beside the simulated rig.
enum Runner {
    /// None once joined.
    Floor(Option<std::thread::JoinHandle<anyhow::Result<super::floor::FloorRows>>>),
    Python(PythonLoop),
}

/// pyloop.py in a child process: "ready" on stdout once connected, then one JSON line of
/// totals at the end; its rows in a file.
struct PythonLoop {
    child: std::process::Child,
    reader: std::thread::JoinHandle<()>,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    rows_path: PathBuf,
    log_path: PathBuf,
    script: PathBuf,
    python: PathBuf,
}

/// A fresh source_id per baseline run (see the module docs).
fn run_source_id(kind: BaselineKind) -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    format!("neuroloop-baseline-{}-{}-{}", kind.name(), std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed))
}

/// Where pyloop.py lives: bench/baselines/ under the current folder, else under the source
/// tree this binary was built from.
pub fn script_path() -> anyhow::Result<PathBuf> {
    let rel = Path::new("bench/baselines/pyloop.py");
    for base in [PathBuf::from("."), PathBuf::from(env!("CARGO_MANIFEST_DIR"))] {
        let p = base.join(rel);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("cannot find bench/baselines/pyloop.py (run from the neuroloop source folder, or pass --baselines none)")
}

/// The default interpreter: the set-up script's .venv (pylsl + numpy), else python3.
pub fn default_python() -> PathBuf {
    for base in [PathBuf::from("."), PathBuf::from(env!("CARGO_MANIFEST_DIR"))] {
        let p = base.join(".venv/bin/python");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("python3")
}

/// Runs one baseline against the rig's simulator and returns what it measured.
pub fn run(rig: &Rig, kind: BaselineKind, o: &BaselineOptions) -> anyhow::Result<BaselineResult> {
    let sim_cfg = rig.sim.clone().with_context(|| {
        format!(
            "rig file {}: the baselines run against the simulated rig, and this rig has no [sim] section (use --baselines none)",
            rig.path.display()
        )
    })?;
    let bin_s = rig.timing.bin_ms * 1e-3;
    let total = o.warmup + o.bins;
    let truth = sim::truth_model(&sim_cfg, bin_s);
    let d = truth.dims.latent;
    let m = truth.dims.control;
    let model_path = o.out.join("baseline-model.safetensors");
    if kind == BaselineKind::Python {
        truth.save(&model_path).with_context(|| format!("cannot write {}", model_path.display()))?;
    }
    let source_id = run_source_id(kind);

    // Python needs a few seconds to import numpy and pylsl and to connect: bin 0 starts
    // after that, and the loop must be ready before the warm-up is over.
    let lead_s = if kind == BaselineKind::Floor { 2.0 } else { 6.0 };
    let t0 = clock::now() + lead_s;
    let grid = rig.timing.grid(t0);
    let e2e = Tap::<[f64; 2]>::new(1 << 16);
    let truth_q = Tap::<TruthBin>::new(1 << 14);
    let stop = Arc::new(AtomicBool::new(false));
    let sim_handles = sim::start(SimSetup {
        params: truth,
        cfg: sim_cfg.clone(),
        clock: grid,
        control_stream: rig.output.control_name.clone(),
        control_source_id: Some(source_id.clone()),
        end_bin: Arc::new(AtomicU64::new(u64::MAX)),
        stop: stop.clone(),
        truth: FanOut::default().with(truth_q.clone()),
        end_to_end: Some(e2e.clone()),
        outage: None,
        channel_labels: rig.units.labels.clone(),
        wait: rig.timing.wait,
    })?;
    let stop_sim = || {
        stop.store(true, Ordering::Release);
    };

    let cpu_at_start = super::CpuTimes::now();
    let started = match kind.python_mode() {
        None => super::floor::spawn(super::floor::FloorSetup {
            input_name: sim_cfg.stream_name.clone(),
            counts_stream: sim_cfg.output == crate::rig::SimOutput::Counts,
            n_units: sim_cfg.n_units,
            control_name: rig.output.control_name.clone(),
            source_id,
            m,
            grid,
            bins: total,
            delivered: sim_handles.control.clone(),
        })
        .map(|h| Runner::Floor(Some(h))),
        Some(mode) => PythonLoop::start(rig, kind, mode, &sim_cfg, t0, total, &model_path, &source_id, o).map(Runner::Python),
    };
    let mut runner = match started {
        Ok(r) => r,
        Err(e) => {
            stop_sim();
            return Err(e);
        }
    };
    // Bin 0 waits for the rig's Control inlet, as neuroloop's session does.
    while !sim_handles.control_connected.load(Ordering::Acquire) && clock::now() < t0 {
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut e2e_h = histogram();
    let mut truth_x: Vec<Option<Vec<f64>>> = vec![None; total as usize];
    let mut received = 0u64;
    let limit = Instant::now() + Duration::from_secs_f64(lead_s + total as f64 * bin_s + 60.0);
    let mut last_status = Instant::now();
    let drain = |e2e_h: &mut hdrhistogram::Histogram<u64>, truth_x: &mut Vec<Option<Vec<f64>>>, received: &mut u64| {
        while let Some([ts, lat]) = e2e.queue.pop() {
            let bin = grid.bin_ending_at(ts);
            if bin >= o.warmup as i64 && bin < total as i64 {
                e2e_h.saturating_record((lat * 1e6).round().max(1.0) as u64);
                *received += 1;
            }
        }
        while let Some(t) = truth_q.queue.pop() {
            if let Some(slot) = truth_x.get_mut(t.bin as usize) {
                *slot = Some(t.x[..d].to_vec());
            }
        }
    };
    let finished = loop {
        drain(&mut e2e_h, &mut truth_x, &mut received);
        match runner.try_finish() {
            Ok(Some(rows)) => break Ok(rows),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        if Instant::now() > limit {
            runner.kill();
            break Err(anyhow::anyhow!("the {} baseline did not finish in time", kind.name()));
        }
        if o.status_line && last_status.elapsed() > Duration::from_secs(2) {
            last_status = Instant::now();
            let k = ((clock::now() - t0) / bin_s).max(0.0) as u64;
            eprintln!("[bench] {} baseline: bin {}/{total}, control samples received {received}", kind.name(), k.min(total));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let cpu_steal_percent = cpu_at_start.steal_percent_since();
    let rows = match finished {
        Ok(rows) => rows,
        Err(e) => {
            stop_sim();
            let _ = sim_handles.sim.join();
            let _ = sim_handles.receiver.join();
            return Err(e);
        }
    };
    let pushed = (rows.values.len() / rows.row_len) as u64;
    // The simulated rig takes the last samples, then stops.
    sim_handles.control.wait_for(pushed, 0.5);
    drain(&mut e2e_h, &mut truth_x, &mut received);
    let rig_control = sim_handles.control.summary(pushed);
    stop_sim();
    let _ = sim_handles.sim.join();
    let _ = sim_handles.receiver.join();

    let (mut compute, mut push) = (histogram(), histogram());
    let mut past_deadline = 0;
    let mut pairs: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    let deadline = rig.timing.deadline_ms * 1e-3;
    let row_len = rows.row_len;
    for row in rows.values.chunks_exact(row_len) {
        let bin = row[0] as u64;
        if bin >= o.warmup {
            compute.saturating_record((row[1] * 1e6).round().max(1.0) as u64);
            push.saturating_record((row[2] * 1e6).round().max(1.0) as u64);
            past_deadline += (row[2] > deadline) as u64;
        }
        if row_len >= 4 + d {
            if let Some(Some(t)) = truth_x.get(bin as usize) {
                pairs.push((row[4..4 + d].to_vec(), t.clone()));
            }
        }
    }
    let some = |h: &hdrhistogram::Histogram<u64>| (!h.is_empty()).then(|| Percentiles::of(h));
    Ok(BaselineResult {
        kind,
        bins: total,
        warmup_bins: o.warmup,
        bins_processed: pushed,
        summary: LoopSummary {
            name: kind.describe().to_string(),
            control_samples: received,
            control_lost: rig_control.lost,
            bins_skipped: rows.skipped,
            past_deadline,
            late_spikes: rows.late_spikes,
            loop_wake_us: None,
            threads: None,
            compute_us: some(&compute),
            close_to_push_us: some(&push),
            end_to_end_us: some(&e2e_h),
            latent_r2: r_squared(pairs.iter().map(|(x, t)| (&x[..], &t[..]))),
            cpu_steal_percent,
            histograms: super::LoopHistograms { loop_wake: histogram(), compute, close_to_push: push, end_to_end: e2e_h },
        },
    })
}

impl Runner {
    /// The loop's rows once it has finished (None while it runs).
    fn try_finish(&mut self) -> anyhow::Result<Option<LoopRows>> {
        match self {
            Runner::Floor(handle) => {
                if !handle.as_ref().is_some_and(|h| h.is_finished()) {
                    return Ok(None);
                }
                let f = handle.take().expect("checked").join().map_err(|_| anyhow::anyhow!("the floor loop's thread panicked"))??;
                Ok(Some(LoopRows {
                    row_len: 4,
                    values: f.rows.iter().flatten().copied().collect(),
                    skipped: f.skipped,
                    late_spikes: f.late_spikes,
                }))
            }
            Runner::Python(p) => p.try_finish(),
        }
    }

    fn kill(&mut self) {
        if let Runner::Python(p) = self {
            let _ = p.child.kill();
        }
    }
}

impl PythonLoop {
    #[allow(clippy::too_many_arguments)]
    fn start(
        rig: &Rig,
        kind: BaselineKind,
        mode: &str,
        sim_cfg: &crate::rig::SimConfig,
        t0: f64,
        total: u64,
        model_path: &Path,
        source_id: &str,
        o: &BaselineOptions,
    ) -> anyhow::Result<PythonLoop> {
        let script = script_path()?;
        let rows_path = o.out.join(format!("baseline-{}.f64", kind.name()));
        let log_path = o.out.join(format!("baseline-{}.log", kind.name()));
        let _ = std::fs::remove_file(&rows_path);
        let log = std::fs::File::create(&log_path).with_context(|| format!("cannot write {}", log_path.display()))?;
        let mut cmd = Command::new(o.python);
        cmd.arg(&script)
            .args(["--mode", mode, "--rig"])
            .arg(&rig.path)
            .args(["--t0", &format!("{t0:.9}"), "--bins", &total.to_string(), "--source-id", source_id])
            .args(["--open-loop-block", &sim_cfg.open_loop_block_bins.to_string(), "--out"])
            .arg(&rows_path)
            .stdout(Stdio::piped())
            .stderr(log);
        if kind == BaselineKind::Python {
            cmd.arg("--model").arg(model_path);
        }
        let mut child = cmd.spawn().map_err(|e| {
            anyhow::anyhow!(
                "cannot start the Python baseline with {}: {e} (run ./scripts/setup.sh for .venv with pylsl and numpy, pass --python, or --baselines floor / none)",
                o.python.display()
            )
        })?;
        let stdout = child.stdout.take().expect("piped");
        let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(l);
                }
            })
        };
        Ok(PythonLoop { child, reader, lines, rows_path, log_path, script, python: o.python.to_path_buf() })
    }

    fn try_finish(&mut self) -> anyhow::Result<Option<LoopRows>> {
        let Some(status) = self.child.try_wait()? else { return Ok(None) };
        // stdout closes with the process.
        while !self.reader.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let lines = self.lines.lock().unwrap().clone();
        let what = self.rows_path.file_stem().and_then(|s| s.to_str()).unwrap_or("baseline").to_string();
        if !status.success() {
            let tail = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the {what} loop ({} {}) failed ({status}); stdout: {}; its log {} ends:\n{}",
                self.python.display(),
                self.script.display(),
                lines.join(" | "),
                self.log_path.display(),
                tail.join("\n")
            );
        }
        let totals: serde_json::Value = lines
            .iter()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .with_context(|| format!("the {what} loop printed no totals; its log: {}", self.log_path.display()))?;
        let row_len = totals["row_len"].as_u64().unwrap_or(0) as usize;
        let bytes = std::fs::read(&self.rows_path).with_context(|| format!("cannot read {}", self.rows_path.display()))?;
        let values: Vec<f64> = bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
        if row_len < 4 || !values.len().is_multiple_of(row_len) {
            bail!("{}: {} values do not make rows of {row_len}", self.rows_path.display(), values.len());
        }
        Ok(Some(LoopRows {
            row_len,
            values,
            skipped: totals["skipped"].as_u64().unwrap_or(0),
            late_spikes: totals["late_spikes"].as_u64().unwrap_or(0),
        }))
    }
}
