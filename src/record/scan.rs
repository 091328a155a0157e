//! The chunk scanner every XDF reader of neuroloop goes through (`replay`, `fit`, `filters`):
//! it walks a file's chunks, checks each against the XDF 1.0 layout and the stream it
//! belongs to, and keeps only the chunks that parse. A damaged chunk is skipped, and so is
//! unreadable bytes between chunks: the scanner resynchronises on the next chunk that is
//! well formed (XDF's Boundary chunks carry a fixed UUID for this; any chunk whose header
//! and successor's header are plausible will do). Everything skipped is counted, with where
//! and why ([`Skipped`]), so that no reader can stop silently part-way through a file.
//!
//! The kept chunks are handed to the `xdf` crate as a clean file. That crate stops at the
//! first chunk it cannot parse and drops the rest of the file with a log line nobody sees;
//! after the scan it never meets such a chunk, and [`super::read::open`] checks that it
//! read every sample the scan kept.

use super::xdf::{BOUNDARY_UUID, TAG_BOUNDARY, TAG_CLOCK_OFFSET, TAG_FILE_HEADER, TAG_SAMPLES, TAG_STREAM_FOOTER, TAG_STREAM_HEADER};
use serde::Serialize;
use std::collections::BTreeMap;

/// One damaged part of a file that was skipped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    /// Byte offset where the skipped part starts.
    pub at: u64,
    /// Its length in bytes.
    pub bytes: u64,
    /// The stream whose chunk it was (None: not known — bytes between chunks, or a chunk
    /// whose stream id is itself damaged).
    pub stream: Option<u32>,
    /// Whole samples the skipped chunk held (a samples chunk of a known stream).
    pub samples: Option<u64>,
    /// What was wrong, in XDF's terms.
    pub why: String,
    /// For every stream with a header before this point: how many of its samples were kept
    /// before it (where its lost samples were, in the stream's kept sequence).
    #[serde(skip)]
    pub kept_before: Vec<(u32, u64)>,
    /// Whether the part may have held samples: a samples chunk, or bytes whose chunks are
    /// not known (a damaged clock offset, footer or boundary held none).
    #[serde(skip)]
    pub may_hold_samples: bool,
}

/// The most channels a stream may declare (a reader sizes its rows by it).
pub const MAX_STREAM_CHANNELS: u32 = 1 << 20;

/// The shape of a stream's samples, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    channels: usize,
    format: ::xdf::Format,
}

/// What a scan found.
#[derive(Debug, Clone)]
pub struct Scan {
    /// The magic and every chunk that parses, in file order: a whole XDF file.
    pub clean: Vec<u8>,
    /// Samples kept per stream id.
    pub kept: BTreeMap<u32, u64>,
    /// The damaged parts, in file order.
    pub skipped: Vec<Skipped>,
}

impl Scan {
    pub fn bytes_skipped(&self) -> u64 {
        self.skipped.iter().map(|s| s.bytes).sum()
    }
}

/// A file the scan cannot read at all: not XDF, or its file header is damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("it does not start with \"XDF:\"")]
    NoMagic,
    #[error("its first chunk, the file header, is damaged: {0}")]
    FileHeader(String),
}

/// A chunk's header: where its content is and where the next chunk starts.
#[derive(Debug, Clone, Copy)]
struct ChunkAt {
    tag: u16,
    /// Content after the tag: `content..end`.
    content: usize,
    end: usize,
}

/// Reads a variable-length integer (1, 4 or 8 bytes after a byte saying which) at `at`.
fn varlen(bytes: &[u8], at: usize) -> Result<(u64, usize), String> {
    let Some(&nb) = bytes.get(at) else { return Err("cut off before a length field".into()) };
    let nb = nb as usize;
    if !matches!(nb, 1 | 4 | 8) {
        return Err(format!("a length field {nb} bytes long (XDF allows 1, 4 or 8)"));
    }
    let Some(field) = bytes.get(at + 1..at + 1 + nb) else { return Err("cut off inside a length field".into()) };
    let v = field.iter().enumerate().fold(0u64, |v, (i, b)| v | (*b as u64) << (8 * i));
    Ok((v, at + 1 + nb))
}

