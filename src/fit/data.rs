//! What `neuroloop fit` learns from: recordings read into bins of counts, the inputs that
//! were applied, task labels and (for the simulator) the true state.
//!
//! Two kinds of file:
//! - **neuroloop recordings** (`neuroloop run --record`): the bins as the live loop formed
//!   them (`NeuroloopBins`), the stream-gap flags (`NeuroloopTiming`), the Control stream
//!   that was emitted, and for the simulated rig its task markers and true state.
//! - **LabRecorder files**: the rig's raw spike stream, binned by the same code as
//!   `neuroloop replay` ([`crate::replay`]), plus a Control stream.
//!
//! u_k is the command emitted for bin k: it drives x_{k+1} (README, "The model").

use crate::clock::bin_ending_at;
use crate::record::read::Damage;
use crate::record::{sha256_hex, TASK_MARKER_PREFIX};
use crate::replay::{bins_in_losses, header_text, pick_input, rebin_spikes, recorded_grid, streams_of, Recorded};
use crate::rig::Rig;
use crate::units::UnitMap;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// Where the task labels come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskSource {
    /// Each file is one task (labelled by its file name).
    File,
    /// `task=<label>` markers in a Markers stream of the file, each from its timestamp on.
    Markers,
}

/// The simulator's truth for each bin of a file.
#[derive(Debug, Clone)]
pub struct Truth {
    pub latent: usize,
    /// bins × latent; NaN where the simulator's record is missing.
    pub x: Vec<f64>,
    pub task: Vec<Option<usize>>,
}

/// One recording, binned.
#[derive(Debug, Clone)]
pub struct FileData {
    pub path: PathBuf,
    pub sha256: String,
    /// "neuroloop recording" or "LabRecorder file (stream '…')".
    pub kind: String,
    pub bins: usize,
    /// bins × N.
    pub counts: Vec<f64>,
    /// bins × m: the command emitted for each bin.
    pub inputs: Vec<f64>,
    pub has_data: Vec<bool>,
    /// Library index of each bin's task (None: no label, left out of the fit).
    pub task: Vec<Option<usize>>,
    /// Held out of the fit, kept for the report's evaluation.
    pub heldout: Vec<bool>,
    pub truth: Option<Truth>,
    /// Bins whose counts or input lie in a damaged part of the file (skipped by the
    /// reader): left out of the fit and the evaluation.
    pub lost: Vec<bool>,
    /// Bytes of the file that were read (less than its size when parts were damaged).
    pub bytes_used: u64,
    pub bytes_total: u64,
    /// What the reader skipped (None: the whole file was read).
    pub damage: Option<Damage>,
}

/// Everything a fit reads, with the task library's labels.
#[derive(Debug, Clone)]
pub struct FitData {
    pub files: Vec<FileData>,
    /// Task labels in library order.
    pub labels: Vec<String>,
    pub n_units: usize,
    pub control: usize,
    pub bin_s: f64,
    pub notices: Vec<String>,
}

/// A file's bins before the labels are resolved.
struct Raw {
    file: FileData,
    /// Marker label per bin (markers mode).
    labels: Vec<Option<String>>,
}

fn take(streams: &mut Vec<Recorded>, ty: &str) -> Option<Recorded> {
    streams.iter().position(|s| s.stream_type == ty).map(|i| streams.swap_remove(i))
}

