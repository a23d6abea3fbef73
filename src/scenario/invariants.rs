//! Invariants: properties a policy must guarantee whatever the agents
//! do, checked on decided calls.
//!
//! ```yaml
//! invariants:
//!   - name: copy budget per agent
//!     max_allowed: {match: {tool: copy_image_set}, max: 3, window: 60s, per: agent}
//!   - name: no deletes ever
//!     never_allowed: {match: {tool: "delete_*"}}
//!   - name: reboots need a human
//!     requires_approval: {match: {tool: reboot_broker}}
//! ```
//!
//! `match` takes `tool` (glob), `category`, `agent` (glob) and `conditions`
//! (the policy's condition list); all given parts must hold. A matcher is
//! compiled into a one-rule policy and evaluated by the decision core, so
//! conditions mean exactly what they mean in policies.
//!
//! - `never_allowed`: no matching call may be allowed or sent for approval;
//! - `requires_approval`: no matching call may be allowed without approval;
//! - `max_allowed`: at most `max` matching calls allowed in any window
//!   (t − window, t], per session, agent, tool or globally;
//! - `max_repeats`: the same, counting only identical calls (same tool,
//!   same canonical arguments): what a runaway guard must hold.

use crate::policy::error::{PolicyError, Problem};
use crate::policy::yaml::{self, Node, NodeKind, Pos, Scalar, get};
use crate::policy::{Call, Policy, PolicyState, Verdict};
use crate::scenario::sim::SimEvent;
use crate::time::parse_duration_us;
use std::collections::{HashMap, VecDeque};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Invariant {
    pub name: String,
    pub kind: Kind,
    matcher: Policy,
    /// `match.agent`, in the policy's glob dialect (globset: `*`, `?`,
    /// `[…]`, `{a,b}`), as tool keys are.
    agent: Option<globset::GlobMatcher>,
    /// The glob of `match.tool`, for choosing tools to fuzz with.
    pub tool_glob: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NeverAllowed,
    RequiresApproval,
    MaxAllowed {
        max: usize,
        window_us: i64,
        per: Per,
    },
    /// As `MaxAllowed`, counted per identical call (same tool, same
    /// canonical arguments) within the scope.
    MaxRepeats {
        max: usize,
        window_us: i64,
        per: Per,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Session,
    Agent,
    Tool,
    Global,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: String,
    /// Index of the event that broke it.
    pub event: usize,
    pub message: String,
}

impl Invariant {
    fn matches(&self, e: &SimEvent) -> bool {
        if self.agent.as_ref().is_some_and(|g| !g.is_match(&e.agent)) {
            return false;
        }
        let call = Call {
            ts_us: e.ts_us,
            session: &e.session,
            agent: &e.agent,
            server: "",
            tool: &e.tool,
            category: e.category,
            risk: None,
            args: &e.args,
            args_sha256: None,
        };
        // The matcher denies exactly the calls that match.
        self.matcher
            .decide(&mut PolicyState::new(&self.matcher), &call)
            .verdict
            == Verdict::Deny
    }
}

/// Checks decided events (in time order); returns the first violation.
pub fn check(invariants: &[Invariant], events: &[SimEvent]) -> Option<Violation> {
    let mut windows: Vec<HashMap<String, VecDeque<i64>>> =
        invariants.iter().map(|_| HashMap::new()).collect();
    for (i, e) in events.iter().enumerate() {
        let Some(d) = &e.decision else { continue };
        for (k, inv) in invariants.iter().enumerate() {
            if !inv.matches(e) {
                continue;
            }
            let broken = match inv.kind {
                Kind::NeverAllowed => {
                    matches!(d.verdict, Verdict::Allow | Verdict::Approval).then(|| {
                        format!(
                            "{} by {} was {} (it must never be allowed)",
                            e.tool, e.agent, d.verdict
                        )
                    })
                }
                Kind::RequiresApproval => (d.verdict == Verdict::Allow)
                    .then(|| format!("{} by {} was allowed without approval", e.tool, e.agent)),
                Kind::MaxAllowed {
                    max,
                    window_us,
                    per,
                }
                | Kind::MaxRepeats {
                    max,
                    window_us,
                    per,
                } => {
                    if d.verdict != Verdict::Allow {
                        None
                    } else {
                        let mut key = match per {
                            Per::Session => e.session.clone(),
                            Per::Agent => e.agent.clone(),
                            Per::Tool => e.tool.clone(),
                            Per::Global => String::new(),
                        };
                        let repeats = matches!(inv.kind, Kind::MaxRepeats { .. });
                        if repeats {
                            key = format!(
                                "{key}\u{1f}{}\u{1f}{}",
                                e.tool,
                                crate::policy::canonical::args_sha256(&e.args)
                            );
                        }
                        let w = windows[k].entry(key.clone()).or_default();
                        while w.front().is_some_and(|t| *t <= e.ts_us - window_us) {
                            w.pop_front();
                        }
                        w.push_back(e.ts_us);
                        let scope = match per {
                            Per::Session => format!("session {}", e.session),
                            Per::Agent => format!("agent {}", e.agent),
                            Per::Tool => format!("tool {}", e.tool),
                            Per::Global => "all".into(),
                        };
                        (w.len() > max).then(|| {
                            if repeats {
                                format!(
                                    "{} identical {} calls ({}) allowed within {} s for {scope} (max {max})",
                                    w.len(),
                                    e.tool,
                                    crate::policy::canonical::canonical_json(&e.args),
                                    window_us as f64 / 1e6,
                                )
                            } else {
                                format!(
                                    "{} matching calls allowed within {} s for {scope} (max {max})",
                                    w.len(),
                                    window_us as f64 / 1e6,
                                )
                            }
                        })
                    }
                }
            };
            if let Some(message) = broken {
                return Some(Violation {
                    invariant: inv.name.clone(),
                    event: i,
                    message,
                });
            }
        }
    }
    None
}

pub fn load(path: &Path) -> Result<Vec<Invariant>, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_yaml(&text, &path.display().to_string())
}

