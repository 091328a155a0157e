//! The control plane's HTTP server (axum on a tokio runtime of its own thread, never the
//! loop's or the emitter's): the dashboard page, `GET /api/status`, `GET /api/config`,
//! `POST /api/commands` and the WebSocket `GET /api/stream`. docs/control.md has the API.
//!
//! Guarded as a lab instrument must be: loopback by default, a bearer token required off
//! loopback, no CORS (and cross-origin requests refused outright, so a web page in the
//! operator's browser cannot drive the rig), JSON only, bodies size-limited, commands
//! rate-limited by the dispatcher. A client that floods, stalls or disconnects costs the
//! server a task, never the loop — and never locks the operator out:
//! - a request's headers must arrive within [`HEADER_TIMEOUT`] of its connection being
//!   ready for them, a command's body within [`BODY_TIMEOUT`]; a client that sends half a
//!   request and waits is closed (or answered 408), not waited for;
//! - a half-sent request holds no slot: the page, the status and the config are answered at
//!   once, commands and WebSocket streams take a slot of their own kind only once their
//!   request is whole, so streams cannot starve commands and stalled requests starve
//!   neither; only the number of open connections is capped ([`MAX_OPEN_CONNECTIONS`]);
//! - a WebSocket client gets the newest frame, never a backlog: each frame is followed by a
//!   ping, a client more than [`MAX_FRAMES_IN_FLIGHT`] frames behind is skipped (counted),
//!   and one that answers no ping for [`SLOW_CLIENT`] is dropped (counted);
//! - every refusal is counted in the report (`commands.*`).

use super::dispatch::{Dispatcher, Refusal, ServerEvent, Source};
use crate::telemetry::live::{LiveFrame, LiveShared, FRAME_RATE};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The dashboard: one page, its script and styles inline, drawn on canvas by its own code.
const DASHBOARD: &str = include_str!("dashboard.html");

/// A WebSocket client that has not taken a frame (answered its ping) for this long is dropped.
pub const SLOW_CLIENT: Duration = Duration::from_secs(2);

/// Frames sent to a WebSocket client and not yet answered, beyond which newer frames wait
/// (the client gets the newest one once it has caught up).
pub const MAX_FRAMES_IN_FLIGHT: u64 = 2;

/// A request's headers (and an idle connection's next request) must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// A command's body must arrive within this once its headers have.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections open at once; more are closed on arrival (counted). Each costs a task and a
/// socket until its timeouts close it.
pub const MAX_OPEN_CONNECTIONS: usize = 512;

/// WebSocket clients at once (the page, a script or two; never a crowd); more get 503.
const MAX_STREAMS: usize = 32;

/// Commands being applied at once (each waits a bin or so for its stage); more get 503.
/// Apart from the streams' slots, so a full house of dashboards never blocks a disarm.
const MAX_COMMANDS_IN_FLIGHT: usize = 16;

pub struct ServerSetup {
    /// Bound by the session (so that a busy port is an error before the run starts).
    pub listener: std::net::TcpListener,
    pub dispatcher: Arc<Dispatcher>,
    pub live: Arc<LiveShared>,
    /// `GET /api/config`: the resolved rig and the session's dimensions and limits.
    pub config: serde_json::Value,
    /// Required as `Authorization: Bearer …` (or `?token=…` for the page and the WebSocket).
    pub token: Option<String>,
}

