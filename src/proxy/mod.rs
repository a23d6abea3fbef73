//! The live proxy: enforces a policy on MCP traffic and records every
//! request.
//!
//! Data path, one module per part:
//! - [`jsonrpc`] reads only the envelope of each frame (the rest is
//!   forwarded as raw bytes);
//! - [`gateway`] is what one proxy process shares: the enforced policy and
//!   its counters (swapped as one unit on reload), shadow policies, the
//!   audit recorder;
//! - [`session`] is the per-session pipeline: it decides what happens to
//!   each client frame (forward, answer, hold) and each server frame, and
//!   writes the audit rows;
//! - transports around sessions, knowing no policy: [`stdio`] (framing,
//!   the child process, threads and signals) and `http` (a Streamable HTTP
//!   reverse proxy on tokio and hyper: listening, identity, sessions by
//!   header, JSON and SSE bodies), its upstream either an HTTP server or
//!   stdio server processes (`child`: one per session).
//!
//! [`pins`] holds tool definitions to what was pinned (`--pins`, or trust
//! on first use) and hides or refuses what changed; [`scan`] lists a
//! server's tools for a starter policy and for `flightrec pins`.

pub mod approval;
pub(crate) mod body;
pub(crate) mod bridge;
pub(crate) mod child;
mod error;
pub(crate) mod gateway;
pub(crate) mod http;
pub(crate) mod jsonrpc;
pub mod pins;
pub(crate) mod scan;
pub(crate) mod session;
pub(crate) mod sse;
pub(crate) mod stdio;

pub use error::ProxyError;
pub use gateway::{Gateway, GatewayConfig};
pub use http::{HttpConfig, WebOrigin};
pub use session::{ClientAction, Session, Transport};
pub use stdio::{ProxyConfig, run};

type ExitHook = Box<dyn FnOnce() + Send>;
static EXIT_HOOKS: std::sync::Mutex<Vec<ExitHook>> = std::sync::Mutex::new(Vec::new());

/// Work to do once the proxy has stopped and sealed its audit file (the
/// audit shipper's last pass), whether the transport returns or ends the
/// process from a signal handler thread.
pub fn at_exit(hook: impl FnOnce() + Send + 'static) {
    EXIT_HOOKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(hook));
}

/// Runs (once) what [`at_exit`] registered.
pub fn run_exit_hooks() {
    let hooks = std::mem::take(&mut *EXIT_HOOKS.lock().unwrap_or_else(|e| e.into_inner()));
    for hook in hooks {
        hook();
    }
}
