//! Opening an XDF file for `replay` and `fit`: the chunk structure is walked here first, so
//! a file that is not XDF, or is cut off, gets a message that says so in XDF's terms
//! ("no XDF: magic", "truncated: chunk at byte N needs M bytes") instead of the parser's
//! internals, and a file cut off mid-chunk (a killed recorder, a partial copy) is read up to
//! its last whole chunk.

use anyhow::Context;
use std::path::Path;

/// XDF chunk tags (XDF 1.0 specification).
const TAGS: std::ops::RangeInclusive<u16> = 1..=6;

/// How far the chunk structure of a file is whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkWalk {
    /// Bytes up to the end of the last whole chunk.
    pub whole: usize,
    /// Why the walk stopped before the end of the file (None: the file is whole).
    pub stopped: Option<String>,
}

/// Walk "XDF:" then chunks of [length-bytes count (1, 4 or 8)][length][tag u16 + content].
/// None when the file does not start with the magic.
pub fn walk_chunks(bytes: &[u8]) -> Option<ChunkWalk> {
    if bytes.len() < 4 || &bytes[..4] != b"XDF:" {
        return None;
    }
    let mut at = 4usize;
    let stop = |at: usize, why: String| Some(ChunkWalk { whole: at, stopped: Some(why) });
    loop {
        let Some(&nb) = bytes.get(at) else { return Some(ChunkWalk { whole: at, stopped: None }) };
        let nb = nb as usize;
        if !matches!(nb, 1 | 4 | 8) {
            return stop(at, format!("chunk at byte {at}: its length field is {nb} bytes long (XDF allows 1, 4 or 8)"));
        }
        if at + 1 + nb > bytes.len() {
            return stop(at, format!("truncated: the chunk at byte {at} is cut off inside its length field"));
        }
        let mut len = 0u64;
        for (i, b) in bytes[at + 1..at + 1 + nb].iter().enumerate() {
            len |= (*b as u64) << (8 * i);
        }
        let end = (at + 1 + nb) as u64 + len;
        if len < 2 {
            return stop(at, format!("chunk at byte {at}: length {len} is too short for its tag"));
        }
        if end > bytes.len() as u64 {
            return stop(at, format!("truncated: the chunk at byte {at} needs {len} bytes, {} are left", bytes.len() - at - 1 - nb));
        }
        let tag_at = at + 1 + nb;
        let tag = u16::from_le_bytes([bytes[tag_at], bytes[tag_at + 1]]);
        if !TAGS.contains(&tag) {
            return stop(at, format!("chunk at byte {at}: unknown tag {tag} (XDF tags are 1–6)"));
        }
        at = end as usize;
    }
}

/// A recording read for replay or fitting.
pub struct Opened {
    pub file: xdf::XDFFile,
    /// The whole file's bytes (for hashing).
    pub bytes: Vec<u8>,
    /// Bytes parsed: less than `bytes.len()` when the file was cut off.
    pub used: usize,
    /// Set when only part of the file could be read: what was wrong and how much was used.
    pub truncated: Option<String>,
}

/// Read and parse an XDF file. A file that is not XDF, or whose first chunk is already
/// broken, is an error; one broken later is read up to its last whole chunk, with a notice.
pub fn open(path: &Path) -> anyhow::Result<Opened> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let walk = walk_chunks(&bytes).with_context(|| format!("{} is not an XDF file (it does not start with \"XDF:\")", path.display()))?;
    if walk.whole <= 4 && walk.stopped.is_some() {
        anyhow::bail!("{} is not a readable XDF file: {}", path.display(), walk.stopped.unwrap_or_default());
    }
    let truncated = walk
        .stopped
        .as_ref()
        .map(|why| format!("{}: {why}; read {} of {} bytes (up to the last whole chunk)", path.display(), walk.whole, bytes.len()));
    let file = xdf::XDFFile::from_bytes(&bytes[..walk.whole]).map_err(|e| {
        // The xdf crate's errors print nom's internals (byte arrays): keep the first line short.
        let mut why = e.to_string();
        if why.len() > 120 || why.contains('[') {
            why = "a chunk's content does not parse (a stream header that is not XML, or samples that do not match their stream)".into();
        }
        anyhow::anyhow!("{} is not a readable XDF file: {why}", path.display())
    })?;
    Ok(Opened { file, used: walk.whole, bytes, truncated })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(b: &mut Vec<u8>, tag: u16, content: usize) {
        b.push(1);
        b.push((content + 2) as u8);
        b.extend(tag.to_le_bytes());
        b.extend(std::iter::repeat_n(0u8, content));
    }

    #[test]
    fn the_walk_stops_at_a_cut_and_says_where() {
        let mut b = b"XDF:".to_vec();
        for len in [10, 20, 7] {
            chunk(&mut b, 3, len);
        }
        assert_eq!(walk_chunks(&b), Some(ChunkWalk { whole: b.len(), stopped: None }));
        let full = b.len();
        let w = walk_chunks(&b[..full - 3]).unwrap();
        assert_eq!(w.whole, full - 11);
        assert!(w.stopped.unwrap().contains(&format!("truncated: the chunk at byte {}", full - 11)));
        assert_eq!(walk_chunks(b"nope"), None);
        let mut bad = b"XDF:".to_vec();
        chunk(&mut bad, 3, 4);
        chunk(&mut bad, 77, 4);
        let w = walk_chunks(&bad).unwrap();
        assert_eq!(w.whole, 12);
        assert!(w.stopped.unwrap().contains("unknown tag 77"));
        let w = walk_chunks(b"XDF:\x03abc").unwrap();
        assert!(w.stopped.unwrap().contains("length field is 3 bytes"));
    }
}
