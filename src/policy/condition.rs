//! Conditions: a path into the call (or a counter), an operator and a value.
//!
//! Operator semantics follow PolicyLayer Intercept exactly, quirks included,
//! so that imported policies mean the same thing:
//! - a path that does not resolve fails every operator except `exists`
//!   (so `neq` and `not_in` on a missing argument fail too);
//! - `eq` compares numerically when both sides are numbers, otherwise it
//!   compares their display text (`"5"` equals `5`);
//! - `lt`/`lte`/`gt`/`gte` need numbers on both sides, with no coercion;
//! - `regex` searches (unanchored) and needs a string argument;
//! - `contains` is a substring test on strings and an element test on lists;
//! - `exists: true` holds when the path resolves to a non-null value.

use crate::policy::call::Call;
use regex::Regex;
use serde_json::Value;
use std::fmt::Write as _;

/// Where a condition reads its actual value.
#[derive(Debug, Clone)]
pub enum PathRef {
    /// `args.a.b`: the segments below `args`.
    Args(Vec<String>),
    /// `state.<scope>.<counter>`: a counter, read before this call's increment.
    State(CounterRead),
    ToolName,
    ToolCategory,
    ToolRisk,
    CallAgent,
    CallSession,
    CallServer,
}

/// A resolved `state.<scope>.<counter>` reference.
#[derive(Debug, Clone)]
pub struct CounterRead {
    pub counter: usize,
    /// `None`: the counter's scope key is the calling tool's name (a glob
    /// key's own counter); `Some(key)`: a fixed scope key.
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Eq,
    Neq,
    In,
    NotIn,
    Lt,
    Lte,
    Gt,
    Gte,
    Regex,
    Contains,
    Exists,
}

impl OpKind {
    pub const NAMES: [&'static str; 11] = [
        "eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains", "exists",
    ];

    pub fn parse(name: &str) -> Option<OpKind> {
        Some(match name {
            "eq" => OpKind::Eq,
            "neq" => OpKind::Neq,
            "in" => OpKind::In,
            "not_in" => OpKind::NotIn,
            "lt" => OpKind::Lt,
            "lte" => OpKind::Lte,
            "gt" => OpKind::Gt,
            "gte" => OpKind::Gte,
            "regex" => OpKind::Regex,
            "contains" => OpKind::Contains,
            "exists" => OpKind::Exists,
            _ => return None,
        })
    }
}

/// An operator with its expected value, prepared at load time.
#[derive(Debug, Clone)]
pub enum Op {
    Eq(Value),
    Neq(Value),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Lt(f64),
    Lte(f64),
    Gt(f64),
    Gte(f64),
    Regex(Regex),
    Contains(Value),
    Exists(bool),
}

#[derive(Debug, Clone)]
pub struct Condition {
    /// The path as written, for messages.
    pub path_text: String,
    pub path: PathRef,
    pub op: Op,
}

impl Condition {
    /// Tests the condition against an already-resolved actual value
    /// (`None` when the path did not resolve).
    pub fn test(&self, actual: Option<&Value>) -> bool {
        if let Op::Exists(expected) = self.op {
            let present = actual.is_some_and(|v| !v.is_null());
            return present == expected;
        }
        let Some(actual) = actual else {
            return false;
        };
        match &self.op {
            Op::Eq(expected) => loose_eq(actual, expected),
            Op::Neq(expected) => !loose_eq(actual, expected),
            Op::In(list) => list.iter().any(|e| loose_eq(actual, e)),
            Op::NotIn(list) => !list.iter().any(|e| loose_eq(actual, e)),
            Op::Lt(b) => actual.as_f64().is_some_and(|a| a < *b),
            Op::Lte(b) => actual.as_f64().is_some_and(|a| a <= *b),
            Op::Gt(b) => actual.as_f64().is_some_and(|a| a > *b),
            Op::Gte(b) => actual.as_f64().is_some_and(|a| a >= *b),
            Op::Regex(re) => actual.as_str().is_some_and(|s| re.is_match(s)),
            Op::Contains(expected) => match actual {
                Value::String(s) => expected.as_str().is_some_and(|e| s.contains(e)),
                Value::Array(items) => items.iter().any(|item| loose_eq(item, expected)),
                _ => false,
            },
            Op::Exists(_) => unreachable!("handled above"),
        }
    }

    /// As [`Condition::test`] for an actual value that is a string, without
    /// building a JSON value (the `tool.*` and `call.*` paths).
    pub fn test_str(&self, actual: &str) -> bool {
        let eq = |expected: &Value| match expected {
            Value::String(e) => e == actual,
            other => display_text(other) == actual,
        };
        match &self.op {
            Op::Exists(expected) => *expected,
            Op::Eq(expected) => eq(expected),
            Op::Neq(expected) => !eq(expected),
            Op::In(list) => list.iter().any(eq),
            Op::NotIn(list) => !list.iter().any(eq),
            Op::Lt(_) | Op::Lte(_) | Op::Gt(_) | Op::Gte(_) => false,
            Op::Regex(re) => re.is_match(actual),
            Op::Contains(expected) => expected.as_str().is_some_and(|e| actual.contains(e)),
        }
    }
}

