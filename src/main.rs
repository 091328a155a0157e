//! The `neuroloop` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use neuroloop::rig::Rig;
use neuroloop::session::{self, RunOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "neuroloop", version, about = "Real-time closed-loop BCI controller over LSL")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the closed loop for a rig. A simulated rig (one with [sim]) starts its simulator too.
    #[command(allow_negative_numbers = true)]
    Run {
        /// Rig file (TOML).
        #[arg(long)]
        rig: PathBuf,
        /// Stop after this many bins (default: run until Ctrl-C).
        #[arg(long, value_parser = whole::<u64>(0, u64::MAX))]
        bins: Option<u64>,
        /// Write a JSON summary here at the end.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Do not start the rig's built-in simulator (it runs elsewhere, e.g. `neuroloop sim`).
        #[arg(long)]
        no_sim: bool,
        /// No live status line.
        #[arg(long)]
        quiet: bool,
        /// Record the session to this XDF file: the input stream as received, the bins as
        /// formed, Control, Status and per-bin timing (read it with pyxdf, MNE, EEGLAB, or
        /// `neuroloop replay`).
        #[arg(long, value_name = "FILE.xdf")]
        record: Option<PathBuf>,
        /// Serve the control plane (dashboard, HTTP API) here instead of the rig file's
        /// `[control] listen` (default 127.0.0.1:7878; port 0 picks a free one).
        #[arg(long, value_name = "ADDR:PORT", conflicts_with = "no_control")]
        control: Option<String>,
        /// No control plane: no dashboard, no HTTP API, no Markers commands.
        #[arg(long)]
        no_control: bool,
    },
    /// Run only the simulated rig of a rig file: publish spikes, take its Control stream.
    #[command(allow_negative_numbers = true)]
    Sim {
        #[arg(long)]
        rig: PathBuf,
        /// Stop after this many bins (default: run until Ctrl-C).
        #[arg(long, value_parser = whole::<u64>(0, u64::MAX))]
        bins: Option<u64>,
        /// Write the simulator's true model to this safetensors file and exit.
        #[arg(long)]
        write_model: Option<PathBuf>,
    },
    /// Benchmark a rig's closed loop: per-stage latency percentiles (table, JSON, HdrHistogram
    /// interval log, SVG plots) after a warm-up. See bench/README.md.
    #[command(allow_negative_numbers = true)]
    Bench {
        #[arg(long)]
        rig: PathBuf,
        /// Measured bins, after the warm-up.
        #[arg(long, default_value_t = 10_000, value_parser = whole::<u64>(0, u64::MAX))]
        bins: u64,
        /// Bins run first and left out of the latencies.
        #[arg(long, default_value_t = 500, value_parser = whole::<u64>(0, u64::MAX))]
        warmup: u64,
        /// Output folder for report.json, latency.hlog, latency.md and the SVG plots.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// No live status line.
        #[arg(long)]
        quiet: bool,
        /// Baselines run beside neuroloop against the same simulated rig: floor (one Rust
        /// thread on liblsl, no model), echo (the same in pylsl), python (the same model as a
        /// Python + numpy loop), comma-separated, or none.
        #[arg(long, default_value = "floor,echo,python")]
        baselines: String,
        /// Rounds: each runs neuroloop and every baseline (alternating their order); the
        /// histograms are merged per loop and the ratios taken over rounds with comparable
        /// CPU steal. Each round's files go to OUT/round-NN/ when there are several.
        #[arg(long, default_value_t = 1, value_parser = whole::<u32>(0, u32::MAX as u64))]
        rounds: u32,
        /// Python with pylsl and numpy for the baselines (default: .venv/bin/python).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Serve the control plane during neuroloop's run (default: none), so that the loop can
        /// be measured with a dashboard open on it.
        #[arg(long, value_name = "ADDR:PORT")]
        control: Option<String>,
    },
    /// The scaling table: per-bin compute time of each backend (offline, no LSL) over units N,
    /// latent d, particles P and MPPI samples K, one axis at a time from the rig's own
    /// configuration. Writes sweep.md, sweep.json and sweep-<axis>.svg. See bench/README.md.
    #[command(allow_negative_numbers = true)]
    Sweep {
        /// A rig with [sim]: its simulated population draws the counts.
        #[arg(long)]
        rig: PathBuf,
        /// Timed steps per grid point, after the warm-up.
        #[arg(long, default_value_t = 300, value_parser = whole::<u64>(0, u64::MAX))]
        bins: u64,
        /// Untimed steps first at each point (GPU pipelines compile on the first launches).
        #[arg(long, default_value_t = 30, value_parser = whole::<u64>(0, u64::MAX))]
        warmup: u64,
        /// Backends to time, comma-separated (default: every backend compiled in).
        #[arg(long)]
        backends: Option<String>,
        /// Units N to sweep.
        #[arg(long, default_value = "96,384,1024,4096,10000")]
        units: String,
        /// Latent dimensions d to sweep.
        #[arg(long, default_value = "2,4,8,16,32")]
        latent: String,
        /// Particle counts P to sweep (the particle filter instead of the EKF).
        #[arg(long, default_value = "256,1024,4096")]
        particles: String,
        /// MPPI sample counts K to sweep.
        #[arg(long, default_value = "32,128,512,2048")]
        samples: String,
        /// Sweep only these axes, comma-separated (units, latent, particles, samples).
        #[arg(long, default_value = "units,latent,particles,samples")]
        axes: String,
        #[arg(long, default_value = "bench-out/sweep")]
        out: PathBuf,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
    },
    /// What waiting costs: threads waking on a shared bin grid with each wait strategy
    /// (sleep+yield, sleep, abs-sleep, spin): lateness percentiles, CPU per thread, CPU
    /// steal. Writes wakeups.md and wakeups.json.
    #[command(allow_negative_numbers = true)]
    Wakeups {
        /// The grid's Δ (ms).
        #[arg(long, default_value_t = 1.0)]
        bin_ms: f64,
        /// Length of each phase (s).
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Thread counts, comma-separated (a phase per strategy per count).
        #[arg(long, default_value = "1,3")]
        threads: String,
        /// Wait strategies, comma-separated, or all.
        #[arg(long, default_value = "all")]
        waits: String,
        #[arg(long, default_value = "bench-out/wakeups")]
        out: PathBuf,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
    },
    /// Score the latent estimate of a recorded simulated session (`run --record`) against
    /// the simulator's truth: the live loop's, the EKF offline, and particle filters that
    /// know the true model (a near-optimal reference), on the same bins (docs/model.md,
    /// "How informative is the population").
    #[command(allow_negative_numbers = true)]
    Filters {
        #[arg(required = true, value_name = "REC.xdf")]
        files: Vec<PathBuf>,
        /// The rig file the session ran with.
        #[arg(long)]
        rig: PathBuf,
        /// Particle counts of the references, comma-separated (none: no reference).
        #[arg(long, default_value = "1024,8192")]
        particles: String,
        /// Philox seed of the references.
        #[arg(long, default_value_t = 11, value_parser = whole::<u64>(0, u64::MAX))]
        seed: u64,
        /// Leave out the first bins of each file (the filters' start-up transient).
        #[arg(long, default_value_t = 500, value_parser = whole::<usize>(0, u64::MAX))]
        skip: usize,
        /// Score at most this many bins per file.
        #[arg(long, value_parser = whole::<usize>(0, u64::MAX))]
        bins: Option<usize>,
        /// Write the scores as JSON here too.
        #[arg(long)]
        report: Option<PathBuf>,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
    },
    /// Push a recording back through the loop offline. A `run --record` file replays its
    /// recorded bins and must reproduce its Control stream bit for bit on the CPU backend
    /// (exit status 1 and the first differing bin otherwise); a LabRecorder file of the
    /// rig's raw spike stream is binned as the live loop would.
    #[command(allow_negative_numbers = true)]
    Replay {
        /// The XDF file.
        file: PathBuf,
        /// The rig file the session ran with (its model, controller and safety layer).
        #[arg(long)]
        rig: PathBuf,
        /// What drives the replay: auto (recorded bins when the file has them), bins, or
        /// spikes (the raw input stream, re-binned).
        #[arg(long, default_value = "auto")]
        from: String,
        /// Pace bins at the bin width instead of running as fast as possible.
        #[arg(long)]
        realtime: bool,
        /// Use this backend instead of the rig's (cpu, wgpu, cuda).
        #[arg(long)]
        backend: Option<String>,
        /// Write the JSON report here too.
        #[arg(long)]
        report: Option<PathBuf>,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
    },
    /// Fit the model to recordings of an identification session (README "Fitting a model"):
    /// Laplace-EM on neuroloop's own model, held-out bits/spike, a model file `run` loads.
    #[command(allow_negative_numbers = true)]
    Fit {
        /// Recordings: `neuroloop run --record` files or LabRecorder files.
        #[arg(required = true, value_name = "REC.xdf")]
        files: Vec<PathBuf>,
        /// The rig the sessions were recorded with (unit map, Δ, m).
        #[arg(long)]
        rig: PathBuf,
        /// The fitted model (safetensors).
        #[arg(long, value_name = "MODEL.safetensors")]
        out: PathBuf,
        /// The fit report (JSON); the training curve goes beside it as .svg.
        #[arg(long, value_name = "FIT.json")]
        report: Option<PathBuf>,
        /// Latent dimension d; a list (`2,4,8,16`) fits each and keeps the smallest within one
        /// standard error of the best held-out co-smoothing (docs/evaluation.md).
        #[arg(long, default_value = "4", value_parser = whole_list(1, neuroloop::MAX_LATENT as u64))]
        latent: WholeList,
        /// Embedding dimension e (a list: model selection, as --latent).
        #[arg(long, default_value = "3", value_parser = whole_list(1, neuroloop::MAX_EMBED as u64))]
        embed: WholeList,
        /// Hidden width h of each hypernetwork generator (a list: model selection).
        #[arg(long, default_value = "16", value_parser = whole_list(1, 4096))]
        hidden: WholeList,
        #[arg(long, default_value_t = 1, value_parser = whole::<u64>(0, u64::MAX))]
        seed: u64,
        /// EM iterations.
        #[arg(long, default_value_t = 25, value_parser = whole::<usize>(1, 100_000))]
        iterations: usize,
        /// Fraction held out for evaluation: the last part of each file (or of each task
        /// block with --tasks markers).
        #[arg(long, default_value_t = 0.2)]
        heldout: f64,
        /// Task labels: file (each file one task) or markers (`task=<label>` markers in the
        /// file's Markers stream).
        #[arg(long, default_value = "file")]
        tasks: String,
        /// Fix the dynamics' α instead of fitting it (`fit`: fitted, the default); a list
        /// (`fit,0.02,0.1`) is part of the model selection, as --latent.
        #[arg(long, default_value = "fit", value_parser = alpha_list)]
        alpha: AlphaList,
        /// Bins per Adam step (a seeded random subset when the training set is larger).
        #[arg(long, default_value_t = 4096, value_parser = whole::<usize>(64, 10_000_000))]
        batch: usize,
        /// Adam's learning rate at the first EM iteration; it falls to a tenth over the
        /// iterations. Lower it if the fit stops early on a non-finite objective.
        #[arg(long, default_value_t = 1e-2)]
        learning_rate: f64,
        /// Leave out the per-unit spike-history term (docs/evaluation.md): the model of the
        /// shared latent alone, e.g. to measure what the term adds.
        #[arg(long)]
        no_history: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Validate a rig file and its model file without starting anything.
    #[command(allow_negative_numbers = true)]
    Check {
        #[arg(long)]
        rig: PathBuf,
    },
}

