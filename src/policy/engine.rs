//! The decision core: one pure function of (policy, counter state, call,
//! time). The live proxy calls it with the wall clock, replay with recorded or
//! generated time; there is no other implementation of any rule.
//!
//! Evaluation order (one path for every policy form):
//! 1. `hide` → deny `(hidden)`;
//! 2. `default: deny` and the tool not listed → deny `(default deny)`;
//! 3. the call's rules in order (its exact key, else its first matching glob
//!    key, then `"*"`), skipping rules whose `when` fails: the first rule that
//!    stops the call decides (`deny` → deny, `require_approval` → approval,
//!    an `evaluate` rule with a failing condition → deny);
//! 4. the counters of the rules that applied are reserved in the same order;
//!    the first that would pass its limit makes the call a throttle and names
//!    its rule (reservations already taken are released);
//! 5. otherwise allow, holding the reservations until the outcome is known.

use crate::policy::call::Call;
use crate::policy::condition::{Condition, PathRef, resolve_args, resolve_call_str};
use crate::policy::model::{Action, Amount, Policy, Rule, Scope, ToolRoute, WindowMode};
use crate::policy::state::{CounterStore, MAX_AMOUNT, Reservation, ReserveError, StoreError, Want};
use crate::policy::vocab::{Outcome, Verdict};
use serde_json::Value;
use smallvec::SmallVec;
use std::sync::Arc;

/// The core's answer for one call.
///
/// An allowed call may hold counter reservations; hand the decision's
/// [`Reservation`] back to [`crate::policy::PolicyState::settle`] once the
/// upstream outcome is known (or drop it to keep the counts, which is what a
/// success does).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The rule that decided: a rule name, `(hidden)` or `(default deny)`.
    /// `None` for an allow that no rule had to approve.
    pub rule: Option<Arc<str>>,
    pub message: Option<Arc<str>>,
    /// For throttles: milliseconds until the call would fit.
    pub retry_after_ms: Option<u64>,
    /// For a throttle by a runaway guard: which kind stopped the call.
    pub guard: Option<Guard>,
    pub reservation: Reservation,
}

/// The runaway guards: rules that stop what an agent repeats rather than
/// how much it calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    /// `repeat_limit`: too many identical calls in the window.
    RepeatLimit,
    /// `circuit_breaker`: the circuit is open (or half-open with its trial
    /// call in flight).
    CircuitBreaker,
}

impl Guard {
    pub fn as_str(self) -> &'static str {
        match self {
            Guard::RepeatLimit => "repeat_limit",
            Guard::CircuitBreaker => "circuit_breaker",
        }
    }
}

/// A rule's name or message in a [`Decided`]: borrowed from the policy, or
/// made for this call (a hidden tool's message, a store's error).
#[derive(Debug, Clone)]
pub(crate) enum Text<'p> {
    Policy(&'p Arc<str>),
    Made(Arc<str>),
}

impl Text<'_> {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Text::Policy(t) => t,
            Text::Made(t) => t,
        }
    }

    fn shared(self) -> Arc<str> {
        match self {
            Text::Policy(t) => t.clone(),
            Text::Made(t) => t,
        }
    }
}

/// A [`Decision`] as the core makes it, before it leaves the policy's
/// hands: the deciding rule's name and message are borrowed, so a caller
/// that only reads them (replay, deciding millions of calls) pays no
/// reference counting; the counts reserved for an allowed call are in the
/// caller's [`Reservation`] (see [`Policy::decide_in`]), so the decision
/// itself is small and returned without a copy of the reservation's
/// entries. [`Decision::from_parts`] makes the owned form.
#[derive(Debug)]
pub(crate) struct Decided<'p> {
    pub verdict: Verdict,
    pub rule: Option<Text<'p>>,
    pub message: Option<Text<'p>>,
    pub retry_after_ms: Option<u64>,
    pub guard: Option<Guard>,
}

