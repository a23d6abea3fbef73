//! The live proxy: enforces a policy on MCP traffic and records every
//! request. [`jsonrpc`] reads only the envelope of each frame (the rest is
//! forwarded as raw bytes); [`stdio`] runs the stdio transport. The
//! Streamable HTTP proxy and the stdio-to-HTTP bridge come next and will
//! share the same decision and recording path.

pub mod jsonrpc;
pub mod scan;
pub mod stdio;

pub use stdio::{ProxyConfig, ProxyError, name_heuristic, run};
