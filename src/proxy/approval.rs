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
//! directory when flightrec creates it).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
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
    pub fn hold(&self, mut call: HeldCall) -> Option<(u64, Receiver<Answer>)> {
        if self.active.load(std::sync::atomic::Ordering::Acquire) >= MAX_HELD {
            return None;
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
        lock(&self.held).insert(
            id,
            Entry {
                call,
                since: Instant::now(),
                tx,
            },
        );
        Some((id, rx))
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
    /// thread. A socket file left by a dead process is replaced; one a live
    /// proxy answers on is not.
    pub fn serve(self: &Arc<Self>, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "{} is in use by another running proxy (give this one its own --approval-socket)",
                    path.display()
                ));
            }
            let _ = std::fs::remove_file(path);
        }
        // Owner-only from the start: no window in which others could connect.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        unsafe { libc::umask(old) };
        let listener = bound.map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
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
        let waiting: Vec<_> = (0..MAX_HELD)
            .map(|_| a.hold(call.clone()).expect("room"))
            .collect();
        assert!(a.hold(call.clone()).is_none());
        a.forget(waiting[0].0);
        a.done();
        assert!(a.hold(call).is_some());
    }
}
