//! A test's own spike sources: LSL outlets it pushes from (or only holds open), and pacing
//! on the LSL clock. liblsl's handles are not `Send`: a source's outlet is made on the
//! thread that pushes from it.

use std::thread::JoinHandle;
use std::time::Duration;

/// An outlet named `name` of `channels` channels of `format` at nominal `rate`, with 360 s of
/// buffer.
pub fn outlet(name: &str, ty: &str, channels: u32, rate: f64, format: lsl::ChannelFormat, source_id: &str) -> lsl::StreamOutlet {
    let info = lsl::StreamInfo::new(name, ty, channels, rate, format, source_id).unwrap();
    lsl::StreamOutlet::new(&info, 0, 360).unwrap()
}

/// A SpikeEvents outlet: float32 samples [channel, unit] at an irregular rate.
pub fn events_outlet(name: &str, source_id: &str) -> lsl::StreamOutlet {
    outlet(name, "SpikeEvents", 2, lsl::IRREGULAR_RATE, lsl::ChannelFormat::Float32, source_id)
}

/// A 100 Hz SpikeCounts outlet (one sample per 10 ms bin) of `channels` channels of `format`.
pub fn counts_outlet(name: &str, channels: u32, format: lsl::ChannelFormat, source_id: &str) -> lsl::StreamOutlet {
    outlet(name, "SpikeCounts", channels, 100.0, format, source_id)
}

/// Waits until neuroloop's inlet is connected, then half a second more (liblsl's start-up
/// race: the inlet finishes connecting before the first push).
pub fn wait_for_consumer(outlet: &lsl::StreamOutlet) {
    assert!(outlet.wait_for_consumers(30.0), "neuroloop never connected");
    std::thread::sleep(Duration::from_millis(500));
}

/// An outlet (as [`outlet`]) held open for `secs` on a thread of its own, pushing nothing: a
/// stream for neuroloop to resolve and refuse at connect.
pub fn hold_outlet(
    name: String,
    ty: &'static str,
    channels: u32,
    rate: f64,
    format: lsl::ChannelFormat,
    source_id: &'static str,
    secs: u64,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let _outlet = outlet(&name, ty, channels, rate, format, source_id);
        std::thread::sleep(Duration::from_secs(secs));
    })
}

/// Paces a source on the LSL clock: tick k comes k periods after the start, however long the
/// pushes between ticks took. (A sleep of one period per sample drifts: every sleep
/// overshoots, and the stamps fall behind the clock.)
pub struct Pacer {
    t: f64,
    period_s: f64,
}

impl Pacer {
    /// The first tick one period from now.
    pub fn every(period_s: f64) -> Pacer {
        Pacer::after(lsl::local_clock(), period_s)
    }

    /// The first tick one period after `t` (LSL clock, s).
    pub fn after(t: f64, period_s: f64) -> Pacer {
        Pacer { t, period_s }
    }

    /// Waits until the next tick has come and returns its time: the stamp of a sample that
    /// goes out when its time (or the interval it counts) is over.
    pub fn tick(&mut self) -> f64 {
        self.t += self.period_s;
        while lsl::local_clock() < self.t {
            std::thread::sleep(Duration::from_micros(300));
        }
        self.t
    }

    /// The time of the last tick (the start, before the first).
    pub fn last_tick(&self) -> f64 {
        self.t
    }
}
