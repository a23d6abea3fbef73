//! flightrec: a policy proxy, flight recorder and simulator for MCP tool calls.
//!
//! The crate is laid out along the data's path:
//! - [`policy`]: the policy format and the pure decision core (one core, two
//!   clocks: the live proxy passes wall time, replay passes recorded time);
//! - [`eval`]: decisions for JSONL call streams (`flightrec policy eval`);
//! - [`cli`]: the command line, which turns library errors into reports.
//!
//! The audit log, the proxy, replay and scenarios arrive as their own modules.

pub mod audit;
pub mod cli;
pub mod eval;
pub mod policy;
pub mod proxy;
pub mod replay;
pub mod scenario;
pub mod time;
