//! The child-process upstream of the HTTP proxy: `flightrec proxy --listen
//! ADDR -- CMD ARGS…` serves a stdio MCP server at a URL.
//!
//! This file owns the server processes and nothing of HTTP or policy:
//! - the pool ([`ChildPool`]): one child per MCP session (2025-11-25, the
//!   proxy's own `Mcp-Session-Id`) and one per session key of stateless
//!   2026-07-28 clients (one per agent identity unless the client names an
//!   `X-Session-Id`), so that sessions of different agents never share a
//!   server process; at most `--max-children` at once (when full, the least
//!   recently used idle child is stopped; when none is idle, the caller
//!   refuses the request), idle ones stopped after `--child-idle-timeout`;
//! - each child ([`Child`]): spawned with an empty signal mask in a process
//!   group of its own (a terminal's Ctrl-C reaches the proxy, which stops
//!   its children in order), a writer thread for its stdin fed by a bounded
//!   queue (a message is one line: the line breaks JSON allows between
//!   tokens become spaces, so one body can never be read as two messages),
//!   a reader thread for its stdout with the stdio transport's bounded
//!   `read_frame` (`--max-response-bytes`);
//! - routing what the child writes: an answer goes to the request waiting
//!   for it by JSON-RPC id (a oneshot channel per request, at most
//!   `--max-concurrent` of them: the HTTP side holds a slot for each); a
//!   server request or notification goes through the session and into a
//!   bounded queue that the session's GET stream delivers (full: dropped,
//!   with a line on stderr); an answer nobody waits for (a request that
//!   timed out) is dropped;
//! - ends: a child that exits (or closes its stdout) fails every request in
//!   flight on it (their waits end; the HTTP side records `upstream_gone`)
//!   and leaves the pool, so its session id is unknown from then on (404:
//!   the client starts a new session, which gets a fresh child). DELETE,
//!   idle reaping, eviction and the proxy's stop send SIGTERM to the
//!   child's process group, SIGKILL after `--grace`.

use crate::proxy::gateway::lock;
use crate::proxy::jsonrpc::{self, Envelope};
use crate::proxy::session::Session;
use crate::proxy::stdio::{Frame, read_frame, server_command};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot};

/// How the children are started and bounded.
#[derive(Debug, Clone)]
pub struct ChildConfig {
    /// The server command and its arguments.
    pub command: Vec<String>,
    /// At most this many children at once (`--max-children`).
    pub max_children: usize,
    /// A child with no request in flight for this long is stopped
    /// (`--child-idle-timeout`).
    pub idle_timeout: Duration,
    /// Server messages longer than this are not delivered.
    pub max_response_bytes: usize,
    /// Between SIGTERM and SIGKILL when a child is stopped.
    pub grace: Duration,
}

/// Messages waiting for a session's GET stream: at most this many …
const MAX_QUEUED: usize = 256;
/// … and at most this many bytes (or one `--max-response-bytes` message).
const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;
/// Frames waiting to be written to one child's stdin.
const STDIN_QUEUE: usize = 64;

/// What a child answered to one request.
#[derive(Debug)]
pub enum Answer {
    Whole(Vec<u8>),
    /// Over `--max-response-bytes`: its first bytes and its length.
    TooLarge {
        head: Vec<u8>,
        len: usize,
    },
}

/// Why a request could not be sent to its child.
#[derive(Debug)]
pub enum SendError {
    /// The child exited or was stopped.
    Gone,
    /// A request with this id is already in flight on this child.
    Duplicate,
    /// The child did not take the message within the timeout.
    Stuck,
}

/// Why no child could be had for a request.
#[derive(Debug)]
pub enum BindError {
    /// `--max-children` are running and every one has a request in flight.
    Full(usize),
    Spawn(std::io::Error),
}

type Children = Arc<Mutex<HashMap<String, Arc<Child>>>>;

/// The running children by key (see [`ChildPool::session_key`] and
/// [`ChildPool::stateless_key`]).
pub struct ChildPool {
    config: ChildConfig,
    children: Children,
}

impl ChildPool {
    pub fn new(config: ChildConfig) -> ChildPool {
        ChildPool {
            config,
            children: Arc::default(),
        }
    }

    pub fn config(&self) -> &ChildConfig {
        &self.config
    }

    /// The key of the child of the MCP session `id`.
    pub fn session_key(id: &str) -> String {
        format!("mcp\u{1f}{id}")
    }

    /// The key of the child of a stateless client's session (the HTTP
    /// side's session key, which names the agent).
    pub fn stateless_key(session: &str) -> String {
        format!("stateless\u{1f}{session}")
    }

