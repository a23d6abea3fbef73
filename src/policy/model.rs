//! The compiled, immutable form of a policy file: what the loader produces and
//! the decision core reads. Nothing here changes after loading; all mutable
//! counter state lives in [`crate::policy::PolicyState`].

use crate::policy::condition::Condition;
use crate::policy::vocab::{Category, Risk};
use globset::GlobMatcher;
use std::collections::{HashMap, HashSet};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;
use std::sync::Arc;

/// A loaded, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Where it came from (a path, or a name given by the caller).
    pub source: String,
    /// SHA-256 of the file's bytes, hex: the audit log's `policy_sha256`.
    pub sha256: String,
    pub description: Option<String>,
    pub default_deny: bool,
    pub(crate) hide: ToolSet,
    pub(crate) exact: FastMap<String, usize>,
    pub(crate) globs: Vec<(GlobMatcher, usize)>,
    pub(crate) wildcard: Option<usize>,
    pub(crate) entries: Vec<ToolEntry>,
    pub(crate) categories: Vec<CategoryOverride>,
    pub(crate) counters: Vec<CounterDef>,
}

/// A set of tool names given as exact names, globs, or `"*"` for all.
#[derive(Debug, Clone, Default)]
pub(crate) struct ToolSet {
    pub all: bool,
    pub exact: FastSet<String>,
    pub globs: Vec<GlobMatcher>,
}

impl ToolSet {
    pub fn contains(&self, tool: &str) -> bool {
        self.all
            || (!self.exact.is_empty() && self.exact.contains(tool))
            || self.globs.iter().any(|g| g.is_match(tool))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Exact,
    Glob,
    Wildcard,
}

/// One key under `tools:` and its rules.
#[derive(Debug, Clone)]
pub(crate) struct ToolEntry {
    pub key: String,
    pub kind: KeyKind,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Evaluate,
    Deny,
    RequireApproval,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub name: Arc<str>,
    pub action: Action,
    pub message: Arc<str>,
    /// The rule applies only when all of these hold.
    pub when: Vec<Condition>,
    /// Conditions checked before any counter is touched (for `evaluate`).
    /// State conditions here read counters as they stand before this call.
    pub checks: Vec<Condition>,
    /// The counter this rule reserves, if any.
    pub limit: Option<Limit>,
}

/// A counter reservation a rule makes for each call it lets through.
#[derive(Debug, Clone)]
pub(crate) struct Limit {
    pub counter: usize,
    /// The largest total the counter may reach in one window; `None` for a
    /// counter that only tracks (a `state` block with no limit condition).
    pub max: Option<i64>,
    pub amount: Amount,
    /// `repeat_limit`: the counter is kept per identical call (the scope
    /// value plus the SHA-256 of the canonical arguments).
    pub by_args: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum Amount {
    Fixed(i64),
    /// `increment_from: args.x`: the argument's value, truncated to an integer.
    FromArgs {
        path_text: String,
        segments: Vec<String>,
    },
}

/// One counter family. Its instances are keyed by the scope value
/// (a session id, an agent id, a tool name, or nothing for global).
#[derive(Debug, Clone)]
pub struct CounterDef {
    /// A stable identity, so that reloads can carry counts over.
    pub identity: String,
    pub window: Window,
    pub scope: Scope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub len_us: i64,
    pub mode: WindowMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowMode {
    /// Windows aligned to whole multiples of the length since the Unix epoch
    /// (UTC): Intercept's calendar minute/hour/day.
    Fixed,
    /// At most `max` in any half-open interval (t - window, t].
    Sliding,
    /// A circuit breaker (`circuit_breaker`): `errors` failing outcomes in a
    /// row within the window open it for `cooldown_us`; then one trial call
    /// is let through, whose success closes it and failure opens it again.
    Breaker { errors: u32, cooldown_us: i64 },
}

/// What a counter is counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One counter for every call the rule sees.
    Global,
    /// One per tool name.
    Tool,
    /// One per MCP session.
    Session,
    /// One per agent.
    Agent,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Tool => "tool",
            Scope::Session => "session",
            Scope::Agent => "agent",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CategoryOverride {
    pub matcher: ToolSet,
    pub category: Option<Category>,
    pub risk: Option<Risk>,
}

/// The optional fields of a call a policy's rules read ([`Policy::reads`]):
/// its arguments (`args.*` conditions, `increment_from`, `repeat_limit`),
/// its server (`call.server`), its category and risk (`tool.category`,
/// `tool.risk`). The tool, agent, session and time are always read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallReads {
    pub args: bool,
    pub server: bool,
    pub class: bool,
}

impl std::ops::BitOr for CallReads {
    type Output = CallReads;
    fn bitor(self, o: CallReads) -> CallReads {
        CallReads {
            args: self.args || o.args,
            server: self.server || o.server,
            class: self.class || o.class,
        }
    }
}

/// An argument path a policy reads ([`Policy::arg_reads`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgRead<'p> {
    /// The segments below `args`.
    pub segments: &'p [String],
    /// Some rule compares it as a number (or counts it).
    pub numeric: bool,
}

/// What a policy says about one tool name before any call is looked at:
/// whether `hide` removes it, which `tools:` entry holds its own rules, and
/// the category and risk its `categories:` give it.
///
/// A pure function of the policy and the name ([`Policy::route`]), so a
/// caller that sees the same tool many times (replay) resolves it once and
/// decides every call with it; the live proxy resolves it per call. Either
/// way [`Policy::decide`] and its variants run the same rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToolRoute {
    pub(crate) hidden: bool,
    /// Index into [`Policy::entries`] of the tool's exact or glob entry.
    pub(crate) own: Option<u32>,
    /// From the policy's `categories:`; `None` leaves it to the call.
    pub(crate) category: Option<Category>,
    pub(crate) risk: Option<Risk>,
}

