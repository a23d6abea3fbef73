//! Counter state: the only mutable part of policy evaluation.
//!
//! One [`PolicyState`] belongs to one policy. It holds, per counter family,
//! one slot per scope value (session, agent, tool or global). Fixed windows
//! keep a running total for the current window; sliding windows keep an exact
//! log of the reservations still inside the window (at most `max` entries per
//! slot for rate limits), so "at most N in any (t - W, t]" holds exactly.
//!
//! Reservations are taken when a call is decided and returned as a
//! [`Reservation`]; [`CounterStore::settle`] keeps them (the call ran) or
//! rolls them back (the upstream answered with a JSON-RPC error). Time is
//! always an argument: nothing here reads a clock.
//!
//! Layout: each counter's instances sit in an [`Instances`] table, one
//! 64-byte cache line per instance holding its scope key inline and its
//! slot; a short sliding log of single calls stays inside the slot
//! ([`SlidingLog::Units`]), so deciding a call waits for one line per counter it
//! reserves, not for a key, a table entry and a log buffer apart.
//!
//! The decision core talks to counters only through the [`CounterStore`]
//! trait: [`PolicyState`] is the in-memory home (replay, the fuzzer, a proxy
//! without a shared store); a shared store implements the same four
//! operations.

use crate::policy::instances::{Instances, ScopeText};
use crate::policy::model::{CounterDef, Policy, Scope, Window, WindowMode};
use crate::policy::vocab::Outcome;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::Arc;

/// Counts reserved for one decided call, to be kept or rolled back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reservation {
    items: SmallVec<[Reserved; 2]>,
}

impl Reservation {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether the call went through a circuit breaker (its outcome then
    /// matters to the state even when nothing rolls back).
    pub fn has_breaker(&self) -> bool {
        self.items
            .iter()
            .any(|r| matches!(r.mark, Mark::Breaker { .. }))
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Forgets the reserved amounts (they stay counted), keeping the
    /// buffer for the next call.
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Adds one reserved amount (for counter stores outside this module).
    pub(crate) fn push(&mut self, counter: usize, scope: Arc<str>, amount: i64, mark: Mark) {
        self.items.push(Reserved {
            counter: counter as u32,
            scope: ScopeText::from(&*scope),
            amount,
            mark,
        });
    }

    /// The reserved amounts: counter, scope value, amount, mark.
    pub(crate) fn items(&self) -> impl Iterator<Item = (usize, &str, i64, Mark)> {
        self.items
            .iter()
            .map(|r| (r.counter as usize, r.scope.as_str(), r.amount, r.mark))
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Reserved {
    counter: u32,
    scope: ScopeText,
    amount: i64,
    mark: Mark,
}

impl Reserved {
    const UNFILLED: Reserved = Reserved {
        counter: 0,
        scope: ScopeText::EMPTY,
        amount: 0,
        mark: Mark::Window(0),
    };
}

/// Where a reserved amount went, so it can be given back exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Mark {
    /// The fixed window the amount was added to.
    Window(i64),
    /// The sliding-log entry that holds it.
    Entry(u64),
    /// A circuit breaker the call went through at `at`; `trial` when it was
    /// the half-open circuit's one trial call.
    Breaker { at: i64, trial: bool },
}

#[derive(Debug, Clone)]
enum Slot {
    Fixed { window_start: i64, total: i64 },
    Sliding(SlidingLog),
    Breaker(Breaker),
}

// An instance (key and slot) fills exactly one cache line.
const _: () = assert!(crate::policy::instances::entry_size::<Slot>() == 64);

/// One circuit: the recent failing outcomes in a row, and whether (until
/// when) it is open.
#[derive(Debug, Clone)]
struct Breaker {
    /// Call times of the failures since the last success (or opening)
    /// within the window of the newest, oldest first (no buffer until the
    /// first failure).
    failures: Vec<i64>,
    /// Open until then (past it the circuit is half-open); [`CLOSED`]
    /// when closed. A plain integer rather than an `Option`, so the
    /// circuit fits in its table entry's cache line.
    open_until: i64,
    /// The half-open circuit's trial call is in flight.
    trial: bool,
}

/// [`Breaker::open_until`] of a closed circuit.
const CLOSED: i64 = i64::MIN;

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            failures: Vec::new(),
            open_until: CLOSED,
            trial: false,
        }
    }
}

impl Breaker {
    fn open_until(&self) -> Option<i64> {
        (self.open_until != CLOSED).then_some(self.open_until)
    }

    fn set_open_until(&mut self, until: Option<i64>) {
        self.open_until = until.unwrap_or(CLOSED);
    }
}