    /// A fresh MCP session id: 128 random bits as hex.
    pub fn new_session_id() -> std::io::Result<String> {
        use std::io::Read;
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(hex::encode(bytes))
    }

    /// The live child under `key` (marked used).
    pub fn get(&self, key: &str) -> Option<Arc<Child>> {
        let children = lock(&self.children);
        let child = children.get(key)?;
        if child.gone.load(Ordering::Acquire) {
            return None;
        }
        child.touch();
        Some(child.clone())
    }

    /// The child under `key`, spawned when there is none. When
    /// `--max-children` run, the least recently used idle one is stopped
    /// first; when none is idle, [`BindError::Full`].
    pub fn bind(&self, key: &str, session: &Arc<Session>) -> Result<Arc<Child>, BindError> {
        let mut children = lock(&self.children);
        if let Some(child) = children.get(key)
            && !child.gone.load(Ordering::Acquire)
        {
            child.touch();
            child.attach(session);
            return Ok(child.clone());
        }
        children.retain(|_, c| !c.gone.load(Ordering::Acquire));
        if children.len() >= self.config.max_children.max(1) {
            let lru = children
                .iter()
                .filter(|(_, c)| c.idle())
                .min_by_key(|(_, c)| *lock(&c.last_used))
                .map(|(k, _)| k.clone());
            match lru {
                Some(k) => {
                    if let Some(c) = children.remove(&k) {
                        c.stop(self.config.grace);
                    }
                }
                None => return Err(BindError::Full(self.config.max_children)),
            }
        }
        let child = Child::spawn(key, &self.config, self.children.clone(), session)
            .map_err(BindError::Spawn)?;
        children.insert(key.to_string(), child.clone());
        Ok(child)
    }

    /// Ends the child under `key` (DELETE of its session): whether there
    /// was one.
    pub fn end(&self, key: &str) -> bool {
        let child = lock(&self.children).remove(key);
        match child {
            Some(c) if !c.gone.load(Ordering::Acquire) => {
                c.stop(self.config.grace);
                true
            }
            _ => false,
        }
    }