pub fn from_yaml(text: &str, source: &str) -> Result<Vec<Invariant>, PolicyError> {
    let problem = |pos: Pos, message: String| Problem {
        file: source.into(),
        pos,
        message,
        hint: None,
    };
    let root = yaml::parse(text).map_err(|e| {
        PolicyError::Invalid(vec![problem(
            e.pos,
            format!("YAML syntax error: {}", e.message),
        )])
    })?;
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let items = match &root.kind {
        NodeKind::Map(m) => match get(m, "invariants").map(|n| &n.kind) {
            Some(NodeKind::Seq(items)) => items.clone(),
            _ => {
                return Err(PolicyError::Invalid(vec![problem(
                    root.pos,
                    "the file needs a list under `invariants:`".into(),
                )]));
            }
        },
        _ => {
            return Err(PolicyError::Invalid(vec![problem(
                root.pos,
                "the file needs a list under `invariants:`".into(),
            )]));
        }
    };
    for (i, item) in items.iter().enumerate() {
        let what = format!("invariants[{i}]");
        let NodeKind::Map(m) = &item.kind else {
            problems.push(problem(item.pos, format!("{what} must be a mapping")));
            continue;
        };
        let name = get(m, "name")
            .and_then(Node::scalar_text)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            problems.push(problem(item.pos, format!("{what}: name is required")));
        }
        let kinds: Vec<&(Node, Node)> = m
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.scalar_text(),
                    Some("max_allowed" | "max_repeats" | "never_allowed" | "requires_approval")
                )
            })
            .collect();
        for (k, _) in m {
            let key = k.scalar_text().unwrap_or_default();
            if ![
                "name",
                "max_allowed",
                "max_repeats",
                "never_allowed",
                "requires_approval",
            ]
            .contains(&key)
            {
                problems.push(problem(k.pos, format!("{what}: unknown field `{key}` (use max_allowed, max_repeats, never_allowed or requires_approval)")));
            }
        }
        let [(kind_key, body)] = kinds.as_slice() else {
            problems.push(problem(
                item.pos,
                format!(
                    "{what}: give exactly one of max_allowed, max_repeats, never_allowed, requires_approval"
                ),
            ));
            continue;
        };
        let kind_name = kind_key.scalar_text().unwrap_or_default();
        let NodeKind::Map(b) = &body.kind else {
            problems.push(problem(
                body.pos,
                format!("{what}: expected a mapping with `match`"),
            ));
            continue;
        };
        let kind = match kind_key.scalar_text() {
            Some("never_allowed") => Kind::NeverAllowed,
            Some("requires_approval") => Kind::RequiresApproval,
            _ => {
                let max = match get(b, "max").map(|n| &n.kind) {
                    Some(NodeKind::Scalar(Scalar::Int(n), _)) if *n >= 0 => *n as usize,
                    _ => {
                        problems.push(problem(
                            body.pos,
                            format!("{what}.{kind_name}: max must be a non-negative integer"),
                        ));
                        continue;
                    }
                };
                let window_us = match get(b, "window")
                    .and_then(Node::scalar_text)
                    .map(parse_duration_us)
                {
                    Some(Ok(us)) => us,
                    Some(Err(e)) => {
                        problems.push(problem(body.pos, format!("{what}.{kind_name}: window {e}")));
                        continue;
                    }
                    None => {
                        problems.push(problem(
                            body.pos,
                            format!("{what}.{kind_name}: window is required (e.g. 60s)"),
                        ));
                        continue;
                    }
                };
                let per = match get(b, "per").and_then(Node::scalar_text) {
                    None | Some("global") => Per::Global,
                    Some("session") => Per::Session,
                    Some("agent") => Per::Agent,
                    Some("tool") => Per::Tool,
                    Some(other) => {
                        problems.push(problem(body.pos, format!("{what}.{kind_name}: per must be session, agent, tool or global, got {other}")));
                        continue;
                    }
                };
                if kind_name == "max_repeats" {
                    Kind::MaxRepeats {
                        max,
                        window_us,
                        per,
                    }
                } else {
                    Kind::MaxAllowed {
                        max,
                        window_us,
                        per,
                    }
                }
            }
        };
        let Some(match_node) = get(b, "match") else {
            problems.push(problem(body.pos, format!("{what}: `match` is required")));
            continue;
        };
        match compile_matcher(match_node, &what) {
            Ok((matcher, agent, tool_glob)) => out.push(Invariant {
                name,
                kind,
                matcher,
                agent,
                tool_glob,
            }),
            Err(mut p) => {
                for x in &mut p {
                    x.file = source.into();
                    if x.pos == (Pos { line: 0, col: 0 }) {
                        x.pos = match_node.pos;
                    }
                }
                problems.extend(p);
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(PolicyError::Invalid(problems))
    }
}

