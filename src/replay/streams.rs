//! A recording's streams as replay and `neuroloop fit` read them: each stream's samples as
//! f64 rows with timestamps, its header's labels, and the file header's bin grid.

use crate::record::read::Opened;
use anyhow::{bail, Context};
use std::path::Path;
use xdf::{Values, XDFFile};

/// The samples of one stream as f64 rows, with timestamps.
pub(crate) struct Rows {
    pub channels: usize,
    pub timestamps: Vec<f64>,
    pub values: Vec<f64>,
    /// String samples (markers), one per sample of a one-channel string stream.
    pub texts: Vec<String>,
}

impl Rows {
    fn of(channels: usize, samples: &[xdf::Sample]) -> Rows {
        let mut r = Rows {
            channels,
            timestamps: Vec::with_capacity(samples.len()),
            values: Vec::with_capacity(samples.len() * channels),
            texts: Vec::new(),
        };
        for smp in samples {
            r.timestamps.push(smp.timestamp.unwrap_or(f64::NAN));
            match &smp.values {
                Values::Int8(v) => r.values.extend(v.iter().map(|&x| x as f64)),
                Values::Int16(v) => r.values.extend(v.iter().map(|&x| x as f64)),
                Values::Int32(v) => r.values.extend(v.iter().map(|&x| x as f64)),
                Values::Int64(v) => r.values.extend(v.iter().map(|&x| x as f64)),
                Values::Float32(v) => r.values.extend(v.iter().map(|&x| x as f64)),
                Values::Float64(v) => r.values.extend_from_slice(v),
                Values::String(t) => {
                    r.values.extend(std::iter::repeat_n(f64::NAN, channels));
                    r.texts.push(t.clone());
                }
            }
        }
        r
    }
    pub fn len(&self) -> usize {
        self.timestamps.len()
    }
    pub fn row(&self, i: usize) -> &[f64] {
        &self.values[i * self.channels..(i + 1) * self.channels]
    }
}

/// The text at `path` under the file header's `<info>`.
pub(crate) fn header_text(file: &XDFFile, path: &[&str]) -> Option<String> {
    let mut cur = &file.header;
    for p in path {
        cur = cur.get_child(*p)?;
    }
    cur.get_text().map(|t| t.into_owned())
}

/// One stream of the file, its samples as f64 rows.
pub(crate) struct Recorded {
    pub name: String,
    /// The rows before which samples of this stream were in damaged parts of the file
    /// ([`Opened::losses`]).
    pub losses: Vec<usize>,
    pub stream_type: String,
    /// Nominal rate (Hz; 0 = irregular).
    pub srate: f64,
    pub rows: Rows,
    /// `desc/channels/channel/label` from the stream header (empty when it has none).
    pub labels: Vec<String>,
}

/// The file's streams (timestamps mapped onto the recorder's clock by its clock offsets).
pub(crate) fn streams_of(opened: &Opened) -> Vec<Recorded> {
    opened
        .file
        .streams
        .iter()
        .map(|s| Recorded {
            name: s.name.as_deref().unwrap_or("").to_string(),
            losses: opened.losses(s.id),
            stream_type: s.r#type.as_deref().unwrap_or("").to_string(),
            srate: s.nominal_srate.unwrap_or(0.0),
            // A string stream is read as one string per sample, whatever its header says.
            rows: Rows::of(if s.format == xdf::Format::String { 1 } else { s.channel_count as usize }, &s.samples),
            // `info/desc/channels/channel/label`, as LabRecorder and neuroloop write it.
            labels: s
                .header
                .get_child("desc")
                .and_then(|d| d.get_child("channels"))
                .map(|chs| {
                    chs.children
                        .iter()
                        .filter_map(|n| n.as_element())
                        .filter(|e| e.name == "channel")
                        .map(|c| c.get_child("label").and_then(|l| l.get_text()).map(|t| t.into_owned()).unwrap_or_default())
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// One value of the recording's bin grid (`neuroloop/bin_grid/KEY` in the file header),
/// refused unless it is a finite number (and, for `bin_s`, > 0).
pub(crate) fn recorded_grid(file: &XDFFile, path: &Path, key: &str) -> anyhow::Result<f64> {
    let v: f64 = header_text(file, &["neuroloop", "bin_grid", key])
        .and_then(|t| t.trim().parse().ok())
        .with_context(|| format!("{}: the file header has no neuroloop/bin_grid/{key}", path.display()))?;
    if !v.is_finite() || (key == "bin_s" && v <= 0.0) {
        bail!(
            "{}: the file header's neuroloop/bin_grid/{key} is {v}, not a usable {}: the header is damaged",
            path.display(),
            if key == "bin_s" { "bin width (a finite number > 0)" } else { "time (a finite number)" }
        );
    }
    Ok(v)
}

/// Which of `bins` bins (on the grid t0 + kΔ) overlap a time span where `rows` lost samples
/// to damaged parts of the file: between the kept sample before a loss and the one after it
/// (from the grid's start or to its end when the loss is at either end of the stream).
pub(crate) fn bins_in_losses(rows: &Rows, losses: &[usize], t0: f64, bin_s: f64, bins: usize) -> Vec<bool> {
    let mut lost = vec![false; bins];
    let finite_at = |i: usize| rows.timestamps.get(i).copied().filter(|t| t.is_finite());
    for &row in losses {
        let lo = row.checked_sub(1).and_then(finite_at).unwrap_or(f64::NEG_INFINITY);
        let hi = finite_at(row).unwrap_or(f64::INFINITY);
        // Bin k spans [t0 + kΔ, t0 + (k+1)Δ): it overlaps (lo, hi) when it starts before hi
        // and ends after lo.
        let first = ((lo - t0) / bin_s).floor().max(0.0);
        let last = ((hi - t0) / bin_s).ceil().min(bins as f64);
        if first.is_nan() || last.is_nan() {
            continue;
        }
        for k in first as usize..last as usize {
            let (start, end) = (t0 + k as f64 * bin_s, t0 + (k + 1) as f64 * bin_s);
            if start < hi && end > lo {
                lost[k] = true;
            }
        }
    }
    lost
}
