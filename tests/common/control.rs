//! A live `neuroloop run` with its control plane, and a real HTTP client for it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `neuroloop run ARGS --control 127.0.0.1:0 --quiet`, started and waited for until its
/// control plane says where it listens.
pub struct LiveSession {
    pub child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    stderr: std::thread::JoinHandle<String>,
}

impl LiveSession {
    pub fn start(args: &[&str]) -> LiveSession {
        LiveSession::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> LiveSession {
        let mut cmd = Command::new(super::bin());
        cmd.args(args).args(["--quiet"]).stdout(Stdio::piped()).stderr(Stdio::piped());
        if !args.contains(&"--control") {
            cmd.args(["--control", "127.0.0.1:0"]);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start neuroloop");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("dashboard http://").nth(1) {
                    let _ = tx.try_send(rest.split('/').next().unwrap_or("").to_string());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the session never reported its control plane:\n{}", stderr.join().unwrap());
            }
        };
        LiveSession { child, addr, stderr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The status until `pred` holds (at most `timeout_s`).
    pub fn status_when(&self, timeout_s: f64, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let until = Instant::now() + Duration::from_secs_f64(timeout_s);
        loop {
            let (code, s) = http_get(&self.url("/api/status"), None);
            assert_eq!(code, 200, "GET /api/status: {s}");
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < until, "the status never got there: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the process to end (at most 60 s); its status, stdout and stderr.
    pub fn wait(mut self) -> (ExitStatus, String, String) {
        let until = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                break self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut o, &mut out);
        }
        let err = self.stderr.join().unwrap();
        eprintln!("--- neuroloop (live session): {status}\n{err}");
        (status, out, err)
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(20))).build().new_agent()
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, serde_json::Value) {
    let mut r = r.expect("the control plane did not answer");
    let code = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (code, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// GET `url` (with `Authorization: Bearer TOKEN`): status code and JSON body.
pub fn http_get(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = agent().get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    answer(req.call())
}

/// GET `url` with these headers: status code and JSON body.
pub fn http_get_with(url: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    answer(req.call())
}

/// POST `body` as JSON to `url`: status code and JSON body.
pub fn http_post(url: &str, body: &str) -> (u16, serde_json::Value) {
    http_post_with(url, body, &[("Content-Type", "application/json")])
}

pub fn http_post_with(url: &str, body: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut req = agent().post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    answer(req.send(body))
}

/// GET `url`'s JSON if it answers 200.
pub fn http_get_ok(url: &str) -> Option<serde_json::Value> {
    let r = agent().get(url).call().ok()?;
    let mut r = r;
    if r.status().as_u16() != 200 {
        return None;
    }
    serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()
}
