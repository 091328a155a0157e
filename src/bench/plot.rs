//! The plots of a bench report, as SVG: the latency distribution of every stage (the
//! HdrHistogram percentile plot), the per-bin latencies over the run, and the sweep's
//! compute-time scaling.

use crate::latency::{BinLatency, Stage};
use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 6] = [
    RGBColor(140, 86, 75),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

fn color(stage: Stage) -> RGBColor {
    COLORS[crate::latency::STAGES.iter().position(|&s| s == stage).unwrap_or(0)]
}

fn err<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("cannot draw {}: {e:?}", path.display())
}

/// Draws a 960 × 540 chart in memory and writes it to `path` whole (a temporary file
/// renamed over it: a plot is never left half-written).
fn svg_file(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 540)).into_drawing_area();
        draw(&root)?;
    }
    crate::outfile::write_output(path, svg.as_bytes(), "plot")
}

/// Latency (µs, log) against percentile (log of 1/(1 − q)), one line per stage.
pub fn distribution(path: &Path, title: &str, curves: &[(Stage, Vec<(f64, f64)>)]) -> anyhow::Result<()> {
    let curves: Vec<_> = curves.iter().filter(|(_, c)| !c.is_empty()).collect();
    let x_of = |q: f64| 1.0 / (1.0 - q).max(1e-7);
    let x_max = curves.iter().flat_map(|(_, c)| c.iter().map(|p| x_of(p.0))).fold(10.0, f64::max);
    let (y_min, y_max) = y_range(curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.1)));
    svg_file(path, |root| {
        root.fill(&WHITE).map_err(err(path))?;
        let mut chart = frame(root, title).build_cartesian_2d((1.0..x_max).log_scale(), (y_min..y_max).log_scale()).map_err(err(path))?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (µs)")
            .x_label_formatter(&|x| format!("{}%", trim(100.0 * (1.0 - 1.0 / x))))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(err(path))?;
        for (stage, c) in curves {
            let col = color(*stage);
            chart
                .draw_series(LineSeries::new(c.iter().map(|&(q, v)| (x_of(q), v.max(y_min))), col.stroke_width(2)))
                .map_err(err(path))?
                .label(stage.describe())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        }
        finish(chart, root, path)
    })
}

/// Per-bin latency over the run (µs, log): every bin when there are few, else the median
/// and the maximum of each of ~1000 consecutive groups of bins.
pub fn over_time(path: &Path, title: &str, series: &[BinLatency], bin_s: f64, first_bin: u64) -> anyhow::Result<()> {
    type Pick = fn(&BinLatency) -> f32;
    let stages: [(Stage, Pick); 3] =
        [(Stage::Compute, |b| b.compute_us), (Stage::CloseToPush, |b| b.close_to_push_us), (Stage::EndToEnd, |b| b.end_to_end_us)];
    let group = series.len().div_ceil(1000).max(1);
    let t_of = |i: usize| (first_bin as f64 + i as f64) * bin_s;
    // (stage, [(t, median, max)]) per group of bins.
    let mut lines = Vec::new();
    for (stage, pick) in stages {
        let mut pts = Vec::new();
        for (g, chunk) in series.chunks(group).enumerate() {
            let mut v: Vec<f64> = chunk.iter().map(|b| pick(b) as f64).filter(|v| v.is_finite()).collect();
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            pts.push((t_of(g * group), v[v.len() / 2].max(1.0), v[v.len() - 1].max(1.0)));
        }
        if !pts.is_empty() {
            lines.push((stage, pts));
        }
    }
    let (y_min, y_max) = y_range(lines.iter().flat_map(|(_, p)| p.iter().flat_map(|&(_, a, b)| [a, b])));
    let t_end = t_of(series.len().max(1));
    svg_file(path, |root| {
        root.fill(&WHITE).map_err(err(path))?;
        let mut chart = frame(root, title).build_cartesian_2d(t_of(0)..t_end, (y_min..y_max).log_scale()).map_err(err(path))?;
        chart
            .configure_mesh()
            .x_desc("time since the first bin (s)")
            .y_desc("latency (µs)")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(err(path))?;
        let what = if group > 1 { format!(" (median and max of every {group} bins)") } else { String::new() };
        for (stage, pts) in &lines {
            let col = color(*stage);
            chart
                .draw_series(LineSeries::new(pts.iter().map(|&(t, med, _)| (t, med)), col.stroke_width(2)))
                .map_err(err(path))?
                .label(format!("{}{what}", stage.describe()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
            if group > 1 {
                chart.draw_series(LineSeries::new(pts.iter().map(|&(t, _, max)| (t, max)), col.mix(0.4))).map_err(err(path))?;
            }
        }
        finish(chart, root, path)
    })
}

/// Every chart's frame: its title, margins and axis label areas.
fn frame<'a, 'b>(root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>, title: &str) -> ChartBuilder<'a, 'static, SVGBackend<'b>> {
    let mut b = ChartBuilder::on(root);
    b.caption(title, ("sans-serif", 20)).margin(12).x_label_area_size(40).y_label_area_size(70);
    b
}

/// Draws the legend and writes the file.
fn finish<'a, 'b: 'a, CT: CoordTranslate>(
    mut chart: ChartContext<'a, SVGBackend<'b>, CT>,
    root: &DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    path: &Path,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err(path))?;
    root.present().map_err(err(path))?;
    Ok(())
}