impl<'p> Decided<'p> {
    const ALLOW: Decided<'static> = Decided {
        verdict: Verdict::Allow,
        rule: None,
        message: None,
        retry_after_ms: None,
        guard: None,
    };

    /// Refused by a rule of the policy.
    fn by(verdict: Verdict, rule: &'p Rule) -> Self {
        Decided {
            verdict,
            rule: Some(Text::Policy(&rule.name)),
            message: Some(Text::Policy(&rule.message)),
            ..Decided::ALLOW
        }
    }

    /// Refused with a name and message made for this call.
    fn made(verdict: Verdict, rule: Arc<str>, message: Arc<str>) -> Self {
        Decided {
            verdict,
            rule: Some(Text::Made(rule)),
            message: Some(Text::Made(message)),
            ..Decided::ALLOW
        }
    }
}

impl Decision {
    /// The owned decision: the core's [`Decided`] and the reservation it
    /// made (empty unless the call is allowed and counted).
    pub(crate) fn from_parts(d: Decided<'_>, reservation: Reservation) -> Decision {
        Decision {
            verdict: d.verdict,
            rule: d.rule.map(Text::shared),
            message: d.message.map(Text::shared),
            retry_after_ms: d.retry_after_ms,
            guard: d.guard,
            reservation,
        }
    }
}

/// What an `approval` verdict does to counters (replay's `--approvals`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalMode {
    /// Nobody said yes: the call reserves nothing (as live, while waiting)
    #[default]
    Deny,
    /// Count approval calls as allowed; the verdict stays `approval`
    Grant,
    /// Each call as its recording says: granted approvals count as
    /// allowed, every other call that needs approval (or has no recorded
    /// answer) as denied
    Recorded,
}

impl ApprovalMode {
    /// The mode for one recorded call: `Recorded` becomes `Grant` when its
    /// approval was granted, else `Deny`; the others stay.
    pub fn for_call(self, granted: bool) -> ApprovalMode {
        match self {
            ApprovalMode::Recorded if granted => ApprovalMode::Grant,
            ApprovalMode::Recorded => ApprovalMode::Deny,
            m => m,
        }
    }
}

/// How `require_approval` rules are taken in one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Approvals {
    /// Nobody said yes: the verdict is `approval`, nothing reserved.
    Deny,
    /// Replay's grant: evaluation goes on, the verdict stays `approval`.
    Grant,
    /// A human said yes to this very call: the rules are passed and the
    /// verdict is the rest of the policy's.
    Approved,
    /// A later round of a call already decided and counted: approval rules
    /// are passed and no counter is reserved (conditions still apply).
    Continuation,
}

impl From<ApprovalMode> for Approvals {
    fn from(mode: ApprovalMode) -> Approvals {
        match mode {
            // `Recorded` is resolved per call by the caller
            // (`ApprovalMode::for_call`); without a recording, nobody said yes.
            ApprovalMode::Deny | ApprovalMode::Recorded => Approvals::Deny,
            ApprovalMode::Grant => Approvals::Grant,
        }
    }
}

pub const HIDDEN_RULE: &str = "(hidden)";
pub const DEFAULT_DENY_RULE: &str = "(default deny)";
/// The rule a decision names when the counter store could not answer.
pub const STORE_UNAVAILABLE_RULE: &str = "(state store unavailable)";

impl std::fmt::Display for ApprovalMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApprovalMode::Deny => "deny",
            ApprovalMode::Grant => "grant",
            ApprovalMode::Recorded => "recorded",
        })
    }
}

impl Policy {
    /// Decides one call against this policy, reserving counters in `state`.
    pub fn decide<S: CounterStore + ?Sized>(&self, state: &mut S, call: &Call<'_>) -> Decision {
        self.decide_with(state, call, ApprovalMode::Deny)
    }

    /// As [`Policy::decide`], choosing what approval verdicts do to counters.
    pub fn decide_with<S: CounterStore + ?Sized>(
        &self,
        state: &mut S,
        call: &Call<'_>,
        approvals: ApprovalMode,
    ) -> Decision {
        self.decide_owned(state, call, approvals.into())
    }