/// The running server; [`ControlServer::stop`] ends it.
pub struct ControlServer {
    pub addr: SocketAddr,
    shutdown: Arc<tokio::sync::Notify>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ControlServer {
    pub fn start(setup: ServerSetup) -> anyhow::Result<ControlServer> {
        let addr = setup.listener.local_addr()?;
        setup.listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let shutdown = Arc::new(tokio::sync::Notify::new());
        let ended = shutdown.clone();
        let state = Arc::new(AppState {
            dispatcher: setup.dispatcher,
            live: setup.live,
            config: setup.config,
            token: setup.token,
            open: Arc::new(tokio::sync::Semaphore::new(MAX_OPEN_CONNECTIONS)),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
            commands_in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_COMMANDS_IN_FLIGHT)),
            closing: tokio::sync::watch::channel(false).0,
        });
        let handle = std::thread::Builder::new().name("neuroloop-control".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(setup.listener) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("[neuroloop] control plane: {e}");
                        return;
                    }
                };
                let closing = state.closing.clone();
                let app = router(state.clone());
                tokio::select! {
                    _ = serve(listener, app, state) => {}
                    _ = ended.notified() => {
                        // WebSocket clients get the session's last frame and a close.
                        let _ = closing.send(true);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            });
            runtime.shutdown_timeout(Duration::from_millis(500));
        })?;
        Ok(ControlServer { addr, shutdown, handle: Some(handle) })
    }

    /// Stop serving (after the session's last frame has gone out to WebSocket clients).
    pub fn stop(mut self) {
        self.shutdown.notify_one();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shutdown.notify_one();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Accepts connections and serves each on hyper's HTTP/1 with the header timeout (what
/// `axum::serve` does, plus the timeout and the cap on open connections).
async fn serve(listener: tokio::net::TcpListener, app: Router, state: Arc<AppState>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of file descriptors or the like: the next accept may work.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(slot) = state.open.clone().try_acquire_owned() else {
            state.dispatcher.count_server(ServerEvent::ConnectionRefused);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // Whether the connection ever completed a request: a timeout after one is an idle
        // keep-alive connection closing, not a refusal.
        let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = served.clone();
        let app = hyper_util::service::TowerToHyperService::new(app.clone());
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            seen.store(true, std::sync::atomic::Ordering::Relaxed);
            hyper::service::Service::call(&app, request)
        });
        let state = state.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                if e.is_timeout() && !served.load(std::sync::atomic::Ordering::Relaxed) {
                    state.dispatcher.count_server(ServerEvent::TimedOut);
                }
            }
            drop(slot);
        });
    }
}

struct AppState {
    dispatcher: Arc<Dispatcher>,
    live: Arc<LiveShared>,
    config: serde_json::Value,
    token: Option<String>,
    /// Open connections (a slot from accept to close).
    open: Arc<tokio::sync::Semaphore>,
    /// WebSocket clients.
    streams: Arc<tokio::sync::Semaphore>,
    /// Commands being applied.
    commands_in_flight: Arc<tokio::sync::Semaphore>,
    /// Set when the session ends: WebSocket handlers send their last frame and close.
    closing: tokio::sync::watch::Sender<bool>,
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/status", get(status))
        .route("/api/config", get(config))
        .route("/api/commands", post(commands))
        .route("/api/stream", get(stream))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// A JSON error body: `{"error": {"field": …, "message": …}}`.
fn error(status: StatusCode, field: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": { "field": field, "message": message.into() } });
    (status, Json(body)).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "path",
        "no such endpoint; the API is GET /api/status, GET /api/config, POST /api/commands, GET /api/stream",
    )
}

/// Every request: same-origin only, and the token when the session has one.
async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let is_command = request.uri().path() == "/api/commands" || request.uri().path() == "/api/stream";
    let refused = |r: Response| {
        if is_command {
            state.dispatcher.count_refused_request();
        }
        r
    };
    if let Some(refusal) = cross_origin(headers) {
        return refused(refusal);
    }
    // Without a token the server is loopback-only, and so must be the name it is reached
    // by: a page that rebinds its own host name to 127.0.0.1 (DNS rebinding) is refused.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if state.token.is_none() && !loopback_host(host) {
        return refused(error(
            StatusCode::FORBIDDEN,
            "host",
            format!("this session answers to 127.0.0.1, localhost or [::1] only (Host: {host}); off loopback it needs a token"),
        ));
    }
    if let Some(token) = &state.token {
        // A browser's WebSocket cannot send headers: the page and the stream take `?token=`.
        let path = request.uri().path();
        let query_token = (path == "/" || path == "/api/stream")
            .then(|| request.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token="))).map(percent_decode))
            .flatten();
        let query_token = query_token.as_deref();
        let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if !bearer.or(query_token).is_some_and(|t| same_secret(t.as_bytes(), token.as_bytes())) {
            let mut r = error(StatusCode::UNAUTHORIZED, "authorization", "this session needs its token: Authorization: Bearer <token>");
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return refused(r);
        }
    }
    let mut response = next.run(request).await;
    // The page and the API are never to be framed or sniffed by another site.
    let h = response.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    response
}

