//! Human approvals: the calls held for an answer, the local approval
//! queue behind a Unix socket, and the authenticated `requestState` of the
//! 2026-07-28 input-required exchange.
//!
//! A held call is registered in [`Approvals`] with what a human needs to
//! judge it (tool, session, agent, redacted arguments, rule, reason) and a
//! channel its waiter blocks on. Whoever answers — the queue's `approve` /
//! `deny` over the socket, the client's elicitation answer, a cancellation,
//! the timeout — answers through [`Approvals::answer`]; the first answer
//! wins, later ones find nothing. Everything fails closed: a broken socket,
//! a malformed answer, a lost waiter all leave the call refused.
//!
//! The queue protocol (one request line of JSON per connection, answered
//! by lines of JSON, then the connection closes):
//! `{"op":"list"}` → one object per held call; `{"op":"approve","id":N,"as":"NAME"}`
//! and `{"op":"deny","id":N,"reason":"…","as":"NAME"}` → `{"ok":true}` or
//! `{"ok":false,"error":"…"}`. The socket is owner-only (0600, in a 0700
//! directory when flightrec creates it). Whoever can write the socket's
//! directory could put a socket of their own in its place and answer
//! approvals, so the queue opens only in a real directory (not a symlink)
//! owned by the effective user and writable by no one else, and replaces
//! only a stale socket of that user ([`ServeError::Unsafe`] otherwise).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a held call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Granted { by: String },
    Denied { by: String, reason: Option<String> },
    Timeout,
    Cancelled,
}

/// Who answered through the local queue, as rows name it: `queue:NAME`
/// (rows name the channel: `client:NAME` is the MCP client's dialog).
fn queue_answerer(by: Option<String>) -> String {
    format!("queue:{}", by.as_deref().unwrap_or("unknown"))
}

/// What a human sees of a held call (`approvals list`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeldCall {
    pub id: u64,
    pub tool: String,
    pub session: String,
    pub agent: String,
    /// The arguments after redaction, as JSON.
    pub args: serde_json::Value,
    pub rule: String,
    pub reason: String,
    pub waiting_ms: u64,
}

struct Entry {
    call: HeldCall,
    since: Instant,
    tx: SyncSender<Answer>,
}

/// At most this many calls wait for a human at once, process-wide; a call
/// over it is refused at once (fail closed).
pub const MAX_HELD: usize = 256;

/// At most this many of them are one agent's: one agent cannot take every
/// slot and so refuse every other agent's approvals.
pub const MAX_HELD_PER_AGENT: usize = MAX_HELD / 8;

/// Why a call could not be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldRefused {
    /// [`MAX_HELD`] calls wait already.
    Full,
    /// [`MAX_HELD_PER_AGENT`] calls of this agent wait already.
    AgentFull,
}