fn read_file(path: &Path, rig: &Rig, tasks: TaskSource, notices: &mut Vec<String>) -> anyhow::Result<Raw> {
    let opened = crate::record::read::open(path)?;
    let damage = opened.damage();
    let total = opened.bytes.len();
    let whole = total - damage.as_ref().map_or(0, |d| d.bytes_skipped as usize);
    notices.extend(opened.damage_notices(path));
    let mut streams = streams_of(&opened);
    let (file, bytes) = (&opened.file, &opened.bytes);
    let sha256 = sha256_hex(bytes);
    if let Some(sha) = header_text(file, &["neuroloop", "rig", "sha256"]) {
        let ours = sha256_hex(&std::fs::read(&rig.path).unwrap_or_default());
        if ours != sha {
            notices.push(format!(
                "{}: recorded with a different rig file (sha256 {}) than {} (sha256 {}); the fit uses {}'s unit map and Δ",
                path.display(),
                sha,
                rig.path.display(),
                ours,
                rig.path.display()
            ));
        }
    }
    let n = UnitMap::from_config(&rig.units).n_units();
    let bin_s = rig.timing.bin_ms * 1e-3;
    let markers = take_markers(&mut streams);
    let truth_rows = take(&mut streams, "NeuroloopSimTruth");
    // The Control stream: by the rig's name, else any. None: a recording without stimulation.
    let control_pick = |streams: &mut Vec<Recorded>| -> Option<Recorded> {
        let by_name = streams.iter().position(|s| s.stream_type == "Control" && s.name == rig.output.control_name);
        let any = || streams.iter().position(|s| s.stream_type == "Control");
        by_name.or_else(any).map(|i| streams.swap_remove(i))
    };

    let (t0, mut fd) = if streams.iter().any(|s| s.stream_type == "NeuroloopBins") {
        let grid = |k: &str| recorded_grid(file, path, k);
        let (t0, rec_bin_s) = (grid("t0")?, grid("bin_s")?);
        if (rec_bin_s - bin_s).abs() > 1e-9 {
            bail!(
                "{}: recorded at Δ = {} ms, the rig {} bins at {} ms: fit with the rig the session ran with",
                path.display(),
                rec_bin_s * 1e3,
                rig.path.display(),
                rig.timing.bin_ms
            );
        }
        let bins_stream = take(&mut streams, "NeuroloopBins").unwrap();
        let bins_losses = bins_stream.losses;
        let bins_rows = bins_stream.rows;
        if bins_rows.channels != n + 2 {
            bail!(
                "{}: the recording has N = {} units, the rig {} maps {n}: fit with the rig the session ran with",
                path.display(),
                bins_rows.channels.saturating_sub(2),
                rig.path.display()
            );
        }
        let k_max = (0..bins_rows.len()).map(|i| bin_ending_at(bins_rows.timestamps[i], t0, bin_s)).max().unwrap_or(-1);
        if k_max < 0 {
            bail!("{}: the NeuroloopBins stream has no bins", path.display());
        }
        let bins = k_max as usize + 1;
        if bins > 100_000_000 || bins.saturating_mul(n) > 2_000_000_000 {
            bail!("{}: {bins} bins of {n} units is too large to fit in memory", path.display());
        }
        let mut counts = vec![0.0; bins * n];
        let mut present = vec![false; bins];
        for i in 0..bins_rows.len() {
            let k = bin_ending_at(bins_rows.timestamps[i], t0, bin_s);
            if k < 0 {
                continue;
            }
            let k = k as usize;
            let row = &bins_rows.row(i)[..n];
            if let Some(j) = row.iter().position(|v| !v.is_finite() || *v < 0.0) {
                bail!("{}: NeuroloopBins, bin {k}, unit {j}: the count {} is not a finite number ≥ 0", path.display(), row[j]);
            }
            counts[k * n..(k + 1) * n].copy_from_slice(row);
            present[k] = true;
        }
        let mut has_data = present.clone();
        if let Some(timing) = take(&mut streams, "NeuroloopTiming") {
            let col = crate::schema::TIMING_LABELS.iter().position(|l| *l == "has_data").unwrap();
            for i in 0..timing.rows.len() {
                let r = timing.rows.row(i);
                let k = r[0];
                if k >= 0.0 && (k as usize) < bins && r[col] != 1.0 {
                    has_data[k as usize] = false;
                }
            }
        }
        if counts.iter().all(|c| *c == 0.0) {
            bail!(
                "{}: the NeuroloopBins stream has no spike in any of its {bins} bins: there is nothing to fit (was the rig's input silent, or its [units] map wrong, in that session?)",
                path.display()
            );
        }
        // Bins whose counts were in a damaged part of the file (stamped at their ends):
        // left out (and counted) as lost, apart from those dropped while recording.
        let lost = bins_in_losses(&bins_rows, &bins_losses, t0, bin_s, bins);
        let missing = (0..bins).filter(|&k| !present[k] && !lost[k]).count();
        if missing > 0 {
            notices
                .push(format!("{}: {missing} bins have no recorded counts (dropped while recording); they are left out", path.display()));
        }
        let fd = FileData {
            path: path.to_path_buf(),
            sha256,
            kind: "neuroloop recording".into(),
            bins,
            counts,
            inputs: Vec::new(),
            has_data,
            task: vec![None; bins],
            heldout: vec![false; bins],
            truth: None,
            lost,
            bytes_used: whole as u64,
            bytes_total: total as u64,
            damage: damage.clone(),
        };
        (t0, fd)
    } else {
        let input = pick_input(path, streams_with_control(&mut streams), rig)?;
        let name = input.name.clone();
        let binned = rebin_spikes(&input, rig).with_context(|| path.display().to_string())?;
        notices.extend(binned.notices.iter().map(|m| format!("{}: {m}", path.display())));
        let bins = binned.bins();
        if binned.spikes == 0.0 {
            if binned.rejected_samples > 0 {
                bail!(
                    "{}: no spike of stream '{name}' maps to a unit of the rig ({} samples were rejected or outside the rig's [units] map): check [units] in {} (channels, map or labels) against the recording's channels",
                    path.display(),
                    binned.rejected_samples,
                    rig.path.display()
                );
            }
            bail!("{}: stream '{name}' has no spike in any of its {bins} bins: there is nothing to fit", path.display());
        }
        let lost = bins_in_losses(&input.rows, &input.losses, binned.clock.t0, binned.clock.bin_s, bins);
        let fd = FileData {
            path: path.to_path_buf(),
            sha256,
            kind: format!("LabRecorder file (stream '{name}', re-binned)"),
            bins,
            counts: binned.counts,
            inputs: Vec::new(),
            has_data: binned.has_data,
            task: vec![None; bins],
            heldout: vec![false; bins],
            truth: None,
            lost,
            bytes_used: whole as u64,
            bytes_total: total as u64,
            damage,
        };
        (binned.clock.t0, fd)
    };

    // The inputs: the Control sample of each bin (stamped at its end). A bin whose sample
    // is missing keeps the previous command (what the rig went on applying).
    let Some(control) = control_pick(&mut streams) else {
        if let Some(m) = rig.control_dim() {
            bail!(
                "{}: no Control stream (type Control), but the rig {} declares m = {m} inputs: without the stimulation that was applied the fit cannot identify W_xu, how the input moves the latent. Record the identification session with `neuroloop run --record`, or select the Control stream in LabRecorder; for a recording without stimulation, leave output.control_dim and output.control_labels out of the rig (the fit then learns a model with no input, m = 0)",
                path.display(),
                rig.path.display()
            );
        }
        notices.push(format!(
            "{}: no Control stream and the rig declares no inputs: fitting a model without an input path (m = 0), for filtering, task identification and monitoring (README, \"Recordings without stimulation\")",
            path.display()
        ));
        return finish_labels(fd, t0, bin_s, tasks, markers, truth_rows, path, notices);
    };
    let m = control.rows.channels;
    if let Some(want) = rig.control_dim() {
        if want != m {
            bail!("{}: the Control stream has {m} channels, the rig {} has m = {want}", path.display(), rig.path.display());
        }
    }
    let bins = fd.bins;
    let mut inputs = vec![0.0; bins * m];
    let mut order: Vec<usize> = (0..control.rows.len()).collect();
    order.sort_by(|&a, &b| control.rows.timestamps[a].total_cmp(&control.rows.timestamps[b]));
    let mut next = 0usize;
    let mut current = vec![0.0; m];
    let mut seen = 0usize;
    for k in 0..bins {
        // The sample stamped at this bin's end (within half a bin: LabRecorder's grid is the
        // spike stream's, not the controller's).
        let end = t0 + (k as f64 + 1.0) * bin_s;
        while next < order.len() && control.rows.timestamps[order[next]] <= end + 0.5 * bin_s {
            let row = control.rows.row(order[next]);
            if let Some(j) = row.iter().position(|v| !v.is_finite()) {
                bail!("{}: Control stream, sample {}, channel {j}: {} is not finite", path.display(), order[next], row[j]);
            }
            current.copy_from_slice(row);
            seen += 1;
            next += 1;
        }
        inputs[k * m..(k + 1) * m].copy_from_slice(&current);
    }
    if seen == 0 {
        bail!("{}: the Control stream has no samples inside the recorded bins: the fit cannot identify W_xu", path.display());
    }
    // Stimulation far outside the rig's own bounds is more likely a unit or channel mix-up
    // than what was applied: said, and fitted as recorded.
    let bound = rig.safety.lower.iter().chain(&rig.safety.upper).fold(0.0f64, |a, v| a.max(v.abs()));
    let largest = inputs.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    if largest > 1e6 || (bound > 0.0 && largest > 100.0 * bound) {
        let msg = format!(
            "{}: the Control stream holds values up to {largest:e}, far outside the rig's safety bounds (±{bound}): check its units and channel order; the fit uses them as recorded",
            path.display()
        );
        notices.push(msg);
    }
    fd.inputs = inputs;
    // Bins whose command was in a damaged part: the held command above is a guess.
    for (k, l) in bins_in_losses(&control.rows, &control.losses, t0, bin_s, bins).into_iter().enumerate() {
        fd.lost[k] |= l;
    }

    finish_labels(fd, t0, bin_s, tasks, markers, truth_rows, path, notices)
}

