//! The control plane through its real interfaces, against live simulated sessions of the
//! real CLI: an HTTP client and a WebSocket client (each command, each error), a pylsl
//! Markers outlet, the bearer token, a flood of requests, and a recording whose commands
//! replay bit for bit.

mod common;

use common::*;
use serde_json::{json, Value};

fn rig_with_task_id(dir: &std::path::Path, tag: &str) -> (SimRig, std::path::PathBuf) {
    let rig = SimRig::new(tag);
    let text = rig.toml("lqr", "events", "events", "", "[model.task_id]\nenabled = true");
    let path = write(dir, "rig.toml", &text);
    (rig, path)
}

/// POST a command; 202 and the bin it took effect at.
fn accepted(s: &LiveSession, body: Value) -> u64 {
    let (code, reply) = http_post(&s.url("/api/commands"), &body.to_string());
    assert_eq!(code, 202, "{body}: {reply}");
    reply["applied_at_bin"].as_u64().unwrap_or_else(|| panic!("{body}: no applied_at_bin in {reply}"))
}

/// POST a command that must be refused with `code`, naming `field`.
fn refused(s: &LiveSession, body: &str, headers: &[(&str, &str)], code: u16, field: &str) -> Value {
    let (got, reply) = http_post_with(&s.url("/api/commands"), body, headers);
    assert_eq!(got, code, "{body}: {reply}");
    assert_eq!(reply["error"]["field"], field, "{body}: {reply}");
    assert!(reply["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{reply}");
    reply
}

const JSON: &[(&str, &str)] = &[("Content-Type", "application/json")];

/// Every command over HTTP takes effect at a known bin and shows in the status; every kind
/// of error is refused with the field named and changes nothing; the WebSocket streams
/// throttled frames and takes commands; `stop` ends the run; the report counts both; and the
/// recording, commands and all, replays bit for bit.
#[test]
fn every_command_and_error_over_http_and_websocket_recorded_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (_rig, rig_path) = rig_with_task_id(dir.path(), "cp-http");
    let (xdf, report_path) = (dir.path().join("run.xdf"), dir.path().join("report.json"));
    let s = LiveSession::start(&[
        "run",
        "--rig",
        rig_path.to_str().unwrap(),
        "--bins",
        "6000",
        "--record",
        xdf.to_str().unwrap(),
        "--report",
        report_path.to_str().unwrap(),
    ]);
    let st = s.status_when(30.0, |s| s["bin"].as_u64().is_some_and(|b| b > 20));
    assert_eq!((st["x"].as_array().unwrap().len(), st["z"].as_array().unwrap().len()), (4, 3), "{st}");
    assert_eq!((st["u"].as_array().unwrap().len(), st["rates_hz"].as_array().unwrap().len()), (4, 96));
    assert_eq!(st["settings"]["objective_kind"], "latent");
    assert_eq!(st["settings"]["upper"], json!([1.0, 1.0, 1.0, 1.0]));
    let (code, cfg) = http_get(&s.url("/api/config"), None);
    assert_eq!(code, 200);
    assert_eq!(
        (cfg["dims"]["n_units"].as_u64(), cfg["dims"]["tasks"].as_u64(), cfg["rig"]["name"].as_str()),
        (Some(96), Some(3), Some("test"))
    );

    // Each command: 202, at a bin no earlier than the last one's.
    let commands = [
        json!({"command": "disarm"}),
        json!({"command": "arm"}),
        json!({"command": "set_objective", "kind": "latent", "target": [0.1, -0.1, 0.0, 0.2]}),
        json!({"command": "lock_task", "task": 1}),
        json!({"command": "unlock_task"}),
        json!({"command": "set_objective", "kind": "rates", "target": [12.0]}),
        json!({"command": "set_limits", "upper": [0.5], "max_step": 0.1}),
        json!({"command": "set_fallback", "fallback": "vector", "vector": [0.0, 0.1, 0.0, 0.1]}),
        json!({"command": "mark", "text": "cue on"}),
    ];
    let mut last = 0;
    let mut limits_at = 0;
    for c in &commands {
        let at = accepted(&s, c.clone());
        assert!(at >= last, "{c}: took effect at bin {at}, before the previous command's {last}");
        if c["command"] == "set_limits" {
            limits_at = at;
        }
        last = at;
    }
    let st = s.status_when(10.0, |s| s["bin"].as_u64().is_some_and(|b| b > limits_at + 10));
    let set = &st["settings"];
    assert_eq!((set["objective_kind"].as_str(), set["objective_target"].as_array().map(Vec::len)), (Some("rates"), Some(96)));
    assert_eq!((&set["upper"], &set["max_step"], &set["fallback"]), (&json!([0.5, 0.5, 0.5, 0.5]), &json!(0.1), &json!("vector")));
    assert_eq!(set["locked_task"], Value::Null);
    for u in st["u"].as_array().unwrap() {
        assert!(u.as_f64().unwrap() <= 0.5, "the tightened bound holds on what goes out: {st}");
    }

    // Refusals name the field, and change nothing.
    refused(&s, "{not json", JSON, 400, "command");
    refused(&s, r#"{"command": "fire"}"#, JSON, 400, "command");
    refused(&s, r#"{"command": "lock_task", "task": 99}"#, JSON, 400, "task");
    let wider = refused(&s, r#"{"command": "set_limits", "upper": [2.0]}"#, JSON, 400, "upper");
    assert!(wider["error"]["message"].as_str().unwrap().contains("only tighten"), "{wider}");
    refused(&s, r#"{"command": "set_objective", "kind": "latent", "target": [1, 2]}"#, JSON, 400, "target");
    refused(&s, r#"{"command": "disarm"}"#, &[("Content-Type", "text/plain")], 415, "content-type");
    refused(&s, r#"{"command": "disarm"}"#, &[("Content-Type", "application/json"), ("Origin", "http://evil.example")], 403, "origin");
    let huge = format!(r#"{{"command": "mark", "text": "{}"}}"#, "x".repeat(2 << 20));
    refused(&s, &huge, JSON, 413, "body");
    let (code, _) = http_get(&s.url("/api/nothing"), None);
    assert_eq!(code, 404);
    // A page that rebinds its own name to 127.0.0.1 (DNS rebinding) is not this server.
    let (code, body) = http_get_with(&s.url("/api/status"), &[("Host", "evil.example:7878")]);
    assert_eq!((code, body["error"]["field"].as_str()), (403, Some("host")), "{body}");
    let st = s.status_when(5.0, |_| true);
    assert_eq!(st["settings"]["upper"], json!([0.5, 0.5, 0.5, 0.5]), "a refused command changed the limits");
    assert_eq!(st["settings"]["armed"], true);

    // The WebSocket: the newest state, at most ~30 frames a second, and commands.
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/api/stream", s.addr)).expect("WebSocket");
    let t = std::time::Instant::now();
    let mut seqs = Vec::new();
    while t.elapsed().as_secs_f64() < 2.0 {
        if let tungstenite::Message::Text(text) = ws.read().unwrap() {
            let v: Value = serde_json::from_str(&text).unwrap();
            seqs.push(v["seq"].as_u64().unwrap());
        }
    }
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "frames go forward: {seqs:?}");
    assert!((10..=70).contains(&seqs.len()), "{} frames in 2 s (at most ~30 a second)", seqs.len());
    ws.send(tungstenite::Message::Text(r#"{"command": "mark", "text": "from the websocket"}"#.into())).unwrap();
    let reply = loop {
        if let tungstenite::Message::Text(text) = ws.read().unwrap() {
            let v: Value = serde_json::from_str(&text).unwrap();
            if v.get("reply").is_some() {
                break v;
            }
        }
    };
    assert!(reply["reply"]["applied_at_bin"].as_u64().is_some(), "{reply}");

    // Stop: the session finishes the bin and ends; the WebSocket gets its last frame.
    let end = accepted(&s, json!({"command": "stop"}));
    let last_frame = loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["ended"] == true {
                    break Some(v);
                }
            }
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    let (status, _, stderr) = s.wait();
    assert!(status.success(), "{stderr}");
    let last_frame = last_frame.expect("the WebSocket's last frame says the session ended");
    let r = report(&report_path);
    assert_eq!(r["bins"].as_u64(), Some(end), "stop took effect at bin {end}: bins 0..{end} ran");
    assert!(last_frame["bins"].as_u64().unwrap() <= end);
    let accepted_n = commands.len() as u64 + 2; // the WebSocket's mark and stop
    assert_eq!(r["commands"]["accepted"].as_u64(), Some(accepted_n), "{}", r["commands"]);
    assert_eq!(r["commands"]["rejected"].as_u64(), Some(8), "{}", r["commands"]);
    assert_eq!(r["commands"]["refused_requests"].as_u64(), Some(3), "{}", r["commands"]);

    // The recording holds every command that reached the dispatcher, with its outcome…
    let dump = xdf_dump(&xdf);
    let stream = dump["streams"].as_array().unwrap().iter().find(|s| s["name"] == "test-commands").expect("a commands stream");
    assert_eq!(stream["type"], "Markers");
    let records: Vec<Value> =
        stream["value_strings"].as_array().unwrap().iter().map(|row| serde_json::from_str(row[0].as_str().unwrap()).unwrap()).collect();
    assert_eq!(records.len() as u64, accepted_n + 5, "accepted, and refused by the dispatcher");
    assert_eq!(records.iter().filter(|r| r.get("refused").is_some()).count(), 5);
    let objective = records.iter().find(|r| r["command"]["kind"] == "rates").unwrap();
    assert_eq!((objective["source"].as_str(), objective["loop_bin"].as_u64().is_some()), (Some("http"), true), "{objective}");
    // …and replay re-applies them where they took effect: bit for bit.
    let out = run(&["replay", xdf.to_str().unwrap(), "--rig", rig_path.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["identical"], true, "{v}");
    assert_eq!(v["commands_applied"].as_u64(), Some(accepted_n - 3), "all but the two marks and stop act on the loop or the emitter");
}

/// Experiment software drives the session over LSL: a pylsl Markers outlet sends commands
/// as text (short form and JSON), each gets its reply on the replies stream, a bad one is
/// refused with the field named.
#[test]
fn commands_from_a_pylsl_markers_outlet() {
    let dir = tempfile::tempdir().unwrap();
    let (_rig, rig_path) = rig_with_task_id(dir.path(), "cp-markers");
    let markers = unique("cp-markers-commands");
    let text = std::fs::read_to_string(&rig_path).unwrap() + &format!("\n[control]\nmarkers_name = \"{markers}\"\n");
    std::fs::write(&rig_path, text).unwrap();
    let report_path = dir.path().join("report.json");
    let s = LiveSession::start(&["run", "--rig", rig_path.to_str().unwrap(), "--bins", "3000", "--report", report_path.to_str().unwrap()]);
    let out = py_script("markers_sender.py")
        .args(["--name", &markers])
        .args(["--command", "disarm", "--command", "lock_task 2", "--command", "mark trial 1 start"])
        .args(["--command", r#"{"command": "set_objective", "kind": "rates", "target": [8.0]}"#, "--command", "lock_task nine"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let replies = v["replies"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(replies.len(), 5, "{v}");
    for r in &replies[..4] {
        assert!(r["applied_at_bin"].as_u64().is_some(), "{r}");
    }
    assert_eq!(replies[4]["error"]["field"], "task", "{}", replies[4]);
    let st = s.status_when(5.0, |s| s["settings"]["locked_task"] == 2);
    assert_eq!((st["settings"]["armed"].as_bool(), st["settings"]["objective_kind"].as_str()), (Some(false), Some("rates")));
    accepted(&s, json!({"command": "stop"}));
    let (status, _, stderr) = s.wait();
    assert!(status.success(), "{stderr}");
    let r = report(&report_path);
    assert_eq!((r["commands"]["accepted"].as_u64(), r["commands"]["rejected"].as_u64()), (Some(5), Some(1)), "{}", r["commands"]);
}

/// Off loopback the control plane needs a bearer token; with one, a request without it (or
/// with a wrong one) gets 401 and changes nothing.
#[test]
fn bearer_token_off_loopback_and_401_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_rig, rig_path) = rig_with_task_id(dir.path(), "cp-token");
    // No token, not loopback: refused before the run starts, saying what to do.
    let out = std::process::Command::new(bin())
        .args(["run", "--rig", rig_path.to_str().unwrap(), "--bins", "10", "--quiet", "--control", "0.0.0.0:0"])
        .env_remove("NEUROLOOP_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NEUROLOOP_TOKEN") && err.contains("not loopback"), "{err}");
    // With a token (from the environment, never the rig file).
    let report_path = dir.path().join("report.json");
    let s = LiveSession::start_with_env(
        &["run", "--rig", rig_path.to_str().unwrap(), "--bins", "3000", "--report", report_path.to_str().unwrap()],
        &[("NEUROLOOP_TOKEN", "s3cret-token")],
    );
    let (code, body) = http_get(&s.url("/api/status"), None);
    assert_eq!((code, body["error"]["field"].as_str()), (401, Some("authorization")), "{body}");
    assert_eq!(http_get(&s.url("/api/status"), Some("wrong")).0, 401);
    refused(&s, r#"{"command": "stop"}"#, JSON, 401, "authorization");
    let (code, _) = http_get(&s.url("/api/status"), Some("s3cret-token"));
    assert_eq!(code, 200);
    let (code, reply) = http_post_with(
        &s.url("/api/commands"),
        r#"{"command": "stop"}"#,
        &[("Content-Type", "application/json"), ("Authorization", "Bearer s3cret-token")],
    );
    assert_eq!(code, 202, "{reply}");
    let (status, _, stderr) = s.wait();
    assert!(status.success(), "{stderr}");
    assert_eq!(report(&report_path)["commands"]["refused_requests"].as_u64(), Some(1));
}

/// A flood of requests from several clients while the loop runs: the excess is refused
/// (429), every refusal is counted in the report, and the session still emits exactly one
/// Control sample per bin (counts, not timings).
#[test]
fn a_flood_of_requests_is_rate_limited_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (_rig, rig_path) = rig_with_task_id(dir.path(), "cp-flood");
    let report_path = dir.path().join("report.json");
    let s = LiveSession::start(&["run", "--rig", rig_path.to_str().unwrap(), "--bins", "700", "--report", report_path.to_str().unwrap()]);
    s.status_when(30.0, |s| s["bin"].as_u64().is_some_and(|b| b > 10));
    let url = s.url("/api/commands");
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                let (mut ok, mut limited, mut other) = (0u64, 0u64, 0u64);
                for i in 0..100 {
                    let body = if i % 2 == 0 { format!(r#"{{"command": "mark", "text": "flood {c} {i}"}}"#) } else { "garbage".into() };
                    match http_post(&url, &body).0 {
                        202 => ok += 1,
                        429 => limited += 1,
                        400 => other += 1,
                        code => panic!("unexpected {code}"),
                    }
                }
                (ok, limited, other)
            })
        })
        .collect();
    let (mut ok, mut limited, mut bad) = (0, 0, 0);
    for c in clients {
        let (a, b, d) = c.join().unwrap();
        (ok, limited, bad) = (ok + a, limited + b, bad + d);
    }
    assert!(limited > 0, "400 requests at once must meet the rate limit");
    // The bucket is empty; `disarm` still gets through (a flood must not keep the operator
    // from disarming).
    let (code, reply) = http_post(&url, r#"{"command": "disarm"}"#);
    assert_eq!(code, 202, "{reply}");
    ok += 1;
    let (status, _, stderr) = s.wait();
    assert!(status.success(), "{stderr}");
    let r = report(&report_path);
    assert_eq!(r["commands"]["accepted"].as_u64(), Some(ok));
    assert_eq!(r["commands"]["rejected"].as_u64(), Some(limited + bad), "{}", r["commands"]);
    assert_eq!(r["commands"]["rate_limited"].as_u64(), Some(limited));
    assert_eq!((r["bins"].as_u64(), r["control_samples"].as_u64()), (Some(700), Some(700)), "one Control sample per bin");
    eprintln!("flood: {ok} accepted, {limited} rate-limited, {bad} malformed; deadline misses {}", r["deadline_misses"]);
}

/// Clients that stall never lock the operator out. 200 connections send a command's headers
/// and never its body, 50 send half of their headers, and a WebSocket client stops reading;
/// meanwhile the operator's status and disarm are answered (not 503). The
/// stalled requests are answered 408 (or closed) after their timeout, the silent WebSocket
/// client is dropped after 2 s instead of being sent a backlog, and the report counts all
/// of it.
#[test]
fn stalled_clients_never_lock_the_operator_out() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let (_rig, rig_path) = rig_with_task_id(dir.path(), "cp-stall");
    let report_path = dir.path().join("report.json");
    let s = LiveSession::start(&["run", "--rig", rig_path.to_str().unwrap(), "--bins", "1500", "--report", report_path.to_str().unwrap()]);
    s.status_when(30.0, |s| s["bin"].as_u64().is_some_and(|b| b > 10));

    // A WebSocket client that reads one frame, then stops reading.
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/api/stream", s.addr)).expect("WebSocket");
    assert!(matches!(ws.read().unwrap(), tungstenite::Message::Text(_)));
    let stopped_reading = Instant::now();

    let stalled_body = format!(
        "POST /api/commands HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"command\":",
        s.addr
    );
    let mut stalled: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
            c.write_all(stalled_body.as_bytes()).unwrap();
            c
        })
        .collect();
    for _ in 0..50 {
        let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
        c.write_all(b"GET /api/status HTTP/1.1\r\nHost: 127.").unwrap();
        stalled.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));

    // The operator, meanwhile.
    // Answered, not 503 (how fast is printed, not asserted: tests do not time the machine).
    let t = Instant::now();
    let (code, st) = http_get(&s.url("/api/status"), None);
    assert_eq!(code, 200, "{st}");
    let status_took = t.elapsed();
    let t = Instant::now();
    let (code, reply) = http_post(&s.url("/api/commands"), r#"{"command": "disarm"}"#);
    assert_eq!(code, 202, "{reply}");
    eprintln!("with 250 stalled requests open: status answered in {status_took:?}, disarm in {:?}", t.elapsed());

    // The stalled requests: a stalled body gets 408, half a header gets the connection closed.
    let answer = |c: &mut std::net::TcpStream| {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    };
    let first = answer(&mut stalled[0]);
    assert!(first.starts_with("HTTP/1.1 408"), "{first}");
    assert!(first.contains("\"field\":\"body\""), "{first}");
    assert_eq!(answer(&mut stalled[249]), "", "half a header: closed without an answer");

    // The WebSocket client reads again after 4 s: a frame or two from when it stopped, then
    // the close — never seconds of backlog.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(stopped_reading.elapsed()));
    let mut frames = 0;
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(_)) => frames += 1,
            Ok(tungstenite::Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    assert!(frames <= 3, "{frames} frames queued for a client that stopped reading");

    let (status, _, stderr) = s.wait();
    assert!(status.success(), "{stderr}");
    let c = &report(&report_path)["commands"];
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("no {k} in {c}"));
    assert!(n("timed_out_requests") >= 250, "{c}");
    assert!(n("slow_clients_dropped") >= 1 && n("stale_frames_skipped") >= 1, "{c}");
    assert_eq!(n("accepted"), 1, "{c}");
}
