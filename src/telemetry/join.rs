//! The one by-bin joiner: pairs what the loop, the emitter and (in simulation) the
//! simulator report for each bin. Telemetry runs it; the recorder's timing stream is written
//! from what it joins, so the report and the recording account every bin the same way.

use crate::events::{LoopBin, Emitted, TruthBin};
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