impl ToolRoute {
    /// The category and risk of a call to the routed tool, given what the
    /// call (or the server's annotations) said: the policy's override,
    /// else the call's, else `unknown` (and the category's default risk).
    pub fn classify(
        &self,
        known_category: Option<Category>,
        known_risk: Option<Risk>,
    ) -> (Category, Risk) {
        let category = self
            .category
            .or(known_category)
            .unwrap_or(Category::Unknown);
        let risk = self
            .risk
            .or(known_risk)
            .unwrap_or_else(|| category.default_risk());
        (category, risk)
    }
}

impl Policy {
    /// Resolves what the policy says about `tool` (see [`ToolRoute`]).
    pub fn route(&self, tool: &str) -> ToolRoute {
        let (category, risk) = self.category_override(tool);
        ToolRoute {
            hidden: self.is_hidden(tool),
            own: self.tool_entry_index(tool).map(|i| i as u32),
            category,
            risk,
        }
    }

    fn tool_entry_index(&self, tool: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(tool) {
            return Some(i);
        }
        self.globs
            .iter()
            .find(|(g, _)| g.is_match(tool))
            .map(|&(_, i)| i)
    }

    /// The entry holding a tool's own rules: its exact key, else the first
    /// glob key (file order) that matches it.
    pub(crate) fn tool_entry(&self, tool: &str) -> Option<&ToolEntry> {
        self.tool_entry_index(tool).map(|i| &self.entries[i])
    }

    /// The entry a route names.
    pub(crate) fn route_entry(&self, route: &ToolRoute) -> Option<&ToolEntry> {
        route.own.map(|i| &self.entries[i as usize])
    }

    pub(crate) fn wildcard_entry(&self) -> Option<&ToolEntry> {
        self.wildcard.map(|i| &self.entries[i])
    }

    /// Whether `hide` removes this tool.
    pub fn is_hidden(&self, tool: &str) -> bool {
        self.hide.contains(tool)
    }

    /// Whether a tool is listed (an exact or glob key matches it), which is
    /// what `default: deny` asks.
    pub fn is_listed(&self, tool: &str) -> bool {
        self.tool_entry(tool).is_some()
    }

    /// Whether every call to this tool is refused no matter its arguments or
    /// the time: hidden, unlisted under `default: deny`, or stopped by an
    /// unconditional deny rule. The proxy drops such tools from `tools/list`.
    pub fn always_refuses(&self, tool: &str) -> bool {
        if self.is_hidden(tool) || (self.default_deny && !self.is_listed(tool)) {
            return true;
        }
        // Rules that come before an unconditional deny can only stop the
        // call earlier (deny, throttle, approval), never let it run.
        let own = self.tool_entry(tool).into_iter();
        let wild = self.wildcard_entry().into_iter();
        own.chain(wild)
            .flat_map(|e| e.rules.iter())
            .any(|r| r.action == Action::Deny && r.when.is_empty())
    }

