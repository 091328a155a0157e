//! Binning: turn the ring of timestamped spikes into per-bin count vectors on the local
//! clock. A spike whose bin has already closed is a *late spike*: counted against the bin
//! being closed, never put into the wrong bin. Preallocated; no allocation per bin.

use crate::clock::BinGrid;
use crate::ingest::{SpikeConsumer, SpikeItem};
use ringbuf::traits::Consumer;

/// Per-bin bookkeeping returned with each count vector.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BinTally {
    /// Spikes in this bin.
    pub spikes: f64,
    /// Spikes that arrived for bins already closed (seen while closing this bin).
    pub late_spikes: u64,
    /// Spikes stamped too far in the future to hold (beyond the lookahead window).
    pub future_spikes: u64,
}

/// Accumulates counts for the bins from the next one to close up to a lookahead window.
pub struct Binner {
    clock: BinGrid,
    n_units: usize,
    window: usize,
    /// window × n_units counts, bin j at row j % window.
    counts: Vec<f64>,
    late: u64,
    future: u64,
    /// Spikes stamped before the session's first bin, over the whole session.
    before_start: u64,
    /// The next bin to be closed.
    next: u64,
}

impl Binner {
    /// `lookahead_bins` must cover spikes that arrive early relative to the bin being closed
    /// (grace plus transport jitter); 64 is plenty for any sane rig.
    pub fn new(clock: BinGrid, n_units: usize, lookahead_bins: usize) -> Binner {
        let window = lookahead_bins.max(2);
        Binner { clock, n_units, window, counts: vec![0.0; window * n_units], late: 0, future: 0, before_start: 0, next: 0 }
    }

    #[inline]
    fn add(&mut self, item: SpikeItem) {
        let j = self.clock.bin_of(item.t);
        if j < 0 {
            // Before the session's first bin: not part of the experiment, but counted.
            self.before_start += item.count as u64;
            return;
        }
        let j = j as u64;
        if j < self.next {
            self.late += item.count as u64;
        } else if j >= self.next + self.window as u64 {
            self.future += item.count as u64;
        } else if (item.unit as usize) < self.n_units {
            let row = (j % self.window as u64) as usize;
            self.counts[row * self.n_units + item.unit as usize] += item.count as f64;
        }
    }

    /// Spikes stamped before bin 0 so far (received while the session was starting, or
    /// stamped far in the past); never binned.
    pub fn before_start(&self) -> u64 {
        self.before_start
    }

    /// Spikes taken in but not yet closed into a bin: the window's counts and the late and
    /// future spikes the next close would report.
    pub fn unclosed(&self) -> u64 {
        self.counts.iter().sum::<f64>().round() as u64 + self.late + self.future
    }

    /// Move everything in the ring into the accumulators.
    #[inline]
    pub fn drain(&mut self, ring: &mut SpikeConsumer) {
        while let Some(item) = ring.try_pop() {
            self.add(item);
        }
    }

    /// Feed spikes directly, without a ring (tests; offline replay).
    pub fn feed(&mut self, items: &[SpikeItem]) {
        for it in items {
            self.add(*it);
        }
    }

