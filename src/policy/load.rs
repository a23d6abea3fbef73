//! Policy loading: YAML text → validated [`Policy`].
//!
//! Every check reports its line and column and the loader keeps going, so a
//! file with five mistakes gets five errors in one run. Everything PolicyLayer
//! Intercept's `validate` rejects is rejected here too (with its wording where
//! it has one); on top of that, unknown keys are rejected with a suggestion,
//! rule names must be unique within a tool, and the flightrec extensions
//! (`reason`, `when`, `require_approval`, glob keys, `tool.*`/`call.*` paths,
//! the long-form `rate_limit`, `categories`) are checked.

use crate::policy::condition::{Condition, CounterRead, Op, OpKind, PathRef};
use crate::policy::error::{PolicyError, Problem};
use crate::policy::model::{
    Action, Amount, CategoryOverride, CounterDef, KeyKind, Limit, Policy, Rule, Scope, ToolEntry,
    ToolSet, Window, WindowMode,
};
use crate::policy::state::MAX_AMOUNT;
use crate::policy::vocab::{Category, Risk};
use crate::policy::yaml::get;
use crate::policy::yaml::{self, Node, NodeKind, Pos, Scalar};
use globset::{Glob, GlobMatcher};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

const TOP_KEYS: &[&str] = &[
    "version",
    "description",
    "default",
    "hide",
    "tools",
    "categories",
];
const TOOL_KEYS: &[&str] = &["rules"];
const RULE_KEYS: &[&str] = &[
    "name",
    "action",
    "rate_limit",
    "repeat_limit",
    "circuit_breaker",
    "conditions",
    "on_deny",
    "reason",
    "state",
    "when",
];
const CONDITION_KEYS: &[&str] = &["path", "op", "value"];
const STATE_KEYS: &[&str] = &["counter", "window", "increment", "increment_from"];
const RATE_KEYS: &[&str] = &["max", "window", "per", "mode"];
const REPEAT_KEYS: &[&str] = &["max", "window", "per"];
const BREAKER_KEYS: &[&str] = &["errors", "within", "cooldown", "per"];
const CATEGORY_KEYS: &[&str] = &["category", "risk"];

use crate::time::{DAY_US, HOUR_US, MINUTE_US};

impl Policy {
    /// Loads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        Self::load_with_warnings(path).map(|(p, _)| p)
    }

    /// Loads a policy file, also returning warnings (valid but noteworthy
    /// constructs, such as Intercept quirks kept for compatibility).
    pub fn load_with_warnings(path: &Path) -> Result<(Policy, Vec<Problem>), PolicyError> {
        let bytes = std::fs::read(path).map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let source = path.display().to_string();
        let text = String::from_utf8(bytes).map_err(|e| {
            PolicyError::Invalid(vec![Problem {
                file: source.clone(),
                pos: Pos { line: 1, col: 1 },
                message: format!(
                    "the file is not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
                hint: None,
            }])
        })?;
        Self::from_yaml(&text, &source)
    }

    /// Parses and validates policy YAML; `source` names it in messages.
    pub fn from_yaml(text: &str, source: &str) -> Result<(Policy, Vec<Problem>), PolicyError> {
        let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
        let root = yaml::parse(text).map_err(|e| {
            PolicyError::Invalid(vec![Problem {
                file: source.to_string(),
                pos: e.pos,
                message: format!("YAML syntax error: {}", e.message),
                hint: None,
            }])
        })?;
        let mut loader = Loader {
            file: source,
            problems: Vec::new(),
            warnings: Vec::new(),
        };
        let policy = loader.policy(&root, source, sha256);
        if loader.problems.is_empty()
            && let Some(policy) = policy
        {
            Ok((policy, loader.warnings))
        } else {
            loader.problems.sort_by_key(|p| (p.pos.line, p.pos.col));
            Err(PolicyError::Invalid(loader.problems))
        }
    }
}

struct Loader<'s> {
    file: &'s str,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

/// A counter definition while the file is being read: rules refer to named
/// counters by `state.<scope>.<counter>` before all of them are known.
struct RuleDraft<'n> {
    prefix: String,
    name: Arc<str>,
    action: Action,
    message: Option<String>,
    when: Option<&'n Node>,
    conditions: Option<&'n Node>,
    counter: Option<CounterDraft>,
}

enum CounterDraft {
    /// An Intercept `state` block (or a desugared `N/window` shorthand).
    Named {
        name: String,
        counter: usize,
        amount: Amount,
        /// The shorthand's N (a state block takes its limit from conditions).
        shorthand_max: Option<i64>,
    },
    /// The long-form `rate_limit: {max, window, per, mode}`, or a
    /// `repeat_limit: {max, window, per}` (`by_args`).
    Long {
        counter: usize,
        max: i64,
        by_args: bool,
    },
}

