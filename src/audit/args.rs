//! Call arguments in the log: canonical JSON, its hash, and redaction.
//!
//! `args_sha256` is SHA-256 over the canonical JSON of the *original*
//! arguments — object keys sorted by their UTF-8 bytes, no insignificant
//! whitespace, strings escaped as serde_json does — so two logs of the same
//! call agree whatever the client's key order. `args_json` holds the
//! arguments after redaction: each value a `--redact` pattern selects is
//! replaced by `"[redacted:<first 12 hex digits of the SHA-256 of the value's
//! canonical JSON>]"`, which still lets an auditor tell equal secrets apart
//! from different ones without revealing them.

use serde_json::Value;

pub use crate::policy::canonical::{args_sha256, canonical_json};

/// A JSON Pointer pattern (`/password`, `/credentials/*`): `*` matches any
/// key (or list index) at its level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactPattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Any,
    Key(String),
}

impl std::str::FromStr for RedactPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "redaction pattern \"{text}\" must be a JSON Pointer starting with `/` (e.g. /password or /credentials/*)"
            ));
        };
        let segments = rest
            .split('/')
            .map(|s| {
                if s == "*" {
                    Segment::Any
                } else {
                    Segment::Key(s.replace("~1", "/").replace("~0", "~"))
                }
            })
            .collect();
        Ok(RedactPattern {
            text: text.to_string(),
            segments,
        })
    }
}

impl std::fmt::Display for RedactPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The marker that replaces a redacted value.
pub fn redaction_marker(value: &Value) -> String {
    let digest = args_sha256(value);
    format!("[redacted:{}]", &digest[..12])
}

/// Applies patterns to a copy of `args`; returns it and how many values
/// were replaced.
pub fn redact(args: &Value, patterns: &[RedactPattern]) -> (Value, usize) {
    let mut copy = args.clone();
    let mut count = 0;
    for p in patterns {
        count += redact_at(&mut copy, &p.segments);
    }
    (copy, count)
}

fn redact_at(value: &mut Value, segments: &[Segment]) -> usize {
    let Some((first, rest)) = segments.split_first() else {
        let marker = redaction_marker(value);
        *value = Value::String(marker);
        return 1;
    };
    match (value, first) {
        (Value::Object(map), Segment::Key(k)) => map.get_mut(k).map_or(0, |v| redact_at(v, rest)),
        (Value::Object(map), Segment::Any) => map.values_mut().map(|v| redact_at(v, rest)).sum(),
        (Value::Array(items), Segment::Key(k)) => k
            .parse::<usize>()
            .ok()
            .and_then(|i| items.get_mut(i))
            .map_or(0, |v| redact_at(v, rest)),
        (Value::Array(items), Segment::Any) => items.iter_mut().map(|v| redact_at(v, rest)).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": "x"}}"#)
                .unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":"x","d":[1,{"y":1,"z":0}]},"b":1}"#
        );
    }

    #[test]
    fn redaction_replaces_selected_values_only() {
        let args = json!({"user": "ann", "password": "hunter2", "credentials": {"key": "k1", "secret": "s1"}, "list": [{"token": "t"}]});
        let patterns: Vec<RedactPattern> =
            ["/password", "/credentials/*", "/list/*/token", "/missing"]
                .iter()
                .map(|p| p.parse().unwrap())
                .collect();
        let (out, n) = redact(&args, &patterns);
        assert_eq!(n, 4);
        assert_eq!(out["user"], "ann");
        let marker = out["password"].as_str().unwrap();
        assert!(marker.starts_with("[redacted:") && marker.len() == "[redacted:]".len() + 12);
        assert_eq!(marker, redaction_marker(&json!("hunter2")));
        assert_ne!(out["credentials"]["key"], out["credentials"]["secret"]);
        assert!(
            out["list"][0]["token"]
                .as_str()
                .unwrap()
                .starts_with("[redacted:")
        );
        // The hash of the original is unaffected by redaction.
        assert_eq!(args_sha256(&args), args_sha256(&args.clone()));
        assert!("password".parse::<RedactPattern>().is_err());
    }
}
