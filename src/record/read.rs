//! Opening an XDF file for `replay`, `fit` and `filters`: the file goes through the chunk
//! scanner ([`super::scan`]) first, so that a file that is not XDF gets a message in XDF's
//! terms, a damaged chunk is skipped and the reading goes on after it, and whatever was
//! skipped is counted and said ([`Opened::damage`]) — never a silent stop part-way through.

use super::scan::{scan, Skipped, Unreadable};
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// A recording read for replay or fitting.
pub struct Opened {
    pub file: xdf::XDFFile,
    /// The whole file's bytes (for hashing).
    pub bytes: Vec<u8>,
    /// The damaged parts that were skipped (empty: the whole file was read).
    pub skipped: Vec<Skipped>,
}

/// What a reader could not read of a file: for the report (JSON) and the notices.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Damage {
    pub bytes_total: u64,
    pub bytes_skipped: u64,
    /// Whole samples skipped per stream name (samples in skipped chunks of a known stream;
    /// a part whose stream is unknown adds nothing here).
    pub samples_skipped: BTreeMap<String, u64>,
    /// Every damaged part: where, how long, which stream, why.
    pub parts: Vec<Skipped>,
}

impl Opened {
    /// The stream's display name for a stream id ("'name' (type)", or "stream 7").
    pub fn stream_name(&self, id: u32) -> String {
        match self.file.streams.iter().find(|s| s.id == id) {
            Some(s) => format!("{} ({})", s.name.as_deref().unwrap_or(""), s.r#type.as_deref().unwrap_or("")),
            None => format!("stream {id}"),
        }
    }

    /// None when the whole file was read.
    pub fn damage(&self) -> Option<Damage> {
        if self.skipped.is_empty() {
            return None;
        }
        let mut samples_skipped = BTreeMap::new();
        for s in &self.skipped {
            if let (Some(id), Some(n)) = (s.stream, s.samples) {
                *samples_skipped.entry(self.stream_name(id)).or_default() += n;
            }
        }
        Some(Damage {
            bytes_total: self.bytes.len() as u64,
            bytes_skipped: self.skipped.iter().map(|s| s.bytes).sum(),
            samples_skipped,
            parts: self.skipped.clone(),
        })
    }

    /// One line per damaged part, then a summary (for stderr and the reports' notices).
    pub fn damage_notices(&self, path: &Path) -> Vec<String> {
        let Some(d) = self.damage() else { return Vec::new() };
        let mut out: Vec<String> = self
            .skipped
            .iter()
            .take(20)
            .map(|s| {
                let what = match (s.stream, s.samples) {
                    (Some(id), Some(n)) => format!(" ({n} samples of {})", self.stream_name(id)),
                    (Some(id), None) => format!(" (of {})", self.stream_name(id)),
                    _ => String::new(),
                };
                format!("{}: damaged at byte {}: {} bytes skipped{what}: {}", path.display(), s.at, s.bytes, s.why)
            })
            .collect();
        if self.skipped.len() > 20 {
            out.push(format!("{}: … and {} more damaged parts (every one is in the report)", path.display(), self.skipped.len() - 20));
        }
        let per_stream: Vec<String> = d.samples_skipped.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out.push(format!(
            "{}: {} damaged part{}, {} of {} bytes skipped{}; everything else was read",
            path.display(),
            self.skipped.len(),
            if self.skipped.len() == 1 { "" } else { "s" },
            d.bytes_skipped,
            d.bytes_total,
            if per_stream.is_empty() { String::new() } else { format!(" (samples skipped: {})", per_stream.join(", ")) }
        ));
        out
    }

    /// Where the stream with this id lost samples: the kept rows before which some were
    /// lost (the stream's length: after its last row), in order, each once. A damaged part
    /// whose stream is unknown counts as a loss in every stream that had a header before it.
    pub fn losses(&self, id: u32) -> Vec<usize> {
        let rows: std::collections::BTreeSet<usize> = self
            .skipped
            .iter()
            .filter(|s| s.may_hold_samples && s.stream.is_none_or(|sid| sid == id))
            .filter_map(|s| Some(s.kept_before.iter().find(|(sid, _)| *sid == id)?.1 as usize))
            .collect();
        rows.into_iter().collect()
    }
}

/// Read and parse an XDF file. A file that is not XDF, or whose file header is damaged, is
/// an error; damaged chunks after it are skipped and counted ([`Opened::damage`]).
pub fn open(path: &Path) -> anyhow::Result<Opened> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let scanned = scan(&bytes).map_err(|e| match e {
        Unreadable::NoMagic => anyhow::anyhow!("{} is not an XDF file (it does not start with \"XDF:\")", path.display()),
        e => anyhow::anyhow!("{} is not a readable XDF file: {e}", path.display()),
    })?;
    let file = xdf::XDFFile::from_bytes(&scanned.clean).map_err(|e| {
        // Not expected after the scan; the xdf crate's errors print nom's internals.
        let mut why = e.to_string();
        if why.len() > 120 || why.contains('[') {
            why = "a chunk's content does not parse".into();
        }
        anyhow::anyhow!("{} is not a readable XDF file: {why}", path.display())
    })?;
    // The scan kept only chunks that parse: the crate must have read every sample of them.
    for (id, kept) in &scanned.kept {
        let read = file.streams.iter().find(|s| s.id == *id).map_or(0, |s| s.samples.len() as u64);
        if read != *kept {
            anyhow::bail!(
                "{}: stream {id}: the XDF parser read {read} of the {kept} samples in the file's readable chunks; refusing to go on with part of the file (please report this file)",
                path.display()
            );
        }
    }
    Ok(Opened { file, bytes, skipped: scanned.skipped })
}