/// The reservations still inside a sliding window, oldest first, with their
/// running total (so a decision does not re-add the whole log).
///
/// Short logs of single calls (most per-session rate limits) stay inside
/// the slot, so a decision finds them in the cache line its table lookup
/// already brought in; longer logs, and logs with other amounts, live in a
/// ring buffer of their own.
#[derive(Debug, Clone)]
enum SlidingLog {
    /// Up to [`INLINE_ENTRIES`] entries of amount 1 (the total is their
    /// number): call times, and reservation ids as offsets from `base`.
    Units {
        len: u8,
        ts: [i64; INLINE_ENTRIES],
        base: u64,
        offsets: [u32; INLINE_ENTRIES],
    },
    Ring {
        entries: VecDeque<LogEntry>,
        total: i64,
    },
}

/// How many entries of amount 1 a log keeps inside its slot.
const INLINE_ENTRIES: usize = 3;

impl Default for SlidingLog {
    fn default() -> Self {
        SlidingLog::Units {
            len: 0,
            ts: [0; INLINE_ENTRIES],
            base: 0,
            offsets: [0; INLINE_ENTRIES],
        }
    }
}

impl SlidingLog {
    fn total(&self) -> i64 {
        match self {
            SlidingLog::Units { len, .. } => i64::from(*len),
            SlidingLog::Ring { total, .. } => *total,
        }
    }

    fn len(&self) -> usize {
        match self {
            SlidingLog::Units { len, .. } => *len as usize,
            SlidingLog::Ring { entries, .. } => entries.len(),
        }
    }

