//! Input that arrives after its bin has closed: its spikes are counted as late, never binned.
//! A few late spikes are transport jitter; a large share means the rig's timing settings do
//! not fit the stream (grace too short, or a counts stream stamped off the bins' grid), and
//! the operator is told once what to change, with the numbers measured.

use crate::clock::BinGrid;

/// How late input arrives relative to the end of the bin it belongs to.
#[derive(Default)]
pub struct InputLateness {
    samples: u64,
    /// The most recent arrival − bin end (s), for percentiles.
    recent_over: Vec<f64>,
    /// The most recent stamp − bin end (s): where a stream's stamps sit on the bins' grid.
    recent_phase: Vec<f64>,
    next: usize,
    notified: bool,
}

/// Samples kept for the percentiles.
const RECENT: usize = 2048;
/// Tell the operator once this share of the spikes is late (of at least `MIN_SPIKES`,
/// with at least `MIN_SAMPLES` lag measurements behind the numbers).
const LATE_SHARE: f64 = 0.05;
const MIN_SPIKES: f64 = 200.0;
const MIN_SAMPLES: u64 = 50;

impl InputLateness {
    /// One measured sample: stamped at `t`, arrived at `arrival`, binned at `t_binned`.
    pub fn add(&mut self, clock: &BinGrid, t: f64, arrival: f64, t_binned: f64) {
        let bin = clock.bin_of(t_binned);
        if bin < 0 {
            return;
        }
        let end = clock.bin_end(bin as u64);
        let over = arrival - end;
        self.samples += 1;
        if self.recent_over.len() < RECENT {
            self.recent_over.push(over);
            self.recent_phase.push(t - end);
        } else {
            self.recent_over[self.next] = over;
            self.recent_phase[self.next] = t - end;
            self.next = (self.next + 1) % RECENT;
        }
    }

    /// The notice, once, when a large share of the spikes so far was late: `late` of them
    /// (the binner's count: against when the loop really closed each bin) besides `binned`.
    pub fn notice(&mut self, clock: &BinGrid, late: f64, binned: f64) -> Option<String> {
        let total = late + binned;
        if self.notified || self.samples < MIN_SAMPLES || total < MIN_SPIKES || late < LATE_SHARE * total {
            return None;
        }
        self.notified = true;
        let share = 100.0 * late / total;
        let p99 = quantile(&self.recent_over, 0.99) * 1e3;
        let phase = quantile(&self.recent_phase, 0.5) * 1e3;
        let grace = clock.grace_s * 1e3;
        // Half a millisecond of margin, rounded up to whole ms (after rounding off µs noise).
        let needed = (((p99 + 0.5) * 1e3).round() / 1e3).ceil().max(grace + 1.0);
        let mut msg = format!(
            "{share:.0} % of the input's spikes arrived after their bin had closed (counted as late_spikes, not \
             binned): 99 % of its samples arrive within {p99:.1} ms of their bin's end, and [timing] grace_ms is \
             {grace}: raise grace_ms to ≥ {needed:.0} (the Control sample then goes out that much later)"
        );
        if phase > 0.5 {
            msg.push_str(&format!(
                ", or stamp samples earlier: they are stamped {phase:.1} ms after the end of the bin they are binned in \
                 (a counts sample belongs to the bin holding the middle of its interval (t − period, t]: stamp each \
                 sample at the end of the interval it counts, on the bins' grid, or at its start)"
            ));
        } else {
            msg.push_str(", or check the transport and the source's clock");
        }
        Some(msg)
    }
}

fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> BinGrid {
        BinGrid { t0: 100.0, bin_s: 0.01, grace_s: 0.002, deadline_s: 0.005 }
    }

    /// A counts stream stamped 4 ms after each bin's end, arriving 0.5 ms after its stamp.
    #[test]
    fn a_counts_stream_stamped_off_the_grid_gets_told_by_how_much() {
        let c = clock();
        let mut l = InputLateness::default();
        for k in 0..300u64 {
            let t = c.bin_end(k) + 0.004;
            l.add(&c, t, t + 0.0005, t - 0.005);
        }
        assert!(l.notice(&c, 10.0, 1000.0).is_none(), "1 % late: nothing to say");
        let msg = l.notice(&c, 590.0, 410.0).expect("59 % late: a notice");
        assert!(msg.starts_with("59 % of the input's spikes arrived after their bin had closed"), "{msg}");
        assert!(msg.contains("within 4.5 ms") && msg.contains("grace_ms to ≥ 5") && msg.contains("stamped 4.0 ms after"), "{msg}");
        assert!(l.notice(&c, 590.0, 410.0).is_none(), "said once");
    }

    /// Late spikes of an event stream on the grid: the advice is grace alone.
    #[test]
    fn late_events_are_told_the_grace_they_need() {
        let c = clock();
        let mut l = InputLateness::default();
        for k in 0..1000u64 {
            let t = c.bin_start(k) + 0.005;
            let lag = if k % 4 == 0 { 0.012 } else { 0.0002 };
            l.add(&c, t, t + lag, t);
        }
        let msg = l.notice(&c, 250.0, 750.0).expect("25 % late");
        assert!(msg.contains("within 7.0 ms") && msg.contains("grace_ms to ≥ 8") && msg.contains("check the transport"), "{msg}");
        assert!(!msg.contains("stamped"), "{msg}");
    }
}
