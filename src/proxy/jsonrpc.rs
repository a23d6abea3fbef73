//! Just enough JSON-RPC: the envelope of a frame (id, method, whether it is
//! a result or an error), parsed without touching the rest, so the proxy
//! forwards the original bytes of every message it does not have to change.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// The parts of a frame the proxy looks at. Everything else stays raw.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(borrow, default)]
    pub params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
}

impl Envelope<'_> {
    /// A request carries a method and an id; a notification has no id.
    pub fn is_request(&self) -> bool {
        self.method.is_some() && self.id.is_some_and(|id| id.get() != "null")
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

/// `params` of a `tools/call`.
#[derive(Debug, Deserialize)]
pub struct ToolCallParams {
    pub name: String,
    #[serde(default)]
    pub arguments: Value,
}

/// What the proxy reads of a `tools/call` result: whether it is an error,
/// and its first text (other fields are skipped without being built).
#[derive(Debug, Deserialize)]
pub struct ToolResultHead {
    #[serde(rename = "isError", default)]
    pub is_error: Option<bool>,
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
        assert!(req.is_request() && !req.is_response());
        assert_eq!(req.id_text().as_deref(), Some("7"));
        let note: Envelope =
            serde_json::from_str(r#"{"method":"notifications/initialized","jsonrpc":"2.0"}"#)
                .unwrap();
        assert!(!note.is_request() && !note.is_response());
        let resp: Envelope =
            serde_json::from_str(r#"{"result":{},"jsonrpc":"2.0","id":"a"}"#).unwrap();
        assert!(resp.is_response());
        assert_eq!(resp.id_text().as_deref(), Some("\"a\""));
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
