//! flightrec: a policy proxy, flight recorder and simulator for MCP tool calls.
//!
//! The crate is laid out along the data's path, one module per stage:
//! - [`time`]: the one unit of time (µs since the Unix epoch, UTC);
//! - [`policy`]: the policy format and the pure decision core (one core, two
//!   clocks: the live proxy passes wall time, replay passes recorded time),
//!   with counters behind [`policy::CounterStore`];
//! - [`audit`]: the Parquet audit log (schema, hash chain, crash-safe
//!   recorder, readers, verification, export and import);
//! - [`proxy`]: the live proxy (a transport-independent gateway and session
//!   pipeline, and the stdio transport);
//! - [`replay`]: what-if replay of recorded and generated sessions against
//!   candidate policies;
//! - [`scenario`]: scenarios, invariants and the fuzzer;
//! - `cli` (private): the command line, the only place errors become exit
//!   codes; the binary calls [`main`].
//!
//! The public API is what the binary, the integration tests and the
//! benchmarks use; everything else is crate-private, so the compiler reports
//! code nothing uses. docs/architecture.md states the dependency rules.
//!
//! The module docs describe each stage's crate-private parts and link to
//! them: read them with `cargo doc --document-private-items --open`.

// Module docs link to the crate-private parts they describe; those links
// resolve with `--document-private-items`, the way this crate is meant to
// be read.
#![allow(rustdoc::private_intra_doc_links)]

pub mod audit;
mod cli;
mod eval;
pub mod policy;
pub mod progress;
pub mod proxy;
pub mod replay;
pub mod scenario;
pub mod store;
#[cfg(test)]
mod test_support;
pub mod time;

pub use cli::main;
