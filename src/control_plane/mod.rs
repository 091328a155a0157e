//! The control plane: how an operator acts on a running session. One command grammar
//! ([`command`]) for every interface, checked against the session before anything changes;
//! one path into the session ([`dispatch`]): the loop and the emitter take each command at a
//! known bin through preallocated lock-free queues, and every command is journaled into the
//! recording.

pub mod command;
pub mod dispatch;
pub mod http;
pub mod markers;

pub use command::{CommandError, Request, SessionLimits};
pub use dispatch::{Accepted, CommandCounts, CommandRecord, Dispatcher, DispatcherSetup, Refusal, Settings, Source};

use crate::rig::Rig;
use anyhow::{bail, Context};

/// Binds the control plane's address (before the session starts anything, so that a busy
/// port is a clear error) and resolves its bearer token: from `[control] token_env`, else
/// `token_file`. Off loopback a token is required.
pub fn bind(rig: &Rig, addr: &str) -> anyhow::Result<(std::net::TcpListener, Option<String>)> {
    let c = &rig.control;
    let sock: std::net::SocketAddr =
        addr.parse().with_context(|| format!("control plane address `{addr}`: expected an address and port such as 127.0.0.1:7878"))?;
    let token = match std::env::var(&c.token_env) {
        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
        _ => match &c.token_file {
            Some(p) => {
                let path = if p.is_absolute() { p.clone() } else { rig.path.parent().unwrap_or(std::path::Path::new(".")).join(p) };
                let t = std::fs::read_to_string(&path)
                    .with_context(|| format!("rig file {}: `control.token_file`: cannot read {}", rig.path.display(), path.display()))?;
                if t.trim().is_empty() {
                    bail!("rig file {}: `control.token_file`: {} is empty", rig.path.display(), path.display());
                }
                Some(t.trim().to_string())
            }
            None => None,
        },
    };
    if token.is_none() && !sock.ip().is_loopback() {
        bail!(
            "the control plane would listen on {sock}, which is not loopback: that needs a bearer token (set the environment variable {} or `control.token_file` in the rig file), or listen on 127.0.0.1",
            c.token_env
        );
    }
    let listener = std::net::TcpListener::bind(sock).with_context(|| {
        format!("the control plane cannot listen on {sock} (is another session running?); pass --control 127.0.0.1:<port> (0: any free port) or --no-control")
    })?;
    Ok((listener, token))
}

/// `GET /api/config`: the resolved rig file, and what the session derived from it.
pub fn session_config(rig: &Rig, limits: &SessionLimits, backend: &str, model: &str) -> serde_json::Value {
    serde_json::json!({
        "rig": rig,
        "rig_file": rig.path.display().to_string(),
        "backend": backend,
        "model": model,
        "dims": { "n_units": limits.n_units, "latent": limits.latent, "control": limits.control, "tasks": limits.tasks },
        "limits": { "lower": limits.lower, "upper": limits.upper, "max_step": limits.max_step },
        "probe": limits.probe,
        "commands": command::COMMANDS,
    })
}
