//! The stdio proxy: the client launches `flightrec proxy … -- CMD`, which
//! spawns CMD and sits between the two, newline-delimited JSON-RPC both ways.
//!
//! Client → server: every frame is forwarded byte for byte except
//! `tools/call` requests the policy refuses (answered here with an `isError`
//! tool result naming the rule) and frames that are not JSON or too long
//! (answered with a JSON-RPC error). Server → client: forwarded byte for byte
//! except `tools/list` results, from which tools the policy always refuses
//! are removed. Every client request becomes one audit row, written when its
//! outcome is known; a `tools/call` the policy allows is journaled before it
//! is forwarded.

use crate::audit::args::{RedactPattern, args_sha256, canonical_json, redact};
use crate::audit::schema::{AuditRow, ShadowDecision, new_uuid_v7};
use crate::audit::{Recorder, RecorderConfig};
use crate::policy::{Call, Category, Decision, Policy, PolicyState, Reservation, Verdict};
use crate::proxy::jsonrpc::{self, Envelope, ToolCallParams};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::process::{Child, ChildStdin, Command};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How the proxy was started.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub policy_path: PathBuf,
    pub audit_dir: Option<PathBuf>,
    pub agent: Option<String>,
    pub server_name: Option<String>,
    pub shadow_paths: Vec<PathBuf>,
    pub redact: Vec<RedactPattern>,
    pub max_message_bytes: usize,
    pub grace: Duration,
    /// When the audit journal is forced to disk.
    pub sync: crate::audit::journal::SyncMode,
    pub command: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("cannot start the MCP server `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A client request waiting for the server's answer.
struct Pending {
    row: AuditRow,
    started: Instant,
    /// Counter reservations of an allowed call, settled by its outcome.
    reservation: Option<Reservation>,
    /// Journaled with `Recorder::begin` (allowed tool calls).
    begun: bool,
    tools_list: bool,
}

struct Live {
    policy: RwLock<Arc<Policy>>,
    policy_path: PathBuf,
    state: Mutex<PolicyState>,
    shadows: Vec<(Policy, Mutex<PolicyState>)>,
    recorder: Option<Mutex<Recorder>>,
    redact: Vec<RedactPattern>,
    session_id: String,
    agent_flag: Option<String>,
    client: Mutex<(Option<String>, Option<String>)>,
    server: Mutex<String>,
    server_fixed: bool,
    categories: Mutex<HashMap<String, Category>>,
    pending: Mutex<HashMap<String, Pending>>,
    /// The client's stdout: forwarded and synthesized frames, one at a time.
    out: Mutex<std::io::Stdout>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not stop the proxy from serving or recording.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Category from the tool's name when the server gave no annotations and
/// the policy's `categories:` map says nothing.
pub fn name_heuristic(tool: &str) -> Category {
    let t = tool.to_ascii_lowercase();
    if ["get_", "list_", "describe_", "search_", "read_"]
        .iter()
        .any(|p| t.starts_with(p))
    {
        Category::Read
    } else if ["delete_", "remove_", "purge_", "destroy_", "drop_"]
        .iter()
        .any(|p| t.starts_with(p))
    {
        Category::Destructive
    } else {
        Category::Write
    }
}

impl Live {
    fn agent(&self) -> String {
        if let Some(a) = &self.agent_flag {
            return a.clone();
        }
        lock(&self.client)
            .0
            .clone()
            .unwrap_or_else(|| "unknown".into())
    }

    fn base_row(&self, method: &str, id: Option<String>, request_bytes: usize) -> AuditRow {
        let (client_name, client_version) = lock(&self.client).clone();
        AuditRow {
            event_id: new_uuid_v7(),
            ts_us: crate::time::now_us(),
            session_id: self.session_id.clone(),
            agent_id: self.agent(),
            client_name,
            client_version,
            server: lock(&self.server).clone(),
            transport: "stdio".into(),
            method: method.into(),
            jsonrpc_id: id,
            policy_sha256: self
                .policy
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .sha256
                .clone(),
            request_bytes: request_bytes as u64,
            ..AuditRow::default()
        }
    }

    fn send(&self, frame: Vec<u8>) {
        let mut out = lock(&self.out);
        let _ = out.write_all(&frame).and_then(|_| out.flush());
    }

    /// Records a finished row; a failing audit log is reported, never silent.
    fn record(&self, row: AuditRow) {
        if let Some(r) = &self.recorder
            && let Err(e) = lock(r).record(row)
        {
            eprintln!("flightrec: AUDIT LOG ERROR: {e}");
        }
    }

    fn finish(&self, mut p: Pending, update: impl FnOnce(&mut AuditRow)) {
        p.row.latency_us = Some(p.started.elapsed().as_micros() as u64);
        update(&mut p.row);
        match (&self.recorder, p.begun) {
            (Some(r), true) => {
                let row = p.row;
                if let Err(e) = lock(r).complete(&row.event_id.clone(), move |x| *x = row) {
                    eprintln!("flightrec: AUDIT LOG ERROR: {e}");
                }
            }
            _ => self.record(p.row),
        }
    }
}

/// What the supervising thread waits for.
enum Event {
    ChildExited(std::io::Result<std::process::ExitStatus>),
    ClientGone,
    Signal(i32),
}

/// Runs the proxy until the client or the server goes away; returns the
/// exit code (the server's).
///
/// One thread per direction does all the work for a frame (read, decide,
/// record, write), so a call crosses no thread or runtime handoff: the added
/// latency is the proxy's own work plus the journal write.
pub fn run(config: ProxyConfig) -> Result<i32, ProxyError> {
    let policy = Policy::load(&config.policy_path)?;
    let mut shadows = Vec::new();
    for p in &config.shadow_paths {
        let sp = Policy::load(p)?;
        let st = Mutex::new(PolicyState::new(&sp));
        shadows.push((sp, st));
    }
    let recorder = match &config.audit_dir {
        Some(d) => {
            let r = Recorder::open(
                d,
                RecorderConfig {
                    sync: config.sync,
                    ..RecorderConfig::default()
                },
            )?;
            crate::cli::report_recovery_public(&r);
            Some(Mutex::new(r))
        }
        None => None,
    };
    let Some((program, args)) = config.command.split_first() else {
        return Err(ProxyError::Spawn {
            command: String::new(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no command given after --",
            ),
        });
    };
    // Signals go to a dedicated thread (sigwait); block them everywhere
    // else, including in the threads spawned below. The child gets its own
    // mask reset by exec's default handling: we unblock in pre_exec.
    let signals = block_signals();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    unsafe_reset_signal_mask(&mut command);
    let mut child: Child = command.spawn().map_err(|source| ProxyError::Spawn {
        command: config.command.join(" "),
        source,
    })?;
    let child_stdin = child.stdin.take().expect("piped");
    let child_stdout = child.stdout.take().expect("piped");
    let pid = child.id();
    let server_default = config.server_name.clone().unwrap_or_else(|| {
        std::path::Path::new(program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let live = Arc::new(Live {
        state: Mutex::new(PolicyState::new(&policy)),
        policy: RwLock::new(Arc::new(policy)),
        policy_path: config.policy_path.clone(),
        shadows,
        recorder,
        redact: config.redact.clone(),
        session_id: new_uuid_v7(),
        agent_flag: config.agent.clone(),
        client: Mutex::new((None, None)),
        server: Mutex::new(server_default),
        server_fixed: config.server_name.is_some(),
        categories: Mutex::new(HashMap::new()),
        pending: Mutex::new(HashMap::new()),
        out: Mutex::new(std::io::stdout()),
    });

    let (events, inbox) = mpsc::channel::<Event>();
    let max = config.max_message_bytes;
    let from_server = {
        let live = live.clone();
        std::thread::spawn(move || server_loop(&live, SpinReader::new(child_stdout, SPIN), max))
    };
    {
        let live = live.clone();
        let events = events.clone();
        std::thread::spawn(move || {
            // The client's next request comes whenever it likes: no spinning.
            client_loop(
                &live,
                SpinReader::new(std::io::stdin(), Duration::ZERO),
                child_stdin,
                max,
            );
            let _ = events.send(Event::ClientGone);
        });
    }
    {
        let events = events.clone();
        std::thread::spawn(move || {
            let _ = events.send(Event::ChildExited(child.wait()));
        });
    }
    if let Some(set) = signals {
        let events = events.clone();
        std::thread::spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: sigwait on a signal set we initialised.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    return;
                }
                if events.send(Event::Signal(sig)).is_err() {
                    return;
                }
            }
        });
    }
    // Reload when the policy file changes (editors save by rename: compare
    // the modification time and size).
    {
        let live = live.clone();
        std::thread::spawn(move || {
            let stamp = |p: &std::path::Path| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.modified().ok(), m.len()))
            };
            let mut last = stamp(&live.policy_path);
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let now = stamp(&live.policy_path);
                if now.is_some() && now != last {
                    last = now;
                    reload(&live);
                }
            }
        });
    }

    let mut client_gone = false;
    let status = loop {
        match inbox.recv() {
            Ok(Event::ChildExited(s)) => break s?,
            Ok(Event::ClientGone) => {
                // The server sees EOF on its stdin; it gets the grace period.
                client_gone = true;
                break wait_or_kill(&inbox, pid, None, config.grace)?;
            }
            Ok(Event::Signal(libc::SIGHUP)) => reload(&live),
            Ok(Event::Signal(sig)) => break wait_or_kill(&inbox, pid, Some(sig), config.grace)?,
            Err(_) => {
                return Err(ProxyError::Io(std::io::Error::other(
                    "supervisor channel closed",
                )));
            }
        }
    };
    // The server is gone: its remaining output is drained, then every request
    // still waiting gets an error and a row.
    let _ = from_server.join();
    let waiting: Vec<(String, Pending)> = lock(&live.pending).drain().collect();
    for (_, p) in waiting {
        let id: Option<Box<serde_json::value::RawValue>> = p
            .row
            .jsonrpc_id
            .as_deref()
            .and_then(|t| serde_json::value::RawValue::from_string(t.to_string()).ok());
        live.send(jsonrpc::error_frame(
            id.as_deref(),
            -32603,
            "flightrec: the MCP server exited before answering",
        ));
        if let Some(res) = p.reservation.clone() {
            lock(&live.state).settle(res, false);
        }
        let outcome = if client_gone {
            "interrupted"
        } else {
            "upstream_gone"
        };
        live.finish(p, |r| r.outcome = outcome.into());
    }
    if let Some(r) = &live.recorder {
        let mut r = lock(r);
        r.rotate()?;
        r.sync()?;
    }
    Ok(exit_code(status))
}

