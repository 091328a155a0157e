//! Commands over LSL, the way experiment software (PsychoPy, Bonsai, any LSL app) already
//! talks: a Markers stream (type `Markers`, one string channel) named in the rig file
//! (`[control] markers_name`) carries commands as text, in the same grammar as the HTTP API
//! (JSON or the short form, `control_plane::command`); each one's reply goes out on the
//! Markers outlet `<name>-replies`, as JSON. Runs on a thread of its own.

use super::dispatch::{Dispatcher, Source};
use lsl::{ExPushable, Pullable};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct MarkersSetup {
    /// The commands stream's name.
    pub name: String,
    /// The replies outlet's source_id.
    pub source_id: String,
    pub dispatcher: Arc<Dispatcher>,
    pub stop: Arc<AtomicBool>,
}

/// The replies stream's name for commands stream `name`.
pub fn replies_name(name: &str) -> String {
    format!("{name}-replies")
}

/// Start the Markers thread. Returns once its replies outlet exists.
pub fn start(setup: MarkersSetup) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let handle = std::thread::Builder::new().name("neuroloop-markers".into()).spawn(move || {
        // The outlet lives on this thread (liblsl's outlets are not to be shared).
        let outlet = match replies_outlet(&setup) {
            Ok(o) => o,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        run(&setup, &outlet);
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(anyhow::anyhow!("the Markers replies outlet: {e}")),
        Err(_) => Err(anyhow::anyhow!("the Markers thread died while creating its replies outlet")),
    }
}

fn replies_outlet(s: &MarkersSetup) -> Result<lsl::StreamOutlet, String> {
    let spec = crate::lslutil::StreamSpec {
        name: replies_name(&s.name),
        stream_type: "Markers".into(),
        srate: lsl::IRREGULAR_RATE,
        format: lsl::ChannelFormat::String,
        source_id: s.source_id.clone(),
        labels: vec!["reply".into()],
        channel_type: "marker".into(),
    };
    let info = spec.info()?;
    lsl::StreamOutlet::new(&info, 0, 360).map_err(|e| format!("{e:?}"))
}

fn run(s: &MarkersSetup, outlet: &lsl::StreamOutlet) {
    // `markers_name` is checked to hold no quote (rig validation).
    let pred = format!("name='{}' and type='Markers'", s.name);
    // A continuous resolver listens in the background instead of a query every second.
    let Ok(resolver) = lsl::ContinuousResolver::new_with_pred(&pred, 5.0) else {
        eprintln!("[neuroloop] control plane: cannot watch for the Markers stream '{}'", s.name);
        return;
    };
    let mut inlet: Option<(lsl::StreamInlet, String)> = None;
    let mut next_check = crate::clock::now() + 2.0;
    while !s.stop.load(Ordering::Acquire) {
        if let Some((_, uid)) = &inlet {
            // The sender restarted (a new stream of that name, ours gone): follow it.
            if crate::clock::now() > next_check {
                next_check = crate::clock::now() + 2.0;
                let found = resolver.results().unwrap_or_default();
                if !found.is_empty() && !found.iter().any(|f| f.uid() == *uid) {
                    inlet = None;
                }
            }
        }
        let Some((i, _)) = &inlet else {
            let found = resolver.results().unwrap_or_default();
            match found.into_iter().next() {
                Some(info) => match lsl::StreamInlet::new(&info, 360, 0, true) {
                    Ok(i) => {
                        let uid = info.uid();
                        eprintln!("[neuroloop] control plane: taking commands from the Markers stream '{}' ({})", s.name, info.hostname());
                        inlet = Some((i, uid));
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
                },
                None => std::thread::sleep(std::time::Duration::from_millis(250)),
            };
            continue;
        };
        let pulled: Result<(Vec<String>, f64), _> = i.pull_sample(0.2);
        match pulled {
            Ok((sample, ts)) if ts != 0.0 => {
                let text = sample.into_iter().next().unwrap_or_default();
                let reply = match s.dispatcher.submit_marker(Source::Markers, &text) {
                    Ok(a) => serde_json::json!({ "id": a.id, "applied_at_bin": a.applied_at_bin }),
                    Err(r) => serde_json::json!({ "error": r.error() }),
                };
                let _ = outlet.push_sample_ex(&vec![reply.to_string()], crate::clock::now(), true);
            }
            Ok(_) => {} // nothing within the timeout
            Err(_) => inlet = None,
        }
    }
    // Let liblsl deliver the last replies before the outlet goes away.
    std::thread::sleep(std::time::Duration::from_millis(crate::schema::OUTLET_LINGER_MS));
}