    /// Close bin `k` (must be the next bin): write its counts into `out` (n_units) and
    /// return its tally. Bins are closed in order; skipping ahead closes the bins between
    /// without their counts: the spikes they held, and any that arrive for them, are late.
    pub fn close(&mut self, k: u64, out: &mut [f64]) -> BinTally {
        debug_assert!(k >= self.next, "bins close in order");
        while self.next < k {
            let row = (self.next % self.window as u64) as usize;
            let slot = &mut self.counts[row * self.n_units..(row + 1) * self.n_units];
            self.late += slot.iter().sum::<f64>().round() as u64;
            slot.fill(0.0);
            self.next += 1;
        }
        let row = (k % self.window as u64) as usize;
        let slot = &mut self.counts[row * self.n_units..(row + 1) * self.n_units];
        out.copy_from_slice(slot);
        slot.fill(0.0);
        self.next = k + 1;
        let tally = BinTally { spikes: out.iter().sum(), late_spikes: self.late, future_spikes: self.future };
        self.late = 0;
        self.future = 0;
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> BinGrid {
        BinGrid { t0: 10.0, bin_s: 0.01, grace_s: 0.002, deadline_s: 0.003 }
    }

    #[test]
    fn spikes_land_in_their_bins_and_late_ones_are_counted() {
        let mut b = Binner::new(clock(), 3, 8);
        b.feed(&[
            SpikeItem { t: 10.001, unit: 0, count: 1.0 },
            SpikeItem { t: 10.009, unit: 2, count: 1.0 },
            SpikeItem { t: 10.011, unit: 1, count: 2.0 }, // bin 1
            SpikeItem { t: 9.99, unit: 1, count: 1.0 },   // before t0: counted, not binned
        ]);
        assert_eq!(b.before_start(), 1);
        let mut out = [0.0; 3];
        let t0 = b.close(0, &mut out);
        assert_eq!(out, [1.0, 0.0, 1.0]);
        assert_eq!(t0, BinTally { spikes: 2.0, late_spikes: 0, future_spikes: 0 });
        b.feed(&[SpikeItem { t: 10.005, unit: 0, count: 1.0 }]); // bin 0 already closed
        let t1 = b.close(1, &mut out);
        assert_eq!(out, [0.0, 2.0, 0.0]);
        assert_eq!(t1.late_spikes, 1);
        // far future
        b.feed(&[SpikeItem { t: 20.0, unit: 0, count: 1.0 }]);
        let t2 = b.close(2, &mut out);
        assert_eq!(t2.future_spikes, 1);
        assert_eq!(out, [0.0; 3]);
    }

    #[test]
    fn skipping_bins_clears_them() {
        let mut b = Binner::new(clock(), 1, 4);
        b.feed(&[SpikeItem { t: 10.015, unit: 0, count: 1.0 }, SpikeItem { t: 10.035, unit: 0, count: 1.0 }]);
        let mut out = [0.0];
        b.close(3, &mut out);
        assert_eq!(out, [1.0]);
        b.close(5, &mut out); // bin 1's spike must not reappear in bin 5 (same ring row)
        assert_eq!(out, [0.0]);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// What happens between two closes: spikes arrive (any time: before bin 0, in closed
    /// bins, in open ones, far ahead), then bin `next + skip` closes.
    /// Per close: the spikes that arrive (t, unit, count), and how many bins to skip.
    type Session = Vec<(Vec<(f64, u32, u8)>, u8)>;

    fn sessions() -> impl Strategy<Value = Session> {
        let spike = (prop_oneof![8 => -0.02f64..0.5, 1 => -1e6f64..1e6], 0u32..3, 1u8..4);
        prop::collection::vec((prop::collection::vec(spike, 0..20), prop_oneof![6 => Just(0u8), 1 => 1u8..5]), 1..60)
    }

    proptest! {
        /// Conservation: every spike fed in is in its own bin's counts, or counted late
        /// (its bin had closed), future (beyond the window), before bin 0, or still held
        /// unclosed at the end — checked against a plain map of bin → counts.
        #[test]
        fn every_spike_lands_in_its_own_bin_or_is_counted(plan in sessions()) {
            let clock = BinGrid { t0: 0.0, bin_s: 0.01, grace_s: 0.002, deadline_s: 0.003 };
            let (n, window) = (3usize, 8usize);
            let mut b = Binner::new(clock, n, window);
            let mut expected: HashMap<u64, [f64; 3]> = HashMap::new();
            let (mut fed, mut closed_total, mut late, mut future, mut pre) = (0.0, 0.0, 0u64, 0u64, 0u64);
            let (mut tallied_late, mut tallied_future) = (0u64, 0u64);
            let mut next = 0u64;
            let mut out = [0.0; 3];
            for (spikes, skip) in &plan {
                for &(t, unit, count) in spikes {
                    let item = SpikeItem { t, unit, count: count as f32 };
                    fed += count as f64;
                    let j = clock.bin_of(t);
                    if j < 0 {
                        pre += count as u64;
                    } else if (j as u64) < next {
                        late += count as u64;
                    } else if j as u64 >= next + window as u64 {
                        future += count as u64;
                    } else {
                        expected.entry(j as u64).or_default()[unit as usize] += count as f64;
                    }
                    b.feed(&[item]);
                }
                let k = next + *skip as u64;
                let tally = b.close(k, &mut out);
                prop_assert_eq!(out, expected.remove(&k).unwrap_or_default(), "bin {}'s counts", k);
                for skipped in next..k {
                    // closed without its counts: they are late
                    late += expected.remove(&skipped).map_or(0.0, |c| c.iter().sum::<f64>()) as u64;
                }
                prop_assert_eq!(tally.spikes, out.iter().sum::<f64>());
                tallied_late += tally.late_spikes;
                tallied_future += tally.future_spikes;
                closed_total += tally.spikes;
                next = k + 1;
            }
            prop_assert_eq!(b.before_start(), pre);
            let held: f64 = expected.values().map(|c| c.iter().sum::<f64>()).sum();
            // what the next close would report
            let (pending_late, pending_future) = (b.late, b.future);
            prop_assert_eq!(tallied_late + pending_late, late, "late spikes");
            prop_assert_eq!(tallied_future + pending_future, future, "future spikes");
            prop_assert_eq!(b.unclosed() as f64, held + (pending_late + pending_future) as f64);
            let counted = closed_total + (tallied_late + tallied_future + pre) as f64 + b.unclosed() as f64;
            prop_assert_eq!(counted, fed, "conservation");
        }
    }
}