/// Waits for the child to exit after the client left or a signal arrived
/// (forwarded to it), killing it after the grace period.
fn wait_or_kill(
    inbox: &mpsc::Receiver<Event>,
    pid: u32,
    sig: Option<i32>,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    if let Some(sig) = sig {
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
    let deadline = Instant::now() + grace;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match inbox.recv_timeout(left) {
            Ok(Event::ChildExited(s)) => return s,
            Ok(_) => continue,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
                loop {
                    if let Ok(Event::ChildExited(s)) = inbox.recv() {
                        return s;
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(std::io::Error::other("the child waiter stopped"));
            }
        }
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread (and the threads it
/// spawns) so that one thread can `sigwait` for them.
fn block_signals() -> Option<libc::sigset_t> {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        (libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) == 0).then_some(set)
    }
}

/// The child must not inherit the blocked mask.
fn unsafe_reset_signal_mask(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: pre_exec runs in the forked child before exec; it only calls
    // async-signal-safe functions on a local set.
    unsafe {
        command.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Reloads the policy file; an invalid file is reported and the old policy
/// stays. Counters of unchanged rules carry over.
fn reload(live: &Live) {
    match Policy::load(&live.policy_path) {
        Ok(new) => {
            let old = live
                .policy
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let mut state = lock(&live.state);
            let migrated = state.migrate(&old, &new);
            *state = migrated;
            *live.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
            eprintln!("flightrec: policy {} reloaded", live.policy_path.display());
        }
        Err(e) => eprintln!("flightrec: policy reload failed, keeping the previous policy:\n{e}"),
    }
}

enum Frame {
    Line(Vec<u8>),
    TooLong(usize),
    Eof,
}

/// Reads one newline-terminated frame, refusing (and skipping) frames over
/// `max` bytes without buffering them.
/// How long a reader thread polls for the next frame before it sleeps in
/// the kernel: the answer to a forwarded request usually arrives within
/// microseconds, and a sleeping thread's wake-up costs more than that.
const SPIN: Duration = Duration::from_micros(60);

/// Waits until `fd` is readable: polls without sleeping for up to `spin`,
/// then blocks.
fn wait_readable(fd: std::os::fd::RawFd, spin: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let start = Instant::now();
    loop {
        // SAFETY: poll(2) on one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n != 0 || start.elapsed() >= spin {
            break;
        }
        std::hint::spin_loop();
    }
    if pfd.revents == 0 {
        // SAFETY: as above; -1 waits until the fd is readable or closed.
        unsafe {
            libc::poll(&mut pfd, 1, -1);
        }
    }
}

/// A buffered reader that spins briefly before blocking (see [`SPIN`]).
struct SpinReader<R: std::io::Read + std::os::fd::AsRawFd> {
    inner: BufReader<R>,
    fd: std::os::fd::RawFd,
    spin: Duration,
}

impl<R: std::io::Read + std::os::fd::AsRawFd> SpinReader<R> {
    fn new(r: R, spin: Duration) -> Self {
        let fd = r.as_raw_fd();
        SpinReader {
            inner: BufReader::with_capacity(64 * 1024, r),
            fd,
            spin,
        }
    }
}

impl<R: std::io::Read + std::os::fd::AsRawFd> std::io::Read for SpinReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.inner.buffer().is_empty() {
            wait_readable(self.fd, self.spin);
        }
        self.inner.read(buf)
    }
}

impl<R: std::io::Read + std::os::fd::AsRawFd> BufRead for SpinReader<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.inner.buffer().is_empty() {
            wait_readable(self.fd, self.spin);
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt)
    }
}

