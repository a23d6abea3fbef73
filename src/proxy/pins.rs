//! What the proxy does with tool definitions: it learns each tool's
//! definition hash from every `tools/list` answer it passes on (JSON or
//! SSE, every page), compares it with the pin file (`--pins FILE`) or, without
//! one, with what it pinned on first use in the audit directory, and decides
//! per tool: listed and allowed, listed with a warning, listed but refused
//! (`block`), or removed from the list and refused (`hide`).
//!
//! The definitions, hashes, pin file format and description scan are
//! `policy::pins` (pure); this module owns the file on disk and the
//! per-session state. A call is judged by the last list the session saw:
//! a tool the session has not seen listed is left to the policy.

use crate::policy::pins::{self as defs, PinFile};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Most tools one session tracks, and most tools pinned on first use per
/// server. Past it, further tools are removed from lists and a call to a
/// tool the session does not track is refused (`(tool hidden: too many
/// tools)`): memory stays bounded and nothing unjudged gets through.
pub const MAX_TOOLS: usize = 10_000;

pub const RULE_CHANGED: &str = "(tool definition changed)";
pub const RULE_HIDDEN_DRIFT: &str = "(tool hidden: drift)";
pub const RULE_NOT_PINNED: &str = "(tool not pinned)";
pub const RULE_HIDDEN_NEW: &str = "(tool hidden: not pinned)";
pub const RULE_SUSPICIOUS: &str = "(suspicious description)";
pub const RULE_TOO_MANY: &str = "(tool hidden: too many tools)";

/// `--on-drift` / `--on-new`: what happens to a tool whose definition
/// differs from its pin (or has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnDrift {
    /// Listed, but every call is refused with the reason
    #[default]
    Block,
    /// Removed from `tools/list`, and refused if called anyway
    Hide,
    /// Allowed, with a warning on stderr and the reason in the row
    Warn,
}

/// Where the pins come from.
#[derive(Debug, Clone)]
pub enum PinSource {
    /// `--pins FILE`: read at start, never written by the proxy.
    File(PathBuf),
    /// Trust on first use: the first definition seen is pinned, in this
    /// file (`AUDIT_DIR/_flightrec/pins.yaml`) when there is an audit
    /// directory, else in memory for the process.
    FirstUse(Option<PathBuf>),
}

/// What a session does with one listed tool.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolVerdict {
    Allow,
    Warn(String),
    Block { rule: &'static str, reason: String },
    Hide { rule: &'static str, reason: String },
}

impl ToolVerdict {
    fn severity(&self) -> u8 {
        match self {
            ToolVerdict::Allow => 0,
            ToolVerdict::Warn(_) => 1,
            ToolVerdict::Block { .. } => 2,
            ToolVerdict::Hide { .. } => 3,
        }
    }

    fn by(mode: OnDrift, reason: String, block: &'static str, hide: &'static str) -> Self {
        match mode {
            OnDrift::Block => ToolVerdict::Block {
                rule: block,
                reason,
            },
            OnDrift::Hide => ToolVerdict::Hide { rule: hide, reason },
            OnDrift::Warn => ToolVerdict::Warn(reason),
        }
    }
}

/// The process-wide pins: the file, the modes, the description scan.
pub struct PinGuard {
    source: PinSource,
    on_drift: OnDrift,
    on_new: OnDrift,
    scan: bool,
    file: Mutex<PinFile>,
    /// Warnings already printed (server, tool, sha), bounded.
    warned: Mutex<HashSet<(String, String, String)>>,
}

impl std::fmt::Debug for PinGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinGuard")
            .field("source", &self.source)
            .field("on_drift", &self.on_drift)
            .field("on_new", &self.on_new)
            .field("scan", &self.scan)
            .finish_non_exhaustive()
    }
}

/// Reads a pin file; a missing one is `None`.
pub fn read_pin_file(path: &Path) -> Result<Option<PinFile>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => PinFile::parse(&text)
            .map(Some)
            .map_err(|e| format!("pin file {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read pin file {}: {e}", path.display())),
    }
}

