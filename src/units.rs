//! The unit map: (channel, unit) pairs on the input stream ↦ model unit indices.
//!
//! By position (`[units] channels` or `map`) the table is known from the rig file. By label
//! (`[units] labels`) it is known only once the stream's `desc/channels/channel/label`s are:
//! [`UnitMap::bind_labels`] builds it when the stream connects (or, offline, from the
//! recorded stream header); until then nothing maps.

use crate::rig::UnitsConfig;

/// Dense lookup table; built once at start-up, O(1) per spike, no allocation.
#[derive(Debug, Clone)]
pub struct UnitMap {
    /// Index = channel · stride + unit; value = model unit or -1.
    table: Vec<i32>,
    stride: usize,
    channels: usize,
    n_units: usize,
    merge_sorted: bool,
    /// `[units] labels`: the stream label of each model unit, bound at connect.
    by_label: Option<Vec<String>>,
}

/// The largest sorted-unit id a stream may carry that the table covers densely.
pub const MAX_SORTED_UNITS: usize = 64;

impl UnitMap {
    pub fn from_config(cfg: &UnitsConfig) -> UnitMap {
        if let Some(labels) = &cfg.labels {
            UnitMap {
                table: Vec::new(),
                stride: 1,
                channels: 0,
                n_units: labels.len(),
                merge_sorted: false,
                by_label: Some(labels.clone()),
            }
        } else if let Some(ch) = cfg.channels {
            UnitMap {
                table: (0..ch as i32).collect(),
                stride: 1,
                channels: ch,
                n_units: ch,
                merge_sorted: cfg.merge_sorted,
                by_label: None,
            }
        } else {
            let map = cfg.map.as_deref().unwrap_or(&[]);
            let channels = map.iter().map(|p| p[0] as usize + 1).max().unwrap_or(0);
            let stride = map.iter().map(|p| p[1] as usize + 1).max().unwrap_or(1).min(MAX_SORTED_UNITS);
            let mut table = vec![-1; channels * stride];
            for (i, p) in map.iter().enumerate() {
                if (p[1] as usize) < stride {
                    table[p[0] as usize * stride + p[1] as usize] = i as i32;
                }
            }
            UnitMap { table, stride, channels, n_units: map.len(), merge_sorted: false, by_label: None }
        }
    }

    /// Whether the rig maps by label, so the table comes from the stream's labels.
    pub fn by_label(&self) -> bool {
        self.by_label.is_some()
    }

    /// The map by label bound to a stream whose channel c is labelled `stream_labels[c]`
    /// (`desc/channels/channel/label`, one per channel). The stream may carry channels the
    /// rig does not map (their counts are not the model's); every rig label must name
    /// exactly one channel. Err: what contradicts the rig, for an operator.
    pub fn bind_labels(&self, stream_labels: &[String], channel_count: usize) -> Result<UnitMap, String> {
        let Some(want) = &self.by_label else { return Ok(self.clone()) };
        let listed = |ls: &[String]| {
            let shown: Vec<String> = ls.iter().take(24).map(|l| format!("'{l}'")).collect();
            format!("{}{}", shown.join(", "), if ls.len() > 24 { format!(", … ({} in all)", ls.len()) } else { String::new() })
        };
        if stream_labels.iter().all(|l| l.is_empty()) {
            return Err("it has no channel labels (desc/channels/channel/label), and the rig's [units] labels maps by label: \
                        label the stream's channels at its source, or map by position with [units] channels or map"
                .into());
        }
        if stream_labels.len() != channel_count {
            return Err(format!(
                "it declares {channel_count} channels but labels {} in desc/channels: its description contradicts it, so [units] labels cannot be trusted to map it",
                stream_labels.len()
            ));
        }
        let mut table = vec![-1i32; channel_count];
        let mut missing = Vec::new();
        for (i, label) in want.iter().enumerate() {
            let mut at = stream_labels.iter().enumerate().filter(|(_, l)| *l == label).map(|(c, _)| c);
            match (at.next(), at.next()) {
                (Some(c), None) => table[c] = i as i32,
                (Some(a), Some(b)) => return Err(format!("the label '{label}' (the rig's [units] labels entry {i}) names two of its channels, {a} and {b}: the map is ambiguous; give the stream's channels unique labels")),
                (None, _) => missing.push(label.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "it has no channel labelled {} (the rig's [units] labels); its channels are labelled {}: fix [units] labels or select another stream",
                listed(&missing),
                listed(stream_labels)
            ));
        }
        Ok(UnitMap { table, stride: 1, channels: channel_count, n_units: want.len(), merge_sorted: false, by_label: Some(want.clone()) })
    }