/// A request a browser sent on behalf of another site (its `Origin` is not this server):
/// refused, so no page elsewhere can command the rig (no CORS, and not even a blind POST).
fn cross_origin(headers: &HeaderMap) -> Option<Response> {
    let origin = headers.get(header::ORIGIN)?.to_str().ok().unwrap_or("");
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest.trim_end_matches('/'));
    (origin_host.is_empty() || origin_host != host)
        .then(|| error(StatusCode::FORBIDDEN, "origin", format!("cross-origin requests are refused (Origin {origin}, this server {host})")))
}

/// The Host header names this machine's loopback (any port).
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A query parameter's value, percent-decoded (`+` is a space, as a form encodes it).
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi * 16 + lo);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compares without an early exit (the token is a secret).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

/// `GET /api/status`: the newest live frame, the control plane's settings and its counts.
#[derive(Serialize)]
struct Status<'a> {
    #[serde(flatten)]
    frame: &'a LiveFrame,
    settings: super::dispatch::Settings,
    commands: super::dispatch::CommandCounts,
}

fn status_json(state: &AppState) -> String {
    let frame = state.live.latest();
    let s = Status { frame: &frame, settings: state.dispatcher.settings(), commands: state.dispatcher.counts() };
    serde_json::to_string(&s)
        .unwrap_or_else(|e| serde_json::json!({ "error": { "field": "status", "message": e.to_string() } }).to_string())
}

async fn status(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], status_json(&state)).into_response()
}

async fn config(State(state): State<Arc<AppState>>) -> Response {
    Json(state.config.clone()).into_response()
}

/// `POST /api/commands`: 202 with the bin the command took effect at, or the refusal.
async fn commands(State(state): State<Arc<AppState>>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    if !json {
        state.dispatcher.count_refused_request();
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "content-type", "commands are JSON: send Content-Type: application/json");
    }
    // The body within its time and size, or a refusal; a stalled body holds no slot.
    let limit = super::command::MAX_COMMAND_BYTES;
    let body = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            state.dispatcher.count_refused_request();
            // Too long, or the client went away mid-body.
            if std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("length limit"))
                || e.to_string().contains("length limit")
            {
                return error(StatusCode::PAYLOAD_TOO_LARGE, "body", format!("a command is at most {limit} bytes of JSON"));
            }
            return error(StatusCode::BAD_REQUEST, "body", format!("the body could not be read: {e}"));
        }
        Err(_) => {
            state.dispatcher.count_refused_request();
            state.dispatcher.count_server(ServerEvent::TimedOut);
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "body",
                format!("the body did not arrive within {} s of the headers", BODY_TIMEOUT.as_secs()),
            );
        }
    };
    let Ok(_slot) = state.commands_in_flight.clone().try_acquire_owned() else {
        state.dispatcher.count_refused_request();
        state.dispatcher.count_server(ServerEvent::Busy);
        return error(StatusCode::SERVICE_UNAVAILABLE, "connection", "too many commands in flight at once; try again shortly");
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    let dispatcher = state.dispatcher.clone();
    // The dispatcher waits (a bin or so) for the loop or the emitter to take the command.
    let outcome = tokio::task::spawn_blocking(move || dispatcher.submit_json(Source::Http, &body)).await;
    match outcome {
        Ok(Ok(a)) => (StatusCode::ACCEPTED, Json(serde_json::json!({ "id": a.id, "applied_at_bin": a.applied_at_bin }))).into_response(),
        Ok(Err(refusal)) => refusal_response(&refusal),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "command", format!("the command was lost: {e}")),
    }
}

fn refusal_response(refusal: &Refusal) -> Response {
    let status = match refusal {
        Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
        Refusal::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let e = refusal.error();
    error(status, &e.field, e.message.clone())
}

/// `GET /api/stream`: a WebSocket of status frames, the newest only, at most `FRAME_RATE`
/// a second. Text frames from the client are commands (same grammar as the POST), each
/// answered with `{"reply": …}`.
async fn stream(State(state): State<Arc<AppState>>, ws: WebSocketUpgrade) -> Response {
    // A WebSocket holds a stream slot for as long as it is open.
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        state.dispatcher.count_server(ServerEvent::Busy);
        return error(StatusCode::SERVICE_UNAVAILABLE, "connection", "too many live views at once; try again shortly");
    };
    ws.max_message_size(super::command::MAX_COMMAND_BYTES).on_upgrade(move |socket| async move {
        stream_frames(socket, state).await;
        drop(permit);
    })
}