/// Writes a pin file atomically (a temporary file beside it, synced, then
/// renamed over it).
pub fn write_pin_file(path: &Path, file: &PinFile) -> Result<(), String> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pins.yaml".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(file.render().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write pin file {}: {e}", path.display())
    })
}

impl PinGuard {
    /// `--pins FILE`: the file must exist and read cleanly.
    pub fn from_file(
        path: PathBuf,
        on_drift: OnDrift,
        on_new: OnDrift,
        scan: bool,
    ) -> Result<PinGuard, String> {
        let file = read_pin_file(&path)?.ok_or_else(|| {
            format!(
                "pin file {} does not exist (write one with `flightrec pins record -o {} -- CMD`)",
                path.display(),
                path.display()
            )
        })?;
        Ok(PinGuard::new(
            PinSource::File(path),
            file,
            on_drift,
            on_new,
            scan,
        ))
    }

    /// Trust on first use, in `path` when given (read if it exists).
    pub fn first_use(
        path: Option<PathBuf>,
        on_drift: OnDrift,
        scan: bool,
    ) -> Result<PinGuard, String> {
        let file = match &path {
            Some(p) => read_pin_file(p)?.unwrap_or_default(),
            None => PinFile::default(),
        };
        Ok(PinGuard::new(
            PinSource::FirstUse(path),
            file,
            on_drift,
            OnDrift::Warn,
            scan,
        ))
    }

    fn new(
        source: PinSource,
        file: PinFile,
        on_drift: OnDrift,
        on_new: OnDrift,
        scan: bool,
    ) -> Self {
        PinGuard {
            source,
            on_drift,
            on_new,
            scan,
            file: Mutex::new(file),
            warned: Mutex::new(HashSet::new()),
        }
    }

    /// The pin file's path, for messages.
    fn path_text(&self) -> String {
        match &self.source {
            PinSource::File(p) | PinSource::FirstUse(Some(p)) => p.display().to_string(),
            PinSource::FirstUse(None) => "(in memory)".into(),
        }
    }