impl<'s> Loader<'s> {
    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_string(),
            pos,
            message: message.into(),
            hint: None,
        });
    }

    fn error_hint(&mut self, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_string(),
            pos,
            message: message.into(),
            hint: Some(hint.into()),
        });
    }

    fn warn(&mut self, pos: Pos, message: impl Into<String>) {
        self.warnings.push(Problem {
            file: self.file.to_string(),
            pos,
            message: message.into(),
            hint: None,
        });
    }

    /// The entries of a mapping node, or an error naming what was expected.
    fn mapping<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [(Node, Node)]> {
        match &node.kind {
            NodeKind::Map(entries) => Some(entries),
            _ => {
                self.error(
                    node.pos,
                    format!("{what} must be a mapping, found {}", node.type_name()),
                );
                None
            }
        }
    }

    /// A list node's items; null counts as an empty list.
    fn list<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [Node]> {
        match &node.kind {
            NodeKind::Seq(items) => Some(items),
            NodeKind::Scalar(Scalar::Null, _) => Some(&[]),
            _ => {
                self.error(
                    node.pos,
                    format!("{what} must be a list, found {}", node.type_name()),
                );
                None
            }
        }
    }

    /// A scalar as text. Like Go's yaml.v3 (and so Intercept), an unquoted
    /// number or boolean is accepted where text is expected (`version: 1`).
    fn text(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.kind {
            NodeKind::Scalar(Scalar::Null, _) => Some(String::new()),
            NodeKind::Scalar(_, text) => Some(text.clone()),
            _ => {
                self.error(
                    node.pos,
                    format!("{what} must be text, found {}", node.type_name()),
                );
                None
            }
        }
    }

    fn check_keys(&mut self, entries: &[(Node, Node)], allowed: &[&str], what: &str) {
        for (key, _) in entries {
            let name = key.scalar_text().unwrap_or_default();
            if allowed.contains(&name) {
                continue;
            }
            let message = format!("unknown key `{name}` in {what}");
            match suggest(name, allowed) {
                Some(s) => self.error_hint(key.pos, message, format!("did you mean `{s}`?")),
                None => self.error_hint(
                    key.pos,
                    message,
                    format!("allowed keys: {}", allowed.join(", ")),
                ),
            }
        }
    }

    fn policy(&mut self, root: &Node, source: &str, sha256: String) -> Option<Policy> {
        if root.is_null() {
            self.error_hint(
                root.pos,
                "the policy file is empty",
                "start with `version: \"1\"` and a `tools:` mapping",
            );
            return None;
        }
        let top = self.mapping(root, "a policy file")?;
        self.check_keys(top, TOP_KEYS, "the policy (top level)");

        let version = get(top, "version");
        let version_text = version
            .and_then(|v| self.text(v, "version"))
            .unwrap_or_default();
        if version_text != "1" {
            self.error_hint(
                version.map_or(root.pos, |v| v.pos),
                format!("version must be \"1\", got \"{version_text}\""),
                "set `version: \"1\"`",
            );
        }
        let description = get(top, "description")
            .and_then(|d| self.text(d, "description"))
            .filter(|d| !d.is_empty());
        let default_deny = match get(top, "default") {
            None => false,
            Some(d) => match self.text(d, "default").as_deref() {
                Some("" | "allow") => false,
                Some("deny") => true,
                Some(other) => {
                    self.error_hint(
                        d.pos,
                        format!("default must be \"allow\" or \"deny\", got \"{other}\""),
                        "use \"allow\" or \"deny\", or omit the field",
                    );
                    false
                }
                None => false,
            },
        };
        let hide = get(top, "hide").map(|h| self.hide(h)).unwrap_or_default();
        let categories = get(top, "categories")
            .map(|c| self.categories(c))
            .unwrap_or_default();

        let mut policy = Policy {
            source: source.to_string(),
            sha256,
            description,
            default_deny,
            hide,
            exact: Default::default(),
            globs: Vec::new(),
            wildcard: None,
            entries: Vec::new(),
            categories,
            counters: Vec::new(),
        };
        if let Some(tools) = get(top, "tools") {
            self.tools(tools, &mut policy);
        }
        Some(policy)
    }

    fn hide(&mut self, node: &Node) -> ToolSet {
        let mut set = ToolSet::default();
        let Some(items) = self.list(node, "hide") else {
            return set;
        };
        let mut seen: HashMap<String, ()> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let Some(name) = self.text(item, &format!("hide[{i}]")) else {
                continue;
            };
            if name.trim().is_empty() {
                self.error(item.pos, format!("hide[{i}]: entry must not be empty"));
                continue;
            }
            if seen.insert(name.clone(), ()).is_some() {
                self.error(item.pos, format!("hide: duplicate entry \"{name}\""));
                continue;
            }
            self.add_to_set(&mut set, &name, item.pos);
        }
        set
    }

    fn add_to_set(&mut self, set: &mut ToolSet, name: &str, pos: Pos) {
        if name == "*" {
            set.all = true;
        } else if is_glob(name) {
            if let Some(g) = self.glob(name, pos) {
                set.globs.push(g);
            }
        } else {
            set.exact.insert(name.to_string());
        }
    }

    fn glob(&mut self, pattern: &str, pos: Pos) -> Option<GlobMatcher> {
        match Glob::new(pattern) {
            Ok(g) => Some(g.compile_matcher()),
            Err(e) => {
                self.error(pos, format!("invalid glob \"{pattern}\": {}", e.kind()));
                None
            }
        }
    }

    fn categories(&mut self, node: &Node) -> Vec<CategoryOverride> {
        let mut out = Vec::new();
        let Some(entries) = self.mapping(node, "categories") else {
            return out;
        };
        for (key, value) in entries {
            let name = key.scalar_text().unwrap_or_default().to_string();
            let mut matcher = ToolSet::default();
            self.add_to_set(&mut matcher, &name, key.pos);
            let (mut category, mut risk) = (None, None);
            match &value.kind {
                NodeKind::Scalar(..) => {
                    category = self.parse_enum::<Category>(value, &format!("categories.{name}"));
                }
                NodeKind::Map(fields) => {
                    self.check_keys(fields, CATEGORY_KEYS, &format!("categories.{name}"));
                    if let Some(c) = get(fields, "category") {
                        category = self.parse_enum::<Category>(c, "category");
                    }
                    if let Some(r) = get(fields, "risk") {
                        risk = self.parse_enum::<Risk>(r, "risk");
                    }
                }
                NodeKind::Seq(_) => self.error_hint(
                    value.pos,
                    format!("categories.{name} must be a category or a mapping, found a list"),
                    "write `tool: write` or `tool: {category: write, risk: medium}`",
                ),
            }
            out.push(CategoryOverride {
                matcher,
                category,
                risk,
            });
        }
        out
    }

    fn parse_enum<T: std::str::FromStr<Err = String>>(
        &mut self,
        node: &Node,
        what: &str,
    ) -> Option<T> {
        let text = self.text(node, what)?;
        match text.parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(node.pos, format!("{what}: {e}"));
                None
            }
        }
    }

    fn tools(&mut self, node: &Node, policy: &mut Policy) {
        if node.is_null() {
            return;
        }
        let Some(entries) = self.mapping(node, "tools") else {
            return;
        };
        // Pass 1: keys, rule shapes and counters (conditions may refer to
        // counters defined under any key, so they wait for pass 2).
        let mut drafts: Vec<Vec<RuleDraft>> = Vec::new();
        let mut named: HashMap<(usize, String), usize> = HashMap::new();
        for (key, value) in entries {
            let key_text = key.scalar_text().unwrap_or_default().to_string();
            let entry_index = policy.entries.len();
            let kind = if key_text == "*" {
                policy.wildcard = Some(entry_index);
                KeyKind::Wildcard
            } else if is_glob(&key_text) {
                if let Some(g) = self.glob(&key_text, key.pos) {
                    policy.globs.push((g, entry_index));
                }
                KeyKind::Glob
            } else {
                policy.exact.insert(key_text.clone(), entry_index);
                KeyKind::Exact
            };
            if key_text.trim().is_empty() {
                self.error(key.pos, "tool names must not be empty");
            }
            policy.entries.push(ToolEntry {
                key: key_text.clone(),
                kind,
                rules: Vec::new(),
            });
            let rule_nodes: &[Node] = match &value.kind {
                NodeKind::Scalar(Scalar::Null, _) => &[],
                NodeKind::Map(fields) => {
                    self.check_keys(fields, TOOL_KEYS, &format!("tools.{key_text}"));
                    match get(fields, "rules") {
                        Some(r) => self
                            .list(r, &format!("tools.{key_text}.rules"))
                            .unwrap_or(&[]),
                        None => &[],
                    }
                }
                _ => {
                    self.error_hint(
                        value.pos,
                        format!(
                            "tools.{key_text} must be a mapping, found {}",
                            value.type_name()
                        ),
                        "write `rules: []` under the tool name",
                    );
                    &[]
                }
            };
            let mut tool_drafts = Vec::new();
            let mut names: HashMap<Arc<str>, usize> = HashMap::new();
            let mut counter_names: HashMap<String, usize> = HashMap::new();
            for (i, rule_node) in rule_nodes.iter().enumerate() {
                let prefix = format!("tools.{key_text}.rules[{i}]");
                let Some(draft) = self.rule_shape(rule_node, &prefix, &key_text, kind, policy)
                else {
                    continue;
                };
                if !draft.name.is_empty()
                    && let Some(prev) = names.insert(draft.name.clone(), i)
                {
                    self.error_hint(
                            rule_node.pos,
                            format!("{prefix}: duplicate rule name \"{}\" (also used by rules[{prev}])", draft.name),
                            "rule names identify decisions in the audit log; give each rule of a tool its own name",
                        );
                }
                if let Some(CounterDraft::Named { name, counter, .. }) = &draft.counter {
                    if let Some(prev) = counter_names.insert(name.clone(), i) {
                        self.error_hint(
                            rule_node.pos,
                            format!("{prefix}: duplicate state counter \"{name}\" (also used by rules[{prev}])"),
                            "use different counter names or different windows",
                        );
                    } else {
                        named.insert((entry_index, name.clone()), *counter);
                    }
                }
                tool_drafts.push(draft);
            }
            drafts.push(tool_drafts);
        }

        // Pass 2: conditions, now that every named counter is known.
        for (entry_index, tool_drafts) in drafts.into_iter().enumerate() {
            let key = policy.entries[entry_index].key.clone();
            let kind = policy.entries[entry_index].kind;
            for draft in tool_drafts {
                let rule = self.finish_rule(draft, &key, kind, policy, &named);
                policy.entries[entry_index].rules.push(rule);
            }
        }
    }

    /// Reads a rule's own fields (everything but its conditions).
    fn rule_shape<'n>(
        &mut self,
        node: &'n Node,
        prefix: &str,
        key: &str,
        kind: KeyKind,
        policy: &mut Policy,
    ) -> Option<RuleDraft<'n>> {
        let fields = self.mapping(node, prefix)?;
        self.check_keys(fields, RULE_KEYS, "a rule");
        let name = get(fields, "name")
            .and_then(|n| self.text(n, "name"))
            .unwrap_or_default();
        if name.is_empty() {
            self.error(node.pos, format!("{prefix}: rule must have a name"));
        }
        let action_node = get(fields, "action");
        let action = match action_node.map(|a| (a, self.text(a, "action"))) {
            None => Action::Evaluate,
            Some((_, None)) => Action::Evaluate,
            Some((a, Some(text))) => match text.as_str() {
                "" | "evaluate" => Action::Evaluate,
                "deny" => Action::Deny,
                "require_approval" => Action::RequireApproval,
                other => {
                    let msg = format!(
                        "{prefix}: action must be \"evaluate\", \"deny\" or \"require_approval\", got \"{other}\""
                    );
                    match suggest(other, &["evaluate", "deny", "require_approval"]) {
                        Some(s) => self.error_hint(a.pos, msg, format!("did you mean \"{s}\"?")),
                        None => self.error(a.pos, msg),
                    }
                    Action::Evaluate
                }
            },
        };
        let on_deny = get(fields, "on_deny");
        let reason = get(fields, "reason");
        if let (Some(_), Some(r)) = (on_deny, reason) {
            self.error_hint(
                r.pos,
                format!("{prefix}: `reason` is an alias of `on_deny`; give only one of them"),
                "delete one of the two",
            );
        }
        let message = on_deny
            .or(reason)
            .and_then(|m| self.text(m, "on_deny"))
            .filter(|m| !m.is_empty());
        let conditions = get(fields, "conditions").filter(|c| !c.is_null());
        let when = get(fields, "when").filter(|c| !c.is_null());
        let state = get(fields, "state").filter(|s| !s.is_null());
        let rate = get(fields, "rate_limit").filter(|r| !r.is_null());
        let repeat = get(fields, "repeat_limit").filter(|r| !r.is_null());
        let breaker = get(fields, "circuit_breaker").filter(|r| !r.is_null());

        let scope_name = if kind == KeyKind::Wildcard {
            "_global"
        } else {
            key
        };
        let named_scope = if kind == KeyKind::Glob {
            Scope::Tool
        } else {
            Scope::Global
        };
        let mut counter = None;
        if let Some(br) = breaker {
            if rate.is_some() || repeat.is_some() || conditions.is_some() || state.is_some() {
                self.error_hint(
                    br.pos,
                    format!("{prefix}: circuit_breaker cannot be combined with rate_limit, repeat_limit, conditions or state"),
                    "give each limit a rule of its own",
                );
            }
            if action != Action::Evaluate {
                self.error(
                    br.pos,
                    format!("{prefix}: circuit_breaker needs an evaluate rule (no `action: deny` or `require_approval`)"),
                );
            }
            match &br.kind {
                NodeKind::Map(br_fields) => {
                    if let Some((errors, within_us, cooldown_us, per, text)) =
                        self.breaker(br, br_fields, prefix, kind)
                    {
                        let c = policy.counters.len();
                        policy.counters.push(CounterDef {
                            identity: format!("{key}\u{1f}{name}\u{1f}breaker"),
                            window: Window {
                                len_us: within_us,
                                mode: WindowMode::Breaker {
                                    errors,
                                    cooldown_us,
                                },
                            },
                            scope: per,
                        });
                        counter = Some((
                            CounterDraft::Long {
                                counter: c,
                                max: 0,
                                by_args: false,
                            },
                            format!("Circuit open: {text}, then one trial call is let through."),
                        ));
                    }
                }
                _ => self.error_hint(
                    br.pos,
                    format!("{prefix}: circuit_breaker must be a mapping"),
                    "write `circuit_breaker: {errors: 3, within: 1m, cooldown: 5m}`",
                ),
            }
        } else if let Some(repeat) = repeat {
            if rate.is_some() || conditions.is_some() || state.is_some() {
                self.error_hint(
                    repeat.pos,
                    format!("{prefix}: repeat_limit cannot be combined with rate_limit, conditions or state"),
                    "give each limit a rule of its own",
                );
            }
            if action != Action::Evaluate {
                self.error(
                    repeat.pos,
                    format!("{prefix}: repeat_limit needs an evaluate rule (no `action: deny` or `require_approval`)"),
                );
            }
            match &repeat.kind {
                NodeKind::Map(repeat_fields) => {
                    self.check_keys(repeat_fields, REPEAT_KEYS, "repeat_limit");
                    if let Some((max, window, per, text)) =
                        self.long_rate(repeat, repeat_fields, prefix, kind, "repeat_limit")
                    {
                        let c = policy.counters.len();
                        policy.counters.push(CounterDef {
                            identity: format!("{key}\u{1f}{name}\u{1f}repeat"),
                            window: Window {
                                len_us: window.len_us,
                                mode: WindowMode::Sliding,
                            },
                            scope: per,
                        });
                        counter = Some((
                            CounterDraft::Long {
                                counter: c,
                                max,
                                by_args: true,
                            },
                            format!(
                                "Repeated call: the same tool with the same arguments at most {max} times per {text}. Retry when the earliest leaves the window."
                            ),
                        ));
                    }
                }
                _ => self.error_hint(
                    repeat.pos,
                    format!("{prefix}: repeat_limit must be a mapping"),
                    "write `repeat_limit: {max: 3, window: 10m, per: session}`",
                ),
            }
        } else if let Some(rate) = rate {
            let conflict = conditions.is_some() || state.is_some();
            if conflict {
                self.error_hint(
                    rate.pos,
                    format!("{prefix}: rate_limit cannot be combined with conditions or state; use separate rules or the full syntax instead"),
                    "to limit only some calls, put the rate_limit in a rule with `when:`",
                );
            }
            if action != Action::Evaluate {
                let action_name = if action == Action::Deny {
                    "deny"
                } else {
                    "require_approval"
                };
                self.error(
                    rate.pos,
                    format!("{prefix}: rate_limit cannot be used with action \"{action_name}\""),
                );
            }
            match &rate.kind {
                NodeKind::Map(rate_fields) => {
                    self.check_keys(rate_fields, RATE_KEYS, "rate_limit");
                    if let Some((max, window, per, text)) =
                        self.long_rate(rate, rate_fields, prefix, kind, "rate_limit")
                    {
                        let c = policy.counters.len();
                        policy.counters.push(CounterDef {
                            identity: format!("{key}\u{1f}{name}\u{1f}rate"),
                            window,
                            scope: per,
                        });
                        counter = Some((
                            CounterDraft::Long {
                                counter: c,
                                max,
                                by_args: false,
                            },
                            format!("Rate limit of {max} per {text} reached. Try again later."),
                        ));
                    }
                }
                _ => {
                    let text = self.text(rate, "rate_limit").unwrap_or_default();
                    match parse_shorthand(&text) {
                        Ok((count, window_name, len_us)) => {
                            let counter_name = format!("_rate_{window_name}");
                            let c = policy.counters.len();
                            policy.counters.push(CounterDef {
                                identity: format!("{scope_name}\u{1f}{counter_name}"),
                                window: Window {
                                    len_us,
                                    mode: WindowMode::Fixed,
                                },
                                scope: named_scope,
                            });
                            counter = Some((
                                CounterDraft::Named {
                                    name: counter_name,
                                    counter: c,
                                    amount: Amount::Fixed(1),
                                    shorthand_max: Some(count),
                                },
                                format!(
                                    "Rate limit of {count} per {window_name} reached. Try again later."
                                ),
                            ));
                        }
                        Err(msg) => self.error_hint(
                            rate.pos,
                            format!("{prefix}: {msg}"),
                            "write `N/minute`, `N/hour` or `N/day`, or `{max: N, window: 60s}`",
                        ),
                    }
                }
            }
        } else if let Some(state) = state {
            if action == Action::RequireApproval {
                self.error(
                    state.pos,
                    format!("{prefix}: require_approval rules must not have a state block"),
                );
            } else if action == Action::Deny {
                self.warn(
                    state.pos,
                    format!("{prefix}: a deny rule never counts calls; its state block is unused"),
                );
            }
            if let Some((name, window, amount)) = self.state_block(state, prefix) {
                let c = policy.counters.len();
                policy.counters.push(CounterDef {
                    identity: format!("{scope_name}\u{1f}{name}"),
                    window,
                    scope: named_scope,
                });
                counter = Some((
                    CounterDraft::Named {
                        name,
                        counter: c,
                        amount,
                        shorthand_max: None,
                    },
                    String::new(),
                ));
            }
        }

        match action {
            Action::Deny | Action::RequireApproval => {
                if conditions.is_some() {
                    let kind_name = if action == Action::Deny {
                        "deny"
                    } else {
                        "require_approval"
                    };
                    self.error_hint(
                        conditions.map_or(node.pos, |c| c.pos),
                        format!("{prefix}: {kind_name} rules must not have conditions"),
                        "to make the rule conditional, use `when:` instead of `conditions:`",
                    );
                }
            }
            Action::Evaluate => {
                let has_conditions = conditions
                    .is_some_and(|c| matches!(&c.kind, NodeKind::Seq(v) if !v.is_empty()));
                if !has_conditions && rate.is_none() && repeat.is_none() && breaker.is_none() {
                    self.error_hint(
                        node.pos,
                        format!("{prefix}: evaluate rules must have at least one condition"),
                        "add `conditions:`, a `rate_limit:`, or set `action: deny`",
                    );
                }
            }
        }

        let (counter, default_message) = match counter {
            Some((c, m)) => (Some(c), m),
            None => (None, String::new()),
        };
        let message = message.or_else(|| match action {
            Action::Deny => Some(format!("Denied by rule \"{name}\"")),
            Action::RequireApproval => Some(format!(
                "Rule \"{name}\" requires a human's approval for this call"
            )),
            Action::Evaluate if !default_message.is_empty() => Some(default_message),
            Action::Evaluate => None,
        });
        Some(RuleDraft {
            prefix: prefix.to_string(),
            name: Arc::from(name),
            action,
            message,
            when,
            conditions,
            counter,
        })
    }

    /// The `{max, window, per, mode}` of a `rate_limit` or `repeat_limit`
    /// (`what` names it in errors).
    fn long_rate(
        &mut self,
        node: &Node,
        fields: &[(Node, Node)],
        prefix: &str,
        kind: KeyKind,
        what: &str,
    ) -> Option<(i64, Window, Scope, String)> {
        let max = match get(fields, "max") {
            None => {
                self.error(
                    node.pos,
                    format!("{prefix}: {what} needs `max` (calls allowed per window)"),
                );
                None
            }
            Some(m) => match &m.kind {
                NodeKind::Scalar(Scalar::Int(n), _) if *n >= 1 => Some(*n),
                _ => {
                    self.error_hint(
                        m.pos,
                        format!(
                            "{prefix}: {what} max must be a positive integer, got {}",
                            m.scalar_text().unwrap_or(m.type_name())
                        ),
                        "a max of 0 would refuse every call: use `action: deny` for that",
                    );
                    None
                }
            },
        };
        let window = match get(fields, "window") {
            None => {
                self.error(
                    node.pos,
                    format!("{prefix}: {what} needs `window` (e.g. 60s, 5m, 1h, 1d)"),
                );
                None
            }
            Some(w) => {
                let text = self.text(w, "window").unwrap_or_default();
                match crate::time::parse_duration_us(&text) {
                    Ok(us) => Some((us, text)),
                    Err(msg) => {
                        self.error_hint(
                            w.pos,
                            format!("{prefix}: {what} window {msg}"),
                            "use e.g. 60, 60s, 5m, 1h or 1d",
                        );
                        None
                    }
                }
            }
        };
        let per = self.per_scope(fields, prefix, kind, what);
        let mode = match get(fields, "mode") {
            None => WindowMode::Sliding,
            Some(m) => match self.text(m, "mode").as_deref() {
                Some("sliding") => WindowMode::Sliding,
                Some("fixed") => WindowMode::Fixed,
                other => {
                    self.error(
                        m.pos,
                        format!(
                            "{prefix}: {what} mode must be sliding or fixed, got \"{}\"",
                            other.unwrap_or_default()
                        ),
                    );
                    WindowMode::Sliding
                }
            },
        };
        let (max, (len_us, text)) = (max?, window?);
        let mut described = text;
        if !described.chars().any(|c| c.is_alphabetic()) {
            described.push('s');
        }
        if per != Scope::Global && per != Scope::Tool {
            described = format!("{described} per {}", per.as_str());
        }
        Some((max, Window { len_us, mode }, per, described))
    }

    /// A limit's `per` (default: per tool, global for `"*"` rules).
    fn per_scope(
        &mut self,
        fields: &[(Node, Node)],
        prefix: &str,
        kind: KeyKind,
        what: &str,
    ) -> Scope {
        match get(fields, "per") {
            None => {
                if kind == KeyKind::Wildcard {
                    Scope::Global
                } else {
                    Scope::Tool
                }
            }
            Some(p) => match self.text(p, "per").as_deref() {
                Some("session") => Scope::Session,
                Some("agent") => Scope::Agent,
                Some("tool") => Scope::Tool,
                Some("global") => Scope::Global,
                other => {
                    let other = other.unwrap_or_default();
                    let msg = format!(
                        "{prefix}: {what} per must be session, agent, tool or global, got \"{other}\""
                    );
                    match suggest(other, &["session", "agent", "tool", "global"]) {
                        Some(s) => self.error_hint(p.pos, msg, format!("did you mean \"{s}\"?")),
                        None => self.error(p.pos, msg),
                    }
                    Scope::Tool
                }
            },
        }
    }

    /// `circuit_breaker: {errors, within, cooldown, per}`.
    fn breaker(
        &mut self,
        node: &Node,
        fields: &[(Node, Node)],
        prefix: &str,
        kind: KeyKind,
    ) -> Option<(u32, i64, i64, Scope, String)> {
        self.check_keys(fields, BREAKER_KEYS, "circuit_breaker");
        let errors = match get(fields, "errors") {
            Some(m) => match &m.kind {
                NodeKind::Scalar(Scalar::Int(n), _) if (1..=1_000_000).contains(n) => {
                    Some(*n as u32)
                }
                _ => {
                    self.error(
                        m.pos,
                        format!(
                            "{prefix}: circuit_breaker errors must be a positive integer, got {}",
                            m.scalar_text().unwrap_or(m.type_name())
                        ),
                    );
                    None
                }
            },
            None => {
                self.error(
                    node.pos,
                    format!("{prefix}: circuit_breaker needs `errors` (failing calls in a row that open it)"),
                );
                None
            }
        };
        let mut duration = |field: &str, example: &str| match get(fields, field) {
            Some(w) => {
                let text = self.text(w, field).unwrap_or_default();
                match crate::time::parse_duration_us(&text) {
                    Ok(us) => Some((us, text)),
                    Err(msg) => {
                        self.error(w.pos, format!("{prefix}: circuit_breaker {field} {msg}"));
                        None
                    }
                }
            }
            None => {
                self.error(
                    node.pos,
                    format!("{prefix}: circuit_breaker needs `{field}` (e.g. {example})"),
                );
                None
            }
        };
        let within = duration("within", "1m");
        let cooldown = duration("cooldown", "5m");
        let per = self.per_scope(fields, prefix, kind, "circuit_breaker");
        let (errors, (within_us, within_text), (cooldown_us, cooldown_text)) =
            (errors?, within?, cooldown?);
        let described = format!(
            "{errors} failing calls in a row within {within_text}; refused for {cooldown_text}"
        );
        Some((errors, within_us, cooldown_us, per, described))
    }

    fn state_block(&mut self, node: &Node, prefix: &str) -> Option<(String, Window, Amount)> {
        let fields = self.mapping(node, &format!("{prefix}.state"))?;
        self.check_keys(fields, STATE_KEYS, "a state block");
        let counter = get(fields, "counter")
            .and_then(|c| self.text(c, "counter"))
            .unwrap_or_default();
        if counter.is_empty() {
            self.error(
                node.pos,
                format!("{prefix}.state: counter must not be empty"),
            );
        }
        let window_node = get(fields, "window");
        let window_text = window_node
            .and_then(|w| self.text(w, "window"))
            .unwrap_or_default();
        let len_us = match window_text.as_str() {
            "minute" => MINUTE_US,
            "hour" => HOUR_US,
            "day" => DAY_US,
            _ => {
                self.error_hint(
                    window_node.map_or(node.pos, |w| w.pos),
                    format!("{prefix}.state: window must be \"minute\", \"hour\", or \"day\", got \"{window_text}\""),
                    "for other lengths or a sliding window, use `rate_limit: {max: N, window: 90s}`",
                );
                // Keep the counter defined so that conditions naming it do
                // not report a second, misleading error.
                MINUTE_US
            }
        };
        let increment = match get(fields, "increment") {
            None => 1,
            Some(i) => match &i.kind {
                NodeKind::Scalar(Scalar::Int(0), _) => {
                    self.warn(
                        i.pos,
                        format!("{prefix}.state: increment 0 counts as 1 (as in Intercept)"),
                    );
                    1
                }
                NodeKind::Scalar(Scalar::Int(n), _) if *n < 0 => {
                    self.error(
                        i.pos,
                        format!("{prefix}.state: increment must not be negative, got {n}"),
                    );
                    1
                }
                NodeKind::Scalar(Scalar::Int(n), _) if *n > MAX_AMOUNT => {
                    self.error(
                        i.pos,
                        format!("{prefix}.state: increment must be at most {MAX_AMOUNT}, got {n}"),
                    );
                    1
                }
                NodeKind::Scalar(Scalar::Int(n), _) => *n,
                _ => {
                    self.error(
                        i.pos,
                        format!(
                            "{prefix}.state: increment must be an integer, found {}",
                            i.type_name()
                        ),
                    );
                    1
                }
            },
        };
        let amount = match get(fields, "increment_from") {
            None => Amount::Fixed(increment),
            Some(f) => {
                let path = self.text(f, "increment_from").unwrap_or_default();
                match path.strip_prefix("args.") {
                    Some(rest) if !rest.is_empty() => Amount::FromArgs {
                        segments: rest.split('.').map(str::to_string).collect(),
                        path_text: path.clone(),
                    },
                    _ if path.is_empty() => Amount::Fixed(increment),
                    _ => {
                        self.error(f.pos, format!("{prefix}.state: increment_from must start with \"args.\", got \"{path}\""));
                        Amount::Fixed(increment)
                    }
                }
            }
        };
        Some((
            counter,
            Window {
                len_us,
                mode: WindowMode::Fixed,
            },
            amount,
        ))
    }

    fn finish_rule(
        &mut self,
        draft: RuleDraft<'_>,
        key: &str,
        kind: KeyKind,
        policy: &Policy,
        named: &HashMap<(usize, String), usize>,
    ) -> Rule {
        let resolver = StateResolver { policy, named };
        let when = draft
            .when
            .map(|w| self.conditions(w, &format!("{}.when", draft.prefix), &resolver))
            .unwrap_or_default();
        let mut checks = draft
            .conditions
            .map(|c| self.conditions(c, &format!("{}.conditions", draft.prefix), &resolver))
            .unwrap_or_default();
        let limit = match draft.counter {
            None => None,
            Some(CounterDraft::Long {
                counter,
                max,
                by_args,
            }) => Some(Limit {
                counter,
                max: Some(max),
                amount: Amount::Fixed(1),
                by_args,
            }),
            Some(CounterDraft::Named {
                name,
                counter,
                amount,
                shorthand_max,
            }) => {
                let max = match shorthand_max {
                    Some(m) => Some(m),
                    None => {
                        // Intercept's limit is the first lt/lte condition on the
                        // rule's own counter; the reservation enforces it.
                        let scope_name = if kind == KeyKind::Wildcard {
                            "_global"
                        } else {
                            key
                        };
                        let own = format!("state.{scope_name}.{name}");
                        let found = checks.iter().position(|c| {
                            c.path_text == own && matches!(c.op, Op::Lt(_) | Op::Lte(_))
                        });
                        found.map(|i| match checks.remove(i).op {
                            Op::Lt(v) => (v as i64).saturating_sub(1),
                            Op::Lte(v) => v as i64,
                            _ => unreachable!("matched above"),
                        })
                    }
                };
                Some(Limit {
                    counter,
                    max,
                    amount,
                    by_args: false,
                })
            }
        };
        let message = draft.message.unwrap_or_else(|| {
            if limit.is_some() && checks.is_empty() {
                format!("Rate limit exceeded for {}", draft.name)
            } else {
                format!("Denied by rule \"{}\"", draft.name)
            }
        });
        Rule {
            name: draft.name,
            action: draft.action,
            message: Arc::from(message),
            when,
            checks,
            limit,
        }
    }

    fn conditions(
        &mut self,
        node: &Node,
        what: &str,
        resolver: &StateResolver<'_>,
    ) -> Vec<Condition> {
        let Some(items) = self.list(node, what) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (j, item) in items.iter().enumerate() {
            if let Some(c) = self.condition(item, &format!("{what}[{j}]"), resolver) {
                out.push(c);
            }
        }
        out
    }

    fn condition(
        &mut self,
        node: &Node,
        what: &str,
        resolver: &StateResolver<'_>,
    ) -> Option<Condition> {
        let fields = self.mapping(node, what)?;
        self.check_keys(fields, CONDITION_KEYS, "a condition");
        let path_node = get(fields, "path");
        let path_text = path_node
            .and_then(|p| self.text(p, "path"))
            .unwrap_or_default();
        let path_pos = path_node.map_or(node.pos, |p| p.pos);
        let path = self.path(&path_text, path_pos, what, resolver);
        let op_node = get(fields, "op");
        let op_text = op_node.and_then(|o| self.text(o, "op")).unwrap_or_default();
        let op_pos = op_node.map_or(node.pos, |o| o.pos);
        let value = get(fields, "value");
        let value_pos = value.map_or(node.pos, |v| v.pos);
        let Some(kind) = OpKind::parse(&op_text) else {
            let msg = format!("{what}: unknown operator \"{op_text}\"");
            match suggest(&op_text, &OpKind::NAMES) {
                Some(s) => self.error_hint(op_pos, msg, format!("did you mean \"{s}\"?")),
                None => self.error_hint(
                    op_pos,
                    msg,
                    format!("use one of: {}", OpKind::NAMES.join(", ")),
                ),
            }
            return None;
        };
        let json = value.map(Node::to_json).unwrap_or(serde_json::Value::Null);
        let op = match kind {
            OpKind::Eq => Op::Eq(json),
            OpKind::Neq => Op::Neq(json),
            OpKind::Contains => Op::Contains(json),
            OpKind::In | OpKind::NotIn => match json {
                serde_json::Value::Array(list) => {
                    if kind == OpKind::In {
                        Op::In(list)
                    } else {
                        Op::NotIn(list)
                    }
                }
                _ => {
                    self.error_hint(
                        value_pos,
                        format!("{what}: operator \"{op_text}\" requires a list value"),
                        "provide a YAML list, e.g. [\"a\", \"b\"]",
                    );
                    return None;
                }
            },
            OpKind::Lt | OpKind::Lte | OpKind::Gt | OpKind::Gte => {
                let number = match value.map(|v| &v.kind) {
                    Some(NodeKind::Scalar(Scalar::Int(i), _)) => Some(*i as f64),
                    Some(NodeKind::Scalar(Scalar::Float(f), _)) if f.is_finite() => Some(*f),
                    _ => None,
                };
                let Some(n) = number else {
                    self.error(
                        value_pos,
                        format!("{what}: operator \"{op_text}\" requires a numeric value"),
                    );
                    return None;
                };
                match kind {
                    OpKind::Lt => Op::Lt(n),
                    OpKind::Lte => Op::Lte(n),
                    OpKind::Gt => Op::Gt(n),
                    _ => Op::Gte(n),
                }
            }
            OpKind::Exists => match json {
                serde_json::Value::Bool(b) => Op::Exists(b),
                _ => {
                    self.error(
                        value_pos,
                        format!("{what}: operator \"exists\" requires a boolean value"),
                    );
                    return None;
                }
            },
            OpKind::Regex => match json {
                serde_json::Value::String(pattern) => match regex::Regex::new(&pattern) {
                    Ok(re) => Op::Regex(re),
                    Err(e) => {
                        let detail = e
                            .to_string()
                            .lines()
                            .last()
                            .unwrap_or_default()
                            .trim()
                            .trim_start_matches("error: ")
                            .to_string();
                        self.error(
                            value_pos,
                            format!("{what}: invalid regex \"{pattern}\": {detail}"),
                        );
                        return None;
                    }
                },
                _ => {
                    self.error(value_pos, format!("{what}: regex value must be a string"));
                    return None;
                }
            },
        };
        if let Some(PathRef::ToolCategory | PathRef::ToolRisk) = &path {
            self.check_vocabulary(&path_text, &op, value_pos, what);
        }
        Some(Condition {
            path_text,
            path: path?,
            op,
        })
    }

    /// `tool.category` and `tool.risk` compare against a closed set of words:
    /// a typo there would make a rule silently never match.
    fn check_vocabulary(&mut self, path: &str, op: &Op, pos: Pos, what: &str) {
        let allowed: Vec<&str> = if path == "tool.category" {
            Category::ALL.iter().map(|c| c.as_str()).collect()
        } else {
            Risk::ALL.iter().map(|r| r.as_str()).collect()
        };
        let values: Vec<&serde_json::Value> = match op {
            Op::Eq(v) | Op::Neq(v) => vec![v],
            Op::In(list) | Op::NotIn(list) => list.iter().collect(),
            _ => return,
        };
        for v in values {
            let text = v.as_str().unwrap_or_default();
            if !allowed.contains(&text) {
                self.error(
                    pos,
                    format!("{what}: {path} is one of {}, got {v}", allowed.join(", ")),
                );
            }
        }
    }

    fn path(
        &mut self,
        text: &str,
        pos: Pos,
        what: &str,
        resolver: &StateResolver<'_>,
    ) -> Option<PathRef> {
        let simple = match text {
            "tool.name" => Some(PathRef::ToolName),
            "tool.category" => Some(PathRef::ToolCategory),
            "tool.risk" => Some(PathRef::ToolRisk),
            "call.agent" => Some(PathRef::CallAgent),
            "call.session" => Some(PathRef::CallSession),
            "call.server" => Some(PathRef::CallServer),
            _ => None,
        };
        if simple.is_some() {
            return simple;
        }
        if let Some(rest) = text.strip_prefix("args.") {
            if rest.is_empty() || rest.split('.').any(str::is_empty) {
                self.error(pos, format!("{what}: path \"{text}\" has an empty segment"));
                return None;
            }
            return Some(PathRef::Args(rest.split('.').map(str::to_string).collect()));
        }
        if let Some(rest) = text.strip_prefix("state.") {
            let Some((scope, counter)) = rest
                .split_once('.')
                .filter(|(s, c)| !s.is_empty() && !c.is_empty())
            else {
                self.error_hint(
                    pos,
                    format!("{what}: state path \"{text}\" must name a scope and a counter"),
                    "write state.<tool>.<counter>, or state._global.<counter> for \"*\" rules",
                );
                return None;
            };
            return match resolver.resolve(scope, counter) {
                Some(read) => Some(PathRef::State(read)),
                None => {
                    self.error_hint(
                        pos,
                        format!("{what}: condition references state.{scope}.{counter} but no matching state block found"),
                        format!("add a `state:` block with `counter: {counter}` to a rule of tool \"{scope}\""),
                    );
                    None
                }
            };
        }
        let message = format!(
            "{what}: path must start with \"args.\" or \"state.\", or be one of tool.name, tool.category, tool.risk, call.agent, call.session, call.server; got \"{text}\""
        );
        let candidates = [
            "tool.name",
            "tool.category",
            "tool.risk",
            "call.agent",
            "call.session",
            "call.server",
        ];
        match suggest(text, &candidates) {
            Some(s) => self.error_hint(pos, message, format!("did you mean \"{s}\"?")),
            None => self.error(pos, message),
        }
        None
    }
}