/// The chunk header at `at` (length field and tag), or why there is none.
fn chunk_at(bytes: &[u8], at: usize) -> Result<ChunkAt, String> {
    let (len, tag_at) = varlen(bytes, at).map_err(|e| format!("the chunk at byte {at} is damaged: {e}"))?;
    let left = (bytes.len() - tag_at) as u64;
    if len < 2 {
        return Err(format!("the chunk at byte {at} has length {len}, too short for its tag"));
    }
    if len > left {
        return Err(format!("the chunk at byte {at} needs {len} bytes, {left} are left in the file"));
    }
    let tag = u16::from_le_bytes([bytes[tag_at], bytes[tag_at + 1]]);
    if !(TAG_FILE_HEADER..=TAG_STREAM_FOOTER).contains(&tag) {
        return Err(format!("the chunk at byte {at} has an unknown tag {tag} (XDF's tags are 1–6)"));
    }
    Ok(ChunkAt { tag, content: tag_at + 2, end: tag_at + len as usize })
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// How many bytes one value of a numeric format takes.
fn value_size(f: ::xdf::Format) -> Option<usize> {
    use ::xdf::Format as F;
    match f {
        F::Int8 => Some(1),
        F::Int16 => Some(2),
        F::Int32 | F::Float32 => Some(4),
        F::Int64 | F::Float64 => Some(8),
        F::String => None,
    }
}

/// A samples chunk's content (after the tag) checked against its stream's shape: the
/// sample count, then each sample's timestamp (0 or 8 bytes) and values, using up the
/// chunk exactly. Returns the whole samples read, and why it does not parse.
fn check_samples(content: &[u8], shape: Shape) -> (u64, Option<String>) {
    // content[..4] is the stream id, checked by the caller.
    let (declared, mut at) = match varlen(content, 4) {
        Ok(v) => v,
        Err(e) => return (0, Some(format!("its sample count is damaged: {e}"))),
    };
    let mut read = 0u64;
    while read < declared {
        let Some(&ts) = content.get(at) else { break };
        at += 1;
        match ts {
            0 => {}
            8 => at += 8,
            _ => return (read, Some(format!("sample {read} has a timestamp {ts} bytes long (XDF allows 0 or 8)"))),
        }
        match value_size(shape.format) {
            Some(size) => at = at.saturating_add(size.saturating_mul(shape.channels)),
            // A string sample is one length-prefixed UTF-8 string (what the xdf crate reads).
            None => {
                let (len, after) = match varlen(content, at) {
                    Ok(v) => v,
                    Err(e) => return (read, Some(format!("sample {read}'s string is damaged: {e}"))),
                };
                let end = after.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
                if end <= content.len() && std::str::from_utf8(&content[after..end]).is_err() {
                    return (read, Some(format!("sample {read}'s string is not UTF-8")));
                }
                at = end;
            }
        }
        if at > content.len() {
            break;
        }
        read += 1;
    }
    if read < declared {
        return (read, Some(format!("it declares {declared} samples, its {} bytes hold {read} whole ones", content.len())));
    }
    if at != content.len() {
        return (read, Some(format!("{} bytes are left after its {declared} samples", content.len() - at)));
    }
    (read, None)
}

/// Checks a chunk the `xdf` crate would parse with its own parser (file header, stream
/// header, stream footer) by letting it parse a file of just that chunk (after `prefix`).
fn crate_parses(prefix: &[u8], chunk: &[u8]) -> Option<::xdf::XDFFile> {
    let mut mini = Vec::with_capacity(prefix.len() + chunk.len());
    mini.extend_from_slice(prefix);
    mini.extend_from_slice(chunk);
    ::xdf::XDFFile::from_bytes(&mini).ok()
}

/// The scanner's state: the streams seen so far and what was kept.
struct Scanner<'a> {
    bytes: &'a [u8],
    /// "XDF:" and the file header chunk (the prefix of every mini-file a check parses).
    file_header: Vec<u8>,
    /// Each stream's shape and its header chunk's bytes.
    streams: BTreeMap<u32, (Shape, Vec<u8>)>,
    /// The collection time of the last clock offset kept per stream (the crate refuses a
    /// file whose offsets of a stream are out of order).
    last_offset: BTreeMap<u32, f64>,
    scan: Scan,
}