    /// Stops children idle for `--child-idle-timeout` as of `now`.
    pub fn reap_idle(&self, now: Instant) {
        let timeout = self.config.idle_timeout;
        let mut children = lock(&self.children);
        let idle: Vec<String> = children
            .iter()
            .filter(|(_, c)| {
                c.gone.load(Ordering::Acquire)
                    || (c.idle() && now.saturating_duration_since(*lock(&c.last_used)) >= timeout)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in idle {
            if let Some(c) = children.remove(&k)
                && !c.gone.load(Ordering::Acquire)
            {
                c.stop(self.config.grace);
            }
        }
    }

    /// Stops every child (SIGTERM, SIGKILL after `--grace`) and waits, at
    /// most the grace period and a second, for them to be reaped.
    pub async fn stop_all(&self) {
        let all: Vec<Arc<Child>> = lock(&self.children).drain().map(|(_, c)| c).collect();
        for c in &all {
            c.stop(self.config.grace);
        }
        let deadline = tokio::time::Instant::now() + self.config.grace + Duration::from_secs(1);
        while all.iter().any(|c| !c.exited.load(Ordering::Acquire))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One server process.
pub struct Child {
    pid: u32,
    to_stdin: mpsc::Sender<Vec<u8>>,
    /// Requests waiting for their answer, by JSON-RPC id (canonical text).
    waiting: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    /// Exited, stopped or its stdout closed: takes nothing more.
    gone: AtomicBool,
    /// Stopped by the proxy (DELETE, reaping, eviction, stop).
    stopped: AtomicBool,
    /// Reaped.
    exited: AtomicBool,
    last_used: Mutex<Instant>,
    /// The session server requests and notifications go through.
    session: Mutex<Arc<Session>>,
    queue: Mutex<Queue>,
    queued: Notify,
    /// Which GET stream delivers the queue (a newer GET replaces it).
    stream: AtomicU64,
}

#[derive(Default)]
struct Queue {
    messages: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Child {
    fn spawn(
        key: &str,
        config: &ChildConfig,
        pool: Children,
        session: &Arc<Session>,
    ) -> std::io::Result<Arc<Child>> {
        let Some((program, args)) = config.command.split_first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no command given after --",
            ));
        };
        let mut command = server_command(program, args);
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let mut process = command.spawn()?;
        let stdin = process.stdin.take().expect("piped");
        let stdout = process.stdout.take().expect("piped");
        let (to_stdin, mut frames) = mpsc::channel::<Vec<u8>>(STDIN_QUEUE);
        let child = Arc::new(Child {
            pid: process.id(),
            to_stdin,
            waiting: Mutex::new(HashMap::new()),
            gone: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            last_used: Mutex::new(Instant::now()),
            session: Mutex::new(session.clone()),
            queue: Mutex::new(Queue::default()),
            queued: Notify::new(),
            stream: AtomicU64::new(0),
        });
        // The writer: one frame at a time, until the child stops reading
        // or every sender is gone.
        std::thread::spawn(move || {
            let mut stdin = stdin;
            while let Some(frame) = frames.blocking_recv() {
                if stdin.write_all(&frame).and_then(|_| stdin.flush()).is_err() {
                    return;
                }
            }
        });
        // The reader: answers to their requests, the rest to the session's
        // stream; at the end, the child's requests fail and it is reaped.
        let (reader, key, limit) = (child.clone(), key.to_string(), config.max_response_bytes);
        let grace = config.grace;
        std::thread::spawn(move || {
            let mut input = BufReader::with_capacity(64 * 1024, stdout);
            loop {
                match read_frame(&mut input, limit) {
                    Ok(Frame::Line(line)) => reader.route(line),
                    Ok(Frame::TooLong(len, head)) => reader.route_too_long(head, len, limit),
                    Ok(Frame::Eof) | Err(_) => break,
                }
            }
            reader.gone.store(true, Ordering::Release);
            {
                let mut children = lock(&pool);
                if children.get(&key).is_some_and(|c| Arc::ptr_eq(c, &reader)) {
                    children.remove(&key);
                }
            }
            // Every wait ends: the requests fail (`upstream_gone`).
            lock(&reader.waiting).clear();
            reader.queued.notify_waiters();
            if !reader.stopped.load(Ordering::Acquire) {
                eprintln!(
                    "flightrec: the MCP server (pid {}) exited; its session has ended",
                    reader.pid
                );
            }
            // Closed its stdout but still running: stopped like any other.
            if !matches!(process.try_wait(), Ok(Some(_))) {
                reader.signal(libc::SIGTERM);
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline && matches!(process.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if matches!(process.try_wait(), Ok(None)) {
                    reader.signal(libc::SIGKILL);
                }
                let _ = process.wait();
            }
            reader.exited.store(true, Ordering::Release);
        });
        Ok(child)
    }

    fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    /// No request in flight.
    fn idle(&self) -> bool {
        lock(&self.waiting).is_empty()
    }

    /// Server requests and notifications go through `session` from now on.
    pub fn attach(&self, session: &Arc<Session>) {
        let mut current = lock(&self.session);
        if !Arc::ptr_eq(&current, session) {
            *current = session.clone();
        }
    }

    /// Whether the proxy stopped it (rather than it exiting by itself).
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Sends `sig` to the child's process group.
    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the process group of a child this proxy
        // spawned (its own group: process_group(0)).
        unsafe {
            libc::kill(-(self.pid as i32), sig);
        }
    }

    /// SIGTERM now, SIGKILL after `grace` unless it has been reaped.
    fn stop(self: &Arc<Self>, grace: Duration) {
        self.stopped.store(true, Ordering::Release);
        self.gone.store(true, Ordering::Release);
        self.queued.notify_waiters();
        if self.exited.load(Ordering::Acquire) {
            // Reaped: its process group id may be reused; nothing to stop.
            return;
        }
        self.signal(libc::SIGTERM);
        let child = self.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if child.exited.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if !child.exited.load(Ordering::Acquire) {
                child.signal(libc::SIGKILL);
            }
        });
    }

    /// One message for the child's stdin, as one line.
    fn line(mut frame: Vec<u8>) -> Vec<u8> {
        // Outside strings, JSON allows line breaks only as whitespace (and
        // inside them not at all): as spaces, the message stays one line.
        for b in frame.iter_mut() {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
        frame.push(b'\n');
        frame
    }

    /// Writes a message that expects no answer (a notification, the
    /// client's answer to a server request), within `timeout`.
    pub async fn send(&self, frame: Vec<u8>, timeout: Duration) -> Result<(), SendError> {
        if self.gone.load(Ordering::Acquire) {
            return Err(SendError::Gone);
        }
        self.touch();
        match tokio::time::timeout(timeout, self.to_stdin.send(Self::line(frame))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SendError::Gone),
            Err(_) => Err(SendError::Stuck),
        }
    }

