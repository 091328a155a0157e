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

/// Joins records by bin and hands bins out in order once every part is settled: there, or
/// known to be lost. The loop and the emitter each report bins in order, so a part missing
/// once its stage has reported a later bin was dropped on a full queue; until then it is
/// awaited (a stalled emitter holds its bins back rather than have them recorded without
/// what it pushed). The simulator's truth is awaited until the loop is `horizon` bins past
/// the bin (it may lag, or its record may have been dropped).
pub struct BinJoiner {
    pending: BTreeMap<u64, Parts>,
    /// Bins below this have been handed out.
    first_open: u64,
    /// The newest bin the loop, and the emitter, have reported.
    newest_rec: Option<u64>,
    newest_emitted: Option<u64>,
    expect_truth: bool,
    horizon: u64,
}

impl BinJoiner {
    pub fn new(expect_truth: bool, horizon: u64) -> BinJoiner {
        BinJoiner { pending: BTreeMap::new(), first_open: 0, newest_rec: None, newest_emitted: None, expect_truth, horizon }
    }

    /// Bins below this have been handed out.
    pub fn first_open(&self) -> u64 {
        self.first_open
    }

    /// A loop record; one for a bin already handed out is too late to join (dropped).
    pub fn add_record(&mut self, r: LoopBin) {
        self.newest_rec = self.newest_rec.max(Some(r.bin));
        if r.bin >= self.first_open {
            self.pending.entry(r.bin).or_default().loop_bin = Some(r);
        }
    }

    /// An emitter record. One for a bin already handed out is given back: its push still
    /// counts (it is the worst latency of the run), though it joins nothing.
    pub fn add_emitted(&mut self, e: Emitted) -> Option<Emitted> {
        self.newest_emitted = self.newest_emitted.max(Some(e.bin));
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

    /// The oldest bin, once each of its parts is there or known to be lost.
    pub fn next_ready(&mut self) -> Option<(u64, Parts)> {
        let (&k, j) = self.pending.iter().next()?;
        let passed = |newest: Option<u64>, by: u64| newest.is_some_and(|n| n > k.saturating_add(by));
        let loop_settled = j.loop_bin.is_some() || passed(self.newest_rec, 0);
        let emitter_settled = j.emitted.is_some() || passed(self.newest_emitted, 0);
        let truth_settled = !self.expect_truth || j.truth.is_some() || passed(self.newest_rec, self.horizon);
        if !(loop_settled && emitter_settled && truth_settled) {
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

    /// Bins come out in order once complete; one whose emitter record was dropped comes out
    /// with what it has once the emitter has reported a later bin, and one whose emitter is
    /// behind waits for it; a record for a bin already out joins nothing (an emitter record
    /// is given back to be counted); the truth is awaited until the horizon.
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
        // Bin 1 lacks its push, and the emitter is past it: the push was dropped.
        let (k, p) = j.next_ready().expect("bin 1's push is lost");
        assert_eq!((k, p.loop_bin.is_some(), p.emitted.is_none()), (1, true, true));
        assert!(j.add_emitted(emitted(1)).is_some(), "too late to join: given back to be counted");
        let out: Vec<u64> = std::iter::from_fn(|| j.next_ready().map(|(k, _)| k)).collect();
        assert_eq!(out, (2..8).collect::<Vec<_>>());
        // A stalled emitter: bins the loop is far past wait for their pushes.
        let mut j = BinJoiner::new(false, 3);
        for k in 0..100 {
            j.add_record(loop_bin(k));
        }
        j.add_emitted(emitted(0));
        assert_eq!(j.next_ready().map(|(k, _)| k), Some(0));
        assert!(j.next_ready().is_none(), "bin 1 waits for the emitter");
        j.add_emitted(emitted(1));
        assert_eq!(j.next_ready().map(|(k, p)| (k, p.emitted.is_some())), Some((1, true)));
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