/// The parser of a whole-number flag in `lo..=hi`: a negative number (`--latent -3`) or one
/// out of range is refused with the range; clap names the flag ("invalid value '-3' for
/// '--latent <LATENT>': must be a whole number in 1..=64, got -3").
fn whole<T: TryFrom<u64>>(lo: u64, hi: u64) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        let range = if hi == u64::MAX { format!("≥ {lo}") } else { format!("in {lo}..={hi}") };
        let v: i128 = text.trim().parse().map_err(|_| format!("must be a whole number {range}, got '{text}'"))?;
        if v < lo as i128 || v > hi as i128 {
            return Err(format!("must be a whole number {range}, got {v}"));
        }
        T::try_from(v as u64).map_err(|_| format!("must be a whole number {range}, got {v}"))
    }
}

/// A comma-separated list of whole numbers (`--latent 2,4,8`), each checked as [`whole`].
#[derive(Debug, Clone)]
struct WholeList(Vec<usize>);

fn whole_list(lo: u64, hi: u64) -> impl Fn(&str) -> Result<WholeList, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        let one = whole::<usize>(lo, hi);
        let mut out = Vec::new();
        for part in text.split(',') {
            let v = one(part).map_err(|e| format!("{e} (in the list '{text}')"))?;
            if out.contains(&v) {
                return Err(format!("{v} is listed twice in '{text}'"));
            }
            out.push(v);
        }
        Ok(WholeList(out))
    }
}