    /// Judges one page of a `tools/list` answer (tool name, definition),
    /// pinning first-use definitions (saved once per page).
    fn judge(&self, server: &str, tools: &[(String, Value)]) -> Vec<ToolVerdict> {
        let mut file = lock(&self.file);
        let mut pinned_now = 0usize;
        let mut out = Vec::with_capacity(tools.len());
        let first_use = matches!(self.source, PinSource::FirstUse(_));
        let server_known = file.servers.contains_key(server);
        for (name, def) in tools {
            if self.scan {
                let findings = defs::scan_definition(name, def);
                if let Some(first) = findings.first() {
                    let more = match findings.len() - 1 {
                        0 => String::new(),
                        n => format!(" (and {n} more finding{})", if n == 1 { "" } else { "s" }),
                    };
                    out.push(ToolVerdict::Hide {
                        rule: RULE_SUSPICIOUS,
                        reason: format!(
                            "tool {} looks aimed at the model rather than the user: {} at {} bytes {}..{}: {}{more}",
                            defs::quote(name),
                            first.kind.as_str(),
                            first.field,
                            first.start,
                            first.end,
                            first.excerpt
                        ),
                    });
                    continue;
                }
            }
            let sha = defs::definition_sha256(def);
            let verdict = match file.get(server, name) {
                Some(pin) if pin.sha256 == sha => ToolVerdict::Allow,
                Some(pin) => {
                    let reason = format!(
                        "tool {}: {}; review it with `flightrec pins diff {} -- CMD` and accept it with `flightrec pins approve {} {} -- CMD`",
                        defs::quote(name),
                        defs::drift_reason(pin, def, &sha),
                        self.path_text(),
                        self.path_text(),
                        name
                    );
                    ToolVerdict::by(self.on_drift, reason, RULE_CHANGED, RULE_HIDDEN_DRIFT)
                }
                None if first_use => {
                    if file.count(server) >= MAX_TOOLS {
                        ToolVerdict::Hide {
                            rule: RULE_TOO_MANY,
                            reason: format!(
                                "tool {}: server {} has more than {MAX_TOOLS} tools pinned on first use",
                                defs::quote(name),
                                defs::quote(server)
                            ),
                        }
                    } else {
                        file.set(server, name, def);
                        pinned_now += 1;
                        ToolVerdict::Allow
                    }
                }
                None => {
                    let why = if server_known {
                        String::new()
                    } else {
                        format!(
                            " (the pin file has no server {}; pins are per server name: `pins record --server NAME`, or the proxy's --server-name)",
                            defs::quote(server)
                        )
                    };
                    let reason = format!(
                        "tool {} is not pinned in {}{why}; accept it with `flightrec pins approve {} {} -- CMD`",
                        defs::quote(name),
                        self.path_text(),
                        self.path_text(),
                        name
                    );
                    ToolVerdict::by(self.on_new, reason, RULE_NOT_PINNED, RULE_HIDDEN_NEW)
                }
            };
            out.push(verdict);
        }
        if pinned_now > 0
            && let PinSource::FirstUse(Some(path)) = &self.source
            && let Err(e) = write_pin_file(path, &file)
        {
            // The pins hold in memory for this process; a restart would
            // trust whatever the server lists then.
            eprintln!(
                "flightrec: PIN FILE ERROR: {e}; tools first seen now are pinned for this run only"
            );
        }
        drop(file);
        for ((name, def), v) in tools.iter().zip(&out) {
            if let ToolVerdict::Warn(reason)
            | ToolVerdict::Block { reason, .. }
            | ToolVerdict::Hide { reason, .. } = v
            {
                let key = (
                    server.to_string(),
                    name.clone(),
                    defs::definition_sha256(def),
                );
                let mut warned = lock(&self.warned);
                if warned.len() < MAX_TOOLS && warned.insert(key) {
                    let what = match v {
                        ToolVerdict::Warn(_) => "allowed with a warning",
                        ToolVerdict::Block { .. } => "listed but refused",
                        _ => "hidden and refused",
                    };
                    eprintln!("flightrec: warning: {reason} ({what})");
                }
            }
        }
        out
    }
}

/// What the pins say about one call.
#[derive(Debug, Clone, PartialEq)]
pub enum CallCheck {
    /// Nothing to say (pinned and unchanged, or not listed: the policy decides).
    Pass,
    /// Allowed; the reason goes into the row.
    Warn(String),
    /// Refused with this rule and reason.
    Refuse { rule: &'static str, reason: String },
}

/// One session's view: what it decided for each tool it saw listed.
#[derive(Debug, Default)]
pub struct SessionPins {
    state: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    tools: HashMap<String, ToolVerdict>,
    /// A list named more tools than [`MAX_TOOLS`].
    overflow: bool,
}

impl SessionPins {
    /// Judges one `tools/list` page (the `tools` array of its result);
    /// returns, per entry, whether it is removed from the list.
    pub fn learn(&self, guard: &PinGuard, server: &str, tools: &[Value]) -> Vec<bool> {
        let mut seen = lock(&self.state);
        let mut defs_in_page = Vec::with_capacity(tools.len());
        let mut index = Vec::with_capacity(tools.len());
        let mut remove = vec![false; tools.len()];
        for (i, t) in tools.iter().enumerate() {
            let Some((name, def)) = defs::definition(t) else {
                continue; // no name: nothing can call it
            };
            if !seen.tools.contains_key(&name) && seen.tools.len() + defs_in_page.len() >= MAX_TOOLS
            {
                seen.overflow = true;
                remove[i] = true;
                continue;
            }
            defs_in_page.push((name, def));
            index.push(i);
        }
        let verdicts = guard.judge(server, &defs_in_page);
        let mut in_page: HashSet<&str> = HashSet::new();
        for ((i, (name, _)), v) in index.iter().zip(&defs_in_page).zip(verdicts) {
            remove[*i] = matches!(v, ToolVerdict::Hide { .. });
            // A name listed twice in one page: the stricter verdict holds.
            let keep_old = !in_page.insert(name.as_str())
                && seen
                    .tools
                    .get(name)
                    .is_some_and(|old| old.severity() >= v.severity());
            if !keep_old {
                seen.tools.insert(name.clone(), v);
            }
        }
        remove
    }