    /// Decides a call a human has just approved: `require_approval` rules
    /// are passed, and the verdict is what the rest of the policy says
    /// (allow with its reservations, or the deny or throttle of another
    /// rule), so the proxy forwards exactly what the policy still lets
    /// through at the moment of the yes.
    pub fn decide_approved<S: CounterStore + ?Sized>(
        &self,
        state: &mut S,
        call: &Call<'_>,
    ) -> Decision {
        self.decide_owned(state, call, Approvals::Approved)
    }

    /// Decides a later round of a multi-round call (a 2026-07-28 retry
    /// carrying the server's `requestState`): the policy is applied again
    /// (it may have changed), but the call was counted in its first round,
    /// so nothing is reserved, and an approval given to the first round
    /// holds for the call.
    pub fn decide_continuation<S: CounterStore + ?Sized>(
        &self,
        state: &mut S,
        call: &Call<'_>,
    ) -> Decision {
        self.decide_owned(state, call, Approvals::Continuation)
    }

    /// [`Policy::decide_in`] for one call, made into a [`Decision`].
    fn decide_owned<S: CounterStore + ?Sized>(
        &self,
        state: &mut S,
        call: &Call<'_>,
        approvals: Approvals,
    ) -> Decision {
        let mut reservation = Reservation::default();
        let d = self.decide_in(
            state,
            call,
            &self.route(call.tool),
            approvals,
            &mut reservation,
        );
        Decision::from_parts(d, reservation)
    }