/// `--alpha`: `fit` or a number in (0, 1], or a comma-separated list of them.
#[derive(Debug, Clone)]
struct AlphaList(Vec<Option<f64>>);

fn alpha_list(text: &str) -> Result<AlphaList, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let v = match part.trim() {
            "fit" => None,
            t => match t.parse::<f64>() {
                Ok(a) if a > 0.0 && a <= 1.0 => Some(a),
                _ => return Err(format!("'{part}' is neither `fit` nor a number in (0, 1] (in '{text}')")),
            },
        };
        if out.contains(&v) {
            return Err(format!("'{}' is listed twice in '{text}'", part.trim()));
        }
        out.push(v);
    }
    Ok(AlphaList(out))
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("neuroloop: error: {}", neuroloop::error_text(&e));
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { rig, bins, report, no_sim, quiet, record, control, no_control } => {
            let rig = Rig::load(&rig)?;
            let control = match (no_control, control) {
                (true, _) => None,
                (false, Some(addr)) => Some(addr),
                (false, None) => rig.control.enabled.then(|| rig.control.listen.clone()),
            };
            let opts = RunOptions { bins, report, with_sim: !no_sim, status_line: !quiet, record, control, ..Default::default() };
            let r = session::run(&rig, &opts)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim { rig, bins, write_model } => {
            let rig = Rig::load(&rig)?;
            let sim_cfg = rig.sim.clone().with_context(|| format!("rig file {} has no [sim] section", rig.path.display()))?;
            let truth = neuroloop::sim::truth_model(&sim_cfg, rig.timing.bin_ms * 1e-3);
            if let Some(path) = write_model {
                truth.save(&path)?;
                eprintln!("[neuroloop] wrote the simulator's true model to {}", path.display());
                return Ok(ExitCode::SUCCESS);
            }
            session::run_sim_only(&rig, truth, bins).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench { rig, bins, warmup, rounds, out, quiet, baselines, python, control } => {
            use neuroloop::bench::baseline;
            let rig = Rig::load(&rig)?;
            let baselines = baseline::parse_baselines(&baselines)?;
            if !baselines.is_empty() && rig.sim.is_none() {
                anyhow::bail!(
                    "rig file {}: the baselines run against the simulated rig and this rig has no [sim]; pass --baselines none",
                    rig.path.display()
                );
            }
            let python = python.unwrap_or_else(baseline::default_python);
            let opts =
                neuroloop::bench::BenchOptions { bins, warmup, rounds, out: out.clone(), status_line: !quiet, baselines, python, control };
            let (_, table) = neuroloop::bench::run(&rig, &opts)?;
            println!("{table}");
            if rounds > 1 {
                eprintln!(
                    "[neuroloop] bench results in {}: latency.md, latency-distribution.svg, baselines.json (every round merged); each round's report.json, latency.hlog and plots in round-NN/",
                    out.display()
                );
            } else {
                eprintln!(
                    "[neuroloop] bench results in {}: report.json, latency.md, latency.hlog, latency-distribution.svg, latency-over-time.svg, baselines.json",
                    out.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sweep { rig, bins, warmup, backends, units, latent, particles, samples, axes, out, quiet } => {
            use neuroloop::bench::sweep::{self, Axis};
            let rig = Rig::load(&rig)?;
            let backends = match backends {
                Some(b) => sweep::parse_backends(&b)?,
                None => sweep::compiled_backends(),
            };
            let mut chosen = Vec::new();
            for a in axes.split(',').map(str::trim) {
                chosen.push(match a {
                    "units" => (Axis::Units, sweep::parse_sizes("units", &units)?),
                    "latent" => (Axis::Latent, sweep::parse_sizes("latent", &latent)?),
                    "particles" => (Axis::Particles, sweep::parse_sizes("particles", &particles)?),
                    "samples" => (Axis::Samples, sweep::parse_sizes("samples", &samples)?),
                    other => anyhow::bail!("--axes: unknown axis '{other}' (expected units, latent, particles or samples)"),
                });
            }
            let opts = sweep::SweepOptions { bins, warmup, backends, axes: chosen, out: out.clone(), status_line: !quiet };
            let (_, table) = sweep::run(&rig, &opts)?;
            println!("{table}");
            eprintln!("[neuroloop] sweep results in {}: sweep.md, sweep.json, sweep-<axis>.svg", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Wakeups { bin_ms, seconds, threads, waits, out, quiet } => {
            use neuroloop::bench::wakeup;
            let opts = wakeup::WakeupOptions::from_args(bin_ms, seconds, &threads, &waits, out.clone(), !quiet)?;
            let (_, table) = wakeup::run(&opts)?;
            println!("{table}");
            eprintln!("[neuroloop] wakeups results in {}: wakeups.md, wakeups.json", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Filters { files, rig, particles, seed, skip, bins, report, quiet } => {
            use neuroloop::bench::filters;
            if let Some(path) = &report {
                neuroloop::ensure_writable(path, "report")?;
            }
            let rig = Rig::load(&rig)?;
            let opts = filters::FiltersOptions {
                files,
                particles: filters::FiltersOptions::parse_particles(&particles)?,
                seed,
                skip_bins: skip,
                max_bins: bins,
                progress: !quiet,
            };
            let scores = filters::run(&rig, &opts)?;
            println!("{}", filters::table(&scores));
            if let Some(path) = &report {
                neuroloop::outfile::write_output(path, serde_json::to_string_pretty(&scores)?.as_bytes(), "report")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { file, rig, from, realtime, backend, report, quiet } => {
            if let Some(path) = &report {
                neuroloop::ensure_writable(path, "report")?;
            }
            use neuroloop::replay::{self, ReplayOptions, ReplaySource};
            let rig = Rig::load(&rig)?;
            let source = match from.as_str() {
                "auto" => ReplaySource::Auto,
                "bins" => ReplaySource::Bins,
                "spikes" => ReplaySource::Spikes,
                other => anyhow::bail!("--from: unknown source '{other}' (expected auto, bins or spikes)"),
            };
            let backend = match backend.as_deref() {
                None => None,
                Some(b) => Some(
                    neuroloop::rig::BackendKind::parse(b)
                        .with_context(|| format!("--backend: unknown backend '{b}' (expected cpu, wgpu or cuda)"))?,
                ),
            };
            let opts = ReplayOptions { source, realtime, backend, status_line: !quiet };
            let r = replay::replay(&file, &rig, &opts)?;
            let json = serde_json::to_string_pretty(&r)?;
            println!("{json}");
            if let Some(path) = report {
                neuroloop::outfile::write_output(&path, json.as_bytes(), "report")?;
            }
            if let Some(d) = &r.first_difference {
                eprintln!(
                    "[neuroloop] replay DIVERGED at bin {} (channel {}): recorded {:?}, replayed {:?}; {} of {} bins differ",
                    d.bin, d.channel, d.recorded, d.replayed, r.differing_bins, r.compared
                );
                return Ok(ExitCode::from(1));
            }
            if r.unchecked_bins > 0 {
                let ranges: Vec<String> = r.unchecked.iter().take(5).map(|u| format!("bins {}..{} ({})", u.from, u.to, u.why)).collect();
                eprintln!(
                    "[neuroloop] replay could NOT check {} bins of a damaged file ({}{}); the {} Control samples it could compare {}",
                    r.unchecked_bins,
                    ranges.join("; "),
                    if r.unchecked.len() > 5 { "; …" } else { "" },
                    r.compared,
                    if r.identical == Some(true) { "are identical bit for bit" } else { "were compared" }
                );
                return Ok(ExitCode::from(1));
            }
            match r.identical {
                Some(true) => eprintln!("[neuroloop] replay reproduced all {} recorded Control samples bit for bit", r.compared),
                _ => eprintln!("[neuroloop] replayed {} bins ({} fallbacks)", r.bins, r.fallbacks),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Fit {
            files,
            rig,
            out,
            report,
            latent,
            embed,
            hidden,
            seed,
            iterations,
            heldout,
            tasks,
            alpha,
            batch,
            learning_rate,
            no_history,
            quiet,
        } => {
            use neuroloop::fit::{data::TaskSource, report as fit_report, FitOptions};
            use std::io::IsTerminal;
            let rig = Rig::load(&rig)?;
            let tasks = match tasks.as_str() {
                "file" => TaskSource::File,
                "markers" => TaskSource::Markers,
                other => anyhow::bail!("--tasks: unknown source '{other}' (expected file or markers)"),
            };
            let choices = neuroloop::fit::select::Choices {
                latent: latent.0.clone(),
                embed: embed.0.clone(),
                hidden: hidden.0.clone(),
                alpha: alpha.0.clone(),
            };
            let opts = FitOptions {
                files,
                out: out.clone(),
                report,
                latent: latent.0[0],
                embed: embed.0[0],
                hidden: hidden.0[0],
                choices: Some(choices),
                seed,
                iterations,
                heldout,
                tasks,
                alpha: alpha.0[0],
                batch,
                learning_rate,
                history: !no_history,
                progress: !quiet && std::io::stderr().is_terminal(),
                ..Default::default()
            };
            let r = fit_report::run(&opts, &rig)?;
            print!("{}", fit_report::summary(&r, &out));
            if r.diverged.is_some() {
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { rig } => {
            let rig = Rig::load(&rig)?;
            let model = session::SessionModel::resolve(&rig)?;
            model.check(&rig)?;
            let Some(params) = model.params() else {
                let d = model.dims();
                println!(
                    "rig '{}' OK: identification session (probe: {:?} signal, N={} m={}); record it with `neuroloop run --record`, then `neuroloop fit`",
                    rig.name, rig.controller.probe.signal, d.n_units, d.control
                );
                return Ok(ExitCode::SUCCESS);
            };
            let source = model.source();
            let d = params.dims;
            println!(
                "rig '{}' OK: model {} (N={} d={} e={} m={}, {} library tasks, policy: {})",
                rig.name,
                source,
                d.n_units,
                d.latent,
                d.embed,
                d.control,
                params.task_library.len(),
                params.policy.is_some()
            );
            println!("{}", session::capabilities(&rig, params));
            Ok(ExitCode::SUCCESS)
        }
    }
}