/// One backend's scaling curve: (size, p50 µs, p99 µs) per swept size.
pub type ScalingCurve = Vec<(f64, f64, f64)>;

/// The sweep's scaling plot: per-bin compute (µs, log) against the swept size (log), one
/// line per backend for the median and a faded one for p99. `lines`: (backend,
/// [(size, p50, p99)]).
pub fn scaling(path: &Path, title: &str, x_desc: &str, lines: &[(String, ScalingCurve)]) -> anyhow::Result<()> {
    let xs = || lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let x_lo = xs().fold(f64::MAX, f64::min).min(1e9);
    let x_hi = xs().fold(0.0f64, f64::max).max(x_lo * 2.0);
    let (y_min, y_max) = y_range(lines.iter().flat_map(|(_, p)| p.iter().flat_map(|q| [q.1, q.2])));
    svg_file(path, |root| {
        root.fill(&WHITE).map_err(err(path))?;
        let mut chart =
            frame(root, title).build_cartesian_2d((x_lo * 0.8..x_hi * 1.25).log_scale(), (y_min..y_max).log_scale()).map_err(err(path))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("per-bin compute (µs)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(err(path))?;
        for (i, (name, pts)) in lines.iter().enumerate().filter(|(_, (_, p))| !p.is_empty()) {
            let col = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().map(|q| (q.0, q.1)), col.stroke_width(2)))
                .map_err(err(path))?
                .label(format!("{name} p50"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
            chart.draw_series(pts.iter().map(|q| Circle::new((q.0, q.1), 3, col.filled()))).map_err(err(path))?;
            chart
                .draw_series(LineSeries::new(pts.iter().map(|q| (q.0, q.2)), col.mix(0.4)))
                .map_err(err(path))?
                .label(format!("{name} p99"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.mix(0.4)));
        }
        finish(chart, root, path)
    })
}

/// A log-scale y range covering the values (µs), in whole decades.
fn y_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.filter(|v| v.is_finite() && *v > 0.0).fold((f64::MAX, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    if hi <= 0.0 {
        return (1.0, 10.0);
    }
    (10f64.powf(lo.log10().floor()), 10f64.powf((hi.log10() + 1e-9).ceil()).max(10.0 * 10f64.powf(lo.log10().floor())))
}

fn trim(p: f64) -> String {
    let s = format!("{p:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A fit's training curve: the M-step objective per bin (and its two terms) against the EM
/// iteration. `series`: (name, [(iteration, value)]); values may be negative (linear y).
pub fn training_curve(path: &Path, title: &str, series: &[(String, Vec<(f64, f64)>)]) -> anyhow::Result<()> {
    let pts = || series.iter().flat_map(|(_, p)| p.iter()).filter(|p| p.1.is_finite());
    let x_hi = pts().map(|p| p.0).fold(1.0f64, f64::max);
    let (lo, hi) = pts().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.05).max(1e-6);
    svg_file(path, |root| {
        root.fill(&WHITE).map_err(err(path))?;
        let mut chart = frame(root, title).build_cartesian_2d(0.0..x_hi + 0.5, (lo - pad)..(hi + pad)).map_err(err(path))?;
        chart
            .configure_mesh()
            .x_desc("EM iteration")
            .y_desc("objective per bin (nats, lower is better)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.3}"))
            .draw()
            .map_err(err(path))?;
        for (i, (name, p)) in series.iter().enumerate() {
            let col = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(p.iter().copied().filter(|q| q.1.is_finite()), col.stroke_width(2)))
                .map_err(err(path))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        }
        finish(chart, root, path)
    })
}

/// A fit's held-out comparison: one bar per method (the model first) for each honest
/// metric, bits/spike on a linear axis through 0, each bar labelled with its value.
pub fn score_bars(path: &Path, title: &str, c: &crate::eval::Comparison) -> anyhow::Result<()> {
    use crate::eval::Metric;
    // (x position, metric, method, bps); a gap of one bar between metrics.
    let mut bars: Vec<(f64, Metric, String, f64)> = Vec::new();
    let mut x = 0.0;
    for metric in [Metric::CoBps, Metric::PredictiveBps] {
        for s in c.scores.iter().filter(|s| s.metric == metric) {
            if let Some(v) = s.bits_per_spike {
                bars.push((x, metric, s.method.clone(), v));
                x += 1.0;
            }
        }
        x += 1.0;
    }
    let lo = bars.iter().map(|b| b.3).fold(0.0f64, f64::min);
    let hi = bars.iter().map(|b| b.3).fold(0.0f64, f64::max);
    let pad = ((hi - lo) * 0.15).max(0.05);
    let methods: Vec<String> = {
        let mut m: Vec<String> = Vec::new();
        for b in &bars {
            if !m.contains(&b.2) {
                m.push(b.2.clone());
            }
        }
        m
    };
    svg_file(path, |root| {
        root.fill(&WHITE).map_err(err(path))?;
        let mut chart = frame(root, title).build_cartesian_2d(-0.5..(x - 0.5).max(1.0), (lo - pad)..(hi + pad)).map_err(err(path))?;
        let label_of = |x: &f64| {
            bars.iter().find(|b| (b.0 - x).abs() < 0.01).map_or(String::new(), |b| match b.1 {
                Metric::CoBps => "co-smoothing".to_string(),
                Metric::PredictiveBps => "one-step-ahead".to_string(),
            })
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len().max(1) * 2 + 2)
            .x_label_formatter(&label_of)
            .y_desc("held-out bits/spike (higher is better)")
            .y_label_formatter(&|y| format!("{y:.2}"))
            .draw()
            .map_err(err(path))?;
        for (i, method) in methods.iter().enumerate() {
            let col = COLORS[(i + 1) % COLORS.len()];
            let mine: Vec<_> = bars.iter().filter(|b| &b.2 == method).collect();
            chart
                .draw_series(mine.iter().map(|b| Rectangle::new([(b.0 - 0.4, 0.0), (b.0 + 0.4, b.3)], col.filled())))
                .map_err(err(path))?
                .label(method.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], col.filled()));
            chart
                .draw_series(mine.iter().map(|b| {
                    let y = if b.3 >= 0.0 { b.3 + pad * 0.2 } else { b.3 - pad * 0.4 };
                    Text::new(format!("{:.3}", b.3), (b.0 - 0.25, y), ("sans-serif", 14))
                }))
                .map_err(err(path))?;
        }
        finish(chart, root, path)
    })
}
