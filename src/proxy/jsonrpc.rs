//! Just enough JSON-RPC: the envelope of a frame (id, method, whether it is
//! a result or an error), parsed without touching the rest, so the proxy
//! forwards the original bytes of every message it does not have to change.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// The parts of a frame the proxy looks at. Everything else stays raw.
///
/// Read strictly: a known member (`jsonrpc`, `id`, `method`, `params`,
/// `result`, `error`) given twice is an error, and a member whose name
/// differs from a known one only by case (`"Method"`, `"ID"`) is noted in
/// [`Envelope::variant`]: a server that matches members case-insensitively
/// (Go's `encoding/json`) would read it as the known member, so the proxy
/// refuses the frame rather than read it otherwise.
#[derive(Debug, Default)]
pub struct Envelope<'a> {
    /// `Some("null")` for `"id": null`, `None` when there is no `id`.
    pub id: Option<&'a RawValue>,
    pub method: Option<String>,
    pub params: Option<&'a RawValue>,
    pub result: Option<&'a RawValue>,
    pub error: Option<&'a RawValue>,
    /// The first member whose name equals a known member's only up to
    /// case (e.g. `Method`), when there is one.
    pub variant: Option<String>,
}

/// The members of a JSON-RPC envelope.
const ENVELOPE_MEMBERS: [&str; 6] = ["jsonrpc", "id", "method", "params", "result", "error"];

/// The members of `tools/call` params a server reads into its own fields
/// (MCP's `CallToolParams` and the 2026-07-28 retry fields).
pub const TOOL_CALL_MEMBERS: [&str; 6] = [
    "name",
    "arguments",
    "_meta",
    "requestState",
    "inputResponses",
    "task",
];

/// A member name, borrowed from the frame when it has no escapes.
struct Key<'a>(std::borrow::Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON-RPC message (an object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
                let mut env = Envelope::default();
                let mut seen = [false; ENVELOPE_MEMBERS.len()];
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let Some(i) = ENVELOPE_MEMBERS.iter().position(|m| *m == key) else {
                        if env.variant.is_none()
                            && ENVELOPE_MEMBERS.iter().any(|m| same_but_case(m, &key))
                        {
                            env.variant = Some(key.into_owned());
                        }
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    };
                    if std::mem::replace(&mut seen[i], true) {
                        return Err(A::Error::custom(format_args!("duplicate member `{key}`")));
                    }
                    match i {
                        1 => env.id = Some(map.next_value()?),
                        2 => env.method = map.next_value()?,
                        3 => env.params = map.next_value::<Option<&RawValue>>()?,
                        4 => env.result = map.next_value::<Option<&RawValue>>()?,
                        5 => env.error = map.next_value::<Option<&RawValue>>()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(env)
            }
        }
        d.deserialize_map(V)
    }
}

/// One character as Unicode simple case folding compares it (close to
/// Go's `strings.EqualFold`: `K`, `k` and the Kelvin sign are one; `s`,
/// `S` and `ſ` are one).
fn fold(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    // The dotted capital and the dotless small i: simple lowercasing (as
    // some readers fold, e.g. Go's older `encoding/json`) makes each an
    // `i`; Unicode's own folding keeps them apart. Refusing more is safe.
    if matches!(c, '\u{130}' | '\u{131}') {
        return 'i';
    }
    let mut up = c.to_uppercase();
    let u = match (up.next(), up.next()) {
        (Some(u), None) => u,
        _ => c,
    };
    let mut low = u.to_lowercase();
    match (low.next(), low.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

/// Whether two member names are equal when case is ignored.
pub fn fold_eq(a: &str, b: &str) -> bool {
    a.chars().map(fold).eq(b.chars().map(fold))
}

/// Equal up to case, but not equal.
fn same_but_case(a: &str, b: &str) -> bool {
    a != b && fold_eq(a, b)
}

/// What a frame's `id` is, as far as forwarding it safely goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdKind {
    /// No `id` member: a notification.
    Missing,
    /// `"id": null` (MCP forbids it for requests).
    Null,
    /// A string or an integer, as canonical JSON text (the key pending
    /// requests are kept by).
    Valid(String),
    /// Anything else: a fraction, a boolean, an object, an array.
    Invalid,
}

impl Envelope<'_> {
    /// Classifies the id: only strings and integers are ids MCP allows and
    /// the proxy can match a response to.
    pub fn id_kind(&self) -> IdKind {
        let Some(raw) = self.id else {
            return IdKind::Missing;
        };
        match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Null) => IdKind::Null,
            Ok(v @ Value::String(_)) => IdKind::Valid(v.to_string()),
            Ok(Value::Number(n)) if n.is_i64() || n.is_u64() => IdKind::Valid(n.to_string()),
            _ => IdKind::Invalid,
        }
    }

    pub fn is_response(&self) -> bool {
        self.method.is_none() && (self.result.is_some() || self.error.is_some())
    }

    /// The id as canonical JSON text (the key pending requests are kept by).
    pub fn id_text(&self) -> Option<String> {
        self.id.map(|r| {
            serde_json::from_str::<Value>(r.get())
                .map(|v| v.to_string())
                .unwrap_or_else(|_| r.get().to_string())
        })
    }
}