    /// Writes request `id` and returns where its answer will come; the
    /// wait ends without one when the child goes away.
    pub async fn request(
        &self,
        id: &str,
        frame: Vec<u8>,
        timeout: Duration,
    ) -> Result<oneshot::Receiver<Answer>, SendError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = lock(&self.waiting);
            if self.gone.load(Ordering::Acquire) {
                return Err(SendError::Gone);
            }
            if waiting.contains_key(id) {
                return Err(SendError::Duplicate);
            }
            waiting.insert(id.to_string(), tx);
        }
        if let Err(e) = self.send(frame, timeout).await {
            self.forget(id);
            return Err(e);
        }
        Ok(rx)
    }

    /// Request `id` is no longer waited for (it timed out): a late answer
    /// is dropped.
    pub fn forget(&self, id: &str) {
        lock(&self.waiting).remove(id);
    }

    /// Tells the child request `id` is cancelled (best effort: never waits
    /// for a child that does not read).
    pub fn cancel(&self, id: &str, reason: &str) {
        let _ = self
            .to_stdin
            .try_send(Self::line(jsonrpc::cancelled_frame(id, reason)));
    }

    /// One whole message from the child.
    fn route(&self, line: Vec<u8>) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let answer_to = serde_json::from_slice::<Envelope>(&line)
            .ok()
            .filter(Envelope::is_response)
            .and_then(|e| e.id_text());
        if let Some(id) = answer_to {
            match lock(&self.waiting).remove(&id) {
                Some(tx) => {
                    let _ = tx.send(Answer::Whole(line));
                }
                None => eprintln!(
                    "flightrec: dropped an answer from the MCP server (pid {}) to request {id}, which nothing waits for",
                    self.pid
                ),
            }
            return;
        }
        // A server request or notification: through the session (which
        // drops what the client could misread), to the session's stream.
        let session = lock(&self.session).clone();
        let action = session.gateway().pipeline(|| session.on_server_frame(line));
        if let Some(c) = action.completion {
            session.complete(c);
        }
        if let Some(send) = action.send {
            self.enqueue(send);
        }
    }

    /// A message over `--max-response-bytes`: the request it answers gets
    /// an error; anything else is dropped (with a line on stderr).
    fn route_too_long(&self, head: Vec<u8>, len: usize, limit: usize) {
        let waiter = jsonrpc::top_level_id(&head).and_then(|id| lock(&self.waiting).remove(&id));
        match waiter {
            Some(tx) => {
                let _ = tx.send(Answer::TooLarge { head, len });
            }
            None => eprintln!(
                "flightrec: dropped a {len}-byte frame from the MCP server (pid {}) (over the {limit}-byte limit; it answers no request in flight)",
                self.pid
            ),
        }
    }

    fn enqueue(&self, message: Vec<u8>) {
        let mut queue = lock(&self.queue);
        let max_bytes = MAX_QUEUED_BYTES.max(message.len());
        if queue.messages.len() >= MAX_QUEUED || queue.bytes + message.len() > max_bytes {
            eprintln!(
                "flightrec: dropped a {}-byte message from the MCP server (pid {}): its session's stream already holds {} messages (is its GET stream open?)",
                message.len(),
                self.pid,
                queue.messages.len()
            );
            return;
        }
        queue.bytes += message.len();
        queue.messages.push_back(message);
        drop(queue);
        self.queued.notify_waiters();
    }

    fn dequeue(&self) -> Option<Vec<u8>> {
        let mut queue = lock(&self.queue);
        let message = queue.messages.pop_front()?;
        queue.bytes -= message.len();
        Some(message)
    }

    /// The session's server-to-client stream (a GET): SSE events, one per
    /// queued message, until the child goes, the client leaves or a newer
    /// GET takes the stream over.
    pub fn open_stream(self: &Arc<Self>) -> mpsc::Receiver<Bytes> {
        let generation = self.stream.fetch_add(1, Ordering::AcqRel) + 1;
        self.queued.notify_waiters();
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let child = self.clone();
        tokio::spawn(async move {
            loop {
                let notified = child.queued.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if child.stream.load(Ordering::Acquire) != generation
                    || child.gone.load(Ordering::Acquire)
                {
                    return;
                }
                if let Some(message) = child.dequeue() {
                    let event = format!(
                        "event: message\ndata: {}\n\n",
                        String::from_utf8_lossy(&message).trim_end()
                    );
                    if tx.send(Bytes::from(event)).await.is_err() {
                        return;
                    }
                    continue;
                }
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tx.closed() => return,
                }
            }
        });
        rx
    }
}