/// The calls waiting for a human, process-wide.
#[derive(Default)]
pub struct Approvals {
    held: Mutex<HashMap<u64, Entry>>,
    next: Mutex<u64>,
    /// Where the queue listens, once it does.
    socket: Mutex<Option<PathBuf>>,
    /// Held calls whose waiters have not finished (recorded their row).
    active: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Approvals {
    /// Registers a held call; returns its id and the channel its answer
    /// comes on, or `None` when [`MAX_HELD`] calls already wait (each
    /// waiting call holds a thread until it is answered or times out).
    pub fn hold(&self, mut call: HeldCall) -> Result<(u64, Receiver<Answer>), HoldRefused> {
        // Checked and counted under the queue's lock: holds racing each
        // other cannot pass the caps together.
        let mut held = lock(&self.held);
        if self.active.load(std::sync::atomic::Ordering::Acquire) >= MAX_HELD {
            return Err(HoldRefused::Full);
        }
        if held.values().filter(|e| e.call.agent == call.agent).count() >= MAX_HELD_PER_AGENT {
            return Err(HoldRefused::AgentFull);
        }
        let id = {
            let mut n = lock(&self.next);
            *n += 1;
            *n
        };
        call.id = id;
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let (tx, rx) = sync_channel(1);
        held.insert(
            id,
            Entry {
                call,
                since: Instant::now(),
                tx,
            },
        );
        Ok((id, rx))
    }

    /// Answers a held call; `Err` when no such call waits (answered,
    /// timed out, or never held).
    pub fn answer(&self, id: u64, answer: Answer) -> Result<(), String> {
        let entry = lock(&self.held)
            .remove(&id)
            .ok_or_else(|| format!("no held call with id {id}"))?;
        entry
            .tx
            .send(answer)
            .map_err(|_| format!("held call {id} is no longer waiting"))
    }

    /// Forgets a held call whose waiter gave up (timeout).
    pub fn forget(&self, id: u64) {
        lock(&self.held).remove(&id);
    }

    /// A waiter finished with its call (answered and recorded).
    pub fn done(&self) {
        self.active
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The proxy is stopping: every held call is answered as cancelled,
    /// and their waiters get up to `limit` to record their rows.
    pub fn cancel_all(&self, limit: Duration) {
        let ids: Vec<u64> = lock(&self.held).keys().copied().collect();
        for id in ids {
            let _ = self.answer(id, Answer::Cancelled);
        }
        let deadline = Instant::now() + limit;
        while self.active.load(std::sync::atomic::Ordering::Acquire) > 0
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The held calls, oldest first.
    pub fn list(&self) -> Vec<HeldCall> {
        let held = lock(&self.held);
        let mut v: Vec<HeldCall> = held
            .values()
            .map(|e| HeldCall {
                waiting_ms: e.since.elapsed().as_millis() as u64,
                ..e.call.clone()
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// The queue's socket, if it listens.
    pub fn socket(&self) -> Option<PathBuf> {
        lock(&self.socket).clone()
    }

    /// Opens the approval queue on `path` (owner-only) and serves it on a
    /// thread. A missing directory is made (0700); an existing one must be
    /// ours and writable by no one else. A socket of ours left by a dead
    /// process is replaced; one a live proxy answers on is not, nor is
    /// anything else in the socket's place.
    pub fn serve(self: &Arc<Self>, path: &Path) -> Result<(), ServeError> {
        use ServeError::{Unavailable, Unsafe};
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if std::fs::symlink_metadata(dir).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Unavailable(format!("cannot create {}: {e}", dir.display())))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Unavailable(format!("cannot restrict {}: {e}", dir.display())))?;
        }
        // Checked after making it too: someone may have made it first.
        check_socket_dir(dir)?;
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Unavailable(format!(
                    "cannot inspect {}: {e}",
                    path.display()
                )));
            }
            Ok(meta) => {
                let me = effective_uid();
                if !meta.file_type().is_socket() {
                    return Err(Unsafe(format!(
                        "{} already exists and is not a socket (it is {}); flightrec replaces only a stale approval socket of its own: remove it, or give --approval-socket another path",
                        path.display(),
                        kind_of(&meta)
                    )));
                }
                if meta.uid() != me {
                    return Err(Unsafe(format!(
                        "{} is a socket of uid {}, not of this user (uid {me}): whoever listens on it would answer the approvals; remove it, or give --approval-socket another path",
                        path.display(),
                        meta.uid()
                    )));
                }
                if UnixStream::connect(path).is_ok() {
                    return Err(Unavailable(format!(
                        "{} is in use by another running proxy (give this one its own --approval-socket)",
                        path.display()
                    )));
                }
                std::fs::remove_file(path).map_err(|e| {
                    Unavailable(format!("cannot remove the stale {}: {e}", path.display()))
                })?;
            }
        }
        // Owner-only from the start: no window in which others could connect.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        unsafe { libc::umask(old) };
        let listener = bound.map_err(|e| {
            ServeError::Unavailable(format!("cannot listen on {}: {e}", path.display()))
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            ServeError::Unavailable(format!("cannot restrict {}: {e}", path.display()))
        })?;
        *lock(&self.socket) = Some(path.to_path_buf());
        let me = self.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let me = me.clone();
                std::thread::spawn(move || me.serve_one(conn));
            }
        });
        Ok(())
    }

    fn serve_one(&self, conn: UnixStream) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut reader = BufReader::new(match conn.try_clone() {
            Ok(c) => c,
            Err(_) => return,
        });
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let mut out = conn;
        let reply = |out: &mut UnixStream, v: serde_json::Value| {
            let _ = writeln!(out, "{v}");
        };
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                return reply(
                    &mut out,
                    serde_json::json!({"ok": false, "error": format!("bad request: {e}")}),
                );
            }
        };
        match req {
            Request::List => {
                for c in self.list() {
                    reply(&mut out, serde_json::to_value(c).unwrap_or_default());
                }
            }
            Request::Approve { id, by } => {
                let r = self.answer(
                    id,
                    Answer::Granted {
                        by: queue_answerer(by),
                    },
                );
                reply(&mut out, result_json(r));
            }
            Request::Deny { id, by, reason } => {
                let r = self.answer(
                    id,
                    Answer::Denied {
                        by: queue_answerer(by),
                        reason,
                    },
                );
                reply(&mut out, result_json(r));
            }
        }
    }
}

