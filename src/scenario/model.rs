//! Scenario format v1: the YAML that describes generated agent traffic
//! (docs/scenarios.md), loaded with line-and-column errors like policies.

use crate::policy::error::{PolicyError, Problem};
use crate::policy::yaml::{self, Node, NodeKind, Pos, Scalar, get};
use crate::policy::{Category, Outcome};
use crate::time::parse_duration_us;
use std::path::Path;

/// A loaded scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub start_us: i64,
    pub duration_us: i64,
    pub server: String,
    pub agents: Vec<AgentSpec>,
    /// Explicit calls (fuzz counterexamples), in addition to behaviours.
    pub calls: Vec<ExplicitCall>,
    /// `fail_rates`: per tool, the share of its allowed calls that fail
    /// (`tool_error`) when the call's own entry gives no `fail_rate`.
    pub fail_rates: Vec<(String, f64)>,
}

impl Scenario {
    /// The failure rate of a tool's calls without one of their own.
    pub fn fail_rate_of(&self, tool: &str) -> f64 {
        self.fail_rates
            .iter()
            .find(|(t, _)| t == tool)
            .map_or(0.0, |(_, r)| *r)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    pub name: String,
    pub count: u32,
    pub sessions: u32,
    pub mix: Vec<ToolChoice>,
    pub arrival: Option<Arrival>,
    pub loops: Vec<LoopSpec>,
    pub on_refusal: Reaction,
    /// What the agent does when an allowed call fails.
    pub on_error: OnError,
    pub max_retries: u32,
}

/// What an agent does when an allowed call fails (`tool_error`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Moves on.
    GiveUp,
    /// Sends the same call again (same arguments, same session) after
    /// `every_us`: the agent that does not read the error.
    RetrySame { every_us: i64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolChoice {
    pub tool: String,
    pub weight: u32,
    pub category: Option<Category>,
    /// Argument template: strings may hold `{n}` (a per-agent counter),
    /// `{agent}`, `{session}` and `{rand:A-B}`.
    pub args: serde_json::Value,
    /// Share of the allowed calls that fail (`None`: the scenario's
    /// `fail_rates` for the tool, else 0).
    pub fail_rate: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// One call every `every_us`.
    Constant { every_us: i64 },
    /// Exponential gaps with a mean of `mean_us`.
    Poisson { mean_us: i64 },
    /// `size` calls `spacing_us` apart, every `every_us`.
    Bursts {
        every_us: i64,
        size: u32,
        spacing_us: i64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoopSpec {
    pub tool: String,
    pub category: Option<Category>,
    pub args: serde_json::Value,
    pub start_us: i64,
    pub every_us: i64,
    /// Number of calls; `None`: until the scenario ends (or `until_us`).
    pub count: Option<u32>,
    pub until_us: Option<i64>,
    pub fail_rate: Option<f64>,
}

/// What an agent does when a call is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    GiveUp,
    /// Retry after the throttle's `retry_after_ms` (give up on deny/approval).
    RetryAfter,
    /// Retry at once (after `hammer_us`), whatever the verdict.
    Hammer {
        every_us: i64,
    },
    /// Open a new session and retry at once.
    NewSession,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExplicitCall {
    /// Offset from `start`.
    pub at_us: i64,
    pub agent: String,
    pub session: String,
    pub tool: String,
    pub category: Option<Category>,
    pub args: serde_json::Value,
    /// The call's outcome if allowed (`None`: by the tool's fail rate).
    pub outcome: Option<Outcome>,
}

const TOP: &[&str] = &[
    "version",
    "name",
    "seed",
    "start",
    "duration",
    "server",
    "agents",
    "calls",
    "fail_rates",
];
const AGENT: &[&str] = &[
    "name",
    "count",
    "sessions",
    "mix",
    "arrival",
    "loops",
    "on_refusal",
    "on_error",
    "retry_every",
    "max_retries",
    "hammer_every",
];
const MIX: &[&str] = &["tool", "weight", "category", "args", "fail_rate"];
const ARRIVAL: &[&str] = &["kind", "every", "rate", "mean", "size", "spacing"];
const LOOP: &[&str] = &[
    "tool",
    "category",
    "args",
    "start",
    "every",
    "count",
    "until",
    "fail_rate",
];
const CALL: &[&str] = &[
    "at", "agent", "session", "tool", "category", "args", "outcome",
];

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Scenario::from_yaml(&text, &path.display().to_string())
    }

    pub fn from_yaml(text: &str, source: &str) -> Result<Scenario, PolicyError> {
        let root = yaml::parse(text).map_err(|e| {
            PolicyError::Invalid(vec![Problem {
                file: source.into(),
                pos: e.pos,
                message: format!("YAML syntax error: {}", e.message),
                hint: None,
            }])
        })?;
        let mut l = L {
            file: source,
            problems: Vec::new(),
        };
        let s = l.scenario(&root);
        if l.problems.is_empty()
            && let Some(s) = s
        {
            return Ok(s);
        }
        l.problems.sort_by_key(|p| (p.pos.line, p.pos.col));
        Err(PolicyError::Invalid(l.problems))
    }
}

struct L<'s> {
    file: &'s str,
    problems: Vec<Problem>,
}

impl L<'_> {
    fn err(&mut self, pos: Pos, message: String) {
        self.problems.push(Problem {
            file: self.file.into(),
            pos,
            message,
            hint: None,
        });
    }