fn read_frame<R: BufRead>(r: &mut R, max: usize) -> std::io::Result<Frame> {
    let mut line = Vec::new();
    let mut too_long = 0usize;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(if too_long > 0 {
                Frame::TooLong(too_long)
            } else if line.is_empty() {
                Frame::Eof
            } else {
                Frame::Line(line)
            });
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let n = chunk.len();
        if too_long > 0 || line.len() + n > max + 1 {
            too_long += line.len() + n;
            line.clear();
        } else {
            line.extend_from_slice(chunk);
        }
        r.consume(n);
        if done {
            return Ok(if too_long > 0 {
                Frame::TooLong(too_long)
            } else {
                Frame::Line(line)
            });
        }
    }
}

fn client_loop<R: BufRead>(live: &Live, mut input: R, mut to_server: ChildStdin, max: usize) {
    loop {
        let frame = match read_frame(&mut input, max) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("flightrec: reading from the client failed: {e}");
                return;
            }
        };
        let line = match frame {
            Frame::Eof => return,
            Frame::TooLong(n) => {
                live.send(jsonrpc::error_frame(
                    None,
                    -32600,
                    &format!("flightrec: message of {n} bytes exceeds --max-message-bytes ({max})"),
                ));
                let mut row = live.base_row("<invalid>", None, n);
                row.decision = "deny".into();
                row.rule = Some("(message too large)".into());
                row.outcome = "not_forwarded".into();
                live.record(row);
                continue;
            }
            Frame::Line(l) => l,
        };
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let env: Envelope = match serde_json::from_slice(&line) {
            Ok(e) => e,
            Err(e) => {
                live.send(jsonrpc::error_frame(
                    None,
                    -32700,
                    &format!("Parse error: {e}"),
                ));
                let mut row = live.base_row("<invalid>", None, line.len());
                row.decision = "deny".into();
                row.rule = Some("(parse error)".into());
                row.reason = Some(e.to_string());
                row.outcome = "not_forwarded".into();
                row.error_code = Some(-32700);
                live.record(row);
                continue;
            }
        };
        let mut forward = true;
        if env.is_request() {
            let method = env.method.clone().unwrap_or_default();
            if let Some((name, version)) = jsonrpc::client_info(&method, env.params) {
                *lock(&live.client) = (Some(name), version);
            }
            let id = env.id_text();
            let modern = jsonrpc::speaks_2026(env.params);
            if method == "tools/call" {
                forward = handle_call(live, &env, id, line.len(), modern);
            } else if let Some(id) = id {
                let row = live.base_row(&method, Some(id.clone()), line.len());
                lock(&live.pending).insert(
                    id,
                    Pending {
                        row,
                        started: Instant::now(),
                        reservation: None,
                        begun: false,
                        tools_list: method == "tools/list",
                    },
                );
            }
        }
        if forward {
            let mut line = line;
            if line.last() != Some(&b'\n') {
                line.push(b'\n');
            }
            if to_server
                .write_all(&line)
                .and_then(|_| to_server.flush())
                .is_err()
            {
                return;
            }
        }
    }
}