fn result_json(r: Result<(), String>) -> serde_json::Value {
    match r {
        Ok(()) => serde_json::json!({"ok": true}),
        Err(e) => serde_json::json!({"ok": false, "error": e}),
    }
}

/// A request on the queue's socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    List,
    Approve {
        id: u64,
        #[serde(rename = "as", default)]
        by: Option<String>,
    },
    Deny {
        id: u64,
        #[serde(rename = "as", default)]
        by: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
}

/// Why the approval queue did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeError {
    /// The socket's directory, or something already at the socket's path,
    /// could let another user take the socket: never listened on, and
    /// always an error (for the default socket too).
    Unsafe(String),
    /// The socket could not be opened (in use by a live proxy, no such
    /// parent, …).
    Unavailable(String),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Unsafe(m) | ServeError::Unavailable(m) => f.write_str(m),
        }
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no failure mode.
    unsafe { libc::geteuid() }
}

/// What a file is, for messages.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "a symlink"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a FIFO"
    } else {
        "a device or other special file"
    }
}

/// The approval socket's directory must be a directory (not a symlink to
/// one), owned by the effective user, and not group- or world-writable:
/// whoever can write it could put their own socket in ours' place.
fn check_socket_dir(dir: &Path) -> Result<(), ServeError> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| ServeError::Unavailable(format!("cannot inspect {}: {e}", dir.display())))?;
    let me = effective_uid();
    let what_to_do = "give --approval-socket a path in a directory of your own (mode 0700), or remove it and let flightrec make it";
    if !meta.is_dir() {
        return Err(ServeError::Unsafe(format!(
            "the approval socket's directory {} is {}, not a directory: {what_to_do}",
            dir.display(),
            kind_of(&meta)
        )));
    }
    if meta.uid() != me {
        return Err(ServeError::Unsafe(format!(
            "the approval socket's directory {} belongs to uid {} (mode {:04o}), not to this user (uid {me}): its owner could replace the socket and answer approvals; {what_to_do}",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(ServeError::Unsafe(format!(
            "the approval socket's directory {} is group- or world-writable (mode {:04o}): others could replace the socket and answer approvals; chmod 700 it, or {what_to_do}",
            dir.display(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// The default socket: `$XDG_RUNTIME_DIR/flightrec/approvals.sock`, else
/// `/tmp/flightrec-UID/approvals.sock`.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("flightrec/approvals.sock"),
        None => {
            // SAFETY: getuid has no failure mode.
            let uid = unsafe { libc::getuid() };
            PathBuf::from(format!("/tmp/flightrec-{uid}/approvals.sock"))
        }
    }
}

/// Sends one request to a running proxy's queue; returns its reply lines.
pub fn client_request(socket: &Path, req: &Request) -> Result<Vec<serde_json::Value>, String> {
    let mut conn = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach a proxy's approval queue at {}: {e}",
            socket.display()
        )
    })?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    writeln!(conn, "{line}").map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for l in BufReader::new(conn).lines() {
        let l = l.map_err(|e| e.to_string())?;
        out.push(serde_json::from_str(&l).map_err(|e| format!("bad reply {l:?}: {e}"))?);
    }
    Ok(out)
}

/// The HMAC-SHA256 key that authenticates `requestState` tokens: random per
/// process (a restart invalidates outstanding ones: they fail closed).
pub struct StateKey([u8; 32]);

impl StateKey {
    pub fn random() -> StateKey {
        let mut key = [0u8; 32];
        let filled = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key));
        if filled.is_err() {
            // No urandom: mix what is unpredictable enough across processes.
            let mut h = Sha256::new();
            h.update(uuid::Uuid::now_v7().as_bytes());
            h.update(std::process::id().to_le_bytes());
            h.update(format!("{:?}", Instant::now()).as_bytes());
            key.copy_from_slice(&h.finalize());
        }
        StateKey(key)
    }

    /// HMAC-SHA256 (RFC 2104) of `msg`.
    pub fn mac(&self, msg: &[u8]) -> [u8; 32] {
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, k) in self.0.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let inner = Sha256::new()
            .chain_update(ipad)
            .chain_update(msg)
            .finalize();
        Sha256::new()
            .chain_update(opad)
            .chain_update(inner)
            .finalize()
            .into()
    }
}