    /// The entries, oldest first.
    fn iter(&self) -> impl DoubleEndedIterator<Item = LogEntry> + '_ {
        let (n, ts, base, offsets, ring) = match self {
            SlidingLog::Units {
                len,
                ts,
                base,
                offsets,
            } => (*len as usize, ts, *base, offsets, None),
            SlidingLog::Ring { entries, .. } => (
                0,
                &[0; INLINE_ENTRIES],
                0,
                &[0; INLINE_ENTRIES],
                Some(entries),
            ),
        };
        (0..n)
            .map(move |i| LogEntry {
                ts_us: ts[i],
                amount: 1,
                id: base + u64::from(offsets[i]),
            })
            .chain(ring.into_iter().flat_map(|r| r.iter().copied()))
    }

    fn back_ts(&self) -> Option<i64> {
        match self {
            SlidingLog::Units { len, ts, .. } => (*len > 0).then(|| ts[*len as usize - 1]),
            SlidingLog::Ring { entries, .. } => entries.back().map(|e| e.ts_us),
        }
    }

    /// Drops entries at or before `horizon` (outside (t - W, t]).
    fn prune(&mut self, horizon: i64) {
        match self {
            SlidingLog::Units {
                len, ts, offsets, ..
            } => {
                let n = *len as usize;
                let gone = ts[..n].iter().take_while(|t| **t <= horizon).count();
                if gone > 0 {
                    ts.copy_within(gone..n, 0);
                    offsets.copy_within(gone..n, 0);
                    *len -= gone as u8;
                }
            }
            SlidingLog::Ring { entries, total } => {
                let mut pruned = false;
                while let Some(e) = entries.front() {
                    if e.ts_us > horizon {
                        break;
                    }
                    *total -= e.amount;
                    entries.pop_front();
                    pruned = true;
                }
                if pruned {
                    self.back_inline();
                }
            }
        }
    }

    /// A ring buffer that has become short (below the inline size, so a
    /// log hovering at it does not move back and forth) and holds only
    /// single calls moves back inside the slot.
    fn back_inline(&mut self) {
        if let SlidingLog::Ring { entries, .. } = self
            && entries.len() < INLINE_ENTRIES
            && entries.iter().all(|e| e.amount == 1)
        {
            let base = entries.iter().map(|e| e.id).min().unwrap_or(0);
            let mut units = SlidingLog::default();
            if let SlidingLog::Units {
                len,
                ts,
                base: b,
                offsets,
            } = &mut units
            {
                *b = base;
                for (i, e) in entries.iter().enumerate() {
                    let Ok(offset) = u32::try_from(e.id - base) else {
                        return;
                    };
                    ts[i] = e.ts_us;
                    offsets[i] = offset;
                    *len += 1;
                }
            }
            *self = units;
        }
    }

    fn insert(&mut self, entry: LogEntry) {
        // Time order even if calls arrive out of order (in order, the common
        // case, is a plain push).
        let at = if self.back_ts().is_none_or(|t| t <= entry.ts_us) {
            self.len()
        } else {
            self.iter().take_while(|e| e.ts_us <= entry.ts_us).count()
        };
        match self {
            SlidingLog::Units {
                len,
                ts,
                base,
                offsets,
            } => {
                let n = *len as usize;
                if n == 0 {
                    *base = entry.id;
                }
                let offset = entry
                    .id
                    .checked_sub(*base)
                    .and_then(|o| u32::try_from(o).ok());
                match offset {
                    Some(offset) if n < INLINE_ENTRIES && entry.amount == 1 => {
                        ts.copy_within(at..n, at + 1);
                        offsets.copy_within(at..n, at + 1);
                        ts[at] = entry.ts_us;
                        offsets[at] = offset;
                        *len += 1;
                    }
                    _ => {
                        let mut entries: VecDeque<LogEntry> =
                            VecDeque::with_capacity(2 * INLINE_ENTRIES);
                        entries.extend(self.iter());
                        entries.insert(at, entry);
                        let total = entries.iter().map(|e| e.amount).sum();
                        *self = SlidingLog::Ring { entries, total };
                    }
                }
            }
            SlidingLog::Ring { entries, total } => {
                *total += entry.amount;
                if at == entries.len() {
                    entries.push_back(entry);
                } else {
                    entries.insert(at, entry);
                }
            }
        }
    }

    /// Gives back the reservation `id`, if its entry is still here.
    fn remove(&mut self, id: u64) {
        let Some(at) = self.iter().position(|e| e.id == id) else {
            return;
        };
        match self {
            SlidingLog::Units {
                len, ts, offsets, ..
            } => {
                let n = *len as usize;
                ts.copy_within(at + 1..n, at);
                offsets.copy_within(at + 1..n, at);
                *len -= 1;
            }
            SlidingLog::Ring { entries, total } => {
                if let Some(e) = entries.remove(at) {
                    *total -= e.amount;
                }
                self.back_inline();
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct LogEntry {
    ts_us: i64,
    amount: i64,
    id: u64,
}

/// The most one call may add to a counter, and the most a counter's total
/// may reach: 2^53 − 1, the largest integer that JSON readers, the
/// shared store's scripts (Lua numbers are doubles) and `i64` all hold
/// exactly. With every amount in `0..=MAX_AMOUNT` and every total kept at
/// or below it, no sum of a total and an amount can overflow anywhere
/// (memory, replay, the store).
pub const MAX_AMOUNT: i64 = (1 << 53) - 1;

/// Whether one call may add `amount` to a counter at all (the decision
/// core refuses other amounts before any store sees them; the stores
/// refuse them again rather than trust their callers).
pub(crate) fn amount_in_range(amount: i64) -> bool {
    (0..=MAX_AMOUNT).contains(&amount)
}

/// The largest total a reservation may take a counter to: the rule's
/// `max` (`None`: no limit of its own), never past [`MAX_AMOUNT`]. Every
/// negative `max` (an `lt: 0` limit) refuses every call, as `-1` does.
pub(crate) fn ceiling(max: Option<i64>) -> i64 {
    max.map_or(MAX_AMOUNT, |m| m.clamp(-1, MAX_AMOUNT))
}

/// Whether adding `amount` to `total` stays within `ceiling` (a
/// [`ceiling`]); never overflows.
fn fits(total: i64, amount: i64, ceiling: i64) -> bool {
    amount_in_range(amount) && total <= ceiling && amount <= ceiling.saturating_sub(total)
}

/// One amount a decision wants to add to one counter instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want<'a> {
    /// Index into the policy's counter table.
    pub counter: usize,
    /// The scope value (session id, agent id, tool name, `""` for global).
    pub scope: &'a str,
    /// In `0..=`[`MAX_AMOUNT`]; a store refuses any other amount.
    pub amount: i64,
    /// `None`: no limit of the rule's own (the total still stops at
    /// [`MAX_AMOUNT`]).
    pub max: Option<i64>,
}

/// Why a reservation could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    /// The first [`Want`] (by index) that would pass its limit.
    pub index: usize,
    /// Microseconds until the amount would fit, if it ever can.
    pub retry_after_us: Option<i64>,
}

/// A counter store that could not answer (a shared store unreachable or
/// slower than its timeout). The decision core refuses the call, or allows
/// it when the store is configured to fail open; either way the decision
/// names [`crate::policy::STORE_UNAVAILABLE_RULE`] and this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    pub message: Arc<str>,
    /// Allow the call anyway (`--state-fail-mode open`).
    pub fail_open: bool,
}

/// Why a reservation was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveError {
    /// A limit would be passed.
    Exhausted(Exhausted),
    /// The store could not answer.
    Unavailable(StoreError),
}

