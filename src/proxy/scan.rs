//! `flightrec scan` (and `flightrec pins`): connect to an MCP server over
//! stdio, list its tools (with their definitions), and write a starter policy a team can edit — every tool listed with its
//! category and description; destructive tools denied until someone reviews
//! them; writes rate-limited per session; a commented global limit.

use crate::policy::Category;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tool as the server describes it, with the category flightrec assigns.
#[derive(Debug, Clone)]
pub struct ScannedTool {
    pub name: String,
    pub description: String,
    pub category: Category,
    /// Where the category came from: `annotations` or `name`.
    pub source: &'static str,
    /// The tool's definition as `flightrec pins` hashes it
    /// (`policy::pins::definition`).
    pub definition: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the server {0}")]
    Protocol(String),
}

/// Lists the server's tools (following `nextCursor` pages).
pub fn scan(
    command: &[String],
    timeout: Duration,
) -> Result<(String, Vec<ScannedTool>), ScanError> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| ScanError::Protocol("command is empty".into()))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| ScanError::Spawn {
            command: command.join(" "),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let request = |stdin: &mut std::process::ChildStdin,
                   id: u64,
                   method: &str,
                   params: Value|
     -> Result<Value, ScanError> {
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(stdin, "{msg}")
            .and_then(|_| stdin.flush())
            .map_err(|e| ScanError::Protocol(format!("closed its input: {e}")))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = rx.recv_timeout(left).map_err(|_| {
                ScanError::Protocol(format!(
                    "did not answer {method} within {} s",
                    timeout.as_secs()
                ))
            })?;
            if v.get("id") == Some(&json!(id)) {
                if let Some(e) = v.get("error") {
                    return Err(ScanError::Protocol(format!(
                        "answered {method} with an error: {e}"
                    )));
                }
                return Ok(v.get("result").cloned().unwrap_or(Value::Null));
            }
        }
    };
    let init = request(
        &mut stdin,
        1,
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "flightrec-scan", "version": env!("CARGO_PKG_VERSION")}}),
    )?;
    let server = init
        .get("serverInfo")
        .and_then(|s| s.get("name"))
        .and_then(Value::as_str)
        .unwrap_or(program)
        .to_string();
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let _ = writeln!(stdin, "{note}").and_then(|_| stdin.flush());
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..100u64 {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let result = request(&mut stdin, 2 + page, "tools/list", params)?;
        for t in result
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some((name, definition)) = crate::policy::pins::definition(t) else {
                continue;
            };
            let name = name.as_str();
            let annotations = t.get("annotations").filter(|a| a.is_object());
            let (category, source) = match annotations {
                Some(a) => (Category::from_annotations(a), "annotations"),
                None => (Category::from_tool_name(name), "name"),
            };
            tools.push(ScannedTool {
                name: name.to_string(),
                description: t
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                category,
                source,
                definition,
            });
        }
        cursor = result
            .get("nextCursor")
            .and_then(Value::as_str)
            .map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    Ok((server, tools))
}

/// The starter policy text.
pub fn starter_policy(server: &str, command: &[String], tools: &[ScannedTool]) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let one_line = |s: &str| {
        s.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(100)
            .collect::<String>()
    };
    let mut y = format!(
        "# Starter policy for {server}, written by `flightrec scan -- {}` on {}.\n\
         # Review it: destructive tools are denied, writes are limited per session.\n\
         # Categories come from the server's annotations, else from the tool's name.\n\
         version: \"1\"\ndescription: {}\ndefault: allow\n",
        command.join(" "),
        chrono::Utc::now().format("%Y-%m-%d"),
        q(&format!("Policy for {server}"))
    );
    y.push_str("categories:\n");
    for t in tools {
        y.push_str(&format!(
            "  {}: {}  # from {}\n",
            q(&t.name),
            t.category.as_str(),
            t.source
        ));
    }
    y.push_str("tools:\n");
    for (title, cats) in [
        ("Read tools", &[Category::Read][..]),
        (
            "Write tools: at most 10 calls a minute per session",
            &[Category::Write, Category::Execute, Category::Unknown][..],
        ),
        (
            "Destructive tools: denied until a human reviews them",
            &[Category::Destructive][..],
        ),
    ] {
        let group: Vec<&ScannedTool> = tools
            .iter()
            .filter(|t| cats.contains(&t.category))
            .collect();
        if group.is_empty() {
            continue;
        }
        y.push_str(&format!("  # ── {title} ──\n"));
        for t in group {
            if !t.description.is_empty() {
                y.push_str(&format!("  # {}: {}\n", t.name, one_line(&t.description)));
            }
            y.push_str(&format!("  {}:\n", q(&t.name)));
            match t.category {
                Category::Read => y.push_str("    rules: []\n"),
                Category::Destructive => y.push_str(&format!(
                    "    rules:\n      - name: {}\n        action: deny\n        reason: {}\n",
                    q(&format!("no {}", t.name)),
                    q(&format!("{} is destructive and is denied by policy; ask a human", t.name))
                )),
                _ => y.push_str(&format!(
                    "    rules:\n      - name: {}\n        rate_limit: {{max: 10, window: 60s, per: session}}\n",
                    q(&format!("{} per session", t.name))
                )),
            }
        }
    }
    y.push_str("  # Uncomment to apply a global rate limit across all tools:\n  # \"*\":\n  #   rules:\n  #     - name: global rate limit\n  #       rate_limit: 60/minute\n");
    y
}