/// A file's task labels (from its markers) and the simulator's truth, once its bins and
/// inputs are known.
#[allow(clippy::too_many_arguments)]
fn finish_labels(
    mut fd: FileData,
    t0: f64,
    bin_s: f64,
    tasks: TaskSource,
    markers: Option<Vec<(f64, String)>>,
    truth_rows: Option<Recorded>,
    path: &Path,
    notices: &mut Vec<String>,
) -> anyhow::Result<Raw> {
    let bins = fd.bins;
    let mut labels = vec![None; bins];
    if tasks == TaskSource::Markers {
        let Some(mk) = markers else {
            bail!(
                "{}: --tasks markers, but the file has no Markers stream with `{TASK_MARKER_PREFIX}<label>` markers (use --tasks file: each file one task)",
                path.display()
            );
        };
        let mut ms: Vec<(f64, String)> = mk;
        ms.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut j = 0;
        let mut cur: Option<String> = None;
        for (k, l) in labels.iter_mut().enumerate() {
            let start = t0 + k as f64 * bin_s;
            while j < ms.len() && ms[j].0 <= start + 0.5 * bin_s {
                cur = Some(ms[j].1.clone());
                j += 1;
            }
            *l = cur.clone();
        }
        let unlabelled = labels.iter().filter(|l| l.is_none()).count();
        if unlabelled > 0 {
            notices.push(format!("{}: {unlabelled} bins before the first task marker are left out", path.display()));
        }
    }
    if let Some(tr) = truth_rows {
        let d = tr.rows.channels.saturating_sub(2);
        let mut x = vec![f64::NAN; bins * d];
        let mut task = vec![None; bins];
        for i in 0..tr.rows.len() {
            let r = tr.rows.row(i);
            if r[0] >= 0.0 && (r[0] as usize) < bins {
                let k = r[0] as usize;
                x[k * d..(k + 1) * d].copy_from_slice(&r[2..]);
                task[k] = Some(r[1] as usize);
            }
        }
        fd.truth = Some(Truth { latent: d, x, task });
    }
    Ok(Raw { file: fd, labels })
}