    /// Number of model units.
    pub fn n_units(&self) -> usize {
        self.n_units
    }

    /// Number of input channels the map refers to (a counts stream must have exactly this
    /// many; by label, the bound stream's, 0 before it is bound).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// A label per model unit: the rig's `[units] labels`, else `ch<c>` (one unit per
    /// channel) or `ch<c>.u<u>` (sorted units).
    pub fn unit_labels(&self) -> Vec<String> {
        if let Some(labels) = &self.by_label {
            return labels.clone();
        }
        let mut labels = vec![String::new(); self.n_units];
        for (i, &v) in self.table.iter().enumerate() {
            if v >= 0 {
                let (c, u) = (i / self.stride, i % self.stride);
                labels[v as usize] = if self.stride == 1 { format!("ch{c}") } else { format!("ch{c}.u{u}") };
            }
        }
        labels
    }

    /// The model unit for (channel, unit), or None when the pair is not mapped.
    #[inline]
    pub fn lookup(&self, channel: i64, unit: i64) -> Option<usize> {
        if channel < 0 || unit < 0 || channel as usize >= self.channels {
            return None;
        }
        let unit = if self.merge_sorted { 0 } else { unit as usize };
        if unit >= self.stride {
            return None;
        }
        let v = self.table[channel as usize * self.stride + unit];
        (v >= 0).then_some(v as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthand_and_explicit_maps() {
        let m = UnitMap::from_config(&UnitsConfig { channels: Some(4), ..Default::default() });
        assert_eq!(m.lookup(3, 0), Some(3));
        assert_eq!(m.lookup(3, 1), None);
        assert_eq!(m.lookup(4, 0), None);
        let m = UnitMap::from_config(&UnitsConfig { channels: Some(4), merge_sorted: true, ..Default::default() });
        assert_eq!(m.lookup(2, 5), Some(2));
        let m = UnitMap::from_config(&UnitsConfig { map: Some(vec![[5, 1], [0, 0], [5, 2]]), ..Default::default() });
        assert_eq!(m.n_units(), 3);
        assert_eq!(m.lookup(5, 1), Some(0));
        assert_eq!(m.lookup(0, 0), Some(1));
        assert_eq!(m.lookup(5, 2), Some(2));
        assert_eq!(m.lookup(5, 0), None);
        assert_eq!(m.lookup(1, 0), None);
        assert_eq!(m.lookup(-1, 0), None);
    }

    fn labels(ls: &[&str]) -> Vec<String> {
        ls.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn map_by_label_binds_wherever_the_channels_sit() {
        let m = UnitMap::from_config(&UnitsConfig { labels: Some(labels(&["A", "B"])), ..Default::default() });
        assert_eq!((m.n_units(), m.channels()), (2, 0));
        assert_eq!(m.lookup(0, 0), None, "nothing maps before the stream's labels are known");
        assert_eq!(m.unit_labels(), labels(&["A", "B"]));
        let b = m.bind_labels(&labels(&["x", "B", "A"]), 3).unwrap();
        assert_eq!((b.lookup(0, 0), b.lookup(1, 0), b.lookup(2, 0), b.lookup(3, 0)), (None, Some(1), Some(0), None));
        assert_eq!(b.channels(), 3);
    }

    #[test]
    fn labels_that_contradict_the_rig_are_clear_errors() {
        let m = UnitMap::from_config(&UnitsConfig { labels: Some(labels(&["A", "B", "C"])), ..Default::default() });
        let e = m.bind_labels(&labels(&["A", "x", "y"]), 3).unwrap_err();
        assert!(e.contains("no channel labelled 'B', 'C'") && e.contains("'A', 'x', 'y'"), "{e}");
        let e = m.bind_labels(&labels(&["A", "B", "C", "B"]), 4).unwrap_err();
        assert!(e.contains("'B'") && e.contains("1 and 3"), "{e}");
        let e = m.bind_labels(&labels(&["", "", ""]), 3).unwrap_err();
        assert!(e.contains("no channel labels"), "{e}");
        let e = m.bind_labels(&[], 3).unwrap_err();
        assert!(e.contains("no channel labels"), "{e}");
        let e = m.bind_labels(&labels(&["A", "B", "C"]), 4).unwrap_err();
        assert!(e.contains("declares 4 channels but labels 3"), "{e}");
        // A positional map ignores labels.
        let p = UnitMap::from_config(&UnitsConfig { channels: Some(2), ..Default::default() });
        assert_eq!(p.bind_labels(&[], 2).unwrap().lookup(1, 0), Some(1));
    }
}