/// What `match` compiles to: a one-rule policy that denies exactly the
/// matching calls (tool key, category, conditions), the agent glob, and the
/// tool glob's text.
type Matcher = (Policy, Option<globset::GlobMatcher>, Option<String>);

/// `match` → a [`Matcher`].
fn compile_matcher(node: &Node, what: &str) -> Result<Matcher, Vec<Problem>> {
    let bad = |pos: Pos, message: String| {
        vec![Problem {
            file: String::new(),
            pos,
            message,
            hint: None,
        }]
    };
    let NodeKind::Map(m) = &node.kind else {
        return Err(bad(node.pos, format!("{what}.match must be a mapping")));
    };
    let mut when: Vec<serde_json::Value> = Vec::new();
    let mut tool = None;
    let mut agent = None;
    for (k, v) in m {
        match k.scalar_text().unwrap_or_default() {
            "tool" => tool = v.scalar_text().map(str::to_string),
            "category" => when.push(
                serde_json::json!({"path": "tool.category", "op": "eq", "value": v.scalar_text()}),
            ),
            "agent" => {
                let glob = v.scalar_text().unwrap_or_default();
                let g = globset::Glob::new(glob)
                    .map_err(|e| bad(v.pos, format!("{what}.match.agent: {e}")))?;
                agent = Some(g.compile_matcher());
            }
            "conditions" => match v.to_json() {
                serde_json::Value::Array(items) => when.extend(items),
                _ => {
                    return Err(bad(
                        v.pos,
                        format!("{what}.match.conditions must be a list"),
                    ));
                }
            },
            other => {
                return Err(bad(
                    k.pos,
                    format!(
                        "{what}.match: unknown field `{other}` (use tool, category, agent, conditions)"
                    ),
                ));
            }
        }
    }
    let key = tool.clone().unwrap_or_else(|| "*".into());
    let rule = if when.is_empty() {
        serde_json::json!({"name": "match", "action": "deny"})
    } else {
        serde_json::json!({"name": "match", "action": "deny", "when": when})
    };
    let doc = serde_json::json!({"version": "1", "tools": {key: {"rules": [rule]}}});
    match Policy::from_yaml(&doc.to_string(), what) {
        Ok((p, _)) => Ok((p, agent, tool)),
        Err(e) => Err(e
            .problems()
            .iter()
            .map(|p| Problem {
                file: String::new(),
                pos: node.pos,
                message: format!("{what}.match: {}", p.message),
                hint: p.hint.clone(),
            })
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(agent: &str) -> SimEvent {
        SimEvent {
            ts_us: 0,
            agent: agent.into(),
            session: "s".into(),
            tool: "copy_image_set".into(),
            category: None,
            args: serde_json::Value::Null,
            decision: None,
            outcome: crate::policy::Outcome::Ok,
            attempt: 0,
        }
    }

    fn load_text(text: &str) -> Invariant {
        from_yaml(text, "inv.yaml").unwrap().remove(0)
    }

    #[test]
    fn agent_globs_use_the_policy_dialect() {
        let inv = load_text(
            "invariants:\n  - name: x\n    never_allowed:\n      match: {tool: copy_image_set, agent: \"{alpha,beta}-*\"}\n",
        );
        assert!(inv.matches(&event("alpha-1")));
        assert!(inv.matches(&event("beta-2")));
        assert!(!inv.matches(&event("gamma-1")));
        assert!(!inv.matches(&event("{alpha,beta}-1")));
        let inv = load_text(
            "invariants:\n  - name: x\n    never_allowed:\n      match: {agent: \"agent-*.x?[ab]\"}\n",
        );
        assert!(inv.matches(&event("agent-7.xya")));
        assert!(!inv.matches(&event("my-agent-7.xya")));
        assert!(!inv.matches(&event("agent-7.xyc")));
    }
}