    /// What the tools this session saw listed say about a call to `tool`.
    pub fn check_call(&self, tool: &str) -> CallCheck {
        let seen = lock(&self.state);
        match seen.tools.get(tool) {
            Some(ToolVerdict::Allow) => CallCheck::Pass,
            Some(ToolVerdict::Warn(reason)) => CallCheck::Warn(reason.clone()),
            Some(ToolVerdict::Block { rule, reason }) => CallCheck::Refuse {
                rule,
                reason: reason.clone(),
            },
            Some(ToolVerdict::Hide { rule, reason }) => CallCheck::Refuse {
                rule,
                reason: format!("hidden from tools/list: {reason}"),
            },
            None if seen.overflow => CallCheck::Refuse {
                rule: RULE_TOO_MANY,
                reason: format!(
                    "tool {} was not judged: the server listed more than {MAX_TOOLS} tools in this session",
                    defs::quote(tool)
                ),
            },
            None => CallCheck::Pass,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(desc: &str) -> Value {
        json!({"name": "t", "description": desc, "inputSchema": {"type": "object"}})
    }

    #[test]
    fn first_use_pins_then_blocks_a_change_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("_flightrec/pins.yaml");
        let guard = PinGuard::first_use(Some(path.clone()), OnDrift::Block, false).unwrap();
        let s = SessionPins::default();
        assert_eq!(s.learn(&guard, "srv", &[tool("one")]), vec![false]);
        assert_eq!(s.check_call("t"), CallCheck::Pass);
        assert_eq!(s.learn(&guard, "srv", &[tool("two")]), vec![false]);
        let CallCheck::Refuse { rule, reason } = s.check_call("t") else {
            panic!("a changed definition is refused")
        };
        assert_eq!(rule, RULE_CHANGED);
        assert!(
            reason.contains("description changed since it was pinned"),
            "{reason}"
        );
        // A restart reads the pins back.
        let again = PinGuard::first_use(Some(path), OnDrift::Hide, false).unwrap();
        let s2 = SessionPins::default();
        assert_eq!(s2.learn(&again, "srv", &[tool("two")]), vec![true]);
        assert_eq!(
            s2.check_call("other"),
            CallCheck::Pass,
            "not listed: the policy decides"
        );
    }

    #[test]
    fn past_the_cap_tools_are_hidden_and_untracked_calls_refused() {
        let guard = PinGuard::first_use(None, OnDrift::Block, false).unwrap();
        let s = SessionPins::default();
        let many: Vec<Value> = (0..MAX_TOOLS + 2)
            .map(|i| json!({"name": format!("t{i}")}))
            .collect();
        let removed = s.learn(&guard, "srv", &many);
        assert_eq!(removed.iter().filter(|r| **r).count(), 2);
        assert_eq!(s.check_call("t0"), CallCheck::Pass);
        assert!(matches!(
            s.check_call("never_listed"),
            CallCheck::Refuse {
                rule: RULE_TOO_MANY,
                ..
            }
        ));
    }

    #[test]
    fn a_name_listed_twice_keeps_the_stricter_verdict() {
        let mut file = PinFile::default();
        let (_, def) = defs::definition(&tool("one")).unwrap();
        file.set("srv", "t", &def);
        let guard = PinGuard::new(
            PinSource::File("p".into()),
            file,
            OnDrift::Block,
            OnDrift::Block,
            false,
        );
        let s = SessionPins::default();
        s.learn(&guard, "srv", &[tool("evil"), tool("one")]);
        assert!(matches!(
            s.check_call("t"),
            CallCheck::Refuse {
                rule: RULE_CHANGED,
                ..
            }
        ));
    }
}
