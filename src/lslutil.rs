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