    /// The category and risk the policy assigns to a tool, given what the
    /// call (or the server's annotations) said.
    pub fn classify(
        &self,
        tool: &str,
        known_category: Option<Category>,
        known_risk: Option<Risk>,
    ) -> (Category, Risk) {
        self.route(tool).classify(known_category, known_risk)
    }

    /// What `categories:` say about a tool (the first override that sets
    /// each of the two).
    fn category_override(&self, tool: &str) -> (Option<Category>, Option<Risk>) {
        let mut category = None;
        let mut risk = None;
        for o in &self.categories {
            if o.matcher.contains(tool) {
                category = category.or(o.category);
                risk = risk.or(o.risk);
                if category.is_some() && risk.is_some() {
                    break;
                }
            }
        }
        (category, risk)
    }

    /// Which of a call's optional fields any rule looks at. Replay reads
    /// (and decodes) a field's column only when some candidate does.
    pub fn reads(&self) -> CallReads {
        use crate::policy::condition::PathRef;
        let rules = || self.entries.iter().flat_map(|e| e.rules.iter());
        let paths = || rules().flat_map(|r| r.when.iter().chain(&r.checks).map(|c| &c.path));
        CallReads {
            args: paths().any(|p| matches!(p, PathRef::Args(_)))
                || rules().any(|r| {
                    matches!(
                        r.limit.as_ref().map(|l| &l.amount),
                        Some(Amount::FromArgs { .. })
                    ) || r.limit.as_ref().is_some_and(|l| l.by_args)
                }),
            server: paths().any(|p| matches!(p, PathRef::CallServer)),
            class: paths().any(|p| matches!(p, PathRef::ToolCategory | PathRef::ToolRisk)),
        }
    }

    /// Every argument path a rule reads (`args.*` conditions and
    /// `increment_from`), once each, and whether some rule reads it as a
    /// number (`lt`, `lte`, `gt`, `gte`, `increment_from`): where a proxy
    /// must be sure the server reads the same value as the policy.
    pub fn arg_reads(&self) -> Vec<ArgRead<'_>> {
        use crate::policy::condition::{Op, PathRef};
        fn add<'p>(reads: &mut Vec<ArgRead<'p>>, segments: &'p [String], numeric: bool) {
            match reads.iter_mut().find(|r| r.segments == segments) {
                Some(r) => r.numeric |= numeric,
                None => reads.push(ArgRead { segments, numeric }),
            }
        }
        let mut reads: Vec<ArgRead<'_>> = Vec::new();
        for rule in self.entries.iter().flat_map(|e| e.rules.iter()) {
            for c in rule.when.iter().chain(&rule.checks) {
                if let PathRef::Args(segments) = &c.path {
                    let numeric = matches!(c.op, Op::Lt(_) | Op::Lte(_) | Op::Gt(_) | Op::Gte(_));
                    add(&mut reads, segments, numeric);
                }
            }
            if let Some(Amount::FromArgs { segments, .. }) = rule.limit.as_ref().map(|l| &l.amount)
            {
                add(&mut reads, segments, true);
            }
        }
        reads
    }

    pub fn counters(&self) -> &[CounterDef] {
        &self.counters
    }

    /// Whether any rule requires a human's approval.
    pub fn has_approval_rules(&self) -> bool {
        self.entries
            .iter()
            .flat_map(|e| e.rules.iter())
            .any(|r| r.action == Action::RequireApproval)
    }

    /// Whether any rule is a runaway guard (`repeat_limit` or
    /// `circuit_breaker`).
    pub fn has_guards(&self) -> bool {
        self.entries
            .iter()
            .flat_map(|e| e.rules.iter())
            .filter_map(|r| r.limit.as_ref())
            .any(|l| {
                l.by_args
                    || matches!(
                        self.counters[l.counter].window.mode,
                        WindowMode::Breaker { .. }
                    )
            })
    }

    /// Number of tool keys (exact, glob and `"*"`).
    pub fn tool_key_count(&self) -> usize {
        self.entries.len()
    }

    pub fn rule_count(&self) -> usize {
        self.entries.iter().map(|e| e.rules.len()).sum()
    }

    /// Tool keys in file order (for tools/list filtering and scan output).
    pub fn tool_keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.key.as_str())
    }
}