/// Why two JSON readers could read `text` differently, naming where:
/// an object that repeats a member (parsers disagree on which one wins),
/// two members that differ only by case (a case-insensitive reader, as
/// Go's `encoding/json` is for struct fields, takes the last), at any
/// depth; and, in the top-level object, a member equal to one of `known`
/// only up to case (such a reader takes it for the known member). `Err`
/// when `text` is not JSON.
pub fn ambiguity(text: &str, known: &[&str]) -> Result<Option<String>, serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    /// What is wrong, and the member path to it (innermost first).
    struct Found {
        path: Vec<String>,
        what: String,
    }
    struct Check<'k> {
        known: &'k [&'k str],
        depth: usize,
    }
    impl<'de> DeserializeSeed<'de> for Check<'_> {
        type Value = Option<Found>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Found>, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Check<'_> {
        type Value = Option<Found>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            let mut i = 0usize;
            loop {
                let child = Check {
                    known: &[],
                    depth: self.depth + 1,
                };
                match seq.next_element_seed(child)? {
                    None => break,
                    Some(Some(mut f)) if found.is_none() => {
                        f.path.push(format!("[{i}]"));
                        found = Some(f);
                    }
                    Some(_) => {}
                }
                i += 1;
            }
            Ok(found)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            // Folded name → the name as written.
            let mut names: std::collections::HashMap<String, String> =
                std::collections::HashMap::new();
            let mut found: Option<Found> = None;
            while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                if found.is_some() {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                let folded: String = key.chars().map(fold).collect();
                if let Some(before) = names.get(&folded) {
                    let what = if *before == *key {
                        format!("repeats the member `{key}`")
                    } else {
                        format!("has members `{before}` and `{key}`, which differ only by case")
                    };
                    found = Some(Found {
                        path: Vec::new(),
                        what,
                    });
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                if let Some(k) = self.known.iter().find(|k| same_but_case(k, &key)) {
                    found = Some(Found {
                        path: Vec::new(),
                        what: format!(
                            "has a member `{key}`, which a case-insensitive reader takes for `{k}`"
                        ),
                    });
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                let child = Check {
                    known: &[],
                    depth: self.depth + 1,
                };
                if let Some(mut f) = map.next_value_seed(child)? {
                    f.path.push(key.to_string());
                    found = Some(f);
                }
                names.insert(folded, key.into_owned());
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let found = Check { known, depth: 0 }.deserialize(&mut de)?;
    de.end()?;
    Ok(found.map(|f| {
        if f.path.is_empty() {
            format!("the object {}", f.what)
        } else {
            let path: Vec<&str> = f.path.iter().rev().map(String::as_str).collect();
            format!("`{}` {}", path.join("."), f.what)
        }
    }))
}

/// Whether an argument path the policy reads (`args.a.b`) could be read
/// by a server as a value the policy does not see there. Names what was
/// found, or `None` when both read the same:
/// - a step written with another case (`{"A": …}`) and not as the policy
///   names it: a case-insensitive server (Go's `encoding/json`) reads it,
///   the policy sees nothing;
/// - a string holding JSON where the path goes on (`{"a": "{\"b\": 1}"}`):
///   the policy sees no `a.b`, a server that parses JSON-in-strings (the
///   Python SDK's `pre_parse_json`) does;
/// - with `numeric`, a number written as text (`"5000"`) or a boolean at
///   the end of the path: the policy's `gt`/`lt` see no number, a lax
///   server (pydantic) reads one.
pub fn misread_on_path(args: &Value, segments: &[String], numeric: bool) -> Option<String> {
    let mut current = args;
    let mut walked = String::from("args");
    for segment in segments {
        let object = match current {
            Value::Object(o) => o,
            Value::String(text) if holds_json_structure(text) => {
                return Some(format!(
                    "`{walked}` is a string holding JSON; the policy reads `{walked}.{segment}` inside it as nothing, a server that parses it reads a value"
                ));
            }
            _ => return None,
        };
        match object.get(segment) {
            Some(next) => current = next,
            None => {
                return object
                    .keys()
                    .find(|k| same_but_case(k, segment))
                    .map(|k| format!("`{walked}.{k}` (the policy reads `{walked}.{segment}`)"));
            }
        }
        walked.push('.');
        walked.push_str(segment);
    }
    if !numeric {
        return None;
    }
    match current {
        Value::String(text) if looks_numeric(text) => Some(format!(
            "`{walked}` is the number {} written as text; the policy compares it as no number, a lax server reads the number",
            serde_json::to_string(text).unwrap_or_default()
        )),
        Value::Bool(b) => Some(format!(
            "`{walked}` is `{b}`; the policy compares it as no number, a lax server reads {}",
            u8::from(*b)
        )),
        _ => None,
    }
}

/// A string whose content is a JSON object or array.
fn holds_json_structure(text: &str) -> bool {
    let t = text.trim();
    (t.starts_with('{') || t.starts_with('['))
        && serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok()
}

/// A string a lax reader takes for a number: decimal digits with an
/// optional sign, point, exponent, underscores or surrounding space, or
/// `inf`/`nan` spellings.
fn looks_numeric(text: &str) -> bool {
    let t = text.trim();
    if t.is_empty() {
        return false;
    }
    let plain: String = t.chars().filter(|c| *c != '_').collect();
    plain.parse::<f64>().is_ok() || plain.parse::<i128>().is_ok()
}

/// The id of a frame from its first bytes (the rest was too long to keep):
/// the value of a top-level `"id"` member that is a string or an integer,
/// as canonical JSON text.
pub fn top_level_id(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                // A string: find its end, skipping escapes.
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                let key = bytes.get(start..=i)?;
                let rest = text.get(i + 1..)?.trim_start();
                if depth == 1
                    && serde_json::from_slice::<String>(key).ok().as_deref() == Some("id")
                    && let Some(value) = rest.strip_prefix(':')
                {
                    let mut de = serde_json::Deserializer::from_str(value).into_iter::<Value>();
                    return match de.next()?.ok()? {
                        v @ Value::String(_) => Some(v.to_string()),
                        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
                        _ => None,
                    };
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// A `notifications/cancelled` frame for the server.
pub fn cancelled_frame(request_id: &str, reason: &str) -> Vec<u8> {
    let id: Value = serde_json::from_str(request_id).unwrap_or(Value::Null);
    let mut out = serde_json::to_vec(&json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": id, "reason": reason},
    }))
    .expect("serializes");
    out.push(b'\n');
    out
}

/// The `requestId` a client's `notifications/cancelled` names, as canonical
/// JSON text.
pub fn cancelled_request(params: Option<&RawValue>) -> Option<String> {
    let v: Value = serde_json::from_str(params?.get()).ok()?;
    match v.get("requestId")? {
        s @ Value::String(_) => Some(s.to_string()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// `params` of a `tools/call`.
#[derive(Debug, Deserialize)]
pub struct ToolCallParams {
    pub name: String,
    #[serde(default)]
    pub arguments: Value,
    /// 2026-07-28 retry of an input-required exchange: the opaque state
    /// the result carried, echoed back.
    #[serde(rename = "requestState", default)]
    pub request_state: Option<String>,
    /// 2026-07-28 retry: the client's answers, keyed like the requests.
    #[serde(rename = "inputResponses", default)]
    pub input_responses: Option<Value>,
}

/// What the proxy reads of a `tools/call` result: whether it is an error,
/// and its first text (other fields are skipped without being built).
#[derive(Debug, Deserialize)]
pub struct ToolResultHead {
    #[serde(rename = "isError", default)]
    pub is_error: Option<bool>,
    /// 2026-07-28: `input_required` when the server needs the client's
    /// input before the call can complete.
    #[serde(rename = "resultType", default)]
    pub result_type: Option<String>,
    /// 2026-07-28: the state the client's retry will carry.
    #[serde(rename = "requestState", default)]
    pub request_state: Option<String>,
    #[serde(default)]
    content: Vec<ContentHead>,
}

#[derive(Debug, Deserialize)]
struct ContentHead {
    #[serde(default)]
    text: Option<String>,
}

impl ToolResultHead {
    pub fn first_text(&self) -> Option<&str> {
        self.content.iter().find_map(|c| c.text.as_deref())
    }
}

/// Client identity from `initialize` params or a 2026-07-28 `_meta`.
pub fn client_info(method: &str, params: Option<&RawValue>) -> Option<(String, Option<String>)> {
    let params: Value = serde_json::from_str(params?.get()).ok()?;
    let info = if method == "initialize" {
        params.get("clientInfo")
    } else {
        None
    }
    .or_else(|| {
        params
            .get("_meta")
            .and_then(|m| m.get("io.modelcontextprotocol/clientInfo"))
    })?;
    let name = info.get("name")?.as_str()?.to_string();
    let version = info
        .get("version")
        .and_then(Value::as_str)
        .map(str::to_string);
    Some((name, version))
}

/// Whether the client says it can show an elicitation form: from
/// `initialize`'s `capabilities.elicitation`, or a 2026-07-28 request's
/// `_meta["io.modelcontextprotocol/clientCapabilities"].elicitation`.
/// `None` when the frame does not declare capabilities.
pub fn client_can_elicit(method: &str, params: Option<&RawValue>) -> Option<bool> {
    let text = params?.get();
    if method != "initialize" && !text.contains("io.modelcontextprotocol/clientCapabilities") {
        return None;
    }
    let params: Value = serde_json::from_str(text).ok()?;
    let caps = if method == "initialize" {
        params.get("capabilities")
    } else {
        None
    }
    .or_else(|| {
        params
            .get("_meta")
            .and_then(|m| m.get("io.modelcontextprotocol/clientCapabilities"))
    })?;
    Some(caps.get("elicitation").is_some_and(|e| !e.is_null()))
}

/// The yes/no form every approval question uses.
pub fn approval_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "approve": {
                "type": "boolean",
                "title": "Approve this call",
                "description": "Yes lets this one call through (the rest of the policy still applies)."
            }
        },
        "required": ["approve"]
    })
}

/// The proxy's own `elicitation/create` request (2025-11-25 sessions).
pub fn elicitation_frame(id: &str, message: &str) -> Vec<u8> {
    let mut out = serde_json::to_vec(&json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "elicitation/create",
        "params": {"mode": "form", "message": message, "requestedSchema": approval_schema()},
    }))
    .expect("serializes");
    out.push(b'\n');
    out
}

