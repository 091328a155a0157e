//! An XDF 1.0 writer (the format LabRecorder writes and pyxdf, MNE, EEGLAB and the `xdf`
//! crate read; spec: github.com/sccn/xdf/wiki/Specifications).
//!
//! A file is the magic `XDF:` followed by chunks: [NumLengthBytes][Length][Tag][Content],
//! where Length counts the tag and the content. Tags: 1 FileHeader, 2 StreamHeader,
//! 3 Samples, 4 ClockOffset, 5 Boundary, 6 StreamFooter. Every chunk is encoded whole in
//! memory first and [`XdfWriter::flush`] hands the finished chunks to the OS in one write,
//! so a process killed at any moment leaves a file that readers load up to its last flush.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A channel format of the XDF/LSL spec. Numeric streams are written with
/// [`XdfWriter::samples`], string streams (markers) with [`XdfWriter::text_samples`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Double64,
    String,
}

impl Format {
    /// The spec's name (`channel_format` in a stream header).
    pub fn name(self) -> &'static str {
        match self {
            Format::Int8 => "int8",
            Format::Int16 => "int16",
            Format::Int32 => "int32",
            Format::Int64 => "int64",
            Format::Float32 => "float32",
            Format::Double64 => "double64",
            Format::String => "string",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        Some(match name {
            "int8" => Format::Int8,
            "int16" => Format::Int16,
            "int32" => Format::Int32,
            "int64" => Format::Int64,
            "float32" => Format::Float32,
            "double64" => Format::Double64,
            "string" => Format::String,
            _ => return None,
        })
    }

    pub fn from_lsl(f: lsl::ChannelFormat) -> Option<Format> {
        use lsl::ChannelFormat as C;
        Some(match f {
            C::Int8 => Format::Int8,
            C::Int16 => Format::Int16,
            C::Int32 => Format::Int32,
            C::Int64 => Format::Int64,
            C::Float32 => Format::Float32,
            C::Double64 => Format::Double64,
            C::String => Format::String,
            _ => return None,
        })
    }

    /// Append `v` in this format, little-endian. Values of integer streams are whole numbers
    /// (liblsl converted them to f64 exactly), so the cast is exact.
    #[inline]
    fn put(self, out: &mut Vec<u8>, v: f64) {
        match self {
            Format::Int8 => out.push(v as i8 as u8),
            Format::Int16 => out.extend_from_slice(&(v as i16).to_le_bytes()),
            Format::Int32 => out.extend_from_slice(&(v as i32).to_le_bytes()),
            Format::Int64 => out.extend_from_slice(&(v as i64).to_le_bytes()),
            Format::Float32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            Format::Double64 => out.extend_from_slice(&v.to_le_bytes()),
            // String streams go through `text_samples`; `samples` refuses them.
            Format::String => {}
        }
    }
}

// The chunk tags (XDF 1.0), shared with the reader's scanner (scan.rs).
pub(super) const TAG_FILE_HEADER: u16 = 1;
pub(super) const TAG_STREAM_HEADER: u16 = 2;
pub(super) const TAG_SAMPLES: u16 = 3;
pub(super) const TAG_CLOCK_OFFSET: u16 = 4;
pub(super) const TAG_BOUNDARY: u16 = 5;
pub(super) const TAG_STREAM_FOOTER: u16 = 6;

/// The boundary chunk's fixed content (spec): readers scan for it to resynchronise.
pub const BOUNDARY_UUID: [u8; 16] = [0x43, 0xA5, 0x46, 0xDC, 0xCB, 0xF5, 0x41, 0x0F, 0xB3, 0x0E, 0xD5, 0x46, 0x73, 0x83, 0xCB, 0xE4];

/// What the footer of one stream summarises.
#[derive(Debug, Clone)]
struct StreamState {
    id: u32,
    format: Format,
    channels: usize,
    first_timestamp: Option<f64>,
    last_timestamp: Option<f64>,
    samples: u64,
    /// Samples handed over after the file failed (not in the file).
    lost: u64,
    offsets: Vec<[f64; 2]>,
}