/// Decides a `tools/call`; returns whether to forward it.
fn handle_call(
    live: &Live,
    env: &Envelope<'_>,
    id: Option<String>,
    bytes: usize,
    modern: bool,
) -> bool {
    let params: Option<ToolCallParams> =
        env.params.and_then(|p| serde_json::from_str(p.get()).ok());
    let Some(params) = params else {
        live.send(jsonrpc::error_frame(
            env.id,
            -32602,
            "flightrec: tools/call needs params with a tool `name`",
        ));
        let mut row = live.base_row("tools/call", id, bytes);
        row.decision = "deny".into();
        row.rule = Some("(invalid request)".into());
        row.outcome = "not_forwarded".into();
        live.record(row);
        return false;
    };
    let mut row = live.base_row("tools/call", id.clone(), bytes);
    let policy = live
        .policy
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let known = lock(&live.categories).get(&params.name).copied();
    let call = Call {
        ts_us: row.ts_us,
        session: &row.session_id,
        agent: &row.agent_id,
        server: &row.server,
        tool: &params.name,
        category: Some(known.unwrap_or_else(|| name_heuristic(&params.name))),
        risk: None,
        args: &params.arguments,
    };
    let (category, risk) = policy.classify(&params.name, call.category, None);
    let decision: Decision = policy.decide(&mut lock(&live.state), &call);
    let shadow: Vec<ShadowDecision> = live
        .shadows
        .iter()
        .map(|(p, st)| {
            let mut st = lock(st);
            let d = p.decide(&mut st, &call);
            st.settle(d.reservation, false);
            ShadowDecision {
                policy_sha256: p.sha256.clone(),
                decision: d.verdict.as_str().into(),
                rule: d.rule.as_deref().map(str::to_string),
            }
        })
        .collect();
    let (redacted, _) = redact(&params.arguments, &live.redact);
    row.tool = Some(params.name.clone());
    row.category = Some(category.as_str().into());
    row.risk = Some(risk.as_str().into());
    row.args_json = Some(canonical_json(&redacted));
    row.args_sha256 = Some(args_sha256(&params.arguments));
    row.decision = decision.verdict.as_str().into();
    row.rule = decision.rule.as_deref().map(str::to_string);
    row.reason = decision.message.as_deref().map(str::to_string);
    row.retry_after_ms = decision.retry_after_ms;
    row.shadow = shadow;
    if decision.verdict == Verdict::Allow {
        // Journaled before forwarding: a crash from here on leaves a row.
        if let Some(r) = &live.recorder
            && let Err(e) = lock(r).begin(row.clone())
        {
            lock(&live.state).roll_back(decision.reservation);
            eprintln!("flightrec: AUDIT LOG ERROR, refusing the call (fail closed): {e}");
            live.send(jsonrpc::refusal_frame(
                env.id,
                "[flightrec] refused: the audit log cannot be written, so the call is not forwarded",
                json!({"decision": "deny", "rule": "(audit unavailable)"}),
                modern,
            ));
            return false;
        }
        if let Some(id) = id {
            lock(&live.pending).insert(
                id,
                Pending {
                    row,
                    started: Instant::now(),
                    reservation: Some(decision.reservation),
                    begun: live.recorder.is_some(),
                    tools_list: false,
                },
            );
        }
        return true;
    }
    let mut text = format!(
        "[flightrec] {} by policy rule \"{}\": {}",
        match decision.verdict {
            Verdict::Deny => "denied",
            Verdict::Throttle => "throttled",
            Verdict::Approval => "requires approval",
            Verdict::Allow => "allowed",
        },
        decision.rule.as_deref().unwrap_or(""),
        decision.message.as_deref().unwrap_or("")
    );
    if let Some(ms) = decision.retry_after_ms {
        text.push_str(&format!(" Retry after {ms} ms."));
    }
    if decision.verdict == Verdict::Approval {
        text.push_str(" No approval channel is configured, so the call is refused.");
    }
    live.send(jsonrpc::refusal_frame(
        env.id,
        &text,
        json!({"decision": decision.verdict.as_str(), "rule": decision.rule.as_deref(), "message": decision.message.as_deref(), "retry_after_ms": decision.retry_after_ms}),
        modern,
    ));
    row.outcome = "not_forwarded".into();
    live.record(row);
    false
}