/// A 2026-07-28 input-required result asking for the approval form.
pub fn input_required_frame(
    id: Option<&RawValue>,
    key: &str,
    message: &str,
    state: &str,
) -> Vec<u8> {
    let id: Value = id
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(Value::Null);
    let mut out = serde_json::to_vec(&json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "resultType": "input_required",
            "inputRequests": {
                key: {
                    "method": "elicitation/create",
                    "params": {"mode": "form", "message": message, "requestedSchema": approval_schema()}
                }
            },
            "requestState": state,
        }
    }))
    .expect("serializes");
    out.push(b'\n');
    out
}

/// How a client answered the approval form (an `ElicitResult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormAnswer {
    Yes,
    No,
    Cancel,
}

/// Reads an `ElicitResult`: accept with `approve: true` is yes; accept
/// with anything else, or decline, is no; cancel is cancel; anything
/// malformed is no (fail closed).
pub fn form_answer(result: &Value) -> FormAnswer {
    match result.get("action").and_then(Value::as_str) {
        Some("accept") => {
            if result
                .get("content")
                .and_then(|c| c.get("approve"))
                .and_then(Value::as_bool)
                == Some(true)
            {
                FormAnswer::Yes
            } else {
                FormAnswer::No
            }
        }
        Some("cancel") => FormAnswer::Cancel,
        _ => FormAnswer::No,
    }
}