/// Writes one XDF file. Chunks accumulate in memory until [`flush`](XdfWriter::flush).
/// After a write error (a full disk) the writer has failed: it keeps nothing more in memory,
/// only counts the samples it is given ([`XdfWriter::samples_lost`]).
pub struct XdfWriter {
    file: File,
    /// Where the file is written until [`finish`](XdfWriter::finish) renames it to `path`.
    partial: PathBuf,
    path: PathBuf,
    buf: Vec<u8>,
    streams: Vec<StreamState>,
    bytes_written: u64,
    failed: bool,
}

/// Escape text for an XML element's content.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Appends a variable-length integer: one byte saying how many bytes follow (1, 4 or 8).
fn put_varlen(out: &mut Vec<u8>, n: u64) {
    if n <= u8::MAX as u64 {
        out.push(1);
        out.push(n as u8);
    } else if n <= u32::MAX as u64 {
        out.push(4);
        out.extend_from_slice(&(n as u32).to_le_bytes());
    } else {
        out.push(8);
        out.extend_from_slice(&n.to_le_bytes());
    }
}

/// Appends one chunk: its length (tag + content), tag and content.
fn put_chunk(out: &mut Vec<u8>, tag: u16, content: &[u8]) {
    put_varlen(out, 2 + content.len() as u64);
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(content);
}

impl XdfWriter {
    /// Start a recording for `path` and write the magic and the file header. The file is
    /// written as `<path>.partial` ([`XdfWriter::partial_path`]) until
    /// [`finish`](XdfWriter::finish) renames it to `path`: an earlier file at `path` stays
    /// whole until the new one is, and a killed session leaves its `.partial` file, readable
    /// up to its last flush. `header_xml_body`
    /// goes inside `<info>` after `<version>1.0</version>` (already escaped XML).
    pub fn create(path: &Path, header_xml_body: &str) -> std::io::Result<XdfWriter> {
        let (file, partial) = crate::outfile::create_partial(path)?;
        let mut w = XdfWriter {
            file,
            partial,
            path: path.to_path_buf(),
            buf: Vec::with_capacity(1 << 16),
            streams: Vec::new(),
            bytes_written: 0,
            failed: false,
        };
        w.buf.extend_from_slice(b"XDF:");
        let xml = format!("<?xml version=\"1.0\"?><info><version>1.0</version>{header_xml_body}</info>");
        put_chunk(&mut w.buf, TAG_FILE_HEADER, xml.as_bytes());
        w.flush()?;
        Ok(w)
    }

    /// Declare stream `id` with its full stream-info XML (`<info>…</info>`, as liblsl's
    /// `to_xml` gives it). `format` and `channels` must match the XML.
    pub fn add_stream(&mut self, id: u32, info_xml: &str, format: Format, channels: usize) {
        assert!(!self.streams.iter().any(|s| s.id == id), "XDF stream id {id} declared twice");
        let mut content = Vec::with_capacity(4 + info_xml.len());
        content.extend_from_slice(&id.to_le_bytes());
        content.extend_from_slice(info_xml.as_bytes());
        if !self.failed {
            put_chunk(&mut self.buf, TAG_STREAM_HEADER, &content);
        }
        self.streams.push(StreamState {
            id,
            format,
            channels,
            first_timestamp: None,
            last_timestamp: None,
            samples: 0,
            lost: 0,
            offsets: Vec::new(),
        });
    }

    fn stream(&mut self, id: u32) -> &mut StreamState {
        self.streams.iter_mut().find(|s| s.id == id).unwrap_or_else(|| panic!("XDF stream id {id} was not declared"))
    }

