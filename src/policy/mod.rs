//! Policy v1: the file format (a strict superset of PolicyLayer Intercept's)
//! and the decision core.
//!
//! Data path: [`yaml`] turns text into a position-carrying tree, [`load`]
//! validates it into an immutable [`Policy`], and [`Policy::decide`] (in
//! [`engine`]) answers one [`Call`] at a time against a mutable
//! [`PolicyState`] (in [`state`]). The core never reads a clock: the live proxy
//! and replay both pass the call's time in, so one implementation of every
//! rule serves both.

pub(crate) mod call;
pub(crate) mod canonical;
pub(crate) mod condition;
pub(crate) mod engine;
pub(crate) mod error;
pub(crate) mod instances;
pub(crate) mod load;
pub(crate) mod model;
pub mod pins;
pub(crate) mod state;
pub(crate) mod vocab;
pub(crate) mod yaml;

pub use call::Call;
pub use engine::{ApprovalMode, DEFAULT_DENY_RULE, HIDDEN_RULE, STORE_UNAVAILABLE_RULE};
pub use engine::{Decision, Guard};
pub use error::{PolicyError, Problem};
pub use model::{CallReads, Policy, ToolRoute};
pub use state::{
    CounterStore, Exhausted, PolicyState, Reservation, ReserveError, StoreError, Want,
};
pub use vocab::{Category, Outcome, Risk, Verdict};
