//! Binning: turn the ring of timestamped spikes into per-bin count vectors on the local
//! clock. A spike whose bin has already closed is a *late spike*: counted against the bin
//! being closed, never put into the wrong bin. Preallocated; no allocation per bin.

use crate::clock::BinClock;
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
    clock: BinClock,
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
    pub fn new(clock: BinClock, n_units: usize, lookahead_bins: usize) -> Binner {
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
    /// as empty (their spikes, if any arrive, become late).
    pub fn close(&mut self, k: u64, out: &mut [f64]) -> BinTally {
        debug_assert!(k >= self.next, "bins close in order");
        while self.next < k {
            let row = (self.next % self.window as u64) as usize;
            self.counts[row * self.n_units..(row + 1) * self.n_units].fill(0.0);
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

    fn clock() -> BinClock {
        BinClock { t0: 10.0, bin_s: 0.01, grace_s: 0.002, deadline_s: 0.003 }
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
