//! Scenarios and fuzzing: generated agent traffic, closed-loop
//! simulation against a policy, invariants, and the invariant fuzzer.
//!
//! Data path: [`model`] loads a scenario file; [`sim`] plans its calls
//! (deterministic per seed) and, given a policy, simulates them closed-loop —
//! each call decided by the same core as the live proxy and refusals answered
//! by the agent's reaction; [`invariants`] checks decided calls; [`fuzz`]
//! searches for call sequences that break an invariant and shrinks them.

pub mod fuzz;
pub mod invariants;
pub(crate) mod model;
pub mod sim;

pub use model::Scenario;