    fn map<'n>(&mut self, n: &'n Node, what: &str, allowed: &[&str]) -> Option<&'n [(Node, Node)]> {
        match &n.kind {
            NodeKind::Map(m) => {
                for (k, _) in m {
                    let key = k.scalar_text().unwrap_or_default();
                    if !allowed.contains(&key) {
                        self.err(
                            k.pos,
                            format!(
                                "{what}: unknown field `{key}` (allowed: {})",
                                allowed.join(", ")
                            ),
                        );
                    }
                }
                Some(m)
            }
            _ => {
                self.err(
                    n.pos,
                    format!("{what} must be a mapping, found {}", n.type_name()),
                );
                None
            }
        }
    }

    fn text(&mut self, n: &Node, what: &str) -> Option<String> {
        match &n.kind {
            NodeKind::Scalar(Scalar::Null, _) => {
                self.err(n.pos, format!("{what} must not be empty"));
                None
            }
            NodeKind::Scalar(_, t) => Some(t.clone()),
            _ => {
                self.err(
                    n.pos,
                    format!("{what} must be text, found {}", n.type_name()),
                );
                None
            }
        }
    }

    fn uint(&mut self, n: &Node, what: &str, min: i64) -> Option<u32> {
        match &n.kind {
            NodeKind::Scalar(Scalar::Int(i), _) if *i >= min && *i <= u32::MAX as i64 => {
                Some(*i as u32)
            }
            _ => {
                self.err(
                    n.pos,
                    format!(
                        "{what} must be an integer of at least {min}, got {}",
                        n.scalar_text().unwrap_or(n.type_name())
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, n: &Node, what: &str) -> Option<i64> {
        let t = self.text(n, what)?;
        match parse_duration_us(&t) {
            Ok(us) => Some(us),
            Err(e) => {
                self.err(n.pos, format!("{what} {e}"));
                None
            }
        }
    }

    /// A share in [0, 1] (`fail_rate: 0.25`).
    fn rate(&mut self, n: &Node, what: &str) -> Option<f64> {
        let v = match &n.kind {
            NodeKind::Scalar(Scalar::Int(i), _) => Some(*i as f64),
            NodeKind::Scalar(Scalar::Float(f), _) => Some(*f),
            _ => None,
        };
        match v {
            Some(r) if (0.0..=1.0).contains(&r) => Some(r),
            _ => {
                self.err(
                    n.pos,
                    format!(
                        "{what} must be a number from 0 to 1, got {}",
                        n.scalar_text().unwrap_or(n.type_name())
                    ),
                );
                None
            }
        }
    }

    fn fail_rate(&mut self, m: &[(Node, Node)], what: &str) -> Option<f64> {
        get(m, "fail_rate").and_then(|n| self.rate(n, &format!("{what}.fail_rate")))
    }

    fn category(&mut self, m: &[(Node, Node)], what: &str) -> Option<Category> {
        let n = get(m, "category")?;
        let t = self.text(n, what)?;
        match t.parse() {
            Ok(c) => Some(c),
            Err(e) => {
                self.err(n.pos, format!("{what}: {e}"));
                None
            }
        }
    }

    fn args(&mut self, m: &[(Node, Node)], what: &str) -> serde_json::Value {
        match get(m, "args") {
            None => serde_json::json!({}),
            Some(n) if matches!(n.kind, NodeKind::Map(_)) => n.to_json(),
            Some(n) => {
                self.err(
                    n.pos,
                    format!("{what}.args must be a mapping, found {}", n.type_name()),
                );
                serde_json::json!({})
            }
        }
    }

    fn scenario(&mut self, root: &Node) -> Option<Scenario> {
        let m = self.map(root, "a scenario", TOP)?;
        match get(m, "version") {
            Some(v) if matches!(v.scalar_text(), Some("1")) => {}
            Some(v) => self.err(
                v.pos,
                format!(
                    "version must be 1, got {}",
                    v.scalar_text().unwrap_or(v.type_name())
                ),
            ),
            None => self.err(root.pos, "version must be 1 (add `version: 1`)".into()),
        }
        let name = get(m, "name")
            .and_then(|n| self.text(n, "name"))
            .unwrap_or_else(|| "scenario".into());
        let seed = match get(m, "seed") {
            Some(n) => match &n.kind {
                NodeKind::Scalar(Scalar::Int(i), _) if *i >= 0 => *i as u64,
                _ => {
                    self.err(n.pos, "seed must be a non-negative integer".into());
                    0
                }
            },
            None => 0,
        };
        let start_us = match get(m, "start") {
            Some(n) => self
                .text(n, "start")
                .and_then(|t| match crate::time::parse_time_arg(&t) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.err(n.pos, format!("start: {e}"));
                        None
                    }
                })
                .unwrap_or(0),
            None => {
                self.err(
                    root.pos,
                    "start is required (an RFC 3339 time, e.g. 2026-11-20T10:00:00Z)".into(),
                );
                0
            }
        };
        let duration_us = match get(m, "duration") {
            Some(n) => self.duration(n, "duration").unwrap_or(0),
            None => {
                self.err(root.pos, "duration is required (e.g. 10m)".into());
                0
            }
        };
        let server = get(m, "server")
            .and_then(|n| self.text(n, "server"))
            .unwrap_or_default();
        let mut agents = Vec::new();
        if let Some(list) = get(m, "agents") {
            match &list.kind {
                NodeKind::Seq(items) => {
                    for (i, a) in items.iter().enumerate() {
                        if let Some(a) = self.agent(a, &format!("agents[{i}]"), duration_us) {
                            agents.push(a);
                        }
                    }
                }
                _ => self.err(list.pos, "agents must be a list".into()),
            }
        }
        let mut calls = Vec::new();
        if let Some(list) = get(m, "calls") {
            match &list.kind {
                NodeKind::Seq(items) => {
                    for (i, c) in items.iter().enumerate() {
                        let what = format!("calls[{i}]");
                        let Some(cm) = self.map(c, &what, CALL) else {
                            continue;
                        };
                        let at = get(cm, "at")
                            .and_then(|n| self.duration_or_zero(n, &format!("{what}.at")));
                        let tool =
                            get(cm, "tool").and_then(|n| self.text(n, &format!("{what}.tool")));
                        if tool.is_none() {
                            self.err(c.pos, format!("{what}: tool is required"));
                        }
                        let agent = get(cm, "agent")
                            .and_then(|n| self.text(n, "agent"))
                            .unwrap_or_else(|| "agent".into());
                        let session = get(cm, "session")
                            .and_then(|n| self.text(n, "session"))
                            .unwrap_or_else(|| format!("{agent}-s1"));
                        let category = self.category(cm, &what);
                        let args = self.args(cm, &what);
                        let outcome = get(cm, "outcome").and_then(|n| {
                            let t = self.text(n, &format!("{what}.outcome"))?;
                            match t.as_str() {
                                "ok" => Some(Outcome::Ok),
                                "tool_error" => Some(Outcome::ToolError),
                                "rpc_error" => Some(Outcome::RpcError),
                                "timeout" => Some(Outcome::Timeout),
                                other => {
                                    self.err(n.pos, format!("{what}.outcome must be ok, tool_error, rpc_error or timeout, got {other}"));
                                    None
                                }
                            }
                        });
                        if let Some(tool) = tool {
                            calls.push(ExplicitCall {
                                at_us: at.unwrap_or(0),
                                agent,
                                session,
                                tool,
                                category,
                                args,
                                outcome,
                            });
                        }
                    }
                }
                _ => self.err(list.pos, "calls must be a list".into()),
            }
        }
        if agents.is_empty() && calls.is_empty() {
            self.err(root.pos, "a scenario needs `agents` or `calls`".into());
        }
        let mut fail_rates = Vec::new();
        if let Some(n) = get(m, "fail_rates") {
            match &n.kind {
                NodeKind::Map(entries) => {
                    for (k, v) in entries {
                        let tool = k.scalar_text().unwrap_or_default().to_string();
                        if let Some(r) = self.rate(v, &format!("fail_rates.{tool}")) {
                            fail_rates.push((tool, r));
                        }
                    }
                }
                _ => self.err(
                    n.pos,
                    format!(
                        "fail_rates must be a mapping of tool to rate (e.g. {{copy_image_set: 1}}), found {}",
                        n.type_name()
                    ),
                ),
            }
        }
        Some(Scenario {
            name,
            seed,
            start_us,
            duration_us,
            server,
            agents,
            calls,
            fail_rates,
        })
    }

    /// `at: 0` is allowed (unlike window lengths).
    fn duration_or_zero(&mut self, n: &Node, what: &str) -> Option<i64> {
        if n.scalar_text()
            .is_some_and(|t| t.trim_end_matches(['s', 'm', 'h', 'd']).trim() == "0")
        {
            return Some(0);
        }
        self.duration(n, what)
    }

    fn agent(&mut self, n: &Node, what: &str, duration_us: i64) -> Option<AgentSpec> {
        let m = self.map(n, what, AGENT)?;
        let name = match get(m, "name") {
            Some(v) => self.text(v, &format!("{what}.name"))?,
            None => {
                self.err(n.pos, format!("{what}: name is required"));
                return None;
            }
        };
        let count = get(m, "count")
            .and_then(|v| self.uint(v, &format!("{what}.count"), 1))
            .unwrap_or(1);
        let sessions = get(m, "sessions")
            .and_then(|v| self.uint(v, &format!("{what}.sessions"), 1))
            .unwrap_or(1);
        let mut mix = Vec::new();
        if let Some(list) = get(m, "mix") {
            match &list.kind {
                NodeKind::Seq(items) => {
                    for (i, t) in items.iter().enumerate() {
                        let w = format!("{what}.mix[{i}]");
                        let Some(tm) = self.map(t, &w, MIX) else {
                            continue;
                        };
                        let Some(tool) =
                            get(tm, "tool").and_then(|v| self.text(v, &format!("{w}.tool")))
                        else {
                            self.err(t.pos, format!("{w}: tool is required"));
                            continue;
                        };
                        let weight = get(tm, "weight")
                            .and_then(|v| self.uint(v, &format!("{w}.weight"), 1))
                            .unwrap_or(1);
                        let category = self.category(tm, &w);
                        let args = self.args(tm, &w);
                        let fail_rate = self.fail_rate(tm, &w);
                        mix.push(ToolChoice {
                            tool,
                            weight,
                            category,
                            args,
                            fail_rate,
                        });
                    }
                }
                _ => self.err(list.pos, format!("{what}.mix must be a list")),
            }
        }
        let arrival = get(m, "arrival").and_then(|a| self.arrival(a, &format!("{what}.arrival")));
        if arrival.is_some() && mix.is_empty() {
            self.err(
                n.pos,
                format!("{what}: an arrival process needs a tool `mix`"),
            );
        }
        let mut loops = Vec::new();
        if let Some(list) = get(m, "loops") {
            match &list.kind {
                NodeKind::Seq(items) => {
                    for (i, l) in items.iter().enumerate() {
                        let w = format!("{what}.loops[{i}]");
                        let Some(lm) = self.map(l, &w, LOOP) else {
                            continue;
                        };
                        let tool = get(lm, "tool").and_then(|v| self.text(v, &format!("{w}.tool")));
                        let every =
                            get(lm, "every").and_then(|v| self.duration(v, &format!("{w}.every")));
                        if get(lm, "tool").is_none() || get(lm, "every").is_none() {
                            self.err(l.pos, format!("{w}: tool and every are required"));
                            continue;
                        }
                        if tool.is_none() || every.is_none() {
                            continue;
                        }
                        let start = get(lm, "start")
                            .and_then(|v| self.duration_or_zero(v, &format!("{w}.start")))
                            .unwrap_or(0);
                        let count =
                            get(lm, "count").and_then(|v| self.uint(v, &format!("{w}.count"), 1));
                        let until =
                            get(lm, "until").and_then(|v| self.duration(v, &format!("{w}.until")));
                        if start > duration_us {
                            self.err(l.pos, format!("{w}: start is after the scenario ends"));
                        }
                        let category = self.category(lm, &w);
                        let args = self.args(lm, &w);
                        let fail_rate = self.fail_rate(lm, &w);
                        loops.push(LoopSpec {
                            fail_rate,
                            tool: tool.unwrap_or_default(),
                            category,
                            args,
                            start_us: start,
                            every_us: every.unwrap_or(1),
                            count,
                            until_us: until,
                        });
                    }
                }
                _ => self.err(list.pos, format!("{what}.loops must be a list")),
            }
        }
        if get(m, "arrival").is_none() && get(m, "loops").is_none() {
            self.err(
                n.pos,
                format!("{what}: give an `arrival` process (with a `mix`) or `loops`"),
            );
        }
        let hammer_us = get(m, "hammer_every")
            .and_then(|v| self.duration(v, &format!("{what}.hammer_every")))
            .unwrap_or(100_000);
        let on_refusal = match get(m, "on_refusal") {
            None => Reaction::GiveUp,
            Some(v) => match self.text(v, "on_refusal").as_deref() {
                Some("give_up") => Reaction::GiveUp,
                Some("retry_after") => Reaction::RetryAfter,
                Some("hammer") => Reaction::Hammer {
                    every_us: hammer_us,
                },
                Some("new_session") => Reaction::NewSession,
                other => {
                    self.err(v.pos, format!("{what}.on_refusal must be give_up, retry_after, hammer or new_session, got {}", other.unwrap_or_default()));
                    Reaction::GiveUp
                }
            },
        };
        let retry_every = get(m, "retry_every")
            .and_then(|v| self.duration(v, &format!("{what}.retry_every")))
            .unwrap_or(1_000_000);
        let on_error = match get(m, "on_error") {
            None => OnError::GiveUp,
            Some(v) => match self.text(v, "on_error").as_deref() {
                Some("give_up") => OnError::GiveUp,
                Some("retry_same") => OnError::RetrySame {
                    every_us: retry_every,
                },
                other => {
                    self.err(
                        v.pos,
                        format!(
                            "{what}.on_error must be give_up or retry_same, got {}",
                            other.unwrap_or_default()
                        ),
                    );
                    OnError::GiveUp
                }
            },
        };
        let max_retries = get(m, "max_retries")
            .and_then(|v| self.uint(v, &format!("{what}.max_retries"), 0))
            .unwrap_or(10);
        Some(AgentSpec {
            name,
            count,
            sessions,
            mix,
            arrival,
            loops,
            on_refusal,
            on_error,
            max_retries,
        })
    }

    fn arrival(&mut self, n: &Node, what: &str) -> Option<Arrival> {
        let m = self.map(n, what, ARRIVAL)?;
        let kind = get(m, "kind").and_then(|v| self.text(v, &format!("{what}.kind")));
        let dur = |l: &mut Self, key: &str| {
            get(m, key).and_then(|v| l.duration(v, &format!("{what}.{key}")))
        };
        match kind.as_deref() {
            Some("constant") => match dur(self, "every") {
                Some(every_us) => Some(Arrival::Constant { every_us }),
                None => {
                    self.err(n.pos, format!("{what}: constant arrivals need `every`"));
                    None
                }
            },
            Some("poisson") => {
                let mean = if let Some(r) = get(m, "rate") {
                    let t = self.text(r, &format!("{what}.rate"))?;
                    let per_us = |per: &str| -> Option<i64> {
                        match per.trim() {
                            "s" | "sec" | "second" => Some(1_000_000),
                            "m" | "min" | "minute" => Some(60_000_000),
                            "h" | "hour" => Some(3_600_000_000),
                            "d" | "day" => Some(86_400_000_000),
                            other => parse_duration_us(other).ok(),
                        }
                    };
                    match t
                        .split_once('/')
                        .and_then(|(c, p)| Some((c.trim().parse::<f64>().ok()?, per_us(p)?)))
                    {
                        Some((c, p)) if c > 0.0 => Some((p as f64 / c) as i64),
                        _ => {
                            self.err(
                                r.pos,
                                format!("{what}.rate must look like 2/min, 10/s or 5/30s, got {t}"),
                            );
                            None
                        }
                    }
                } else {
                    dur(self, "mean")
                };
                match mean {
                    Some(mean_us) if mean_us > 0 => Some(Arrival::Poisson { mean_us }),
                    _ => {
                        self.err(n.pos, format!("{what}: poisson arrivals need `rate` (e.g. 2/min) or `mean` (e.g. 30s)"));
                        None
                    }
                }
            }
            Some("bursts") => {
                let every = dur(self, "every");
                let size = get(m, "size").and_then(|v| self.uint(v, &format!("{what}.size"), 1));
                let spacing = get(m, "spacing").map_or(Some(0), |v| {
                    self.duration_or_zero(v, &format!("{what}.spacing"))
                });
                match (every, size, spacing) {
                    (Some(every_us), Some(size), Some(spacing_us)) => Some(Arrival::Bursts {
                        every_us,
                        size,
                        spacing_us,
                    }),
                    _ => {
                        self.err(
                            n.pos,
                            format!("{what}: bursts need `every`, `size` and optionally `spacing`"),
                        );
                        None
                    }
                }
            }
            other => {
                self.err(
                    n.pos,
                    format!(
                        "{what}.kind must be constant, poisson or bursts, got {}",
                        other.unwrap_or("nothing")
                    ),
                );
                None
            }
        }
    }
}