struct StateResolver<'p> {
    policy: &'p Policy,
    named: &'p HashMap<(usize, String), usize>,
}

impl StateResolver<'_> {
    /// Finds the counter `state.<scope>.<counter>` names.
    fn resolve(&self, scope: &str, counter: &str) -> Option<CounterRead> {
        let p = self.policy;
        let lookup = |entry: usize| self.named.get(&(entry, counter.to_string())).copied();
        if scope == "_global" {
            let c = lookup(p.wildcard?)?;
            return Some(CounterRead {
                counter: c,
                scope: Some(String::new()),
            });
        }
        if let Some(&entry) = p.exact.get(scope) {
            let c = lookup(entry)?;
            return Some(CounterRead {
                counter: c,
                scope: Some(String::new()),
            });
        }
        // A glob key's own name: the counter of whichever tool is calling.
        if let Some(entry) = p
            .entries
            .iter()
            .position(|e| e.kind == KeyKind::Glob && e.key == scope)
        {
            let c = lookup(entry)?;
            return Some(CounterRead {
                counter: c,
                scope: None,
            });
        }
        // A tool name that a glob key covers: that tool's instance.
        let (_, entry) = p.globs.iter().find(|(g, _)| g.is_match(scope))?;
        let c = lookup(*entry)?;
        Some(CounterRead {
            counter: c,
            scope: Some(scope.to_string()),
        })
    }
}

fn is_glob(name: &str) -> bool {
    name.contains(['*', '?', '[', '{'])
}

/// The closest allowed word, when one is close enough to be a typo.
fn suggest<'a>(word: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (strsim::jaro_winkler(word, a), *a))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, a)| a)
}

/// `N/minute|hour|day` → (N, window name, window length).
fn parse_shorthand(text: &str) -> Result<(i64, &str, i64), String> {
    let Some((count, window)) = text.split_once('/') else {
        return Err(format!(
            "rate_limit must be in the format \"N/window\" (e.g. \"5/hour\"), got \"{text}\""
        ));
    };
    let count = match count.parse::<i64>() {
        Ok(n) if n > 0 => n,
        _ => {
            return Err(format!(
                "rate_limit count must be a positive integer, got \"{count}\""
            ));
        }
    };
    let len = match window {
        "minute" => MINUTE_US,
        "hour" => HOUR_US,
        "day" => DAY_US,
        _ => {
            return Err(format!(
                "rate_limit window must be \"minute\", \"hour\", or \"day\", got \"{window}\""
            ));
        }
    };
    Ok((count, window, len))
}