    /// One samples chunk: `timestamps.len()` samples, `values` row-major (channels per sample),
    /// each sample with its own timestamp. Nothing is written for zero samples.
    pub fn samples(&mut self, id: u32, timestamps: &[f64], values: &[f64]) {
        if timestamps.is_empty() {
            return;
        }
        let (format, channels) = {
            let s = self.stream(id);
            (s.format, s.channels)
        };
        assert_eq!(values.len(), timestamps.len() * channels, "stream {id}: {channels} values per sample");
        assert!(format != Format::String, "stream {id} is a string stream: write it with text_samples");
        if self.failed {
            self.stream(id).lost += timestamps.len() as u64;
            return;
        }
        let mut content = Vec::with_capacity(16 + timestamps.len() * (9 + channels * 8));
        content.extend_from_slice(&id.to_le_bytes());
        put_varlen(&mut content, timestamps.len() as u64);
        for (i, t) in timestamps.iter().enumerate() {
            content.push(8);
            content.extend_from_slice(&t.to_le_bytes());
            for v in &values[i * channels..(i + 1) * channels] {
                format.put(&mut content, *v);
            }
        }
        put_chunk(&mut self.buf, TAG_SAMPLES, &content);
        let s = self.stream(id);
        s.first_timestamp.get_or_insert(timestamps[0]);
        s.last_timestamp = Some(*timestamps.last().unwrap());
        s.samples += timestamps.len() as u64;
    }

    /// One samples chunk of a single-channel string stream (markers): each text with its
    /// own timestamp. Nothing is written for zero samples.
    pub fn text_samples(&mut self, id: u32, timestamps: &[f64], texts: &[String]) {
        if timestamps.is_empty() {
            return;
        }
        let (format, channels) = {
            let s = self.stream(id);
            (s.format, s.channels)
        };
        assert!(format == Format::String && channels == 1, "stream {id}: text_samples needs a one-channel string stream");
        assert_eq!(texts.len(), timestamps.len(), "stream {id}: one text per sample");
        if self.failed {
            self.stream(id).lost += timestamps.len() as u64;
            return;
        }
        let mut content = Vec::new();
        content.extend_from_slice(&id.to_le_bytes());
        put_varlen(&mut content, timestamps.len() as u64);
        for (t, text) in timestamps.iter().zip(texts) {
            content.push(8);
            content.extend_from_slice(&t.to_le_bytes());
            put_varlen(&mut content, text.len() as u64);
            content.extend_from_slice(text.as_bytes());
        }
        put_chunk(&mut self.buf, TAG_SAMPLES, &content);
        let s = self.stream(id);
        s.first_timestamp.get_or_insert(timestamps[0]);
        s.last_timestamp = Some(*timestamps.last().unwrap());
        s.samples += timestamps.len() as u64;
    }

    /// A clock offset measurement: at local time `collection_time` the stream's clock was
    /// `offset` seconds behind the recorder's (local = remote + offset).
    pub fn clock_offset(&mut self, id: u32, collection_time: f64, offset: f64) {
        if self.failed {
            return;
        }
        let mut content = Vec::with_capacity(20);
        content.extend_from_slice(&id.to_le_bytes());
        content.extend_from_slice(&collection_time.to_le_bytes());
        content.extend_from_slice(&offset.to_le_bytes());
        put_chunk(&mut self.buf, TAG_CLOCK_OFFSET, &content);
        self.stream(id).offsets.push([collection_time, offset]);
    }

    /// A boundary chunk (LabRecorder writes one every 10 s so damaged files can be re-read).
    pub fn boundary(&mut self) {
        if self.failed {
            return;
        }
        put_chunk(&mut self.buf, TAG_BOUNDARY, &BOUNDARY_UUID);
    }