impl Scanner<'_> {
    /// A chunk that checked out: kept.
    fn keep(&mut self, c: &ChunkAt, at: usize) {
        self.scan.clean.extend_from_slice(&self.bytes[at..c.end]);
    }

    fn skip(&mut self, at: usize, end: usize, stream: Option<u32>, samples: Option<u64>, why: String, may_hold_samples: bool) {
        let kept_before = self.streams.keys().map(|id| (*id, self.scan.kept.get(id).copied().unwrap_or(0))).collect();
        self.scan.skipped.push(Skipped { at: at as u64, bytes: (end - at) as u64, stream, samples, why, kept_before, may_hold_samples });
    }

    /// Checks one chunk whose header is plausible. Ok: kept; Err: why it was skipped, with
    /// its stream and sample count where known.
    fn check(&mut self, c: &ChunkAt, at: usize) -> Result<(), (Option<u32>, Option<u64>, String)> {
        let content = &self.bytes[c.content..c.end];
        let chunk = &self.bytes[at..c.end];
        let stream_id = || (content.len() >= 4).then(|| le_u32(content));
        match c.tag {
            TAG_FILE_HEADER => Err((None, None, "a second file header (a file has one, at its start)".into())),
            TAG_STREAM_HEADER => {
                let id = stream_id().ok_or((None, None, "a stream header too short for its stream id".to_string()))?;
                if self.streams.contains_key(&id) {
                    // The first one stands: the samples kept so far have its shape.
                    return Err((Some(id), None, format!("a second header of stream {id}")));
                }
                let parsed = crate_parses(&self.file_header, chunk).and_then(|f| f.streams.into_iter().find(|s| s.id == id)).ok_or((
                    Some(id),
                    None,
                    "a stream header whose XML does not parse or lacks channel_count, nominal_srate or channel_format".to_string(),
                ))?;
                if parsed.channel_count > MAX_STREAM_CHANNELS {
                    return Err((
                        Some(id),
                        None,
                        format!(
                            "a header of stream {id} declaring {} channels (at most {MAX_STREAM_CHANNELS} are read)",
                            parsed.channel_count
                        ),
                    ));
                }
                let shape = Shape { channels: parsed.channel_count as usize, format: parsed.format };
                self.streams.insert(id, (shape, chunk.to_vec()));
                Ok(())
            }
            TAG_SAMPLES => {
                let id = stream_id().ok_or((None, None, "a samples chunk too short for its stream id".to_string()))?;
                let Some((shape, _)) = self.streams.get(&id) else {
                    return Err((Some(id), None, format!("samples of stream {id}, which has no header before them")));
                };
                let (read, why) = check_samples(content, *shape);
                match why {
                    None => {
                        *self.scan.kept.entry(id).or_default() += read;
                        Ok(())
                    }
                    Some(w) => Err((Some(id), Some(read), format!("a samples chunk of stream {id}: {w}"))),
                }
            }
            TAG_CLOCK_OFFSET => {
                if content.len() != 4 + 16 {
                    return Err((stream_id(), None, format!("a clock offset of {} bytes (XDF's are 20)", content.len())));
                }
                let id = le_u32(content);
                let f = |i: usize| f64::from_le_bytes(content[i..i + 8].try_into().unwrap());
                let (t, o) = (f(4), f(12));
                if t.is_finite() && o.is_finite() {
                    if let Some(&lt) = self.last_offset.get(&id) {
                        if t < lt {
                            return Err((
                                Some(id),
                                None,
                                format!("a clock offset of stream {id} collected at {t} s, before the one kept before it ({lt} s)"),
                            ));
                        }
                    }
                    self.last_offset.insert(id, t);
                }
                Ok(())
            }
            TAG_BOUNDARY => {
                if content != BOUNDARY_UUID {
                    return Err((None, None, "a boundary chunk without the boundary UUID".into()));
                }
                Ok(())
            }
            TAG_STREAM_FOOTER => {
                let id = stream_id().ok_or((None, None, "a stream footer too short for its stream id".to_string()))?;
                let Some((_, header)) = self.streams.get(&id) else {
                    return Err((Some(id), None, format!("the footer of stream {id}, which has no header before it")));
                };
                let mut prefix = self.file_header.clone();
                prefix.extend_from_slice(header);
                let ok = crate_parses(&prefix, chunk).is_some_and(|f| f.streams.iter().any(|s| s.id == id && s.footer.is_some()));
                if ok {
                    Ok(())
                } else {
                    Err((Some(id), None, format!("the footer of stream {id}: its XML does not parse")))
                }
            }
            _ => unreachable!("chunk_at admits tags 1–6"),
        }
    }

    /// Whether a chunk could start at `p`: a plausible header whose tag-specific shape fits,
    /// followed by the end of the file or another plausible header.
    fn could_start_at(&self, p: usize) -> bool {
        let Ok(c) = chunk_at(self.bytes, p) else { return false };
        let content = &self.bytes[c.content..c.end];
        let fits = match c.tag {
            TAG_BOUNDARY => content == BOUNDARY_UUID,
            // A clock offset of a known stream, with finite values (binary samples can look
            // like 20 bytes of anything).
            TAG_CLOCK_OFFSET => {
                content.len() == 20
                    && self.streams.contains_key(&le_u32(content))
                    && [4, 12].iter().all(|&i| f64::from_le_bytes(content[i..i + 8].try_into().unwrap()).is_finite())
            }
            TAG_SAMPLES => content.len() >= 6 && self.streams.contains_key(&le_u32(content)),
            TAG_STREAM_HEADER | TAG_STREAM_FOOTER => {
                content.len() > 4 && content[4..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<')
            }
            _ => false,
        };
        fits && (c.end == self.bytes.len() || chunk_at(self.bytes, c.end).is_ok_and(|n| n.tag != TAG_FILE_HEADER))
    }

    /// The next position after `from` where a chunk could start (the end of the file: none).
    fn resync(&self, from: usize) -> usize {
        (from + 1..self.bytes.len()).find(|&p| self.could_start_at(p)).unwrap_or(self.bytes.len())
    }
}

