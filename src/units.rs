//! The unit map: (channel, unit) pairs on the input stream ↦ model unit indices.

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
}

/// The largest sorted-unit id a stream may carry that the table covers densely.
pub const MAX_SORTED_UNITS: usize = 64;

impl UnitMap {
    pub fn from_config(cfg: &UnitsConfig) -> UnitMap {
        if let Some(ch) = cfg.channels {
            UnitMap { table: (0..ch as i32).collect(), stride: 1, channels: ch, n_units: ch, merge_sorted: cfg.merge_sorted }
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
            UnitMap { table, stride, channels, n_units: map.len(), merge_sorted: false }
        }
    }

    /// Number of model units.
    pub fn n_units(&self) -> usize {
        self.n_units
    }

    /// Number of input channels the map refers to (a counts stream must have exactly this many).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// A label per model unit: `ch<c>` (one unit per channel) or `ch<c>.u<u>` (sorted units).
    pub fn unit_labels(&self) -> Vec<String> {
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
        let m = UnitMap::from_config(&UnitsConfig { channels: Some(4), merge_sorted: false, map: None });
        assert_eq!(m.lookup(3, 0), Some(3));
        assert_eq!(m.lookup(3, 1), None);
        assert_eq!(m.lookup(4, 0), None);
        let m = UnitMap::from_config(&UnitsConfig { channels: Some(4), merge_sorted: true, map: None });
        assert_eq!(m.lookup(2, 5), Some(2));
        let m = UnitMap::from_config(&UnitsConfig { channels: None, merge_sorted: false, map: Some(vec![[5, 1], [0, 0], [5, 2]]) });
        assert_eq!(m.n_units(), 3);
        assert_eq!(m.lookup(5, 1), Some(0));
        assert_eq!(m.lookup(0, 0), Some(1));
        assert_eq!(m.lookup(5, 2), Some(2));
        assert_eq!(m.lookup(5, 0), None);
        assert_eq!(m.lookup(1, 0), None);
        assert_eq!(m.lookup(-1, 0), None);
    }
}
