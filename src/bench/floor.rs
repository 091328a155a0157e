//! The native floor baseline (`--baselines floor`): the simplest correct closed loop, in
//! this binary and on the same liblsl as neuroloop — one thread that sleeps until a bin
//! closes, pulls what arrived, bins it, and pushes one Control sample per bin (zeros, no
//! model). What it measures is liblsl and this machine; whatever neuroloop adds above it is
//! neuroloop's own overhead (issue 16).
//!
//! It runs on neuroloop's bin grid and stamps each sample with its bin's end, so the
//! simulated rig measures its end-to-end latency exactly as it does neuroloop's. Like the
//! Python loops (bench/baselines/pyloop.py) it has no deadline and no fallback: a bin
//! finished late is pushed late, and when it falls more than a bin behind it skips to the
//! newest closed bin (stale bins get no sample and are counted as skipped).

use crate::clock::{self, BinGrid};
use anyhow::{bail, Context};
use lsl::{ExPushable, Pullable};

/// Bins a spike may arrive ahead of the bin being formed (the simulated rig publishes bin
/// j's spikes during bin j, so one is enough; more costs nothing).
const WINDOW: usize = 4;

pub struct FloorSetup {
    /// The spike stream (the simulated rig's `[sim] stream_name`).
    pub input_name: String,
    /// Counts samples (stamped with their bin's end) rather than spike events.
    pub counts_stream: bool,
    pub n_units: usize,
    pub control_name: String,
    /// The Control outlet's source_id: the simulated rig subscribes to this one only.
    pub source_id: String,
    pub m: usize,
    pub grid: BinGrid,
    /// Bins 0..bins (warm-up included).
    pub bins: u64,
    /// The simulated rig's count of what it received: after the last bin the outlet stays
    /// up until the rig has every sample (liblsl drops what it has not sent on destroy).
    pub delivered: std::sync::Arc<crate::sim::RigControlCounts>,
}

/// What the floor loop did: one row per bin it pushed a sample for.
pub struct FloorRows {
    /// [bin, close → binned (s), close → pushed (s), late spikes] per pushed bin.
    pub rows: Vec<[f64; 4]>,
    pub skipped: u64,
    pub late_spikes: u64,
}

/// Runs the floor loop on the calling thread until its last bin is pushed.
pub fn run(s: &FloorSetup) -> anyhow::Result<FloorRows> {
    // The Control outlet first, so that the rig subscribes while the inlet connects (a rig
    // that subscribes after bin 0 never hears the bins before it).
    let labels: Vec<String> = (0..s.m).map(|i| format!("u{i}")).collect();
    let out_info = crate::schema::control_stream_spec(&s.control_name, &s.source_id, s.grid.bin_s, &labels)
        .info()
        .map_err(|e| anyhow::anyhow!("floor: {e}"))?;
    let outlet = lsl::StreamOutlet::new(&out_info, 0, 360).map_err(|e| anyhow::anyhow!("floor: Control outlet: {e:?}"))?;

    let pred = format!("name='{}'", s.input_name.replace('\'', "''"));
    let found = lsl::resolve_bypred(&pred, 1, 30.0).map_err(|e| anyhow::anyhow!("floor: resolving '{}': {e:?}", s.input_name))?;
    let Some(info) = found.into_iter().next() else { bail!("floor: spike stream '{}' not found in 30 s", s.input_name) };
    let inlet = lsl::StreamInlet::new(&info, 360, 0, true).map_err(|e| anyhow::anyhow!("floor: inlet: {e:?}"))?;
    inlet.open_stream(10.0).map_err(|e| anyhow::anyhow!("floor: opening '{}': {e:?}", s.input_name))?;
    let offset = inlet.time_correction(5.0).unwrap_or(0.0);
    let channels = info.channel_count().max(1) as usize;
    let mut buf: Vec<f32> = vec![0.0; channels];
    let zeros: Vec<f32> = vec![0.0; s.m];
    let mut window = vec![vec![0.0f64; s.n_units]; WINDOW];
    let mut rows = Vec::with_capacity(s.bins as usize);
    let (mut skipped, mut late_total) = (0u64, 0u64);
    let g = s.grid;
    let newest_closed = |now: f64| ((now - g.grace_s - g.t0) / g.bin_s).floor() as i64 - 1;
    // The first bin not yet closed.
    let mut k = newest_closed(clock::now()).saturating_add(1).max(0) as u64;
    skipped += k.min(s.bins);
    while k < s.bins {
        let close = g.close(k);
        let wait = close - clock::now();
        if wait > 0.0 {
            std::thread::sleep(std::time::Duration::from_secs_f64(wait));
        }
        let mut late = 0u64;
        loop {
            let ts = inlet.pull_sample_buf(&mut buf, 0.0).map_err(|e| anyhow::anyhow!("floor: pulling '{}': {e:?}", s.input_name))?;
            if ts == 0.0 {
                break;
            }
            let t = ts + offset;
            let j = if s.counts_stream { g.bin_ending_at(t) } else { g.bin_of(t) };
            if j < k as i64 {
                late += if s.counts_stream { buf.iter().map(|&c| c.max(0.0) as u64).sum() } else { 1 };
                continue;
            }
            if j >= (k as usize + WINDOW) as i64 {
                continue; // from the future: not a spike of this grid
            }
            let slot = &mut window[j as usize % WINDOW];
            if s.counts_stream {
                for (dst, &c) in slot.iter_mut().zip(&buf) {
                    *dst += c as f64;
                }
            } else if let Some(dst) = slot.get_mut(buf[0] as usize) {
                *dst += 1.0;
            }
        }
        // No model: the bin's counts are formed and the safe zero command goes out.
        let done = clock::now();
        outlet.push_sample_ex(&zeros, g.bin_end(k), true).map_err(|e| anyhow::anyhow!("floor: pushing: {e:?}"))?;
        let pushed = clock::now();
        window[k as usize % WINDOW].fill(0.0);
        rows.push([k as f64, done - close, pushed - close, late as f64]);
        late_total += late;
        k += 1;
        // More than one bin behind: skip to the newest closed bin.
        let newest = (newest_closed(clock::now()).max(0) as u64).min(s.bins);
        if newest > k {
            for j in k..newest {
                window[j as usize % WINDOW].fill(0.0);
            }
            skipped += newest - k;
            k = newest;
        }
    }
    // The rig's inlet takes the last samples before the outlet goes away.
    std::thread::sleep(std::time::Duration::from_millis(crate::schema::OUTLET_LINGER_MS));
    s.delivered.wait_for(rows.len() as u64, crate::emit::MAX_LINGER_S);
    drop(outlet);
    Ok(FloorRows { rows, skipped, late_spikes: late_total })
}

/// Starts the floor loop on its own thread ("neuroloop-floor").
pub fn spawn(s: FloorSetup) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<FloorRows>>> {
    std::thread::Builder::new().name("neuroloop-floor".into()).spawn(move || run(&s)).context("cannot start the floor loop's thread")
}