/// Scans a whole file (see the module's doc).
pub fn scan(bytes: &[u8]) -> Result<Scan, Unreadable> {
    if bytes.len() < 4 || &bytes[..4] != b"XDF:" {
        return Err(Unreadable::NoMagic);
    }
    let first = chunk_at(bytes, 4).map_err(Unreadable::FileHeader)?;
    if first.tag != TAG_FILE_HEADER {
        return Err(Unreadable::FileHeader(format!("the first chunk has tag {} (a file header's is 1)", first.tag)));
    }
    if crate_parses(b"XDF:", &bytes[4..first.end]).is_none() {
        return Err(Unreadable::FileHeader("its XML does not parse, or it has no version".into()));
    }
    let mut s = Scanner {
        bytes,
        file_header: bytes[..first.end].to_vec(),
        streams: BTreeMap::new(),
        last_offset: BTreeMap::new(),
        scan: Scan { clean: bytes[..first.end].to_vec(), kept: BTreeMap::new(), skipped: Vec::new() },
    };
    let mut at = first.end;
    while at < bytes.len() {
        match chunk_at(bytes, at) {
            Ok(c) => match s.check(&c, at) {
                Ok(()) => {
                    s.keep(&c, at);
                    at = c.end;
                }
                Err((stream, samples, why)) => {
                    // Trust the chunk's length when a chunk header follows it; else its length
                    // may be what is damaged, and the next chunk may start inside it.
                    let followed = c.end == bytes.len() || chunk_at(bytes, c.end).is_ok_and(|n| n.tag != TAG_FILE_HEADER);
                    let end = if followed { c.end } else { s.resync(at) };
                    let why = if end == c.end { why } else { format!("{why}; the next readable chunk is at byte {end}") };
                    let may_hold = c.tag == TAG_SAMPLES || end != c.end;
                    s.skip(at, end, stream, samples.filter(|_| end == c.end), why, may_hold);
                    at = end;
                }
            },
            Err(why) => {
                let end = s.resync(at);
                let why = if end == bytes.len() {
                    format!("{why}; no readable chunk after it (the file is cut off or damaged to its end)")
                } else {
                    format!("{why}; the next readable chunk is at byte {end}")
                };
                // The tag of a chunk whose length runs past the end of the file (a cut-off
                // last chunk): a samples chunk's stream is still known, and any other
                // chunk's held no samples.
                let tag = (|| {
                    let (_, tag_at) = varlen(bytes, at).ok()?;
                    let head = bytes.get(tag_at..tag_at + 2)?;
                    Some(u16::from_le_bytes([head[0], head[1]])).filter(|t| (TAG_FILE_HEADER..=TAG_STREAM_FOOTER).contains(t))
                })();
                let stream = (tag == Some(TAG_SAMPLES))
                    .then(|| varlen(bytes, at).ok().and_then(|(_, tag_at)| bytes.get(tag_at + 2..tag_at + 6)).map(le_u32))
                    .flatten()
                    .filter(|id| s.streams.contains_key(id));
                let may_hold = !(end == bytes.len() && tag.is_some_and(|t| t != TAG_SAMPLES));
                s.skip(at, end, stream, None, why, may_hold);
                at = end;
            }
        }
    }
    Ok(s.scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::xdf::{Format, XdfWriter};

    const INFO: &str = "<?xml version=\"1.0\"?><info><name>bins</name><type>NeuroloopBins</type><channel_count>2</channel_count><nominal_srate>100</nominal_srate><channel_format>double64</channel_format></info>";

    /// A recording of one stream: 10 samples chunks of 5 samples (t = 0.01 k), a boundary
    /// after every third; returns the bytes and each chunk's offset.
    fn recording() -> (Vec<u8>, Vec<usize>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.xdf");
        let mut w = XdfWriter::create(&path, "").unwrap();
        w.add_stream(2, INFO, Format::Double64, 2);
        for c in 0..10 {
            let t: Vec<f64> = (0..5).map(|i| 0.01 * (c * 5 + i) as f64).collect();
            let v: Vec<f64> = t.iter().flat_map(|t| [*t, -*t]).collect();
            w.samples(2, &t, &v);
            if c % 3 == 2 {
                w.boundary();
            }
        }
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mut at = 4;
        let mut offsets = Vec::new();
        while at < bytes.len() {
            offsets.push(at);
            at = chunk_at(&bytes, at).unwrap().end;
        }
        (bytes, offsets)
    }

    fn samples_chunks(bytes: &[u8], offsets: &[usize]) -> Vec<usize> {
        offsets.iter().copied().filter(|&o| chunk_at(bytes, o).unwrap().tag == TAG_SAMPLES).collect()
    }

    fn timestamps(clean: &[u8]) -> Vec<f64> {
        let f = ::xdf::XDFFile::from_bytes(clean).unwrap();
        f.streams.iter().find(|s| s.id == 2).unwrap().samples.iter().map(|s| s.timestamp.unwrap()).collect()
    }

    #[test]
    fn a_whole_file_is_kept_whole() {
        let (bytes, _) = recording();
        let s = scan(&bytes).unwrap();
        assert!(s.skipped.is_empty(), "{:?}", s.skipped);
        assert_eq!(s.clean, bytes);
        assert_eq!(s.kept[&2], 50);
    }

    #[test]
    fn a_chunk_declaring_one_sample_more_than_it_holds_is_skipped_and_the_rest_is_read() {
        let (mut bytes, offsets) = recording();
        let third = samples_chunks(&bytes, &offsets)[3];
        let c = chunk_at(&bytes, third).unwrap();
        // content: stream id (4), then the count [1][5]
        assert_eq!(&bytes[c.content + 4..c.content + 6], &[1, 5]);
        bytes[c.content + 5] = 6;
        let s = scan(&bytes).unwrap();
        assert_eq!(s.skipped.len(), 1);
        let k = &s.skipped[0];
        assert_eq!((k.at, k.bytes, k.stream, k.samples), (third as u64, (c.end - third) as u64, Some(2), Some(5)));
        assert!(k.why.contains("declares 6 samples") && k.why.contains("hold 5"), "{}", k.why);
        assert_eq!(k.kept_before, vec![(2, 15)]);
        // Everything after the damaged chunk is read: 45 of the 50 samples.
        assert_eq!(s.kept[&2], 45);
        let t = timestamps(&s.clean);
        assert_eq!(t.len(), 45);
        assert!((t[15] - 0.20).abs() < 1e-12 && (t[44] - 0.49).abs() < 1e-12);
    }

    #[test]
    fn a_length_field_of_two_to_the_62_resynchronises_on_the_next_chunk() {
        let (mut bytes, offsets) = recording();
        let chunks = samples_chunks(&bytes, &offsets);
        let at = chunks[1];
        let c = chunk_at(&bytes, at).unwrap();
        // [4][len u32]: widen it to an 8-byte field in place is not possible; instead replace
        // the header of this chunk by [8][2^62] over its first bytes (its content shifts).
        let mut damaged = bytes[..at].to_vec();
        damaged.push(8);
        damaged.extend_from_slice(&(1u64 << 62).to_le_bytes());
        damaged.extend_from_slice(&bytes[c.content - 2..]);
        bytes = damaged;
        let s = scan(&bytes).unwrap();
        assert_eq!(s.skipped.len(), 1, "{:?}", s.skipped);
        let k = &s.skipped[0];
        assert_eq!(k.at, at as u64);
        assert!(k.why.contains("4611686018427387904 bytes") && k.why.contains("next readable chunk"), "{}", k.why);
        assert_eq!(s.kept[&2], 45);
    }

    #[test]
    fn a_sample_count_of_two_to_the_40_is_skipped_without_allocating_it() {
        let (bytes, offsets) = recording();
        let at = samples_chunks(&bytes, &offsets)[4];
        let c = chunk_at(&bytes, at).unwrap();
        // Rebuild the chunk with an 8-byte count of 2^40 (the chunk's length grows by 7).
        let mut content = bytes[c.content..c.content + 4].to_vec();
        content.push(8);
        content.extend_from_slice(&(1u64 << 40).to_le_bytes());
        content.extend_from_slice(&bytes[c.content + 6..c.end]);
        let mut damaged = bytes[..at].to_vec();
        damaged.push(4);
        damaged.extend_from_slice(&((content.len() + 2) as u32).to_le_bytes());
        damaged.extend_from_slice(&TAG_SAMPLES.to_le_bytes());
        damaged.extend_from_slice(&content);
        damaged.extend_from_slice(&bytes[c.end..]);
        let s = scan(&damaged).unwrap();
        assert_eq!(s.skipped.len(), 1);
        assert!(s.skipped[0].why.contains("declares 1099511627776 samples"), "{}", s.skipped[0].why);
        assert_eq!(s.kept[&2], 45);
        assert_eq!(timestamps(&s.clean).len(), 45);
    }

    #[test]
    fn garbage_between_chunks_and_a_cut_off_end_are_skipped_and_said() {
        let (bytes, offsets) = recording();
        let at = samples_chunks(&bytes, &offsets)[6];
        let mut damaged = bytes[..at].to_vec();
        damaged.extend(std::iter::repeat_n(0xAB, 37));
        damaged.extend_from_slice(&bytes[at..bytes.len() - 30]);
        let s = scan(&damaged).unwrap();
        assert_eq!(s.skipped.len(), 2, "{:?}", s.skipped);
        assert_eq!((s.skipped[0].at, s.skipped[0].bytes, s.skipped[0].stream), (at as u64, 37, None));
        assert!(s.skipped[1].why.contains("cut off"), "{}", s.skipped[1].why);
        assert_eq!(s.skipped[1].at + s.skipped[1].bytes, damaged.len() as u64);
        // Every byte is kept or skipped.
        assert_eq!(s.clean.len() as u64 + s.bytes_skipped(), damaged.len() as u64);
        assert_eq!(s.kept[&2], 50, "the cut is in the footer: every sample is read");
    }

    /// A damaged chunk that held no samples (a boundary without its UUID) is skipped and
    /// said, but is no loss of samples: readers must not leave bins out around it.
    #[test]
    fn a_damaged_chunk_without_samples_is_no_loss() {
        let (mut bytes, offsets) = recording();
        let boundary = offsets.iter().copied().find(|&o| chunk_at(&bytes, o).unwrap().tag == TAG_BOUNDARY).unwrap();
        let c = chunk_at(&bytes, boundary).unwrap();
        bytes[c.content] ^= 0xFF;
        let s = scan(&bytes).unwrap();
        assert_eq!(s.skipped.len(), 1);
        assert!(!s.skipped[0].may_hold_samples && s.skipped[0].why.contains("boundary"), "{:?}", s.skipped[0]);
        assert_eq!(s.kept[&2], 50);
        // Garbage between chunks may have held anything: it counts for every stream.
        let at = samples_chunks(&bytes, &offsets)[2];
        let mut garbage = bytes[..at].to_vec();
        garbage.extend([0xAB; 9]);
        garbage.extend_from_slice(&bytes[at..]);
        assert!(scan(&garbage).unwrap().skipped.iter().any(|k| k.may_hold_samples && k.stream.is_none()));
    }

    #[test]
    fn not_xdf_and_a_damaged_file_header_are_errors() {
        assert_eq!(scan(b"nope").unwrap_err(), Unreadable::NoMagic);
        let (mut bytes, _) = recording();
        bytes[4] = 3;
        assert!(matches!(scan(&bytes).unwrap_err(), Unreadable::FileHeader(_)));
    }
}
