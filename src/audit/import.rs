//! `import intercept`: PolicyLayer Intercept event logs into audit schema v1.
//!
//! Intercept writes one JSON object per line (`ts`, `type`, `instance`, and
//! for `tool_call` events `tool`, `result` allowed|denied, `args_hash`,
//! `rule`, `message`). Each `tool_call` becomes one row: the instance id is
//! the session and the agent (`intercept:<instance>`), the server comes from
//! the instance's `startup` event when the log has one, allowed calls are
//! recorded with outcome `ok` (Intercept does not log outcomes) and denied ones
//! with `not_forwarded`. Arguments were never logged, so `args_json` is null;
//! `args_sha256` is Intercept's hash. Other event types are counted and
//! skipped; bad lines are reported with their line number.

use crate::audit::error::AuditError;
use crate::audit::file_writer::AuditFileWriter;
use crate::audit::schema::{AuditRow, RecordedDecision, Transport};
use crate::policy::Outcome;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    pub rows: u64,
    /// Events of other types, by type.
    pub skipped: BTreeMap<String, u64>,
    /// `file:line: problem` for each line that could not be read.
    pub bad_lines: Vec<String>,
}

pub fn import_intercept(
    inputs: &[PathBuf],
    out: &Path,
    progress: &mut crate::progress::Progress,
) -> Result<ImportSummary, AuditError> {
    let mut writer = AuditFileWriter::create(out)?;
    let mut summary = ImportSummary::default();
    let mut servers: HashMap<String, String> = HashMap::new();
    for input in inputs {
        let file = std::fs::File::open(input).map_err(|e| AuditError::io("open", input, e))?;
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line_no = i + 1;
            let line = line.map_err(|e| AuditError::io("read", input, e))?;
            progress.inc(line.len() as u64 + 1);
            if line.trim().is_empty() {
                continue;
            }
            match event_row(&line, input, line_no, &mut servers) {
                Ok(Some(row)) => {
                    writer.push(row)?;
                    summary.rows += 1;
                }
                Ok(None) => {}
                Err(Skip::Other(kind)) => *summary.skipped.entry(kind).or_default() += 1,
                Err(Skip::Bad(problem)) => summary
                    .bad_lines
                    .push(format!("{}:{line_no}: {problem}", input.display())),
            }
        }
    }
    writer.finish()?;
    progress.finish();
    Ok(summary)
}

enum Skip {
    Other(String),
    Bad(String),
}

fn event_row(
    line: &str,
    file: &Path,
    line_no: usize,
    servers: &mut HashMap<String, String>,
) -> Result<Option<AuditRow>, Skip> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| Skip::Bad(format!("not JSON: {e}")))?;
    let text = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let kind = text("type").ok_or_else(|| Skip::Bad("missing \"type\"".into()))?;
    let instance = text("instance").unwrap_or_default();
    if kind == "startup" {
        if let Some(server) = text("server") {
            servers.insert(instance, server);
        }
        return Err(Skip::Other(kind));
    }
    if kind != "tool_call" {
        return Err(Skip::Other(kind));
    }
    let ts = text("ts").ok_or_else(|| Skip::Bad("missing \"ts\"".into()))?;
    let ts_us = crate::time::parse_rfc3339_us(&ts).map_err(Skip::Bad)?;
    let tool = text("tool").ok_or_else(|| Skip::Bad("tool_call without \"tool\"".into()))?;
    let (decision, outcome) = match text("result").as_deref() {
        Some("allowed") => (RecordedDecision::Allow, Outcome::Ok),
        Some("denied") => (RecordedDecision::Deny, Outcome::NotForwarded),
        other => {
            return Err(Skip::Bad(format!(
                "result must be allowed or denied, got {other:?}"
            )));
        }
    };
    // Deterministic ids: the same input always imports to the same rows.
    let digest = Sha256::digest(format!("{}\n{line_no}\n{line}", file.display()).as_bytes());
    let rand: [u8; 10] = digest[..10].try_into().expect("10 bytes");
    let event_id =
        uuid::Builder::from_unix_timestamp_millis(ts_us.div_euclid(1000).max(0) as u64, &rand)
            .into_uuid()
            .to_string();
    let who = format!("intercept:{instance}");
    Ok(Some(AuditRow {
        event_id,
        ts_us,
        session_id: who.clone(),
        agent_id: who,
        server: servers.get(&instance).cloned().unwrap_or_default(),
        transport: Transport::Unknown,
        method: "tools/call".into(),
        tool: Some(tool),
        args_sha256: text("args_hash").map(|h| h.trim_start_matches("sha256:").to_string()),
        decision,
        rule: text("rule"),
        reason: text("message"),
        outcome,
        ..AuditRow::default()
    }))
}