/// A `tools/call` frame without the input-required retry fields
/// (`requestState`, `inputResponses`): what the server gets once the
/// proxy's own question is answered.
pub fn strip_retry_fields(frame: &[u8]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(frame).ok()?;
    let params = v.get_mut("params")?.as_object_mut()?;
    params.remove("requestState");
    params.remove("inputResponses");
    let mut out = serde_json::to_vec(&v).ok()?;
    out.push(b'\n');
    Some(out)
}

/// Whether the request speaks the 2026-07-28 protocol (results then carry
/// `resultType`).
pub fn speaks_2026(params: Option<&RawValue>) -> bool {
    params.is_some_and(|p| p.get().contains("io.modelcontextprotocol/protocolVersion"))
}

/// The server's name from an `initialize` result (`serverInfo`) or a
/// 2026-07-28 result's `_meta`.
pub fn server_name(result: &RawValue) -> Option<String> {
    let v: Value = serde_json::from_str(result.get()).ok()?;
    v.get("serverInfo")
        .or_else(|| {
            v.get("_meta")
                .and_then(|m| m.get("io.modelcontextprotocol/serverInfo"))
        })
        .and_then(|s| s.get("name"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A JSON-RPC error response frame (with its newline).
pub fn error_frame(id: Option<&RawValue>, code: i64, message: &str) -> Vec<u8> {
    let id: Value = id
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(Value::Null);
    let mut out = serde_json::to_vec(
        &json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
    )
    .expect("serializes");
    out.push(b'\n');
    out
}

/// A tool result frame refusing the call: `isError: true`, the reason as
/// text, and the decision under `_meta`.
pub fn refusal_frame(id: Option<&RawValue>, text: &str, decision: Value, modern: bool) -> Vec<u8> {
    let id: Value = id
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(Value::Null);
    let mut result = json!({
        "content": [{"type": "text", "text": text}],
        "isError": true,
        "_meta": {"io.flightrec/decision": decision},
    });
    if modern {
        result["resultType"] = json!("complete");
    }
    let mut out = serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "result": result}))
        .expect("serializes");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_classify_frames() {
        let req: Envelope = serde_json::from_str(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x"}}"#,
        )
        .unwrap();
        assert!(req.method.is_some() && !req.is_response());
        assert_eq!(req.id_text().as_deref(), Some("7"));
        let note: Envelope =
            serde_json::from_str(r#"{"method":"notifications/initialized","jsonrpc":"2.0"}"#)
                .unwrap();
        assert!(note.id_kind() == IdKind::Missing && !note.is_response());
        let resp: Envelope =
            serde_json::from_str(r#"{"result":{},"jsonrpc":"2.0","id":"a"}"#).unwrap();
        assert!(resp.is_response());
        assert_eq!(resp.id_text().as_deref(), Some("\"a\""));
    }

    #[test]
    fn ids_and_duplicate_keys() {
        let kind = |t: &str| serde_json::from_str::<Envelope>(t).unwrap().id_kind();
        assert_eq!(kind(r#"{"id":7}"#), IdKind::Valid("7".into()));
        assert_eq!(kind(r#"{"id":"a"}"#), IdKind::Valid("\"a\"".into()));
        assert_eq!(kind(r#"{"id":null}"#), IdKind::Null);
        assert_eq!(kind(r#"{"method":"x"}"#), IdKind::Missing);
        for bad in [
            r#"{"id":1.5}"#,
            r#"{"id":true}"#,
            r#"{"id":[1]}"#,
            r#"{"id":{}}"#,
        ] {
            assert_eq!(kind(bad), IdKind::Invalid, "{bad}");
        }
        let amb = |t: &str| ambiguity(t, &TOOL_CALL_MEMBERS).unwrap();
        assert_eq!(amb(r#"{"a":{"b":1,"c":[{"d":1}]}}"#), None);
        assert_eq!(
            amb(r#"{"a":{"b":1,"b":2}}"#).as_deref(),
            Some("`a` repeats the member `b`")
        );
        assert_eq!(
            amb(r#"[{"x":1},{"y":[{"z":1,"z":1}]}]"#).as_deref(),
            Some("`[1].y.[0]` repeats the member `z`")
        );
        assert!(amb(r#"{"a\u0062":1,"ab":2}"#).is_some());
        assert!(ambiguity("{", &[]).is_err());
        assert!(ambiguity("{} {}", &[]).is_err());
        // Case: a duplicate up to case at any depth, a known member's variant
        // at the top only.
        assert_eq!(
            amb(r#"{"name":"a","arguments":{"amount":1,"AMOUNT":2}}"#).as_deref(),
            Some("`arguments` has members `amount` and `AMOUNT`, which differ only by case")
        );
        assert!(amb(r#"{"name":"list","Name":"reboot"}"#).is_some());
        assert!(amb(r#"{"nAme":"reboot"}"#).is_some());
        assert!(amb(r#"{"name":"x","arguments":{"Name":"y"}}"#).is_none());
        // Unicode simple folding: the Kelvin sign is a `k`, a long s an `s`.
        assert!(amb("{\"name\":\"a\",\"arguments\":{\"k\":1,\"\u{212A}\":2}}").is_some());
        assert!(amb("{\"name\":\"a\",\"requeſtState\":\"x\"}").is_some());
        // The dotted capital I and the dotless i read as an `i` somewhere.
        assert!(
            amb("{\"name\":\"a\",\"arguments\":{\"env\u{130}ronment\":1,\"environment\":2}}")
                .is_some()
        );
        assert!(amb("{\"name\":\"a\",\"arguments\":{},\"\u{131}nputResponses\":{}}").is_some());
        // Envelopes note a variant of a known member and refuse a repeat.
        let env: Envelope =
            serde_json::from_str(r#"{"jsonrpc":"2.0","id":1,"Method":"tools/call"}"#).unwrap();
        assert_eq!(env.variant.as_deref(), Some("Method"));
        assert!(env.method.is_none());
        assert!(serde_json::from_str::<Envelope>(r#"{"id":1,"id":2}"#).is_err());
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let args = json!({"Amount": 5, "nested": {"Deep": 1}});
        assert!(misread_on_path(&args, &p(&["amount"]), false).is_some());
        assert!(misread_on_path(&args, &p(&["nested", "deep"]), false).is_some());
        assert!(misread_on_path(&json!({"amount": 1}), &p(&["amount"]), true).is_none());
        // JSON inside a string where the path goes on.
        let args = json!({"target": "{\"environment\":\"prod\"}"});
        assert!(misread_on_path(&args, &p(&["target", "environment"]), false).is_some());
        assert!(misread_on_path(&json!("{\"count\":9}"), &p(&["count"]), false).is_some());
        assert!(misread_on_path(&json!({"target": "prod"}), &p(&["target", "x"]), false).is_none());
        // Numbers as text, booleans, only where the policy reads a number.
        for text in ["5000", " 5000 ", "5e3", "-1", "5_000", "inf", "NaN"] {
            let args = json!({"count": text});
            assert!(
                misread_on_path(&args, &p(&["count"]), true).is_some(),
                "{text}"
            );
            assert!(
                misread_on_path(&args, &p(&["count"]), false).is_none(),
                "{text}"
            );
        }
        assert!(misread_on_path(&json!({"count": true}), &p(&["count"]), true).is_some());
        assert!(misread_on_path(&json!({"count": "many"}), &p(&["count"]), true).is_none());
    }

    #[test]
    fn ids_from_the_head_of_a_long_frame() {
        let head = br#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"xxxx"#;
        assert_eq!(top_level_id(head).as_deref(), Some("42"));
        let head = br#"{"result":{"id":1,"content":[{"text":""id":3"}]},"id":"a-7","jsonrpc""#;
        assert_eq!(top_level_id(head).as_deref(), Some("\"a-7\""));
        let head = br#"{"result":{"content":[{"type":"text","text":"aaaaaaaaaaaa"#;
        assert_eq!(top_level_id(head), None);
    }

    #[test]
    fn client_and_server_names_in_both_lifecycles() {
        let p = RawValue::from_string(
            r#"{"protocolVersion":"2025-11-25","clientInfo":{"name":"mcp","version":"2.3.0"}}"#
                .into(),
        )
        .unwrap();
        assert_eq!(
            client_info("initialize", Some(&p)),
            Some(("mcp".into(), Some("2.3.0".into())))
        );
        let m = RawValue::from_string(
            r#"{"_meta":{"io.modelcontextprotocol/clientInfo":{"name":"agent"}}}"#.into(),
        )
        .unwrap();
        assert_eq!(
            client_info("tools/list", Some(&m)),
            Some(("agent".into(), None))
        );
        assert!(speaks_2026(Some(
            &RawValue::from_string(
                r#"{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}"#.into()
            )
            .unwrap()
        )));
        let r = RawValue::from_string(
            r#"{"_meta":{"io.modelcontextprotocol/serverInfo":{"name":"srv","version":""}}}"#
                .into(),
        )
        .unwrap();
        assert_eq!(server_name(&r).as_deref(), Some("srv"));
    }
}