/// LabRecorder files: every stream but the Control stream is a candidate for the input.
fn streams_with_control(streams: &mut Vec<Recorded>) -> Vec<Recorded> {
    let mut rest = Vec::new();
    let mut keep = Vec::new();
    for s in streams.drain(..) {
        if s.stream_type == "Control" {
            keep.push(s);
        } else {
            rest.push(s);
        }
    }
    *streams = keep;
    rest
}

/// The file's task markers: (time, label) of every `task=<label>` string in a Markers stream.
fn take_markers(streams: &mut Vec<Recorded>) -> Option<Vec<(f64, String)>> {
    let i = streams.iter().position(|s| s.stream_type == "Markers" && s.rows.texts.iter().any(|t| t.starts_with(TASK_MARKER_PREFIX)))?;
    let s = streams.swap_remove(i);
    Some(
        s.rows
            .timestamps
            .iter()
            .zip(&s.rows.texts)
            .filter_map(|(t, text)| text.strip_prefix(TASK_MARKER_PREFIX).map(|l| (*t, l.trim().to_string())))
            .collect(),
    )
}

/// Numeric labels in numeric order, others in text order.
fn sort_labels(labels: &mut [String]) {
    if labels.iter().all(|l| l.parse::<f64>().is_ok()) {
        labels.sort_by(|a, b| a.parse::<f64>().unwrap().total_cmp(&b.parse::<f64>().unwrap()));
    } else {
        labels.sort();
    }
}