    /// Samples written so far to stream `id`.
    pub fn sample_count(&self, id: u32) -> u64 {
        self.streams.iter().find(|s| s.id == id).map_or(0, |s| s.samples)
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Hand every finished chunk to the OS in one write.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() && !self.failed {
            if let Err(e) = self.file.write_all(&self.buf) {
                // The chunks that did not fit are gone; keep no more (memory stays flat).
                self.failed = true;
                self.buf = Vec::new();
                return Err(e);
            }
            self.bytes_written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Whether a write has failed (nothing more goes into the file).
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Samples of stream `id` handed over after the failure (not in the file).
    pub fn samples_lost(&self, id: u32) -> u64 {
        self.streams.iter().find(|s| s.id == id).map_or(0, |s| s.lost)
    }

    /// Where the recording is until it is finished.
    pub fn partial_path(&self) -> &Path {
        &self.partial
    }

    /// Bytes waiting for the next flush.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Force what was flushed onto the disk (power loss; a killed process needs only `flush`).
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.flush()?;
        self.file.sync_data()
    }

    /// Write a footer per stream (first/last timestamp, sample count, clock offsets, as
    /// LabRecorder does), a last boundary, flush and sync.
    pub fn finish(mut self) -> std::io::Result<u64> {
        let streams = std::mem::take(&mut self.streams);
        for s in &streams {
            let mut xml = String::from("<?xml version=\"1.0\"?><info>");
            let fmt = |t: Option<f64>| t.map_or(String::new(), |t| format!("{t:?}"));
            xml.push_str(&format!(
                "<first_timestamp>{}</first_timestamp><last_timestamp>{}</last_timestamp><sample_count>{}</sample_count><clock_offsets>",
                fmt(s.first_timestamp),
                fmt(s.last_timestamp),
                s.samples
            ));
            for [t, v] in &s.offsets {
                xml.push_str(&format!("<offset><time>{t:?}</time><value>{v:?}</value></offset>"));
            }
            xml.push_str("</clock_offsets></info>");
            let mut content = Vec::with_capacity(4 + xml.len());
            content.extend_from_slice(&s.id.to_le_bytes());
            content.extend_from_slice(xml.as_bytes());
            put_chunk(&mut self.buf, TAG_STREAM_FOOTER, &content);
        }
        self.boundary();
        self.sync()?;
        crate::outfile::rename_into_place(&self.partial, &self.path)?;
        Ok(self.bytes_written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_length_prefixed_with_the_smallest_varlen() {
        let mut v = Vec::new();
        put_chunk(&mut v, 5, &BOUNDARY_UUID);
        assert_eq!(&v[..4], &[1, 18, 5, 0]);
        let mut v = Vec::new();
        put_chunk(&mut v, 3, &[0u8; 300]);
        assert_eq!(&v[..7], &[4, 46, 1, 0, 0, 3, 0]); // 302 = 0x012E
    }

    #[test]
    fn samples_encode_timestamp_then_values_in_the_stream_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.xdf");
        let mut w = XdfWriter::create(&path, "").unwrap();
        w.add_stream(7, "<info/>", Format::Int16, 2);
        w.samples(7, &[1.5], &[3.0, -2.0]);
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // magic, then the file header chunk
        assert_eq!(&bytes[..4], b"XDF:");
        let needle: Vec<u8> =
            [&7u32.to_le_bytes()[..], &[1, 1, 8], &1.5f64.to_le_bytes(), &3i16.to_le_bytes(), &(-2i16).to_le_bytes()].concat();
        let at = bytes.windows(needle.len()).position(|w| w == needle.as_slice()).expect("samples chunk content");
        // [1][len][3, 0] precede the content
        assert_eq!(&bytes[at - 4..at], &[1, (2 + needle.len()) as u8, 3, 0]);
    }

    #[test]
    fn after_a_write_error_nothing_more_is_kept_in_memory_and_the_loss_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = XdfWriter::create(&dir.path().join("full.xdf"), "").unwrap();
        w.add_stream(1, "<info/>", Format::Double64, 2);
        w.flush().unwrap();
        // The disk fills: every write from now on fails with ENOSPC.
        w.file = File::options().write(true).open("/dev/full").unwrap();
        w.samples(1, &[1.0, 2.0], &[0.0; 4]);
        assert!(w.flush().is_err());
        assert!(w.has_failed());
        for i in 0..10_000 {
            w.samples(1, &[i as f64; 100], &[0.0; 200]);
            w.clock_offset(1, i as f64, 0.0);
            w.boundary();
            assert_eq!(w.buffered_bytes(), 0, "the failed writer buffers");
            w.flush().unwrap();
        }
        assert_eq!(w.samples_lost(1), 1_000_000);
        assert_eq!(w.sample_count(1), 2);
    }
}
