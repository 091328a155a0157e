//! Small helpers around the `lsl` crate: stream descriptions.

/// Write `desc/channels/channel/{label,type}` for each label (the LSL convention that
/// LabRecorder, pylsl and MNE read).
pub fn add_channel_labels(info: &mut lsl::StreamInfo, labels: &[String], channel_type: &str) {
    let mut channels = info.desc().append_child("channels");
    for label in labels {
        channels.append_child("channel").append_child_value("label", label).append_child_value("type", channel_type);
    }
}

/// Read `desc/channels/channel/label` from a full stream info (empty when absent).
pub fn channel_labels(info: &mut lsl::StreamInfo) -> Vec<String> {
    let mut out = Vec::new();
    let mut ch = info.desc().child("channels").child("channel");
    while ch.is_valid() && !ch.empty() {
        out.push(ch.child_value_named("label"));
        ch = ch.next_sibling_named("channel");
    }
    out
}

/// What an LSL stream is, independent of any outlet: the outlets and the recording
/// (src/record) build their stream infos from the same spec, so a recorded stream's header
/// says what the live stream said.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: String,
    pub stream_type: String,
    /// Nominal rate (Hz; 0 = irregular).
    pub srate: f64,
    pub format: lsl::ChannelFormat,
    pub source_id: String,
    /// One label per channel.
    pub labels: Vec<String>,
    /// `desc/channels/channel/type`.
    pub channel_type: String,
}

impl StreamSpec {
    pub fn info(&self) -> Result<lsl::StreamInfo, String> {
        let mut info =
            lsl::StreamInfo::new(&self.name, &self.stream_type, self.labels.len() as u32, self.srate, self.format, &self.source_id)
                .map_err(|e| format!("cannot describe the {} stream '{}': {e:?}", self.stream_type, self.name))?;
        add_channel_labels(&mut info, &self.labels, &self.channel_type);
        Ok(info)
    }
}