/// Read every file, resolve the task labels into a library order, and mark held-out bins:
/// the last `heldout` fraction of each file (`--tasks file`) or of each task block in a file
/// (`--tasks markers`, so that every task is both fitted and evaluated).
pub fn load(paths: &[PathBuf], rig: &Rig, tasks: TaskSource, heldout: f64) -> anyhow::Result<FitData> {
    if paths.is_empty() {
        bail!("no recordings given");
    }
    let mut notices = Vec::new();
    let mut raws = Vec::new();
    for p in paths {
        raws.push(read_file(p, rig, tasks, &mut notices)?);
    }
    let m = raws[0].file.inputs.len() / raws[0].file.bins.max(1);
    for r in &raws[1..] {
        let mr = r.file.inputs.len() / r.file.bins.max(1);
        if mr != m {
            bail!("{} has m = {mr} control channels, {} has {m}", r.file.path.display(), raws[0].file.path.display());
        }
    }
    let mut labels: Vec<String> = match tasks {
        TaskSource::File => {
            let mut out: Vec<String> = Vec::new();
            for r in &raws {
                let stem = r.file.path.file_stem().map_or("task".into(), |s| s.to_string_lossy().to_string());
                let mut l = stem.clone();
                let mut i = 2;
                while out.contains(&l) {
                    l = format!("{stem}-{i}");
                    i += 1;
                }
                out.push(l);
            }
            out
        }
        TaskSource::Markers => {
            let mut out: Vec<String> = Vec::new();
            for r in &raws {
                for l in r.labels.iter().flatten() {
                    if !out.contains(l) {
                        out.push(l.clone());
                    }
                }
            }
            sort_labels(&mut out);
            out
        }
    };
    if labels.is_empty() {
        bail!("no task labels were found");
    }
    let mut files = Vec::new();
    for (fi, mut r) in raws.into_iter().enumerate() {
        let f = &mut r.file;
        match tasks {
            TaskSource::File => f.task = vec![Some(fi); f.bins],
            TaskSource::Markers => f.task = r.labels.iter().map(|l| l.as_ref().and_then(|l| labels.iter().position(|x| x == l))).collect(),
        }
        // Bins in damaged parts of the file: neither fitted nor scored.
        let lost = f.lost.iter().filter(|l| **l).count();
        if lost > 0 {
            for k in 0..f.bins {
                if f.lost[k] {
                    f.task[k] = None;
                    f.has_data[k] = false;
                }
            }
            notices.push(format!(
                "{}: {lost} of {} bins lie in damaged parts of the file (their counts or their command were skipped); they are left out of the fit and the evaluation",
                f.path.display(),
                f.bins
            ));
        }
        // Held-out: the last fraction of each block of one task.
        let mut k = 0;
        while k < f.bins {
            let t = f.task[k];
            let mut e = k;
            while e < f.bins && f.task[e] == t {
                e += 1;
            }
            let len = e - k;
            let held = ((len as f64) * heldout).round() as usize;
            for b in (e - held)..e {
                f.heldout[b] = true;
            }
            k = e;
        }
        files.push(r.file);
    }
    labels.shrink_to_fit();
    Ok(FitData { files, labels, n_units: UnitMap::from_config(&rig.units).n_units(), control: m, bin_s: rig.timing.bin_ms * 1e-3, notices })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_sort_numerically_when_they_are_numbers() {
        let mut l = vec!["10".to_string(), "2".into(), "0".into()];
        sort_labels(&mut l);
        assert_eq!(l, ["0", "2", "10"]);
        let mut l = vec!["reach".to_string(), "grasp".into()];
        sort_labels(&mut l);
        assert_eq!(l, ["grasp", "reach"]);
    }
}
