//! The live status line (stderr, about once a second) and its final line.

use super::evaluation::Evaluation;
use crate::latency::{Stage, StageLatencies};

/// What the line counts.
pub(super) struct Counts {
    pub bins: u64,
    pub misses: u64,
    pub fallbacks: u64,
    pub gap_bins: u64,
}

pub(super) fn line(last: bool, c: &Counts, lat: &StageLatencies, eval: &Evaluation) -> String {
    let us = |stage, q| lat.quantile_us(stage, q);
    let r2 = eval.recent_latent_r2().map_or("-".into(), |v| format!("{v:.3}"));
    let tr = eval.tracking();
    let track = match tr.as_ref().map(|t| (&t.closed_loop_mse, &t.open_loop_mse)).unwrap_or((&None, &None)) {
        (Some(c), Some(o)) => format!(" | track closed {c:.3} open {o:.3}"),
        (Some(c), None) => format!(" | track {c:.3}"),
        _ => String::new(),
    };
    let e2e = if !lat.histogram(Stage::EndToEnd).is_empty() {
        format!(" | e2e p50 {:.0} p99 {:.0} µs", us(Stage::EndToEnd, 0.5), us(Stage::EndToEnd, 0.99))
    } else {
        String::new()
    };
    format!(
        "[neuroloop] {}bins {} | misses {} fallbacks {} gaps {} | compute p50 {:.0} p99 {:.0} max {:.0} µs{} | R² {}{}",
        if last { "final: " } else { "" },
        c.bins,
        c.misses,
        c.fallbacks,
        c.gap_bins,
        us(Stage::Compute, 0.5),
        us(Stage::Compute, 0.99),
        us(Stage::Compute, 1.0),
        e2e,
        r2,
        track
    )
}