/// What a `requestState` binds: the approval is for this call only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateClaims {
    /// Format version.
    pub v: u32,
    /// Session id.
    pub s: String,
    /// Tool name.
    pub t: String,
    /// SHA-256 of the canonical arguments.
    pub a: String,
    /// SHA-256 of the policy that asked.
    pub p: String,
    /// Issued and expiry times, ms since the Unix epoch.
    pub i: u64,
    pub e: u64,
    /// A nonce: each state is good for one retry.
    pub n: String,
}

const STATE_PREFIX: &str = "flightrec1.";

/// Seals claims into an opaque `requestState`: `flightrec1.` + hex(JSON) +
/// `.` + hex(HMAC).
pub fn seal(key: &StateKey, claims: &StateClaims) -> String {
    let body = crate::audit::chain::to_hex(
        serde_json::to_string(claims)
            .expect("claims serialize")
            .as_bytes(),
    );
    let mac = crate::audit::chain::to_hex(&key.mac(body.as_bytes()));
    format!("{STATE_PREFIX}{body}.{mac}")
}

/// Whether a `requestState` is one of ours (others belong to the server).
pub fn is_ours(state: &str) -> bool {
    state.starts_with(STATE_PREFIX)
}

/// Opens a `requestState`: the claims if the MAC holds (constant-time
/// compare), else why not.
pub fn open(key: &StateKey, state: &str) -> Result<StateClaims, &'static str> {
    let rest = state
        .strip_prefix(STATE_PREFIX)
        .ok_or("not a flightrec state")?;
    let (body, mac) = rest.split_once('.').ok_or("malformed")?;
    let expected = crate::audit::chain::to_hex(&key.mac(body.as_bytes()));
    let same = expected.len() == mac.len()
        && expected
            .bytes()
            .zip(mac.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err("forged or altered");
    }
    let bytes = (0..body.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(body.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| "malformed")?;
    serde_json::from_slice(&bytes).map_err(|_| "malformed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> StateClaims {
        StateClaims {
            v: 1,
            s: "s".into(),
            t: "copy".into(),
            a: "ab".into(),
            p: "cd".into(),
            i: 1,
            e: 2,
            n: "n".into(),
        }
    }

    #[test]
    fn states_open_with_their_key_only_and_resist_edits() {
        let key = StateKey::random();
        let sealed = seal(&key, &claims());
        assert!(is_ours(&sealed));
        assert_eq!(open(&key, &sealed), Ok(claims()));
        assert_eq!(open(&StateKey::random(), &sealed), Err("forged or altered"));
        // Another tool in the body, the MAC left as it was.
        let mut other = claims();
        other.t = "delete".into();
        let forged_body = seal(&key, &other);
        let (_, mac) = sealed.rsplit_once('.').unwrap();
        let (body, _) = forged_body.rsplit_once('.').unwrap();
        assert_eq!(
            open(&key, &format!("{body}.{mac}")),
            Err("forged or altered")
        );
        assert!(open(&key, "flightrec1.zz.00").is_err());
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        // Key "Jefe" (padded), data "what do ya want for nothing?".
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(b"Jefe");
        // RFC 4231 uses the 4-byte key; zero padding to the block size gives
        // the same HMAC, and so does padding to 32 bytes.
        let mac = StateKey(k).mac(b"what do ya want for nothing?");
        assert_eq!(
            crate::audit::chain::to_hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_first_answer_wins() {
        let a = Approvals::default();
        let call = HeldCall {
            id: 0,
            tool: "t".into(),
            session: "s".into(),
            agent: "a".into(),
            args: serde_json::json!({}),
            rule: "r".into(),
            reason: "why".into(),
            waiting_ms: 0,
        };
        let (id, rx) = a.hold(call.clone()).unwrap();
        assert_eq!(a.list().len(), 1);
        a.answer(id, Answer::Granted { by: "me".into() }).unwrap();
        assert!(a.answer(id, Answer::Cancelled).is_err());
        assert_eq!(rx.recv().unwrap(), Answer::Granted { by: "me".into() });
        assert!(a.list().is_empty());
        a.done();
        // Bounded: past MAX_HELD waiting calls, a new one is refused, and
        // room comes back as waiters finish.
        let of = |agent: &str| HeldCall {
            agent: agent.to_string(),
            ..call.clone()
        };
        // One agent gets at most its share.
        let bobs: Vec<_> = (0..MAX_HELD_PER_AGENT)
            .map(|_| a.hold(of("bob")).expect("room"))
            .collect();
        assert_eq!(a.hold(of("bob")).err(), Some(HoldRefused::AgentFull));
        assert!(a.hold(of("carol")).is_ok(), "others still get theirs");
        a.forget(bobs[0].0);
        a.done();
        assert!(a.hold(of("bob")).is_ok(), "room again once one ends");
        // And all agents together at most MAX_HELD.
        let mut n = 0;
        while a.hold(of(&format!("agent-{n}"))).is_ok() {
            n += 1;
            assert!(n <= MAX_HELD);
        }
        assert_eq!(
            a.hold(of("dave")).err(),
            Some(HoldRefused::Full),
            "{n} more held"
        );
    }

    fn serve_in(path: &Path) -> Result<(), String> {
        Arc::new(Approvals::default())
            .serve(path)
            .map_err(|e| e.to_string())
    }

    fn mode(dir: &Path, mode: u32) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_socket_directory_others_can_write_is_refused() {
        for m in [0o777, 0o770, 0o730, 0o1777, 0o702] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("q");
            std::fs::create_dir(&dir).unwrap();
            mode(&dir, m);
            let err = serve_in(&dir.join("approvals.sock")).unwrap_err();
            assert!(
                err.contains(&dir.display().to_string()) && err.contains(&format!("{m:o}")),
                "{m:o}: {err}"
            );
            assert!(
                !dir.join("approvals.sock").exists(),
                "{m:o}: listened anyway"
            );
        }
    }

    #[test]
    fn a_socket_directory_of_another_user_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("q");
        std::fs::create_dir(&dir).unwrap();
        mode(&dir, 0o700);
        if std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).is_err() {
            eprintln!("skipped: cannot chown (not root)");
            return;
        }
        let err = serve_in(&dir.join("approvals.sock")).unwrap_err();
        assert!(
            err.contains(&dir.display().to_string()) && err.contains("65534"),
            "{err}"
        );
    }

    #[test]
    fn a_symlink_in_place_of_the_socket_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        mode(&real, 0o700);
        let link = tmp.path().join("q");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = serve_in(&link.join("approvals.sock")).unwrap_err();
        assert!(
            err.contains(&link.display().to_string()) && err.contains("symlink"),
            "{err}"
        );
        assert!(!real.join("approvals.sock").exists());
    }

    #[test]
    fn only_a_stale_socket_of_ours_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("q");
        std::fs::create_dir(&dir).unwrap();
        mode(&dir, 0o700);
        // Not a socket: a file, a directory, a symlink to a socket.
        let file = dir.join("file.sock");
        std::fs::write(&file, "x").unwrap();
        let err = serve_in(&file).unwrap_err();
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"x", "the file was removed");
        let sub = dir.join("dir.sock");
        std::fs::create_dir(&sub).unwrap();
        assert!(serve_in(&sub).is_err());
        let stale = dir.join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&stale, &link).unwrap();
        let err = serve_in(&link).unwrap_err();
        assert!(err.contains(&link.display().to_string()), "{err}");
        // A socket someone else left: refused, and left in place.
        let theirs = dir.join("theirs.sock");
        drop(UnixListener::bind(&theirs).unwrap());
        if std::os::unix::fs::lchown(&theirs, Some(65534), Some(65534)).is_ok() {
            let err = serve_in(&theirs).unwrap_err();
            assert!(
                err.contains(&theirs.display().to_string()) && err.contains("65534"),
                "{err}"
            );
            assert!(theirs.exists());
        }
        // A stale socket of ours (its process gone) is replaced.
        serve_in(&stale).unwrap();
        assert!(UnixStream::connect(&stale).is_ok());
        // A live one is not.
        let err = serve_in(&stale).unwrap_err();
        assert!(err.contains("in use"), "{err}");
    }

    #[test]
    fn a_directory_of_ours_is_used_and_a_missing_one_made_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("q");
        std::fs::create_dir(&dir).unwrap();
        mode(&dir, 0o755);
        serve_in(&dir.join("approvals.sock")).unwrap();
        let made = tmp.path().join("a/b");
        serve_in(&made.join("approvals.sock")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&made).unwrap().mode() & 0o777, 0o700);
    }
}
