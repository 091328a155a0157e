//! The dashboard in a real browser: Debian's Chromium, headless, driven over the DevTools
//! protocol, loads the page from a live simulated session of the real CLI; a screenshot
//! shows the panels with data; a click on Disarm makes the Control stream fall back (seen on
//! the test's own LSL inlet); the Stop button ends the session; the page survives it.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Headless Chromium with its DevTools endpoint; killed when dropped.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    /// `127.0.0.1:PORT` of the DevTools HTTP endpoint.
    devtools: String,
}

impl Browser {
    fn start() -> Browser {
        assert!(std::path::Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: run ./scripts/setup.sh (it installs Debian's chromium)");
        let profile = tempfile::tempdir().unwrap();
        // The flags that keep Chromium off the (closed) network and quiet in a container.
        let mut child = Command::new(CHROMIUM)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"])
            .args(["--disable-component-update", "--disable-sync", "--remote-debugging-port=0", "--window-size=1400,1100"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                    let _ = tx.try_send(rest.split('/').next().unwrap_or("").to_string());
                }
            }
        });
        let devtools = rx.recv_timeout(Duration::from_secs(60)).expect("Chromium never opened its DevTools endpoint");
        Browser { child, _profile: profile, devtools }
    }

    /// The first page's DevTools session.
    fn page(&self) -> Page {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, list) = http_get(&format!("http://{}/json/list", self.devtools), None);
            if code == 200 {
                if let Some(p) = list.as_array().and_then(|l| l.iter().find(|t| t["type"] == "page")) {
                    let url = p["webSocketDebuggerUrl"].as_str().unwrap().to_string();
                    let (ws, _) = tungstenite::connect(url).expect("DevTools WebSocket");
                    let mut page = Page { ws, next_id: 0, exceptions: Vec::new() };
                    page.call("Runtime.enable", json!({}));
                    page.call("Page.enable", json!({}));
                    return page;
                }
            }
            assert!(Instant::now() < until, "Chromium has no page target: {list}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One page over the DevTools protocol; collects the page's uncaught exceptions.
struct Page {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next_id: u64,
    exceptions: Vec<String>,
}

impl Page {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.ws.send(tungstenite::Message::Text(json!({"id": id, "method": method, "params": params}).to_string().into())).unwrap();
        loop {
            let msg = self.ws.read().expect("DevTools connection");
            let tungstenite::Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["method"] == "Runtime.exceptionThrown" {
                self.exceptions.push(v["params"]["exceptionDetails"].to_string());
            }
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}));
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is true (at most `timeout_s`).
    fn wait_for(&mut self, expression: &str, timeout_s: f64) {
        let until = Instant::now() + Duration::from_secs_f64(timeout_s);
        while self.eval(expression) != json!(true) {
            let shown = self.eval("location.href + ': ' + document.getElementById('state')?.textContent + ' | ' + document.getElementById('log')?.textContent");
            assert!(Instant::now() < until, "never true: {expression} (page: {shown})");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn text(&mut self, id: &str) -> String {
        self.eval(&format!("document.getElementById('{id}').textContent")).as_str().unwrap_or("").to_string()
    }
}

#[test]
fn dashboard_in_headless_chromium_shows_live_data_disarms_and_survives_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let rig = SimRig::new("dashboard");
    let rig_path =
        write(dir.path(), "rig.toml", &long_lead_in(&rig.toml("lqr", "events", "events", "", "[model.task_id]\nenabled = true")));
    let report_path = dir.path().join("report.json");
    let session =
        LiveSession::start(&["run", "--rig", rig_path.to_str().unwrap(), "--bins", "9000", "--report", report_path.to_str().unwrap()]);
    // The test's own LSL inlet on the Control stream, from before bin 0.
    let control = record::<f32>(&rig.control);
    let browser = Browser::start();
    let mut page = browser.page();
    page.call("Page.navigate", json!({"url": session.url("/")}));
    // Navigation answers before the new document is there.
    page.wait_for("location.protocol === 'http:' && document.readyState === 'complete' && !!document.getElementById('frames')", 30.0);
    // Frames come from before bin 0 on (the lead-in); wait for a few seconds of bins.
    page.wait_for(
        "Number(document.getElementById('bin').textContent) > 150 && Number(document.getElementById('frames').textContent) > 45",
        60.0,
    );

    // Every panel has something drawn, and the numbers are there.
    let drawn = page.eval(
        "['rates','latent','control','latency','events','embedding'].map(id => { const c = document.getElementById(id); \
         const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; \
         for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; })",
    );
    let log = page.text("log");
    for (panel, pixels) in ["rates", "latent", "control", "latency", "events", "embedding"].iter().zip(drawn.as_array().unwrap()) {
        assert!(pixels.as_u64().unwrap() > 100, "the {panel} panel drew nothing: {drawn} (page log: {log})");
    }
    assert!(page.text("latent-legend").starts_with("x = ["), "{}", page.text("latent-legend"));
    assert!(page.text("rig").contains("N 96"), "{}", page.text("rig"));
    assert_eq!(page.text("gate"), "ARMED");
    let shot = page.call("Page.captureScreenshot", json!({"format": "png"}));
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 30_000, "a screenshot of {} bytes", png.len());
    let shot_path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&shot_path, &png).unwrap();
    eprintln!("dashboard screenshot: {}", shot_path.display());

    // Disarm from the page: the reply names the bin, and from then on the safe zero goes out.
    page.eval("document.getElementById('disarm').click()");
    page.wait_for("document.getElementById('log').textContent.includes('disarm → took effect at bin')", 10.0);
    let log = page.text("log");
    let disarmed_at: u64 =
        log.split("disarm → took effect at bin ").nth(1).unwrap().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
    page.wait_for("document.getElementById('gate').textContent === 'DISARMED'", 10.0);
    session.status_when(10.0, |s| s["bin"].as_u64().is_some_and(|b| b > disarmed_at + 50));

    // Stop from the page (two clicks); the page shows the end and keeps working.
    page.eval("document.getElementById('stop').click()");
    page.eval("document.getElementById('stop-confirm').click()");
    page.wait_for("document.getElementById('log').textContent.includes('stop → took effect at bin')", 10.0);
    let (status, _, stderr) = session.wait();
    assert!(status.success(), "{stderr}");
    page.wait_for("document.getElementById('state').textContent === 'session ended'", 10.0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(page.text("gate"), "SESSION ENDED");
    assert_eq!(page.eval("document.title"), json!("neuroloop — live session"), "the page is still there");
    assert!(page.exceptions.is_empty(), "the page threw: {:?}", page.exceptions);

    // On the LSL inlet: commands went out while armed; the safe zero from the disarm on
    // (each channel steps at most 0.25 per bin from within ±1: zero 4 bins later).
    let r = report(&report_path);
    let bins = r["bins"].as_u64().unwrap();
    let samples = control.join().unwrap();
    assert!(!samples.is_empty(), "the inlet received nothing");
    let last_ts = samples.last().unwrap().0;
    let bin_of = |ts: f64| bins as i64 - 1 - ((last_ts - ts) / 0.01).round() as i64;
    let armed_nonzero = samples.iter().filter(|(ts, u)| bin_of(*ts) < disarmed_at as i64 && u.iter().any(|v| *v != 0.0)).count();
    assert!(armed_nonzero > 100, "the controller was acting before the disarm ({armed_nonzero} non-zero samples)");
    let after: Vec<_> = samples.iter().filter(|(ts, _)| bin_of(*ts) >= disarmed_at as i64 + 4).collect();
    assert!(after.len() > 40, "{} samples after the disarm", after.len());
    for (ts, u) in after {
        assert!(u.iter().all(|v| *v == 0.0), "bin {}: {u:?} went out after the disarm at bin {disarmed_at}", bin_of(*ts));
    }
    assert_eq!(r["commands"]["accepted"].as_u64(), Some(2), "disarm and stop: {}", r["commands"]);
}