    /// Every decision: `route` is [`Policy::route`] of `call.tool` (a
    /// caller that sees a tool many times resolves it once). The counts an
    /// allowed call takes are added to `reservation`, which must be empty;
    /// it stays empty when nothing is counted or the call is refused.
    pub(crate) fn decide_in<'p, S: CounterStore + ?Sized>(
        &'p self,
        state: &mut S,
        call: &Call<'_>,
        route: &ToolRoute,
        approvals: Approvals,
        reservation: &mut Reservation,
    ) -> Decided<'p> {
        debug_assert_eq!(*route, self.route(call.tool), "a stale tool route");
        debug_assert!(reservation.is_empty(), "a reservation left over");
        let tool = call.tool;
        if route.hidden {
            return Decided::made(
                Verdict::Deny,
                Arc::from(HIDDEN_RULE),
                Arc::from(format!("Tool \"{tool}\" is hidden by policy")),
            );
        }
        let own = self.route_entry(route);
        if self.default_deny && own.is_none() {
            return Decided::made(
                Verdict::Deny,
                Arc::from(DEFAULT_DENY_RULE),
                Arc::from(format!("Tool \"{tool}\" is not permitted by policy")),
            );
        }
        let mut ctx = EvalCtx {
            call,
            route,
            state,
            failed: None,
        };

        // Phase 1: the rules that apply, in order; the first that stops decides.
        let rules = own
            .into_iter()
            .chain(self.wildcard_entry())
            .flat_map(|e| e.rules.iter());
        // The rules that passed and hold a counter, in order.
        let mut applied: SmallVec<[&Rule; 4]> = SmallVec::new();
        let mut approval: Option<&Rule> = None;
        for rule in rules {
            let applies = rule.when.iter().all(|c| ctx.holds(c));
            if let Some(e) = ctx.failed.take() {
                return store_unavailable(e);
            }
            if !applies {
                continue;
            }
            match rule.action {
                Action::Deny => return refuse_with(approval, Verdict::Deny, rule),
                Action::RequireApproval => {
                    if matches!(approvals, Approvals::Approved | Approvals::Continuation) {
                        continue;
                    }
                    if approval.is_none() {
                        if approvals == Approvals::Deny {
                            return Decided::by(Verdict::Approval, rule);
                        }
                        // Granted: the human's yes lets evaluation go on.
                        approval = Some(rule);
                    }
                }
                Action::Evaluate => {
                    let passes = rule.checks.iter().all(|c| ctx.holds(c));
                    if let Some(e) = ctx.failed.take() {
                        return store_unavailable(e);
                    }
                    if !passes {
                        return refuse_with(approval, Verdict::Deny, rule);
                    }
                    if rule.limit.is_some() {
                        applied.push(rule);
                    }
                }
            }
        }

        if approvals == Approvals::Continuation {
            // Counted once, in the call's first round.
            return Decided::ALLOW;
        }
        // Phase 2: reserve counters in rule order, all at once. A rule whose
        // amount cannot be read (increment_from) ends the list: the rules
        // before it may still throttle the call, else it is denied.
        let EvalCtx { state, .. } = ctx;
        if applied.is_empty() {
            state.sweep(call.ts_us);
            return match approval {
                Some(a) => Decided::by(Verdict::Approval, a),
                None => Decided::ALLOW,
            };
        }
        // repeat_limit counters are kept per identical call: their scope
        // value carries the tool and the SHA-256 of the canonical arguments
        // (computed only when a rule needs it).
        let mut args_hash: Option<String> = None;
        let mut owned: Vec<String> = Vec::new();
        for rule in &applied {
            if let Some(limit) = &rule.limit
                && limit.by_args
            {
                let hash = args_hash.get_or_insert_with(|| match call.args_sha256 {
                    Some(h) => h.to_string(),
                    None => crate::policy::canonical::args_sha256(call.args),
                });
                // The tool is part of "the same call": a rule on "*" or
                // a glob key sees several tools.
                let scope = scope_value(self.counters[limit.counter].scope, call);
                let mut key = String::with_capacity(scope.len() + call.tool.len() + hash.len() + 2);
                for part in [scope, "\u{1f}", call.tool, "\u{1f}", hash] {
                    key.push_str(part);
                }
                owned.push(key);
            }
        }
        let mut owned_scopes = owned.iter();
        // `wants[i]` is the counter of `applied[i]`.
        let mut wants: SmallVec<[Want<'_>; 4]> = SmallVec::new();
        let mut unreadable: Option<(&Rule, &str, &'static str)> = None;
        for rule in &applied {
            let Some(limit) = &rule.limit else { continue };
            let amount = match &limit.amount {
                Amount::Fixed(n) => *n,
                Amount::FromArgs {
                    path_text,
                    segments,
                } => match increment_value(resolve_args(call.args, segments)) {
                    Ok(n) => n,
                    Err(problem) => {
                        unreadable = Some((rule, path_text, problem));
                        break;
                    }
                },
            };
            let scope = if limit.by_args {
                owned_scopes.next().map(String::as_str).unwrap_or_default()
            } else {
                scope_value(self.counters[limit.counter].scope, call)
            };
            let want = Want {
                counter: limit.counter,
                scope,
                amount,
                max: limit.max,
            };
            wants.push(want);
        }
        match state.reserve_into(&wants, call.ts_us, reservation) {
            Ok(()) => {}
            Err(ReserveError::Unavailable(e)) => return store_unavailable(e),
            Err(ReserveError::Exhausted(exhausted)) => {
                if let Some(a) = approval {
                    return Decided::by(Verdict::Approval, a);
                }
                let rule = applied[exhausted.index];
                let guard = rule.limit.as_ref().and_then(|l| {
                    if l.by_args {
                        Some(Guard::RepeatLimit)
                    } else if matches!(
                        self.counters[l.counter].window.mode,
                        WindowMode::Breaker { .. }
                    ) {
                        Some(Guard::CircuitBreaker)
                    } else {
                        None
                    }
                });
                return Decided {
                    verdict: Verdict::Throttle,
                    rule: Some(Text::Policy(&rule.name)),
                    message: Some(Text::Policy(&rule.message)),
                    retry_after_ms: exhausted
                        .retry_after_us
                        .map(|us| (us as u64).div_ceil(1000)),
                    guard,
                };
            }
        };
        if let Some((rule, path_text, problem)) = unreadable {
            state.settle(std::mem::take(reservation), Outcome::NotForwarded);
            let message = format!(
                "Rule \"{}\" cannot count this call: increment_from {path_text} {problem} (fail closed)",
                rule.name
            );
            return match approval {
                Some(a) => Decided::by(Verdict::Approval, a),
                None => Decided {
                    message: Some(Text::Made(Arc::from(message))),
                    ..Decided::by(Verdict::Deny, rule)
                },
            };
        }
        state.sweep(call.ts_us);
        match approval {
            // Granted: reported as the approval, counted as the call.
            Some(a) => Decided::by(Verdict::Approval, a),
            None => Decided::ALLOW,
        }
    }
}