fn server_loop<R: BufRead>(live: &Live, mut input: R, max: usize) {
    loop {
        let line = match read_frame(&mut input, max.max(64 * 1024 * 1024)) {
            Ok(Frame::Line(l)) => l,
            Ok(Frame::TooLong(n)) => {
                eprintln!("flightrec: dropped a {n}-byte frame from the server (too large)");
                continue;
            }
            Ok(Frame::Eof) | Err(_) => return,
        };
        let Ok(env) = serde_json::from_slice::<Envelope>(&line) else {
            live.send(line);
            continue;
        };
        let pending = match env.id_text() {
            Some(id) if env.is_response() => lock(&live.pending).remove(&id),
            _ => None,
        };
        let Some(p) = pending else {
            live.send(line);
            continue;
        };
        // What later requests depend on is learned before the client can
        // send them: the server's name from a handshake result.
        if !live.server_fixed
            && matches!(p.row.method.as_str(), "initialize" | "server/discover")
            && let Some(name) = env.result.and_then(jsonrpc::server_name)
        {
            *lock(&live.server) = name;
        }
        // The client gets its answer first; the row is completed (chained and
        // journaled) right after. The call itself was journaled before it was
        // forwarded, so a crash in between still leaves its row.
        if p.tools_list {
            let rewritten = filter_tools_list(live, &env);
            live.send(rewritten.unwrap_or_else(|| line.clone()));
        } else {
            live.send(line.clone());
        }
        complete(live, p, &env, line.len());
    }
}

