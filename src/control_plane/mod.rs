//! The control plane: how an operator acts on a running session. So far its command
//! grammar ([`command`]), shared by every interface to come (HTTP, WebSocket, LSL Markers)
//! and checked against the session before anything changes.

pub mod command;