/// Resolves `args.a.b` style segments through JSON objects only (as
/// Intercept does: list indices are not followed).
pub fn resolve_args<'v>(args: &'v Value, segments: &[String]) -> Option<&'v Value> {
    let mut current = args;
    for segment in segments {
        current = current.as_object()?.get(segment)?;
    }
    Some(current)
}

/// Resolves the call-describing paths (`tool.*`, `call.*`) to a string.
pub fn resolve_call_str<'a>(
    path: &PathRef,
    call: &Call<'a>,
    category: &'a str,
    risk: &'a str,
) -> Option<&'a str> {
    match path {
        PathRef::ToolName => Some(call.tool),
        PathRef::ToolCategory => Some(category),
        PathRef::ToolRisk => Some(risk),
        PathRef::CallAgent => Some(call.agent),
        PathRef::CallSession => Some(call.session),
        PathRef::CallServer => Some(call.server),
        PathRef::Args(_) | PathRef::State(_) => None,
    }
}

/// Intercept's equality: numbers compare numerically, anything else by its
/// display text.
pub fn loose_eq(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
        return x == y;
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => x == y,
        _ => display_text(a) == display_text(b),
    }
}

fn display_text(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.to_string()
            } else if let Some(u) = n.as_u64() {
                u.to_string()
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                let mut s = String::new();
                let _ = write!(s, "{f}");
                s
            }
        }
        Value::Array(_) | Value::Object(_) => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(op: Op) -> Condition {
        Condition {
            path_text: "args.x".into(),
            path: PathRef::Args(vec!["x".into()]),
            op,
        }
    }

    #[test]
    fn eq_coerces_like_intercept() {
        assert!(cond(Op::Eq(json!(5))).test(Some(&json!(5.0))));
        assert!(cond(Op::Eq(json!("5"))).test(Some(&json!(5))));
        assert!(cond(Op::Eq(json!(true))).test(Some(&json!("true"))));
        assert!(!cond(Op::Eq(json!("main"))).test(Some(&json!("dev"))));
    }

    #[test]
    fn missing_paths_fail_everything_but_exists() {
        assert!(!cond(Op::Neq(json!("a"))).test(None));
        assert!(!cond(Op::NotIn(vec![json!("a")])).test(None));
        assert!(cond(Op::Exists(false)).test(None));
        assert!(cond(Op::Exists(false)).test(Some(&Value::Null)));
        assert!(cond(Op::Exists(true)).test(Some(&json!(0))));
    }

    #[test]
    fn numeric_ops_need_numbers() {
        assert!(cond(Op::Lte(10.0)).test(Some(&json!(10))));
        assert!(!cond(Op::Lte(10.0)).test(Some(&json!("5"))));
        assert!(cond(Op::Gt(0.5)).test(Some(&json!(1))));
    }

    #[test]
    fn contains_handles_strings_and_lists() {
        assert!(cond(Op::Contains(json!("es"))).test(Some(&json!("test"))));
        assert!(cond(Op::Contains(json!(2))).test(Some(&json!([1, 2, 3]))));
        assert!(!cond(Op::Contains(json!(2))).test(Some(&json!("123"))));
    }

    #[test]
    fn string_fast_path_agrees_with_the_general_test() {
        let ops = vec![
            Op::Eq(json!("write")),
            Op::Eq(json!(5)),
            Op::Neq(json!("read")),
            Op::In(vec![json!("a"), json!("write")]),
            Op::NotIn(vec![json!("write")]),
            Op::Lt(3.0),
            Op::Regex(Regex::new("^wr").unwrap()),
            Op::Contains(json!("rit")),
            Op::Exists(true),
            Op::Exists(false),
        ];
        for op in ops {
            let c = cond(op);
            for actual in ["write", "5", "read", ""] {
                assert_eq!(
                    c.test_str(actual),
                    c.test(Some(&json!(actual))),
                    "{c:?} {actual}"
                );
            }
        }
    }

    #[test]
    fn regex_searches_unanchored() {
        let c = cond(Op::Regex(Regex::new("^feat/").unwrap()));
        assert!(c.test(Some(&json!("feat/x"))));
        assert!(!c.test(Some(&json!("fix/feat/x"))));
        assert!(!c.test(Some(&json!(5))));
    }

    #[test]
    fn args_resolution_follows_objects_only() {
        let args = json!({"a": {"b": [1, 2]}});
        assert_eq!(
            resolve_args(&args, &["a".into(), "b".into()]),
            Some(&json!([1, 2]))
        );
        assert_eq!(
            resolve_args(&args, &["a".into(), "b".into(), "0".into()]),
            None
        );
    }
}