/// Completes a request's row from the server's answer.
fn complete(live: &Live, p: Pending, env: &Envelope<'_>, bytes: usize) {
    let (mut outcome, mut code, mut message) = ("ok".to_string(), None, None);
    if let Some(err) = env.error {
        let v: Value = serde_json::from_str(err.get()).unwrap_or(Value::Null);
        outcome = "rpc_error".into();
        code = v.get("code").and_then(Value::as_i64);
        message = v.get("message").and_then(Value::as_str).map(str::to_string);
    } else if let Some(result) = env.result
        && p.row.method == "tools/call"
        && let Ok(r) = serde_json::from_str::<jsonrpc::ToolResultHead>(result.get())
        && r.is_error == Some(true)
    {
        outcome = "tool_error".into();
        message = r.first_text().map(|s| s.chars().take(500).collect());
    }
    if let Some(res) = p.reservation.clone() {
        // As in Intercept: only a JSON-RPC error proves the call never ran.
        lock(&live.state).settle(res, outcome == "rpc_error");
    }
    live.finish(p, |r| {
        r.outcome = outcome;
        r.error_code = code;
        r.error_message = message;
        r.response_bytes = bytes as u64;
    });
}

/// Learns categories from annotations and removes tools the policy always
/// refuses. Returns `None` when nothing changes (the original bytes go out).
fn filter_tools_list(live: &Live, env: &Envelope<'_>) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_str(env.result?.get()).ok()?;
    let policy = live
        .policy
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let tools = v.get_mut("tools")?.as_array_mut()?;
    {
        let mut cats = lock(&live.categories);
        for t in tools.iter() {
            let Some(name) = t.get("name").and_then(Value::as_str) else {
                continue;
            };
            if let Some(a) = t.get("annotations").filter(|a| a.is_object()) {
                let flag = |k: &str| a.get(k).and_then(Value::as_bool) == Some(true);
                let c = if flag("readOnlyHint") {
                    Category::Read
                } else if flag("destructiveHint") {
                    Category::Destructive
                } else {
                    Category::Write
                };
                cats.insert(name.to_string(), c);
            }
        }
    }
    let before = tools.len();
    tools.retain(|t| {
        t.get("name")
            .and_then(Value::as_str)
            .is_none_or(|n| !policy.always_refuses(n))
    });
    if tools.len() == before {
        return None;
    }
    let id: Value = env
        .id
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(Value::Null);
    let mut out = serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "result": v})).ok()?;
    out.push(b'\n');
    Some(out)
}