async fn stream_frames(mut socket: WebSocket, state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / FRAME_RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut closing = state.closing.subscribe();
    let mut sent_seq = 0;
    let mut skipped_seq = 0;
    // Each frame is followed by a ping carrying its number; the client's pong says it has
    // read up to there (a WebSocket is in order). Unanswered pings, oldest first.
    let mut next_ping = 0u64;
    let mut unanswered: std::collections::VecDeque<(u64, tokio::time::Instant)> = std::collections::VecDeque::new();
    let dispatcher = state.dispatcher.clone();
    loop {
        // Biased: the session's end first, then what the client sent (its pongs), then the
        // clock — so a pong that has arrived is read before the client is judged slow.
        tokio::select! {
            biased;
            _ = closing.changed() => {
                // The session ended: its last frame, then goodbye.
                let _ = send_or_drop(&mut socket, status_json(&state)).await;
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Pong(payload))) => {
                    if let Ok(bytes) = <[u8; 8]>::try_from(&payload[..]) {
                        let answered = u64::from_le_bytes(bytes);
                        while unanswered.front().is_some_and(|(k, _)| *k <= answered) {
                            unanswered.pop_front();
                        }
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    let dispatcher = state.dispatcher.clone();
                    let text = text.to_string();
                    let reply = match tokio::task::spawn_blocking(move || dispatcher.submit_json(Source::Websocket, &text)).await {
                        Ok(Ok(a)) => serde_json::json!({ "reply": { "id": a.id, "applied_at_bin": a.applied_at_bin } }),
                        Ok(Err(r)) => serde_json::json!({ "reply": { "error": r.error() } }),
                        Err(_) => serde_json::json!({ "reply": { "error": { "field": "command", "message": "lost" } } }),
                    };
                    if !send_or_drop(&mut socket, reply.to_string()).await {
                        return;
                    }
                    // No pong could be read while the command was applied: the wait is
                    // not the client's.
                    let now = tokio::time::Instant::now();
                    unanswered.iter_mut().for_each(|(_, at)| *at = now);
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {} // pings are answered by the library; binary is ignored
            },
            _ = tick.tick() => {
                if unanswered.front().is_some_and(|(_, at)| at.elapsed() > SLOW_CLIENT) {
                    // Not reading: dropped, so it never gets a backlog when it reads again.
                    dispatcher.count_server(ServerEvent::SlowClientDropped);
                    let _ = tokio::time::timeout(Duration::from_millis(100), socket.send(Message::Close(None))).await;
                    return;
                }
                let seq = state.live.seq();
                if seq == sent_seq {
                    continue;
                }
                if unanswered.len() as u64 >= MAX_FRAMES_IN_FLIGHT {
                    // Behind: this frame is stale before it could be read; the newest goes
                    // out once the client catches up.
                    if seq != skipped_seq {
                        skipped_seq = seq;
                        dispatcher.count_server(ServerEvent::StaleFrameSkipped);
                    }
                    continue;
                }
                sent_seq = seq;
                next_ping += 1;
                if !send_or_drop(&mut socket, status_json(&state)).await
                    || !matches!(tokio::time::timeout(SLOW_CLIENT, socket.send(Message::Ping(next_ping.to_le_bytes().to_vec().into()))).await, Ok(Ok(())))
                {
                    dispatcher.count_server(ServerEvent::SlowClientDropped);
                    return;
                }
                unanswered.push_back((next_ping, tokio::time::Instant::now()));
            }
        }
    }
}

/// Sends, or gives up on a client that does not take it within `SLOW_CLIENT`.
async fn send_or_drop(socket: &mut WebSocket, text: String) -> bool {
    matches!(tokio::time::timeout(SLOW_CLIENT, socket.send(Message::Text(text.into()))).await, Ok(Ok(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_and_query_decoding() {
        for h in ["127.0.0.1:7878", "localhost:80", "LOCALHOST", "[::1]:7878", "127.0.0.2:1", "127.0.0.1"] {
            assert!(loopback_host(h), "{h}");
        }
        for h in ["evil.example:7878", "10.0.0.1:7878", "", "[::2]:1", "localhost.evil.example:7878"] {
            assert!(!loopback_host(h), "{h}");
        }
        assert_eq!(percent_decode("a%2Bb%3D%3d+c"), "a+b== c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%E2%9C%93"), "✓");
    }
}