/// Where the counters of one policy live. The decision core needs exactly
/// these operations; every state home (in memory, warm-started from the
/// audit log, a shared store) implements them with the same semantics.
pub trait CounterStore {
    /// The current total of one counter instance at `now_us` (what a
    /// `state.x.y` condition reads).
    fn read(&mut self, counter: usize, scope: &str, now_us: i64) -> Result<i64, StoreError>;

    /// Adds every wanted amount, or none: the first want that would take
    /// its counter past `max` fails the whole call and nothing is kept.
    fn reserve(&mut self, wants: &[Want<'_>], now_us: i64) -> Result<Reservation, ReserveError>;

    /// As [`CounterStore::reserve`], writing into `into` (empty on entry;
    /// left empty on an error): the decision core's way, which spares the
    /// in-memory home moving the reservation through a return value.
    fn reserve_into(
        &mut self,
        wants: &[Want<'_>],
        now_us: i64,
        into: &mut Reservation,
    ) -> Result<(), ReserveError> {
        *into = self.reserve(wants, now_us)?;
        Ok(())
    }

    /// Settles a decided call's reservation with its outcome: a JSON-RPC
    /// error (the call never ran) or a call that was not forwarded gives the
    /// amounts back; any other outcome keeps them.
    fn settle(&mut self, reservation: Reservation, outcome: Outcome);

    /// Housekeeping after a decision at `now_us` (amortised: cheap to call
    /// every time); drops counter instances that can no longer matter.
    fn sweep(&mut self, now_us: i64);

    /// The state, in the same home, for the policy `new` that replaces
    /// `old` (a reload): counters whose definition is unchanged (same
    /// identity, window and scope) keep their counts, others start at zero.
    /// `self` keeps serving settlements of reservations taken before the
    /// reload, which then no longer affect the successor.
    fn successor(&mut self, old: &Policy, new: &Policy) -> Box<dyn CounterStore + Send>;
}

/// The counters of one policy.
#[derive(Debug, Clone)]
pub struct PolicyState {
    defs: Vec<(Window, Scope)>,
    slots: Vec<Instances<Slot>>,
    next_entry: u64,
    decisions_since_sweep: usize,
    live_slots: usize,
}

impl PolicyState {
    /// Fresh state (every counter at zero) for a policy.
    pub fn new(policy: &Policy) -> PolicyState {
        Self::for_counters(policy.counters())
    }

    pub(crate) fn for_counters(defs: &[CounterDef]) -> PolicyState {
        PolicyState {
            defs: defs.iter().map(|d| (d.window, d.scope)).collect(),
            slots: defs.iter().map(|_| Instances::default()).collect(),
            next_entry: 0,
            decisions_since_sweep: 0,
            live_slots: 0,
        }
    }

    /// State for a reloaded policy: counters whose definition is unchanged
    /// (same identity, window and scope) move to it with their counts;
    /// others start at zero. Reservations taken before the reload still
    /// settle against `self`, which no longer holds the moved counts: their
    /// calls keep counting in the successor and a rollback of them is lost
    /// (conservative), never applied to another counter.
    pub fn migrate(&mut self, old: &Policy, new: &Policy) -> PolicyState {
        let mut next = PolicyState::new(new);
        next.next_entry = self.next_entry;
        for (i, def) in new.counters().iter().enumerate() {
            if let Some(j) = old.counters().iter().position(|o| {
                o.identity == def.identity && o.window == def.window && o.scope == def.scope
            }) && j < self.slots.len()
            {
                next.slots[i] = std::mem::take(&mut self.slots[j]);
                // A half-open circuit's trial in flight settles against the
                // old state, which no longer holds the circuit: free it, or
                // the circuit would wait for that outcome forever.
                for slot in next.slots[i].values_mut() {
                    if let Slot::Breaker(b) = slot {
                        b.trial = false;
                    }
                }
            }
        }
        next.live_slots = next.slot_count();
        next
    }

    /// Feeds a call's outcome to the circuit breakers it went through:
    /// `tool_error`, `rpc_error` and `timeout` are failures, `ok` a success;
    /// other outcomes (not forwarded, cancelled, interrupted…) say nothing
    /// about the tool (a trial that ended so frees the half-open circuit).
    fn settle_breakers(&mut self, reservation: &Reservation, outcome: Outcome) {
        let failing = outcome.is_failure();
        let success = outcome == Outcome::Ok;
        for r in &reservation.items {
            let Mark::Breaker { at, trial } = r.mark else {
                continue;
            };
            let Some((window, _)) = self.defs.get(r.counter as usize).copied() else {
                continue;
            };
            let WindowMode::Breaker {
                errors,
                cooldown_us,
            } = window.mode
            else {
                continue;
            };
            let Some(Slot::Breaker(b)) = self
                .slots
                .get_mut(r.counter as usize)
                .and_then(|s| s.get_mut(r.scope.as_str()))
            else {
                continue;
            };
            if trial {
                b.trial = false;
                if failing {
                    b.set_open_until(Some(at + cooldown_us));
                    b.failures.clear();
                } else if success {
                    b.set_open_until(None);
                    b.failures.clear();
                }
            } else if failing {
                // Answers can arrive out of call order (concurrent calls):
                // keep the failures sorted by call time and count those
                // within the window of the newest.
                let pos = b.failures.partition_point(|t| *t <= at);
                b.failures.insert(pos, at);
                let newest = b.failures.last().copied().unwrap_or(at);
                let expired = b.failures.partition_point(|t| *t <= newest - window.len_us);
                b.failures.drain(..expired);
                if b.failures.len() >= errors as usize && b.open_until().is_none() {
                    b.set_open_until(Some(newest + cooldown_us));
                    b.failures.clear();
                }
            } else if success {
                b.failures.clear();
            }
        }
    }

    /// Returns every amount the reservation took. A reservation from
    /// another state (more counters than this one has) returns nothing.
    fn roll_back(&mut self, reservation: Reservation) {
        for r in reservation.items {
            let Some(slot) = self
                .slots
                .get_mut(r.counter as usize)
                .and_then(|s| s.get_mut(r.scope.as_str()))
            else {
                continue; // expired and swept: nothing left to return
            };
            match (slot, r.mark) {
                // A window that has rolled over already forgot the amount.
                (
                    Slot::Fixed {
                        window_start,
                        total,
                    },
                    Mark::Window(w),
                ) if *window_start == w => *total -= r.amount,
                (Slot::Sliding(log), Mark::Entry(id)) => log.remove(id),
                // A trial that never ran frees the half-open circuit.
                (Slot::Breaker(b), Mark::Breaker { trial: true, .. }) => b.trial = false,
                _ => {}
            }
        }
    }

    /// The current total of one counter instance (what `state.x.y` reads).
    fn total(&self, counter: usize, scope: &str, now_us: i64) -> i64 {
        let (window, _) = self.defs[counter];
        match self.slots[counter].get(scope) {
            None => 0,
            Some(Slot::Fixed {
                window_start,
                total,
            }) if *window_start >= window_start_of(now_us, window.len_us) => *total,
            Some(Slot::Fixed { .. }) => 0,
            Some(Slot::Sliding(log)) => {
                let horizon = now_us - window.len_us;
                log.iter()
                    .filter(|e| e.ts_us > horizon)
                    .map(|e| e.amount)
                    .sum()
            }
            Some(Slot::Breaker(_)) => 0,
        }
    }

    /// Adds `amount` to a counter instance unless that would take its total
    /// past `max` (`None`: no limit of its own; never past [`MAX_AMOUNT`]),
    /// or the amount is out of range. On success the amount is
    /// recorded in `into`; on failure, the microseconds until it would fit.
    fn reserve_one(
        &mut self,
        counter: usize,
        scope: &str,
        amount: i64,
        max: Option<i64>,
        now_us: i64,
        into: &mut Reservation,
    ) -> Result<(), Option<i64>> {
        let (window, _) = self.defs[counter];
        let (scope_key, slot, created) =
            self.slots[counter].get_or_insert_with(scope, || match window.mode {
                WindowMode::Fixed => Slot::Fixed {
                    window_start: window_start_of(now_us, window.len_us),
                    total: 0,
                },
                WindowMode::Sliding => Slot::Sliding(SlidingLog::default()),
                WindowMode::Breaker { .. } => Slot::Breaker(Breaker::default()),
            });
        let scope_key = scope_key.clone();
        self.live_slots += usize::from(created);
        let mark = match slot {
            Slot::Breaker(b) => match b.open_until() {
                Some(until) if now_us < until => return Err(Some(until - now_us)),
                // Half-open: one trial call at a time.
                Some(_) if b.trial => return Err(None),
                Some(_) => {
                    b.trial = true;
                    Mark::Breaker {
                        at: now_us,
                        trial: true,
                    }
                }
                None => Mark::Breaker {
                    at: now_us,
                    trial: false,
                },
            },
            Slot::Fixed {
                window_start,
                total,
            } => {
                let current = window_start_of(now_us, window.len_us);
                // A clock that stepped back stays in the newer window: counting
                // against it can only be stricter.
                if current > *window_start {
                    *window_start = current;
                    *total = 0;
                }
                if !fits(*total, amount, ceiling(max)) {
                    let window_end = *window_start + window.len_us;
                    return Err(Some((window_end - now_us).max(1)));
                }
                *total += amount;
                Mark::Window(*window_start)
            }
            Slot::Sliding(log) => {
                log.prune(now_us - window.len_us);
                let (total, max) = (log.total(), ceiling(max));
                if !fits(total, amount, max) {
                    return Err(sliding_retry_after(log, total, amount, max, window, now_us));
                }
                let id = self.next_entry;
                self.next_entry += 1;
                log.insert(LogEntry {
                    ts_us: now_us,
                    amount,
                    id,
                });
                Mark::Entry(id)
            }
        };
        // Pushed as a constant, then filled in place: a value built on the
        // stack and copied into the list is read back (16 bytes at a time)
        // right after its fields were stored one by one, which stalls the
        // load (no store forwarding across stores) on every reservation.
        into.items.push(Reserved::UNFILLED);
        if let Some(r) = into.items.last_mut() {
            r.counter = counter as u32;
            r.scope = scope_key;
            r.amount = amount;
            r.mark = mark;
        }
        Ok(())
    }

    /// Drops every counter instance that is empty as of `now_us` (what
    /// [`CounterStore::sweep`] does every so often).
    pub fn sweep_now(&mut self, now_us: i64) {
        self.decisions_since_sweep = 0;
        let mut live = 0;
        for (slots, (window, _)) in self.slots.iter_mut().zip(&self.defs) {
            slots.retain(|slot| match slot {
                Slot::Fixed {
                    window_start,
                    total,
                } => *total != 0 && *window_start + window.len_us > now_us,
                Slot::Sliding(log) => log.back_ts().is_some_and(|t| t > now_us - window.len_us),
                // A circuit that was ever opened stays until a success
                // closes it (so a half-open circuit still takes one trial).
                Slot::Breaker(b) => {
                    b.trial
                        || b.open_until().is_some()
                        || b.failures
                            .last()
                            .is_some_and(|t| *t > now_us - window.len_us)
                }
            });
            live += slots.len();
        }
        self.live_slots = live;
    }

    /// Number of counter instances held (for tests and memory reports).
    pub fn slot_count(&self) -> usize {
        self.slots.iter().map(|s| s.len()).sum()
    }
}

impl CounterStore for PolicyState {
    fn read(&mut self, counter: usize, scope: &str, now_us: i64) -> Result<i64, StoreError> {
        Ok(self.total(counter, scope, now_us))
    }

    fn reserve(&mut self, wants: &[Want<'_>], now_us: i64) -> Result<Reservation, ReserveError> {
        let mut reservation = Reservation::default();
        self.reserve_into(wants, now_us, &mut reservation)?;
        Ok(reservation)
    }

    fn reserve_into(
        &mut self,
        wants: &[Want<'_>],
        now_us: i64,
        into: &mut Reservation,
    ) -> Result<(), ReserveError> {
        for (index, w) in wants.iter().enumerate() {
            if let Err(retry_after_us) =
                self.reserve_one(w.counter, w.scope, w.amount, w.max, now_us, into)
            {
                self.roll_back(std::mem::take(into));
                return Err(ReserveError::Exhausted(Exhausted {
                    index,
                    retry_after_us,
                }));
            }
        }
        Ok(())
    }

    fn settle(&mut self, reservation: Reservation, outcome: Outcome) {
        if reservation.has_breaker() {
            self.settle_breakers(&reservation, outcome);
        }
        if outcome.rolls_back() {
            self.roll_back(reservation);
        }
    }

    /// Drops counter instances that can no longer affect any decision at or
    /// after `now_us`, so memory follows live sessions, not history; runs a
    /// full pass once per as many decisions as there are live instances.
    fn sweep(&mut self, now_us: i64) {
        self.decisions_since_sweep += 1;
        if self.decisions_since_sweep < self.live_slots.max(1024) {
            return;
        }
        self.sweep_now(now_us);
    }

    fn successor(&mut self, old: &Policy, new: &Policy) -> Box<dyn CounterStore + Send> {
        Box::new(self.migrate(old, new))
    }
}

/// Start of the fixed window holding `ts`: windows are whole multiples of
/// their length since the Unix epoch, which for a minute, hour or day is the
/// UTC calendar boundary (Unix time has no leap seconds).
pub fn window_start_of(ts_us: i64, len_us: i64) -> i64 {
    ts_us - ts_us.rem_euclid(len_us)
}

/// Time until enough old entries leave the window for `amount` to fit.
fn sliding_retry_after(
    log: &SlidingLog,
    total: i64,
    amount: i64,
    max: i64,
    window: Window,
    now_us: i64,
) -> Option<i64> {
    if !fits(0, amount, max) {
        return None;
    }
    let mut remaining = total;
    for e in log.iter() {
        remaining -= e.amount;
        if fits(remaining, amount, max) {
            return Some((e.ts_us + window.len_us - now_us).max(1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000;

    fn state(mode: WindowMode, len_us: i64) -> PolicyState {
        PolicyState::for_counters(&[CounterDef {
            identity: "t".into(),
            window: Window { len_us, mode },
            scope: Scope::Session,
        }])
    }

    #[test]
    fn fixed_window_counts_and_resets_on_boundary() {
        let mut s = state(WindowMode::Fixed, 60 * SEC);
        let mut r = Reservation::default();
        let base = 120 * SEC; // a minute boundary
        assert!(
            s.reserve_one(0, "a", 1, Some(2), base + SEC, &mut r)
                .is_ok()
        );
        assert!(
            s.reserve_one(0, "a", 1, Some(2), base + 2 * SEC, &mut r)
                .is_ok()
        );
        let err = s
            .reserve_one(0, "a", 1, Some(2), base + 59 * SEC, &mut r)
            .unwrap_err();
        assert_eq!(err, Some(SEC));
        assert!(
            s.reserve_one(0, "a", 1, Some(2), base + 60 * SEC, &mut r)
                .is_ok()
        );
    }

    #[test]
    fn sliding_window_is_exact() {
        let mut s = state(WindowMode::Sliding, 10 * SEC);
        let mut r = Reservation::default();
        assert!(s.reserve_one(0, "a", 1, Some(2), 0, &mut r).is_ok());
        assert!(s.reserve_one(0, "a", 1, Some(2), 9 * SEC, &mut r).is_ok());
        let err = s
            .reserve_one(0, "a", 1, Some(2), 9 * SEC + 1, &mut r)
            .unwrap_err();
        assert_eq!(err, Some(10 * SEC - (9 * SEC + 1)));
        // At exactly t = 10 s the entry at 0 is outside (t - W, t].
        assert!(s.reserve_one(0, "a", 1, Some(2), 10 * SEC, &mut r).is_ok());
    }

    #[test]
    fn roll_back_returns_the_amount() {
        let mut s = state(WindowMode::Sliding, 10 * SEC);
        let mut r = Reservation::default();
        assert!(s.reserve_one(0, "a", 1, Some(1), 0, &mut r).is_ok());
        assert_eq!(s.read(0, "a", 0), Ok(1));
        s.settle(r, Outcome::RpcError);
        assert_eq!(s.read(0, "a", 0), Ok(0));
        let mut r2 = Reservation::default();
        assert!(s.reserve_one(0, "a", 1, Some(1), SEC, &mut r2).is_ok());
    }

    #[test]
    fn scopes_are_independent() {
        let mut s = state(WindowMode::Fixed, 60 * SEC);
        let mut r = Reservation::default();
        assert!(s.reserve_one(0, "a", 1, Some(1), 0, &mut r).is_ok());
        assert!(s.reserve_one(0, "b", 1, Some(1), 0, &mut r).is_ok());
        assert!(s.reserve_one(0, "a", 1, Some(1), 0, &mut r).is_err());
    }

    #[test]
    fn sweep_forgets_expired_slots() {
        let mut s = state(WindowMode::Sliding, 10 * SEC);
        let mut r = Reservation::default();
        for i in 0..100 {
            s.reserve_one(0, &format!("s{i}"), 1, Some(5), 0, &mut r)
                .unwrap();
        }
        assert_eq!(s.slot_count(), 100);
        s.sweep_now(5 * SEC);
        assert_eq!(s.slot_count(), 100);
        s.sweep_now(10 * SEC);
        assert_eq!(s.slot_count(), 0);
    }

    #[test]
    fn reload_keeps_counts_of_unchanged_counters_only() {
        let load = |y: &str| Policy::from_yaml(y, "p.yaml").unwrap().0;
        let old = load(
            "version: \"1\"\ntools:\n  t:\n    rules:\n      - {name: a, rate_limit: 2/minute}\n      - {name: b, rate_limit: {max: 5, window: 60s}}\n",
        );
        let new = load(
            "version: \"1\"\ntools:\n  t:\n    rules:\n      - {name: a, rate_limit: 2/minute}\n      - {name: b, rate_limit: {max: 5, window: 90s}}\n",
        );
        let mut s = PolicyState::new(&old);
        let args = serde_json::json!({});
        let call = crate::policy::Call {
            ts_us: 0,
            session: "s",
            agent: "a",
            server: "x",
            tool: "t",
            category: None,
            risk: None,
            args: &args,
            args_sha256: None,
        };
        for _ in 0..2 {
            let d = old.decide(&mut s, &call);
            s.settle(d.reservation, Outcome::Ok);
        }
        let mut migrated = s.migrate(&old, &new);
        // Rule a kept its count (2 of 2 used); rule b's window changed: reset.
        assert_eq!(
            new.decide(&mut migrated, &call).verdict,
            crate::policy::Verdict::Throttle
        );
        assert_eq!(migrated.read(1, "t", 0), Ok(0));
    }

    #[test]
    fn a_reload_during_a_trial_call_frees_the_half_open_circuit() {
        let load = |y: &str| Policy::from_yaml(y, "p.yaml").unwrap().0;
        let yaml = "version: \"1\"\ntools:\n  t:\n    rules:\n      - {name: b, circuit_breaker: {errors: 1, within: 1m, cooldown: 10s}}\n";
        let (old, new) = (load(yaml), load(yaml));
        let mut s = PolicyState::new(&old);
        let args = serde_json::json!({});
        let call = |t: i64| crate::policy::Call {
            ts_us: t,
            session: "s",
            agent: "a",
            server: "x",
            tool: "t",
            category: None,
            risk: None,
            args: &args,
            args_sha256: None,
        };
        let d = old.decide(&mut s, &call(0));
        s.settle(d.reservation, Outcome::ToolError); // open until 10 s
        let trial = old.decide(&mut s, &call(11 * SEC));
        assert_eq!(trial.verdict, crate::policy::Verdict::Allow);
        let mut next = s.migrate(&old, &new);
        // The trial's outcome goes to the old state and is lost.
        s.settle(trial.reservation, Outcome::Ok);
        // The new state lets a new trial through rather than waiting forever.
        assert_eq!(
            new.decide(&mut next, &call(12 * SEC)).verdict,
            crate::policy::Verdict::Allow
        );
    }

    /// The log's two layouts (single calls inside the slot, a ring
    /// buffer otherwise) against a plain sorted list, under random
    /// inserts (some out of time order, some with other amounts),
    /// prunes and rollbacks.
    #[test]
    fn sliding_logs_match_a_sorted_list() {
        let mut next = crate::test_support::rng(0x2545_F491_4F6C_DD1D);
        for _round in 0..200 {
            let mut log = SlidingLog::default();
            let mut reference: Vec<LogEntry> = Vec::new();
            let mut id = 0u64;
            let mut now = 0i64;
            for _ in 0..60 {
                match next(4) {
                    0 | 1 => {
                        now += next(3) as i64;
                        let ts_us = now - next(4) as i64 * i64::from(next(3) == 0);
                        let amount = if next(5) == 0 { next(4) as i64 } else { 1 };
                        let entry = LogEntry { ts_us, amount, id };
                        // Now and then a gap wider than an inline offset.
                        id += if next(25) == 0 { 1 << 33 } else { 1 };
                        log.insert(entry);
                        let at = reference.partition_point(|e| e.ts_us <= ts_us);
                        reference.insert(at, entry);
                    }
                    2 => {
                        let horizon = now - 1 - next(6) as i64;
                        log.prune(horizon);
                        while reference.first().is_some_and(|e| e.ts_us <= horizon) {
                            reference.remove(0);
                        }
                    }
                    _ => {
                        let gone = reference
                            .get(next(reference.len() as u64 + 1) as usize)
                            .map_or(id, |e| e.id);
                        log.remove(gone);
                        reference.retain(|e| e.id != gone);
                    }
                }
                let got: Vec<(i64, i64, u64)> =
                    log.iter().map(|e| (e.ts_us, e.amount, e.id)).collect();
                let want: Vec<(i64, i64, u64)> = reference
                    .iter()
                    .map(|e| (e.ts_us, e.amount, e.id))
                    .collect();
                assert_eq!(got, want);
                assert_eq!(log.total(), reference.iter().map(|e| e.amount).sum::<i64>());
                let inline = matches!(log, SlidingLog::Units { .. });
                if reference.len() > INLINE_ENTRIES || reference.iter().any(|e| e.amount != 1) {
                    assert!(!inline, "{} entries kept inline", reference.len());
                }
            }
        }
    }

    #[test]
    fn windows_align_to_the_epoch() {
        assert_eq!(window_start_of(61 * SEC, 60 * SEC), 60 * SEC);
        assert_eq!(window_start_of(-1, 60 * SEC), -60 * SEC);
    }
}
