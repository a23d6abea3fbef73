//! Shared counter homes outside the process.
//!
//! The decision core reaches counters only through
//! [`crate::policy::CounterStore`]. Three homes implement it:
//!
//! - in memory ([`crate::policy::PolicyState`]): replay, the fuzzer, and a
//!   proxy without `--state`;
//! - in memory, warm-started from the audit log
//!   ([`crate::replay::warm::warm_state`]): the same type, filled at start
//!   by replaying the log's last window through the core, so a restart
//!   changes no decision;
//! - in Redis or Valkey ([`redis::RedisStore`], `--state redis://…`): one
//!   set of counters for every proxy replica that points at it.
//!
//! This module holds the shared one and its wire client; it depends on the
//! policy module (the trait, the counter definitions), never the reverse.

pub mod redis;
pub(crate) mod resp;
