//! The one by-bin joiner: pairs what the loop, the emitter and (in simulation) the
//! simulator report for each bin. Telemetry runs it; the recorder's timing stream is written
//! from what it joins, so the report and the recording account every bin the same way.

use crate::events::{Emitted, LoopBin, TruthBin};
use std::collections::BTreeMap;

/// One bin's parts, as far as they came.
#[derive(Default)]
pub struct Parts {
    pub loop_bin: Option<LoopBin>,
    pub emitted: Option<Emitted>,
    pub truth: Option<TruthBin>,
}

/// Joins records by bin and hands bins out in order once complete. A bin still incomplete
/// when the loop is `horizon` bins past it (the truth lags, the emitter stalls, or a record
/// was dropped on a full queue) is handed out with what it has. Measured against the loop,
/// not the emitter or the simulator, which run ahead of a stalled loop.
pub struct BinJoiner {
    pending: BTreeMap<u64, Parts>,
    /// Bins below this have been handed out.
    first_open: u64,
    /// The newest bin the loop has reported.
    newest_rec: u64,
    expect_truth: bool,
    horizon: u64,
}

impl BinJoiner {
    pub fn new(expect_truth: bool, horizon: u64) -> BinJoiner {
        BinJoiner { pending: BTreeMap::new(), first_open: 0, newest_rec: 0, expect_truth, horizon }
    }

    /// Bins below this have been handed out.
    pub fn first_open(&self) -> u64 {
        self.first_open
    }

    /// A loop record; one for a bin already handed out is too late to join (dropped).
    pub fn add_record(&mut self, r: LoopBin) {
        self.newest_rec = self.newest_rec.max(r.bin);
        if r.bin >= self.first_open {
            self.pending.entry(r.bin).or_default().loop_bin = Some(r);
        }
    }

    /// An emitter record. One for a bin already handed out is given back: its push still
    /// counts (it is the worst latency of the run), though it joins nothing.
    pub fn add_emitted(&mut self, e: Emitted) -> Option<Emitted> {
        if e.bin >= self.first_open {
            self.pending.entry(e.bin).or_default().emitted = Some(e);
            None
        } else {
            Some(e)
        }
    }

    /// The simulator's truth; too late to join is dropped.
    pub fn add_truth(&mut self, t: TruthBin) {
        if t.bin >= self.first_open {
            self.pending.entry(t.bin).or_default().truth = Some(t);
        }
    }

    /// The oldest bin, once it is complete or past the horizon.
    pub fn next_ready(&mut self) -> Option<(u64, Parts)> {
        let (&k, j) = self.pending.iter().next()?;
        let complete = j.loop_bin.is_some() && j.emitted.is_some() && (!self.expect_truth || j.truth.is_some());
        if !(complete || self.newest_rec > k + self.horizon) {
            return None;
        }
        self.first_open = k + 1;
        self.pending.remove(&k).map(|j| (k, j))
    }

    /// The oldest bin, complete or not (at the end of a run).
    pub fn next_any(&mut self) -> Option<(u64, Parts)> {
        let (k, j) = self.pending.pop_first()?;
        self.first_open = k + 1;
        Some((k, j))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Delivery, Proposal, Pushed};
    use crate::{MAX_CONTROL, MAX_EMBED, MAX_LATENT};

    fn loop_bin(bin: u64) -> LoopBin {
        LoopBin {
            bin,
            started_at: 0.0,
            done_at: 0.0,
            spikes: 0.0,
            late_spikes: 0,
            future_spikes: 0,
            proposal: Proposal::Command,
            delivery: Delivery::OnTime,
            u_prev_from: None,
            loglik: 0.0,
            task_jump: None,
            embed_step: 0.0,
            x: [0.0; MAX_LATENT],
            z: [0.0; MAX_EMBED],
            u: [0.0; MAX_CONTROL],
        }
    }

    fn emitted(bin: u64) -> Emitted {
        Emitted { bin, u: [0.0; MAX_CONTROL], pushed: Pushed::Command, enabled: true, pushed_at: 0.0 }
    }

    /// Bins come out in order once complete; one left incomplete (its emitter record
    /// dropped) comes out with what it has once the loop is `horizon` bins past it; a record
    /// for a bin already out joins nothing (an emitter record is given back to be counted).
    #[test]
    fn bins_in_order_complete_or_past_the_horizon() {
        let mut j = BinJoiner::new(false, 3);
        for k in 0..8 {
            j.add_record(loop_bin(k));
            if k != 1 {
                j.add_emitted(emitted(k));
            }
        }
        let (k, p) = j.next_ready().expect("bin 0 is complete");
        assert_eq!((k, p.loop_bin.is_some(), p.emitted.is_some()), (0, true, true));
        // Bin 1 lacks its push; the loop is at 7 > 1 + 3, so it is finalised as it is.
        let (k, p) = j.next_ready().expect("bin 1 is past the horizon");
        assert_eq!((k, p.loop_bin.is_some(), p.emitted.is_none()), (1, true, true));
        assert!(j.add_emitted(emitted(1)).is_some(), "too late to join: given back to be counted");
        let out: Vec<u64> = std::iter::from_fn(|| j.next_ready().map(|(k, _)| k)).collect();
        assert_eq!(out, (2..8).collect::<Vec<_>>());
        // The truth is awaited when expected, until the horizon.
        let mut j = BinJoiner::new(true, 3);
        j.add_record(loop_bin(0));
        j.add_emitted(emitted(0));
        assert!(j.next_ready().is_none(), "bin 0 waits for its truth");
        j.add_record(loop_bin(4));
        assert_eq!(j.next_ready().map(|(k, p)| (k, p.truth.is_none())), Some((0, true)));
        assert_eq!(j.next_any().map(|(k, _)| k), Some(4), "the rest at the end of the run");
    }
}