/// The decision when the counter store could not answer: refused (fail
/// closed), or allowed without counting when the store fails open; both
/// name [`STORE_UNAVAILABLE_RULE`] so the audit row shows it.
fn store_unavailable(e: StoreError) -> Decided<'static> {
    // Failing open allows the call, uncounted, and still names the cause.
    let verdict = if e.fail_open {
        Verdict::Allow
    } else {
        Verdict::Deny
    };
    Decided::made(verdict, Arc::from(STORE_UNAVAILABLE_RULE), e.message)
}

/// A refusal; under a granted approval the verdict reported stays `approval`.
fn refuse_with<'p>(approval: Option<&'p Rule>, verdict: Verdict, rule: &'p Rule) -> Decided<'p> {
    match approval {
        Some(a) => Decided::by(Verdict::Approval, a),
        None => Decided::by(verdict, rule),
    }
}

/// The scope value a counter instance is keyed by.
fn scope_value<'a>(scope: Scope, call: &Call<'a>) -> &'a str {
    match scope {
        Scope::Global => "",
        Scope::Tool => call.tool,
        Scope::Session => call.session,
        Scope::Agent => call.agent,
    }
}

/// The amount an `increment_from` argument counts: its integer part, as
/// Intercept reads it, when it is a number in `0..=`[`MAX_AMOUNT`].
/// Anything else cannot be counted and the call fails closed: a negative
/// amount would give budget back, and a larger one cannot be added exactly
/// (nor, repeated, without overflowing a total). Zero counts nothing (the
/// call passes unless its counter is already past its limit).
fn increment_value(value: Option<&Value>) -> Result<i64, &'static str> {
    const TOO_LARGE: &str =
        "is larger than 9007199254740991 (2^53 - 1), the most a counter can take";
    const _: () = assert!(MAX_AMOUNT == 9_007_199_254_740_991);
    let n = match value {
        None | Some(Value::Null) => return Err("is missing from the arguments"),
        Some(Value::Number(n)) => n,
        Some(_) => return Err("is not a number"),
    };
    if let Some(i) = n.as_i64() {
        return match i {
            ..0 => Err("is negative"),
            i if i > MAX_AMOUNT => Err(TOO_LARGE),
            i => Ok(i),
        };
    }
    if n.is_u64() {
        return Err(TOO_LARGE); // above i64::MAX
    }
    match n.as_f64() {
        Some(f) if !f.is_finite() => Err("is not a finite number"),
        Some(f) if f < 0.0 => Err("is negative"),
        Some(f) if f.trunc() > MAX_AMOUNT as f64 => Err(TOO_LARGE),
        Some(f) => Ok(f.trunc() as i64),
        None => Err("is not a finite number"),
    }
}

struct EvalCtx<'c, 'a, S: ?Sized> {
    call: &'c Call<'a>,
    route: &'c ToolRoute,
    state: &'c mut S,
    /// The store could not answer a read: the decision ends there.
    failed: Option<StoreError>,
}

impl<S: CounterStore + ?Sized> EvalCtx<'_, '_, S> {
    fn holds(&mut self, c: &Condition) -> bool {
        match &c.path {
            PathRef::Args(segments) => c.test(resolve_args(self.call.args, segments)),
            PathRef::State(read) => {
                let scope = read.scope.as_deref().unwrap_or(self.call.tool);
                match self.state.read(read.counter, scope, self.call.ts_us) {
                    Ok(current) => c.test(Some(&Value::from(current))),
                    Err(e) => {
                        self.failed = Some(e);
                        false
                    }
                }
            }
            other => {
                let (category, risk) = self.route.classify(self.call.category, self.call.risk);
                match resolve_call_str(other, self.call, category.as_str(), risk.as_str()) {
                    Some(s) => c.test_str(s),
                    None => c.test(None),
                }
            }
        }
    }
}
