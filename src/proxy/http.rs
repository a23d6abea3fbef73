//! The Streamable HTTP transport: `flightrec proxy --listen ADDR --upstream
//! URL` is a reverse proxy in front of an MCP server that speaks Streamable
//! HTTP, for both protocol generations.
//!
//! This file owns only what is HTTP's: listening, admission (identity,
//! methods, origins, headers, media types, session ownership), choosing the
//! session a request belongs to, checking the 2026-07-28
//! `Mcp-Method`/`Mcp-Name` headers against the body, size limits, the
//! upstream client, and reading and writing JSON and SSE bodies. What
//! happens to each JSON-RPC message is the [`Session`]'s business, exactly
//! as on stdio.
//!
//! Admission, before a body is read or anything forwarded, whatever the
//! method: with `--tokens`, one valid bearer token (else 401 and a row);
//! POST, GET or DELETE only (else 405, `Allow: GET, POST, DELETE`); an
//! `Origin`, when present, the listener's loopback one or an
//! `--allow-origin` (else 403); no duplicated identity or protocol header,
//! text where text is expected, session ids of 1 to 256 visible ASCII
//! characters (else 400); a POST body as `application/json` in UTF-8, not
//! content-coded (else 415); with `--tokens`, an `Mcp-Session-Id` issued to
//! this agent (else 404). Refused POSTs are recorded (method `<unread>`).
//!
//! - `POST`: the body is one JSON-RPC message. The session decides; a
//!   refusal is answered here (as JSON, or as an SSE stream when the client
//!   accepts only that); a forwarded request's answer (JSON, or an SSE
//!   stream whose events are read one by one) goes back through the session
//!   (`tools/list` filtering, rows), notifications in the stream pass in
//!   order. A client that leaves an SSE answer does not end the call: the
//!   stream is read on until the answer arrives (within the upstream
//!   timeout), so its row records the real outcome.
//! - `GET` (the server's stream) and `DELETE` (end of session) carry no
//!   body and are forwarded, answers streamed back.
//!
//! Sessions: the upstream's `Mcp-Session-Id` when the request carries one;
//! else the client's `X-Session-Id` (with `--tokens`, `agent:AGENT/ID`: a
//! client-chosen id stays in its agent's scope); else one session per agent
//! (stateless 2026-07-28 clients). Agent: the bearer token's (with
//! `--tokens`, which identity headers cannot override), else `X-Agent-Id`,
//! else the client's name.

use crate::audit::Recorder;
use crate::policy::Outcome;
use crate::proxy::ProxyError;
use crate::proxy::body::{Bounded, collect_bounded};
use crate::proxy::child::{Child, ChildConfig, ChildPool};
use crate::proxy::gateway::{Gateway, GatewayConfig, lock};
use crate::proxy::jsonrpc::{self, Envelope};
use crate::proxy::session::{ClientAction, Session, Transport};
use crate::proxy::sse::{Event, Events, ambiguous_event, data_head, split_event};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

mod command;
use command::{child_for, child_stream_or_end, forward_to_child, is_initialize};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// How the HTTP proxy was started.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub gateway: GatewayConfig,
    pub audit_dir: Option<PathBuf>,
    /// When the audit journal is forced to disk.
    pub sync: crate::audit::journal::SyncMode,
    pub listen: SocketAddr,
    /// Where forwarded messages go.
    pub upstream: Upstream,
    /// `AGENT TOKEN` lines: the bearer token decides the agent.
    pub tokens: Option<PathBuf>,
    /// Request bodies longer than this are refused (413).
    pub max_body_bytes: usize,
    /// Connecting to the upstream and getting its answer.
    pub upstream_timeout: Duration,
    /// Upstream answers (a JSON body, one SSE event) longer than this are
    /// not delivered: the request gets -32603, its row
    /// `response_too_large`.
    pub max_response_bytes: usize,
    /// At most this many requests to the upstream at once.
    pub max_concurrent: usize,
    /// How long a connection may take to send a request's headers, counted
    /// from when it starts waiting for them (idle keep-alive included).
    pub header_timeout: Duration,
    /// How long a POST may take to send its body (then 408).
    pub body_timeout: Duration,
    /// At most this many client connections at once.
    pub max_connections: usize,
    /// At most this many sessions kept.
    pub max_sessions: usize,
    /// Browser origins allowed besides the listener's own loopback ones
    /// (`--allow-origin`).
    pub allow_origins: Vec<WebOrigin>,
}

/// Where the HTTP proxy forwards messages.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// An MCP server speaking Streamable HTTP, e.g.
    /// `http://127.0.0.1:8000/mcp`.
    Http(Uri),
    /// A stdio MCP server command, one process per session
    /// ([`crate::proxy::child`]).
    Command(ChildConfig),
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Http(uri) => write!(f, "{uri}"),
            Upstream::Command(c) => write!(f, "{} (a process per session)", c.command.join(" ")),
        }
    }
}

/// A web origin as a browser names it in `Origin`: scheme, host and port
/// (`--allow-origin http://localhost:3000`). Scheme and host compare
/// without case; a missing port is the scheme's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebOrigin {
    scheme: String,
    host: String,
    port: u16,
}

impl WebOrigin {
    /// `http://HOST:PORT`.
    fn http(host: &str, port: u16) -> WebOrigin {
        WebOrigin {
            scheme: "http".into(),
            host: host.into(),
            port,
        }
    }
}

impl std::str::FromStr for WebOrigin {
    type Err = String;

    fn from_str(text: &str) -> Result<WebOrigin, String> {
        let shape = || {
            format!(
                "`{}`: expected an origin, SCHEME://HOST[:PORT] with scheme http or https and no path (e.g. http://localhost:3000)",
                text.escape_debug()
            )
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(shape)?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(shape()),
        };
        if rest.is_empty()
            || rest
                .chars()
                .any(|c| matches!(c, '/' | '?' | '#' | '@' | '\\') || !c.is_ascii_graphic())
        {
            return Err(shape());
        }
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (inner, after) = v6.split_once(']').ok_or_else(shape)?;
                let port = match after {
                    "" => None,
                    p => Some(p.strip_prefix(':').ok_or_else(shape)?),
                };
                (format!("[{}]", inner.to_ascii_lowercase()), port)
            }
            None => match rest.split_once(':') {
                Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
                None => (rest.to_ascii_lowercase(), None),
            },
        };
        if host.is_empty() || host == "[]" {
            return Err(shape());
        }
        let port = match port {
            None => default_port,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| shape())?
            }
            Some(_) => return Err(shape()),
        };
        Ok(WebOrigin { scheme, host, port })
    }
}

impl std::fmt::Display for WebOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// With `--tokens`, a client-chosen `X-Session-Id` V is the session
/// `agent:AGENT/V`; agent names cannot contain this character, so no
/// agent's session id can equal another's.
const SCOPE_SEPARATOR: char = '/';

/// Longest `Mcp-Session-Id` or `X-Session-Id` accepted, in bytes.
const MAX_SESSION_ID: usize = 256;

/// Bearer tokens, kept as their SHA-256 (a lookup by hash does not compare
/// secrets byte by byte).
struct Tokens(HashMap<[u8; 32], String>);

impl Tokens {
    fn load(path: &Path) -> Result<Tokens, ProxyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ProxyError::Config(format!("--tokens {}: {e}", path.display())))?;
        let mut map = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((agent, token)) = line.split_once(char::is_whitespace) else {
                return Err(ProxyError::Config(format!(
                    "--tokens {}:{}: expected `AGENT TOKEN` (or `AGENT sha256:HEX`)",
                    path.display(),
                    n + 1
                )));
            };
            if let Some(bad) = agent
                .chars()
                .find(|c| *c == SCOPE_SEPARATOR || c.is_control())
            {
                return Err(ProxyError::Config(format!(
                    "--tokens {}:{}: agent name `{}` may not contain {bad:?} (`{SCOPE_SEPARATOR}` separates an agent's name from its session names)",
                    path.display(),
                    n + 1,
                    agent.escape_debug()
                )));
            }
            let token = token.trim();
            let hash: [u8; 32] = match token.strip_prefix("sha256:") {
                Some(hex_text) => {
                    let mut h = [0u8; 32];
                    hex::decode_to_slice(hex_text, &mut h).map_err(|e| {
                        ProxyError::Config(format!("--tokens {}:{}: {e}", path.display(), n + 1))
                    })?;
                    h
                }
                None => Sha256::digest(token.as_bytes()).into(),
            };
            if let Some(other) = map.insert(hash, agent.to_string())
                && other != agent
            {
                return Err(ProxyError::Config(format!(
                    "--tokens {}:{}: this token is also `{other}`'s: one token, one agent",
                    path.display(),
                    n + 1
                )));
            }
        }
        Ok(Tokens(map))
    }

    fn agent(&self, token: &str) -> Option<&str> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.0.get(&hash).map(String::as_str)
    }
}

struct Shared {
    gateway: Arc<Gateway>,
    config: HttpConfig,
    tokens: Option<Tokens>,
    client: Client<HttpConnector, ProxyBody>,
    sessions: Mutex<Sessions>,
    slots: tokio::sync::Semaphore,
    in_flight: AtomicUsize,
    /// Numbers the POST exchanges (the scope their request waits under).
    exchanges: AtomicUsize,
    server_guess: String,
    /// Origins a request may name: the listener's loopback ones and
    /// `--allow-origin`.
    origins: Vec<WebOrigin>,
    /// With `--tokens`: which agent the upstream issued each
    /// `Mcp-Session-Id` to.
    issued: Mutex<Issued>,
    /// How many rows refusals without an authenticated agent may write.
    unauthenticated_rows: Mutex<RowBudget>,
    /// With a command upstream: its processes.
    children: Option<Arc<ChildPool>>,
}

/// Rows for refusals no authenticated agent stands behind (a missing or
/// bad token, or any refusal without `--tokens`): anyone who can reach the
/// port can send them as fast as the network allows, and each would be a
/// journaled, fsynced row. At most [`RowBudget::BURST`] at once and
/// [`RowBudget::PER_SECOND`] a second get a row each; the rest are counted
/// and said in the next row written (and in one at the stop), so none goes
/// unrecorded and the log does not drown.
struct RowBudget {
    tokens: f64,
    last: Instant,
    /// Refusals since the last row, not recorded one by one.
    suppressed: u64,
}

impl RowBudget {
    const BURST: f64 = 200.0;
    const PER_SECOND: f64 = 20.0;

    fn new(now: Instant) -> RowBudget {
        RowBudget {
            tokens: Self::BURST,
            last: now,
            suppressed: 0,
        }
    }

    /// `Some(n)`: write a row, saying `n` earlier refusals had none;
    /// `None`: this refusal is counted, not recorded on its own.
    fn take(&mut self, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * Self::PER_SECOND).min(Self::BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// The upstream's `Mcp-Session-Id`s and the agent each was issued to (the
/// agent whose request's answer carried it). Only that agent may use it;
/// an id the proxy never saw issued is unknown (404: the client starts a
/// new session, as the transport prescribes).
#[derive(Default)]
struct Issued {
    map: HashMap<String, (String, Instant)>,
}

/// At most this many issued ids are remembered; past it, ids idle for
/// [`IDLE`] are forgotten first, then the least recently used.
const MAX_ISSUED: usize = 65_536;

impl Issued {
    /// Whether `id` was issued to `agent` (and marks it used).
    fn owned_by(&mut self, id: &str, agent: &str, now: Instant) -> bool {
        match self.map.get_mut(id) {
            Some((owner, last)) if owner == agent => {
                *last = now;
                true
            }
            _ => false,
        }
    }

    /// The upstream issued `id` to `agent`; an id already issued keeps its
    /// first owner.
    fn issue(&mut self, id: &str, agent: &str, now: Instant) {
        if self.map.contains_key(id) {
            return;
        }
        if self.map.len() >= MAX_ISSUED {
            self.map
                .retain(|_, (_, last)| now.saturating_duration_since(*last) < IDLE);
        }
        if self.map.len() >= MAX_ISSUED
            && let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, last))| *last)
                .map(|(k, _)| k.clone())
        {
            self.map.remove(&oldest);
        }
        self.map.insert(id.to_string(), (agent.to_string(), now));
    }
}

/// One POST's request, as the upstream call needs it.
struct Exchange {
    scope: String,
    /// The scoped key its request waits under.
    request_id: Option<String>,
    wants_json: bool,
    agent: Option<String>,
    /// With a command upstream: the child the request goes to.
    child: Option<Arc<Child>>,
    /// A session the proxy issued for this `initialize` (its id goes back
    /// in `Mcp-Session-Id`).
    new_session: Option<String>,
}

/// Runs the HTTP proxy until SIGTERM or SIGINT; in-flight requests are
/// drained and the audit log flushed before it returns.
pub fn run(config: HttpConfig) -> Result<i32, ProxyError> {
    if config.tokens.is_none() && !config.listen.ip().is_loopback() {
        return Err(ProxyError::Config(format!(
            "refusing to listen on {} without --tokens: anyone who can reach it could call your tools; listen on 127.0.0.1 or ::1, or give --tokens FILE",
            config.listen
        )));
    }
    let tokens = config.tokens.as_deref().map(Tokens::load).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(config, tokens))
}

async fn serve(config: HttpConfig, tokens: Option<Tokens>) -> Result<i32, ProxyError> {
    // Signal handlers first: the audit journal starts a thread of its own,
    // and a stop signal must never take its default action.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let recorder: Option<Recorder> = crate::proxy::gateway::open_recorder(
        config.audit_dir.as_deref(),
        config.sync,
        config.gateway.rotate_age,
    )?;
    let gateway = Arc::new(Gateway::new(config.gateway.clone(), recorder)?);
    gateway.open_approval_queue()?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let local = listener.local_addr()?;
    let port = local.port();
    let mut origins = vec![
        WebOrigin::http("127.0.0.1", port),
        WebOrigin::http("localhost", port),
        WebOrigin::http("[::1]", port),
    ];
    origins.extend(config.allow_origins.iter().cloned());
    let server_guess = match &config.upstream {
        Upstream::Http(uri) => uri.authority().map(|a| a.to_string()).unwrap_or_default(),
        Upstream::Command(c) => c
            .command
            .first()
            .and_then(|p| Path::new(p).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let children = match &config.upstream {
        Upstream::Command(c) => Some(Arc::new(ChildPool::new(c.clone()))),
        Upstream::Http(_) => None,
    };
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let shared = Arc::new(Shared {
        slots: tokio::sync::Semaphore::new(config.max_concurrent.max(1)),
        gateway: gateway.clone(),
        tokens,
        client,
        sessions: Mutex::new(Sessions::with_cap(config.max_sessions)),
        in_flight: AtomicUsize::new(0),
        exchanges: AtomicUsize::new(0),
        server_guess,
        origins,
        issued: Mutex::new(Issued::default()),
        unauthenticated_rows: Mutex::new(RowBudget::new(Instant::now())),
        children,
        config,
    });
    if let Some(pool) = shared.children.clone() {
        // Children idle for --child-idle-timeout are stopped.
        let tick = (pool.config().idle_timeout / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                pool.reap_idle(Instant::now());
            }
        });
    }
    gateway.watch_policy_file();
    eprintln!(
        "flightrec: listening on http://{local}/ → {}",
        shared.config.upstream
    );
    let connections = Arc::new(tokio::sync::Semaphore::new(
        shared.config.max_connections.max(1),
    ));
    let mut backoff = Backoff::default();
    let mut over_cap = Burst::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => {
                        backoff.reset();
                        stream
                    }
                    Err(e) => {
                        // Out of file descriptors (EMFILE, ENFILE) or
                        // another accept failure: wait before trying
                        // again instead of spinning.
                        let wait = backoff.next();
                        if backoff.first() {
                            eprintln!(
                                "flightrec: accepting a connection on {local} failed: {e}; retrying in {wait:?} (and backing off up to {:?})",
                                Backoff::MAX
                            );
                        }
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                };
                // Over --max-connections: accepted and closed at once.
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    if over_cap.first(Instant::now()) {
                        eprintln!(
                            "flightrec: {} connections are open (--max-connections); closing new ones until one ends",
                            shared.config.max_connections
                        );
                    }
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let header_timeout = shared.config.header_timeout;
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = hup.recv() => gateway.reload_and_report(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Stop accepting; held calls end (cancelled, recorded); let requests
    // in flight finish (bounded), then flush.
    drop(listener);
    let approvals = gateway.approvals().clone();
    let _ = tokio::task::spawn_blocking(move || approvals.cancel_all(Duration::from_secs(2))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while shared.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (session, _) in lock(&shared.sessions).map.values() {
        session.abandon_all(Outcome::Interrupted, "flightrec: the proxy is stopping");
    }
    if let Some(pool) = &shared.children {
        pool.stop_all().await;
    }
    let suppressed = std::mem::take(&mut lock(&shared.unauthenticated_rows).suppressed);
    if suppressed > 0 {
        let session = shared.gateway.session(
            Transport::Http,
            Some("unauthenticated".into()),
            shared.server_guess.clone(),
        );
        session.refuse_unread(
            0,
            "(unrecorded refusals)",
            -32001,
            &format!(
                "flightrec: {suppressed} more request(s) without an authenticated agent were refused without a row of their own (more than {} a second)",
                RowBudget::PER_SECOND
            ),
        );
    }
    gateway.close()?;
    Ok(0)
}

/// The wait before retrying a failed `accept`: 10 ms doubling to 1 s,
/// back to 10 ms after a success.
#[derive(Default)]
struct Backoff {
    /// The next wait; zero when the last accept succeeded.
    wait: Duration,
    /// Failures in a row.
    failures: u32,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn next(&mut self) -> Duration {
        self.failures += 1;
        let wait = self.wait.max(Self::MIN);
        self.wait = (wait * 2).min(Self::MAX);
        wait
    }

    /// The failure just counted is the first of its burst (said once).
    fn first(&self) -> bool {
        self.failures == 1
    }

    fn reset(&mut self) {
        self.wait = Duration::ZERO;
        self.failures = 0;
    }
}

/// Says something once per burst: again only after a quiet minute.
#[derive(Default)]
struct Burst(Option<Instant>);

impl Burst {
    fn first(&mut self, now: Instant) -> bool {
        let first = self
            .0
            .is_none_or(|last| now.saturating_duration_since(last) > Duration::from_secs(60));
        self.0 = Some(now);
        first
    }
}

/// Counts a request in flight for the graceful stop.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    let _counted = InFlight::new(&shared.in_flight);
    let post = req.method() == Method::POST;
    // Identity before anything else, whatever the method: a request without
    // a valid token gets no further (its body is never read, no session is
    // made for it), and its refusal is recorded.
    let token_agent = match &shared.tokens {
        Some(tokens) => match authenticate(tokens, req.headers()) {
            Ok(agent) => Some(agent.to_string()),
            Err(refusal) => return refuse(&shared, None, true, req.headers(), refusal),
        },
        None => None,
    };
    // The Streamable HTTP transport has three methods; nothing else is
    // forwarded.
    if !matches!(*req.method(), Method::POST | Method::GET | Method::DELETE) {
        let refusal = Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "(method not allowed)",
            format!(
                "flightrec: {} is not a Streamable HTTP method (GET, POST, DELETE)",
                printable(req.method().as_str())
            ),
        );
        let mut r = refuse(
            &shared,
            token_agent.as_deref(),
            false,
            req.headers(),
            refusal,
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            HeaderValue::from_static("GET, POST, DELETE"),
        );
        return r;
    }
    if let Err(refusal) = admit(&shared, req.headers(), post) {
        return refuse(
            &shared,
            token_agent.as_deref(),
            post,
            req.headers(),
            refusal,
        );
    }
    let agent = match &shared.tokens {
        Some(_) => token_agent,
        None => text_header(req.headers(), "x-agent-id").map(str::to_string),
    };
    // With tokens, an upstream session belongs to the agent it was issued
    // to; any other id (another agent's, or one this proxy never saw
    // issued) is unknown to this agent.
    if let Some(agent) = shared.tokens.as_ref().and(agent.as_deref())
        && let Some(id) = header(req.headers(), "mcp-session-id")
        && !lock(&shared.issued).owned_by(id, agent, Instant::now())
    {
        let refusal = Refusal::new(
            StatusCode::NOT_FOUND,
            "(unknown session)",
            format!("flightrec: session {id} is not one of this agent's: start a new session"),
        );
        return refuse(&shared, Some(agent), post, req.headers(), refusal);
    }
    // With a command upstream, the proxy issues session ids: one whose
    // child is gone (or that was never issued) is unknown.
    if let Some(pool) = &shared.children
        && let Some(id) = header(req.headers(), "mcp-session-id")
        && pool.get(&ChildPool::session_key(id)).is_none()
    {
        let refusal = Refusal::new(
            StatusCode::NOT_FOUND,
            "(unknown session)",
            format!("flightrec: session {id} has ended or is unknown: start a new session"),
        );
        return refuse(&shared, agent.as_deref(), post, req.headers(), refusal);
    }
    if !post {
        // GET opens the server's stream, DELETE ends a session: neither
        // carries a message, so neither may carry a body a server would read.
        if !req.body().is_end_stream() {
            let refusal = Refusal::new(
                StatusCode::BAD_REQUEST,
                "(body not allowed)",
                format!("flightrec: a {} request carries no body", req.method()),
            );
            return refuse(&shared, agent.as_deref(), false, req.headers(), refusal);
        }
        let ended = match (req.method(), header(req.headers(), "mcp-session-id")) {
            (&Method::DELETE, Some(id)) => Some(id.to_string()),
            _ => None,
        };
        if let Some(id) = &ended {
            lock(&shared.sessions)
                .map
                .retain(|k, _| !k.ends_with(&format!("\u{1f}mcp:{id}")));
        }
        let response = pass_through(&shared, req).await;
        if let Some(id) = ended
            && response.status().is_success()
        {
            lock(&shared.issued).map.remove(&id);
        }
        return response;
    }
    let mut session = session_for(&shared, req.headers(), agent.as_deref());
    session.set_agent(agent.clone());
    let mut headers = req.headers().clone();
    let frame = match read_body(&shared, req).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            let n = shared.config.max_body_bytes;
            let answer = session.on_oversized_client_frame(n + 1, n);
            return json_response(StatusCode::PAYLOAD_TOO_LARGE, answer);
        }
        Err(BodyError::Read) => {
            return plain(
                StatusCode::BAD_REQUEST,
                "flightrec: could not read the body",
            );
        }
        Err(BodyError::Timeout) => return body_timed_out(&shared),
    };
    if let Some(mismatch) = header_mismatch(&headers, &frame) {
        let answer = session.reject(&frame, "(header mismatch)", -32020, &mismatch);
        return json_response(StatusCode::BAD_REQUEST, answer);
    }
    // A command upstream: an `initialize` starts a session the proxy issues.
    let new_session = match &shared.children {
        Some(_) if header(&headers, "mcp-session-id").is_none() && is_initialize(&frame) => {
            let Ok(id) = ChildPool::new_session_id() else {
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "flightrec: no randomness for a session id",
                );
            };
            headers.insert("mcp-session-id", HeaderValue::from_str(&id).expect("hex"));
            session = session_for(&shared, &headers, agent.as_deref());
            session.set_agent(agent.clone());
            Some(id)
        }
        _ => None,
    };
    if over_session_cap(&shared, &session) {
        return too_many_sessions(&shared, &session, &frame);
    }
    let child = match &shared.children {
        Some(pool) => {
            match child_for(&shared, pool, &headers, agent.as_deref(), &session, &frame) {
                Ok(child) => Some(child),
                Err(refused) => return *refused,
            }
        }
        None => None,
    };
    if let (Some(id), Some(agent)) = (&new_session, shared.tokens.as_ref().and(agent.as_deref())) {
        lock(&shared.issued).issue(id, agent, Instant::now());
    }
    let wants_json =
        accepts(&headers, "application/json") || !accepts(&headers, "text/event-stream");
    // Every POST is its own exchange: its request waits under a scope of
    // its own, so clients sharing a session may reuse ids. A child serves
    // one session, whose ids are unique (as on stdio: scope "").
    let scope = match child {
        Some(_) => String::new(),
        None => shared.exchanges.fetch_add(1, Ordering::Relaxed).to_string(),
    };
    let request_id = serde_json::from_slice::<Envelope>(&frame)
        .ok()
        .and_then(|e| e.id_text())
        .map(|id| match child {
            Some(_) => id,
            None => format!("{scope}\u{1f}{id}"),
        });
    // A client that takes an SSE answer can be asked in band (the proxy's
    // own request goes first on the stream).
    let streams = accepts(&headers, "text/event-stream");
    let mut action = shared
        .gateway
        .pipeline(|| session.on_client_frame_with(&scope, frame, streams));
    if let ClientAction::Hold(mut held) = action {
        if let Some(ask) = held.ask.take() {
            // Asked in the client (2025-11-25): the answer is an SSE stream
            // that carries the proxy's own request first, then the call's
            // result once the client has answered (on another POST).
            let exchange = Exchange {
                scope,
                request_id,
                wants_json: false,
                agent,
                child,
                new_session,
            };
            return held_stream(shared.clone(), session, headers, ask, *held, exchange);
        }
        // Held for a human (the local queue asks): the POST waits for the
        // answer on a blocking thread, other requests go on.
        let waiting = session.clone();
        action = tokio::task::spawn_blocking(move || waiting.wait_held(*held))
            .await
            .unwrap_or(ClientAction::Ignore);
    }
    match action {
        ClientAction::Respond(answer) => {
            if wants_json {
                json_response(StatusCode::OK, answer)
            } else {
                sse_response(StatusCode::OK, answer)
            }
        }
        ClientAction::Ignore | ClientAction::Hold(_) => empty(StatusCode::ACCEPTED),
        ClientAction::Forward(body) => {
            let exchange = Exchange {
                scope,
                request_id,
                wants_json,
                agent,
                child,
                new_session,
            };
            // A client that leaves does not cancel a call already on its way
            // to the server: the exchange runs here (no task hand-off on the
            // common path), and if hyper drops it because the client left, it
            // is finished on a task of its own, so that its row records what
            // the server did (and a stop waits for it).
            let (shared, session) = (shared.clone(), session.clone());
            FinishOnDrop::new(async move {
                let _counted = InFlight::new(&shared.in_flight);
                forward_post(&shared, &session, &headers, body, exchange).await
            })
            .await
        }
    }
}

/// A future run where it is awaited, which, dropped before it finished (a
/// client that left: hyper drops its request's future), is finished on a
/// task of its own instead of being cancelled. Awaiting it directly costs
/// no task hand-off (a spawned task awaited through its handle added about
/// 180 µs to the median call on the 2-core project machine: see
/// docs/performance.md).
struct FinishOnDrop<F: Future<Output = T> + Send + 'static, T: Send + 'static>(Option<Pin<Box<F>>>);

impl<F: Future<Output = T> + Send + 'static, T: Send + 'static> FinishOnDrop<F, T> {
    fn new(future: F) -> Self {
        FinishOnDrop(Some(Box::pin(future)))
    }
}

impl<F: Future<Output = T> + Send + 'static, T: Send + 'static> Future for FinishOnDrop<F, T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let future = self.0.as_mut().expect("polled after it finished");
        match future.as_mut().poll(cx) {
            Poll::Ready(v) => {
                self.0 = None;
                Poll::Ready(v)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<F: Future<Output = T> + Send + 'static, T: Send + 'static> Drop for FinishOnDrop<F, T> {
    fn drop(&mut self) {
        if let Some(rest) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(rest);
        }
    }
}

/// Why a request is refused before its body is read.
struct Refusal {
    status: StatusCode,
    rule: &'static str,
    code: i64,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, rule: &'static str, message: String) -> Refusal {
        Refusal {
            status,
            rule,
            code: -32600,
            message,
        }
    }
}

/// Answers a request refused on its headers (the body unread) with the
/// refusal's status and a JSON-RPC error; `record`: the refusal also gets
/// an audit row (method `<unread>`), in the agent's own session scope
/// (`agent:AGENT`; `unauthenticated` when no token was valid).
fn refuse(
    shared: &Shared,
    agent: Option<&str>,
    record: bool,
    headers: &HeaderMap,
    refusal: Refusal,
) -> Response<ProxyBody> {
    let Refusal {
        status,
        rule,
        code,
        message,
    } = refusal;
    let budget = match (record, agent) {
        (true, None) => lock(&shared.unauthenticated_rows).take(Instant::now()),
        _ => Some(0),
    };
    let answer = if let (true, Some(suppressed)) = (record, budget) {
        let message = if suppressed > 0 {
            format!(
                "{message} ({suppressed} earlier request(s) without an authenticated agent were refused without a row of their own: more than {} a second)",
                RowBudget::PER_SECOND
            )
        } else {
            message
        };
        let id = match agent {
            Some(agent) => format!("agent:{agent}"),
            None if shared.tokens.is_some() => "unauthenticated".to_string(),
            None => "agent:anonymous".to_string(),
        };
        let session =
            shared
                .gateway
                .session(Transport::Http, Some(id), shared.server_guess.clone());
        session.set_agent(agent.map(str::to_string));
        let bytes = header(headers, "content-length")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        session.refuse_unread(bytes, rule, code, &message)
    } else {
        jsonrpc::error_frame(None, code, &message)
    };
    let mut r = json_response(status, answer);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// The agent of the request's one `Authorization: Bearer TOKEN` header.
fn authenticate<'t>(tokens: &'t Tokens, headers: &HeaderMap) -> Result<&'t str, Refusal> {
    let mut values = headers.get_all(hyper::header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (Some(value), None) => Some(value),
        (None, _) => None,
        (Some(_), Some(_)) => {
            let mut refusal = Refusal::new(
                StatusCode::BAD_REQUEST,
                "(duplicate header)",
                "flightrec: the Authorization header is given more than once".into(),
            );
            refusal.code = -32001;
            return Err(refusal);
        }
    };
    let token = value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| match v.split_at_checked(7) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer ") => Some(token),
            _ => None,
        });
    match token.and_then(|t| tokens.agent(t)) {
        Some(agent) => Ok(agent),
        None => {
            let mut refusal = Refusal::new(
                StatusCode::UNAUTHORIZED,
                "(unauthorized)",
                "flightrec: a valid bearer token is required".into(),
            );
            refusal.code = -32001;
            Err(refusal)
        }
    }
}

/// Headers that name one thing: given twice, a proxy and a server could
/// each take a different one.
const SINGLE_HEADERS: [&str; 10] = [
    "mcp-method",
    "mcp-name",
    "mcp-session-id",
    "mcp-protocol-version",
    "x-session-id",
    "x-agent-id",
    "authorization",
    "content-type",
    "content-encoding",
    "origin",
];

/// The checks a request's headers pass before anything is read or
/// forwarded: no duplicated identity or protocol header, an allowed
/// `Origin`, well-formed session ids, text where text is expected, and for
/// a POST a body the proxy reads as the server will (UTF-8 JSON, no
/// content coding).
fn admit(shared: &Shared, headers: &HeaderMap, post: bool) -> Result<(), Refusal> {
    for name in SINGLE_HEADERS {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "(duplicate header)",
                format!("flightrec: the {name} header is given more than once"),
            ));
        }
    }
    if let Some(origin) = headers.get("origin") {
        let allowed = origin
            .to_str()
            .ok()
            .and_then(|o| o.parse::<WebOrigin>().ok())
            .is_some_and(|o| shared.origins.contains(&o));
        if !allowed {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "(origin not allowed)",
                format!(
                    "flightrec: origin {} is not allowed (see --allow-origin)",
                    printable(&String::from_utf8_lossy(origin.as_bytes()))
                ),
            ));
        }
    }
    for name in ["mcp-session-id", "x-session-id"] {
        if let Some(v) = headers.get(name) {
            let b = v.as_bytes();
            if b.is_empty() || b.len() > MAX_SESSION_ID || !b.iter().all(|c| c.is_ascii_graphic()) {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "(invalid session id)",
                    format!(
                        "flightrec: the {name} header must be 1 to {MAX_SESSION_ID} visible ASCII characters"
                    ),
                ));
            }
        }
    }
    for name in [
        "mcp-method",
        "mcp-name",
        "mcp-protocol-version",
        "x-agent-id",
    ] {
        if let Some(v) = headers.get(name)
            && text_value(v).is_none()
        {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "(invalid header)",
                format!("flightrec: the {name} header is not UTF-8 text"),
            ));
        }
    }
    if post {
        let media = headers.get("content-type");
        if !media
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_utf8)
        {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "(unsupported media type)",
                format!(
                    "flightrec: a POST body must be sent as `Content-Type: application/json` (UTF-8: no other charset), not {}",
                    media.map_or("none".into(), |v| printable(&String::from_utf8_lossy(
                        v.as_bytes()
                    )))
                ),
            ));
        }
        if let Some(coding) = headers.get("content-encoding")
            && !coding.as_bytes().eq_ignore_ascii_case(b"identity")
        {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "(unsupported media type)",
                format!(
                    "flightrec: Content-Encoding {} is not accepted: send the body as it is",
                    printable(&String::from_utf8_lossy(coding.as_bytes()))
                ),
            ));
        }
    }
    Ok(())
}

/// `application/json`, with no parameter but `charset=utf-8` (any case,
/// quoted or not).
fn is_json_utf8(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let media = parts.next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return false;
    }
    let params: Vec<&str> = parts.map(str::trim).filter(|p| !p.is_empty()).collect();
    match params.as_slice() {
        [] => true,
        [param] => param.split_once('=').is_some_and(|(key, value)| {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            key.trim().eq_ignore_ascii_case("charset") && value.eq_ignore_ascii_case("utf-8")
        }),
        _ => false,
    }
}

/// A header's value as text: UTF-8 with no control characters.
fn text_value(value: &HeaderValue) -> Option<&str> {
    std::str::from_utf8(value.as_bytes())
        .ok()
        .filter(|t| !t.chars().any(char::is_control))
}

/// A header as text (see [`text_value`]); `None` when absent or not text
/// (requests whose headers are not text are refused by [`admit`] first).
fn text_header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(text_value)
}

/// Client-supplied text quoted in a message: escaped, at most 100 chars.
fn printable(text: &str) -> String {
    let short: String = text.chars().take(100).collect();
    let more = if text.chars().count() > 100 {
        "…"
    } else {
        ""
    };
    format!("`{}`{more}", short.escape_debug())
}

/// The session a request belongs to (created on first use). With tokens,
/// the agent is part of the key: one agent cannot join another's session.
fn session_for(shared: &Arc<Shared>, headers: &HeaderMap, agent: Option<&str>) -> Arc<Session> {
    let (key, kind, id) = session_key(headers, agent);
    let now = Instant::now();
    let mut sessions = lock(&shared.sessions);
    sessions.maybe_evict(now);
    let entry = sessions.map.entry(key).or_insert_with(|| {
        let audit_id = match kind {
            "agent" => format!("agent:{id}"),
            // With tokens, a client-chosen session is the agent's own:
            // `agent:AGENT/ID` (agent names cannot contain the separator).
            "x" if shared.tokens.is_some() => {
                format!("agent:{}{SCOPE_SEPARATOR}{id}", agent.unwrap_or_default())
            }
            _ => id,
        };
        let session =
            shared
                .gateway
                .session(Transport::Http, Some(audit_id), shared.server_guess.clone());
        (Arc::new(session), now)
    });
    entry.1 = now;
    entry.0.clone()
}

/// The key of the session a request belongs to, its kind (`mcp`, `x`,
/// `agent`) and its id.
fn session_key(headers: &HeaderMap, agent: Option<&str>) -> (String, &'static str, String) {
    let (kind, id) = match (
        header(headers, "mcp-session-id"),
        header(headers, "x-session-id"),
    ) {
        (Some(id), _) => ("mcp", id.to_string()),
        (None, Some(id)) => ("x", id.to_string()),
        (None, None) => ("agent", agent.unwrap_or("anonymous").to_string()),
    };
    let key = format!("{}\u{1f}{kind}:{id}", agent.unwrap_or(""));
    (key, kind, id)
}

/// The sessions the proxy knows, with when each was last used. Sessions
/// idle for [`IDLE`] with nothing in flight are forgotten (a session that
/// comes back starts afresh; its counters live in the gateway and are not
/// lost), so memory follows live clients, not history. At most `max`
/// (`--max-sessions`) are kept: when full, idle ones are forgotten, least
/// recently used first; see [`over_session_cap`] for a full map of busy
/// ones.
struct Sessions {
    map: HashMap<String, (Arc<Session>, Instant)>,
    lookups: usize,
    max: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::with_cap(usize::MAX)
    }
}

const IDLE: Duration = Duration::from_secs(30 * 60);

impl Sessions {
    fn with_cap(max: usize) -> Sessions {
        Sessions {
            map: HashMap::new(),
            lookups: 0,
            max: max.max(1),
        }
    }

    /// Forgets idle sessions (nothing in flight; never `keep`), least
    /// recently used first, until a sixteenth of the cap is free (one
    /// session at least), so a full map is not scanned on every lookup.
    fn make_room(&mut self, keep: Option<&Arc<Session>>) {
        let target = self.max.saturating_sub(1 + self.max / 16);
        let excess = self.map.len().saturating_sub(target);
        if excess == 0 {
            return;
        }
        let mut idle: Vec<(Instant, String)> = self
            .map
            .iter()
            .filter(|(_, (s, _))| !keep.is_some_and(|k| Arc::ptr_eq(s, k)) && !s.has_pending())
            .map(|(key, (_, last))| (*last, key.clone()))
            .collect();
        idle.sort_unstable();
        for (_, key) in idle.into_iter().take(excess) {
            self.map.remove(&key);
        }
    }

    fn maybe_evict(&mut self, now: Instant) {
        if self.map.len() >= self.max {
            self.make_room(None);
        }
        self.lookups += 1;
        if self.lookups < self.map.len().max(1024) {
            return;
        }
        self.lookups = 0;
        self.map.retain(|_, (session, last)| {
            now.saturating_duration_since(*last) < IDLE || session.has_pending()
        });
    }
}

/// `--max-sessions`: [`session_for`] keeps every session it is asked for,
/// forgetting idle ones when the map is full; when every kept session is
/// busy, a new one still takes the map over its cap for a moment. Such a
/// request is refused here (true) and its session forgotten: the map never
/// grows past the cap for long, and a session with calls in flight is never
/// dropped.
fn over_session_cap(shared: &Shared, session: &Arc<Session>) -> bool {
    let mut sessions = lock(&shared.sessions);
    if sessions.map.len() <= sessions.max {
        return false;
    }
    sessions.make_room(Some(session));
    if sessions.map.len() <= sessions.max || session.has_pending() {
        return false;
    }
    sessions.map.retain(|_, (s, _)| !Arc::ptr_eq(s, session));
    true
}

/// 503 for a request that would start a session over `--max-sessions`
/// (recorded with rule `(too many sessions)`).
fn too_many_sessions(shared: &Shared, session: &Session, frame: &[u8]) -> Response<ProxyBody> {
    let message = format!(
        "flightrec: the proxy keeps {} sessions (--max-sessions) and every one has a call in flight; try again later",
        shared.config.max_sessions
    );
    let answer = session.reject(frame, "(too many sessions)", -32000, &message);
    let mut r = json_response(StatusCode::SERVICE_UNAVAILABLE, answer);
    r.headers_mut().insert(
        HeaderName::from_static("retry-after"),
        HeaderValue::from_static("1"),
    );
    r
}

/// 2026-07-28 clients name the method (and a tool call's tool) in headers;
/// a proxy that reads them must check them against the body, or a client
/// could show it one tool and the server another.
fn header_mismatch(headers: &HeaderMap, frame: &[u8]) -> Option<String> {
    let method_header = text_header(headers, "mcp-method");
    let name_header = text_header(headers, "mcp-name");
    if method_header.is_none() && name_header.is_none() {
        return None;
    }
    let env: Envelope = serde_json::from_slice(frame).ok()?;
    let method = env.method.as_deref().unwrap_or_default();
    if let Some(m) = method_header
        && m != method
    {
        return Some(format!(
            "Mcp-Method header `{m}` does not match the body's method `{method}`"
        ));
    }
    if method == "tools/call" {
        let name = env
            .params
            .and_then(|p| serde_json::from_str::<jsonrpc::ToolCallParams>(p.get()).ok())
            .map(|p| p.name);
        if name_header != name.as_deref() {
            return Some(format!(
                "Mcp-Name header {:?} does not match the body's tool {:?}",
                name_header, name
            ));
        }
    }
    None
}

async fn forward_post(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    headers: &HeaderMap,
    body: Vec<u8>,
    exchange: Exchange,
) -> Response<ProxyBody> {
    if let Some(child) = exchange.child.clone() {
        return forward_to_child(shared, session, body, exchange, child).await;
    }
    let Upstream::Http(upstream) = &shared.config.upstream else {
        return plain(StatusCode::BAD_GATEWAY, "flightrec: no upstream");
    };
    let Exchange {
        scope,
        request_id,
        wants_json,
        agent: session_agent,
        ..
    } = exchange;
    let fail = |outcome: Outcome, code: i64, message: String| {
        let answer = request_id
            .as_deref()
            .and_then(|id| {
                shared
                    .gateway
                    .pipeline(|| session.fail_request(id, outcome, code, &message))
            })
            .unwrap_or_else(|| jsonrpc::error_frame(None, code, &message));
        if wants_json {
            json_response(StatusCode::OK, answer)
        } else {
            sse_response(StatusCode::OK, answer)
        }
    };
    let mut up = Request::builder()
        .method(Method::POST)
        .uri(upstream.clone());
    copy_request_headers(
        headers,
        up.headers_mut().expect("builder"),
        shared.tokens.is_some(),
    );
    let up = match up.body(full(body)) {
        Ok(r) => r,
        Err(e) => return fail(Outcome::UpstreamGone, -32603, format!("flightrec: {e}")),
    };
    let _slot = shared.slots.acquire().await;
    let timeout = shared.config.upstream_timeout;
    let resp = match tokio::time::timeout(timeout, shared.client.request(up)).await {
        Err(_) => {
            return fail(
                Outcome::Timeout,
                -32001,
                format!("flightrec: the MCP server did not answer within {timeout:?}"),
            );
        }
        Ok(Err(e)) => {
            return fail(
                Outcome::UpstreamGone,
                -32603,
                format!("flightrec: the MCP server is unreachable: {e}"),
            );
        }
        Ok(Ok(r)) => r,
    };
    let (parts, incoming) = resp.into_parts();
    // A handshake that started a server session: the session by that id
    // knows who the client and the server are.
    // (It learns them again once the answer has been read: the server's
    // name comes in the handshake's result.)
    let heir = if header(headers, "mcp-session-id").is_none()
        && let Some(id) = header(&parts.headers, "mcp-session-id")
    {
        if let Some(agent) = shared.tokens.as_ref().and(session_agent.as_deref()) {
            lock(&shared.issued).issue(id, agent, Instant::now());
        }
        let mut next = headers.clone();
        if let Ok(v) = HeaderValue::from_str(id) {
            next.insert("mcp-session-id", v);
        }
        let heir = session_for(shared, &next, session_agent.as_deref());
        heir.inherit(session);
        Some(heir)
    } else {
        None
    };
    let content_type = header(&parts.headers, "content-type").unwrap_or_default();
    let mut out = Response::builder().status(parts.status);
    copy_response_headers(&parts.headers, out.headers_mut().expect("builder"));
    if content_type.starts_with("text/event-stream") {
        let answer = AnswerWait {
            shared: shared.clone(),
            request_id: request_id.clone(),
            deadline: tokio::time::Instant::now() + timeout,
        };
        let limit = shared.config.max_response_bytes;
        let body = sse_through_session(session.clone(), scope, incoming, heir, answer, limit);
        return out
            .body(body)
            .unwrap_or_else(|_| plain(StatusCode::BAD_GATEWAY, "flightrec: bad response"));
    }
    let limit = shared.config.max_response_bytes;
    let bytes = match tokio::time::timeout(timeout, collect_bounded(incoming, limit)).await {
        Ok(Ok(Bounded::Whole(b))) => b,
        Ok(Ok(Bounded::TooLarge { head, len })) => {
            // Never held: the request this POST carried gets -32603 and
            // its row `response_too_large`, as on stdio.
            let head = request_id
                .as_deref()
                .and_then(|key| key.split_once('\u{1f}'))
                .map(|(_, id)| format!("{{\"id\":{id}}}").into_bytes())
                .unwrap_or(head);
            let action = session
                .gateway()
                .pipeline(|| session.on_oversized_server_frame_in(&scope, &head, len, limit));
            let answer = action.send.unwrap_or_else(|| {
                jsonrpc::error_frame(
                    None,
                    -32603,
                    &format!(
                        "flightrec: the MCP server's answer ({len} bytes) exceeds --max-response-bytes ({limit}) and was not delivered"
                    ),
                )
            });
            let response = if wants_json {
                json_response(StatusCode::OK, answer)
            } else {
                sse_response(StatusCode::OK, answer)
            };
            if let Some(c) = action.completion {
                session.complete(c);
            }
            return response;
        }
        Ok(Err(e)) => {
            return fail(
                Outcome::UpstreamGone,
                -32603,
                format!("flightrec: the MCP server's answer broke off: {e}"),
            );
        }
        Err(_) => {
            return fail(
                Outcome::Timeout,
                -32001,
                format!("flightrec: the MCP server did not answer within {timeout:?}"),
            );
        }
    };
    if bytes.is_empty() || !content_type.starts_with("application/json") {
        // No JSON-RPC answer (an HTTP error page, an empty 202): the request
        // ends here, and the client sees the upstream's own status and body.
        if let Some(id) = &request_id {
            let message = format!("flightrec: the MCP server answered HTTP {}", parts.status);
            session
                .gateway()
                .pipeline(|| session.fail_request(id, Outcome::RpcError, -32603, &message));
        }
        return out
            .body(full(bytes))
            .unwrap_or_else(|_| plain(StatusCode::BAD_GATEWAY, "flightrec: bad response"));
    }
    let action = session
        .gateway()
        .pipeline(|| session.on_server_frame_in(&scope, bytes));
    if let Some(heir) = heir {
        heir.inherit(session);
    }
    if action.completion.is_none()
        && let Some(id) = &request_id
    {
        // A JSON body that is not the answer to the request it carried
        // (another id, a notification): the request ends here, as an
        // error, and its row with it (never left pending).
        let message = "flightrec: the MCP server's answer did not answer the request";
        if let Some(frame) = session
            .gateway()
            .pipeline(|| session.fail_request(id, Outcome::UpstreamGone, -32603, message))
        {
            return out
                .body(full(frame))
                .unwrap_or_else(|_| plain(StatusCode::BAD_GATEWAY, "flightrec: bad response"));
        }
    }
    let send = action.send.unwrap_or_default();
    let response = out
        .body(full(send))
        .unwrap_or_else(|_| plain(StatusCode::BAD_GATEWAY, "flightrec: bad response"));
    if let Some(c) = action.completion {
        session.complete(c);
    }
    response
}

/// Forwards a request as it is (GET streams, DELETE), bodies streamed.
async fn pass_through(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    let upstream = match (&shared.config.upstream, &shared.children) {
        (_, Some(pool)) => return child_stream_or_end(pool, req.method(), req.headers()),
        (Upstream::Http(uri), None) => uri.clone(),
        (Upstream::Command(_), None) => {
            return plain(StatusCode::BAD_GATEWAY, "flightrec: no upstream");
        }
    };
    let (parts, body) = req.into_parts();
    let mut up = Request::builder()
        .method(parts.method.clone())
        .uri(upstream);
    copy_request_headers(
        &parts.headers,
        up.headers_mut().expect("builder"),
        shared.tokens.is_some(),
    );
    let Ok(up) = up.body(body.map_err(|e| Box::new(e) as BoxError).boxed()) else {
        return plain(StatusCode::BAD_REQUEST, "flightrec: bad request");
    };
    match shared.client.request(up).await {
        Ok(resp) => {
            let (parts, incoming) = resp.into_parts();
            let mut out = Response::builder().status(parts.status);
            copy_response_headers(&parts.headers, out.headers_mut().expect("builder"));
            out.body(incoming.map_err(|e| Box::new(e) as BoxError).boxed())
                .unwrap_or_else(|_| plain(StatusCode::BAD_GATEWAY, "flightrec: bad response"))
        }
        Err(e) => plain(
            StatusCode::BAD_GATEWAY,
            &format!("flightrec: the MCP server is unreachable: {e}"),
        ),
    }
}

/// What a POST's SSE stream is read for once its client has left.
struct AnswerWait {
    /// The proxy: a stop waits for the answer (the request is in flight
    /// until it came).
    shared: Arc<Shared>,
    /// The scoped key the request waits under (`None`: nothing waits).
    request_id: Option<String>,
    /// How long the server's answer is waited for.
    deadline: tokio::time::Instant,
}

/// An upstream SSE body read event by event: each event's JSON-RPC message
/// goes through the session (filtered `tools/list`, rows completed once the
/// event is on its way); other fields and events pass in order. A client
/// that leaves does not end the call: the stream is read on (until
/// `answer.deadline`) until the request's answer arrives, so that its row
/// records what the server really did.
fn sse_through_session(
    session: Arc<Session>,
    scope: String,
    incoming: Incoming,
    heir: Option<Arc<Session>>,
    answer: AnswerWait,
    limit: usize,
) -> ProxyBody {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let shared = answer.shared.clone();
        let mut counted = Some(InFlight::new(&shared.in_flight));
        let mut events = Events::new(incoming, limit);
        let mut client_gone = false;
        let mut answered = false;
        let event = |frame: &[u8]| {
            Bytes::from(format!(
                "event: message\ndata: {}\n\n",
                String::from_utf8_lossy(frame).trim_end()
            ))
        };
        loop {
            // Until the request's answer came, the stream is read within
            // --upstream-timeout, whether or not the client is still there.
            let next = match (&answer.request_id, answered) {
                (Some(id), false) => {
                    match tokio::time::timeout_at(answer.deadline, events.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            let message = if client_gone {
                                "flightrec: the MCP server did not answer in time (the client had left)"
                            } else {
                                "flightrec: the MCP server did not answer in time (--upstream-timeout)"
                            };
                            let frame = session.gateway().pipeline(|| {
                                session.fail_request(id, Outcome::Timeout, -32001, message)
                            });
                            if !client_gone && let Some(frame) = frame {
                                let _ = tx.send(event(&frame)).await;
                            }
                            return;
                        }
                    }
                }
                _ => events.next().await,
            };
            let Some(event) = next else { break };
            let (out, completion) = match event {
                Event::Whole(text) => rewrite_event(&session, &scope, &text),
                Event::TooLarge { head, len } => {
                    // Not held, not passed on: the request it answers gets
                    // -32603 in its place (as an event), as on stdio.
                    let action = session.gateway().pipeline(|| {
                        session.on_oversized_server_frame_in(&scope, &data_head(&head), len, limit)
                    });
                    let out = action.send.map(|send| {
                        format!(
                            "event: message\ndata: {}\n\n",
                            String::from_utf8_lossy(&send).trim_end()
                        )
                    });
                    (out, action.completion)
                }
            };
            if let Some(heir) = &heir {
                // A handshake's answer: the session it started learns the
                // server's name before the client can use it.
                heir.inherit(&session);
            }
            if !client_gone
                && let Some(out) = out
                && tx.send(Bytes::from(out)).await.is_err()
            {
                // The client left, its call did not: read on for the answer.
                client_gone = true;
            }
            if let Some(c) = completion {
                session.complete(c);
                answered = true;
                drop(counted.take());
            }
            if client_gone && (answered || answer.request_id.is_none()) {
                return;
            }
        }
        let rest = events.rest();
        if !client_gone && !rest.is_empty() {
            let _ = tx.send(Bytes::from(rest)).await;
        }
        // The stream ended without the request's answer: the call may have
        // run, and nothing more will come on this exchange. Its row ends
        // now (never left pending), and the client hears why.
        if !answered && let Some(id) = &answer.request_id {
            let message =
                "flightrec: the MCP server's stream ended without an answer to the request";
            let frame = session
                .gateway()
                .pipeline(|| session.fail_request(id, Outcome::UpstreamGone, -32603, message));
            if !client_gone && let Some(frame) = frame {
                let _ = tx.send(event(&frame)).await;
            }
        }
    });
    ChannelBody(rx).boxed()
}

/// One SSE event through the session: `None` when it is dropped (a late
/// answer the client already got from the proxy).
fn rewrite_event(
    session: &Session,
    scope: &str,
    event: &str,
) -> (Option<String>, Option<crate::proxy::session::Completion>) {
    if ambiguous_event(event) {
        // The request it may answer ends when the stream does (its row
        // `upstream_gone`), or by --upstream-timeout.
        eprintln!(
            "flightrec: dropped an SSE event from the server whose lines a client would cut otherwise (a lone CR, or a blank line inside it)"
        );
        return (None, None);
    }
    let (data, other) = split_event(event);
    let Some(data) = data else {
        return (Some(format!("{event}\n\n")), None);
    };
    let action = session
        .gateway()
        .pipeline(|| session.on_server_frame_in(scope, data.into_bytes()));
    let Some(send) = action.send else {
        return (None, action.completion);
    };
    let mut out = String::new();
    for line in other {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(String::from_utf8_lossy(&send).trim_end());
    out.push_str("\n\n");
    (Some(out), action.completion)
}

/// The SSE answer to a held call asked in the client: the proxy's
/// `elicitation/create` event at once, then, when the wait ends, the
/// refusal or the upstream's answer (its own SSE events passed on, or its
/// JSON as one event).
fn held_stream(
    shared: Arc<Shared>,
    session: Arc<Session>,
    headers: HeaderMap,
    ask: Vec<u8>,
    held: crate::proxy::session::Held,
    exchange: Exchange,
) -> Response<ProxyBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let event = |frame: &[u8]| {
        Bytes::from(format!(
            "event: message\ndata: {}\n\n",
            String::from_utf8_lossy(frame).trim_end()
        ))
    };
    let first = event(&ask);
    tokio::spawn(async move {
        if tx.send(first).await.is_err() {
            // The client left: its wait ends as a cancellation.
        }
        let waiting = session.clone();
        let action = tokio::task::spawn_blocking(move || waiting.wait_held(held))
            .await
            .unwrap_or(ClientAction::Ignore);
        match action {
            ClientAction::Respond(answer) => {
                let _ = tx.send(event(&answer)).await;
            }
            ClientAction::Forward(body) => {
                let response = forward_post(&shared, &session, &headers, body, exchange).await;
                let sse = response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|t| t.starts_with("text/event-stream"));
                let mut body = response.into_body();
                if sse {
                    while let Some(Ok(frame)) = body.frame().await {
                        if let Ok(data) = frame.into_data()
                            && tx.send(data).await.is_err()
                        {
                            return;
                        }
                    }
                } else if let Ok(all) = body.collect().await {
                    let bytes = all.to_bytes();
                    if !bytes.is_empty() {
                        let _ = tx.send(event(&bytes)).await;
                    }
                }
            }
            _ => {}
        }
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    r.headers_mut().insert(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// A body fed from a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

enum BodyError {
    TooLarge,
    Read,
    /// Not all there within `--body-timeout`.
    Timeout,
}

/// A request's body, at most `--max-message-bytes` of it, within
/// `--body-timeout`.
async fn read_body(shared: &Shared, req: Request<Incoming>) -> Result<Vec<u8>, BodyError> {
    let (max, limit) = (shared.config.max_body_bytes, shared.config.body_timeout);
    let read = Limited::new(req.into_body(), max).collect();
    match tokio::time::timeout(limit, read).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Ok(b)) => Ok(b.to_bytes().to_vec()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Read),
    }
}

/// 408 for a body that did not arrive within `--body-timeout`; the
/// connection is closed (what is left of the body is never read).
fn body_timed_out(shared: &Shared) -> Response<ProxyBody> {
    let mut r = plain(
        StatusCode::REQUEST_TIMEOUT,
        &format!(
            "flightrec: the request body did not arrive within --body-timeout ({:?})",
            shared.config.body_timeout
        ),
    );
    r.headers_mut().insert(
        HeaderName::from_static("connection"),
        HeaderValue::from_static("close"),
    );
    r
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn accepts(headers: &HeaderMap, kind: &str) -> bool {
    header(headers, "accept").is_some_and(|a| a.contains(kind) || a.contains("*/*"))
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Every header but hop-by-hop ones and the length (the body may change);
/// with `--tokens` the client's token is flightrec's, not the server's.
/// With `--tokens` (`authenticated`), the client's token and the identity
/// headers it chose (`X-Agent-Id`, `X-Session-Id`) are flightrec's to read,
/// not claims the server may trust: they are not passed on.
fn copy_request_headers(from: &HeaderMap, to: &mut HeaderMap, authenticated: bool) {
    for (name, value) in from {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || n == "content-length"
            || (authenticated && matches!(n, "authorization" | "x-agent-id" | "x-session-id"))
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || n == "content-length" {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

fn full(bytes: Vec<u8>) -> ProxyBody {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed()
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static("application/json"),
    );
    r
}

fn sse_response(status: StatusCode, message: Vec<u8>) -> Response<ProxyBody> {
    let text = String::from_utf8_lossy(&message);
    let body = format!("event: message\ndata: {}\n\n", text.trim_end());
    let mut r = Response::new(full(body.into_bytes()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(full(Vec::new()));
    *r.status_mut() = status;
    r
}

fn plain(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut r = Response::new(full(text.as_bytes().to_vec()));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_sessions_are_forgotten_busy_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("p.yaml");
        std::fs::write(&policy, "version: \"1\"\ntools: {}\n").unwrap();
        let gateway = Arc::new(
            Gateway::new(
                GatewayConfig {
                    policy_path: policy,
                    ..GatewayConfig::default()
                },
                None,
            )
            .unwrap(),
        );
        let now = Instant::now();
        let long_ago = now.checked_sub(IDLE + Duration::from_secs(1)).unwrap();
        let mut sessions = Sessions::default();
        let session =
            |id: &str| Arc::new(gateway.session(Transport::Http, Some(id.into()), String::new()));
        sessions
            .map
            .insert("old".into(), (session("old"), long_ago));
        sessions.map.insert("fresh".into(), (session("fresh"), now));
        let busy = session("busy");
        busy.on_client_frame(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#.to_vec(),
        );
        assert!(busy.has_pending());
        sessions.map.insert("busy".into(), (busy, long_ago));
        for _ in 0..1024 {
            sessions.maybe_evict(now);
        }
        let mut left: Vec<&String> = sessions.map.keys().collect();
        left.sort();
        assert_eq!(left, ["busy", "fresh"]);
    }

    #[test]
    fn accept_failures_back_off_to_a_second() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..10).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), Backoff::MIN);
        assert!(b.first());
        b.next();
        assert!(!b.first());
    }

    #[test]
    fn a_full_session_map_forgets_idle_sessions_least_recent_first() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("p.yaml");
        std::fs::write(&policy, "version: \"1\"\ntools: {}\n").unwrap();
        let gateway = Arc::new(
            Gateway::new(
                GatewayConfig {
                    policy_path: policy,
                    ..GatewayConfig::default()
                },
                None,
            )
            .unwrap(),
        );
        let session =
            |id: &str| Arc::new(gateway.session(Transport::Http, Some(id.into()), String::new()));
        let start = Instant::now();
        let mut sessions = Sessions::with_cap(3);
        let busy = session("busy");
        busy.on_client_frame(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#.to_vec(),
        );
        sessions.map.insert("busy".into(), (busy.clone(), start));
        let at = |s: u64| start + Duration::from_secs(s);
        sessions.map.insert("old".into(), (session("old"), at(1)));
        sessions.map.insert("new".into(), (session("new"), at(2)));
        sessions.maybe_evict(at(3));
        let mut left: Vec<&String> = sessions.map.keys().collect();
        left.sort();
        assert_eq!(
            left,
            ["busy", "new"],
            "the least recently used idle one goes"
        );
        // Only busy sessions: nothing is forgotten.
        sessions.map.clear();
        sessions.map.insert("busy".into(), (busy.clone(), start));
        let busy2 = session("busy2");
        busy2.on_client_frame(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#.to_vec(),
        );
        sessions.map.insert("busy2".into(), (busy2, start));
        let busy3 = session("busy3");
        busy3.on_client_frame(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#.to_vec(),
        );
        sessions.map.insert("busy3".into(), (busy3, start));
        sessions.maybe_evict(at(4));
        assert_eq!(sessions.map.len(), 3);
    }

    #[test]
    fn only_utf8_json_is_accepted() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/json ; charset = utf-8 ;",
        ] {
            assert!(is_json_utf8(ok), "{ok}");
        }
        for refused in [
            "",
            "text/plain",
            "application/json-seq",
            "application/jsonx",
            "application/json; charset=utf-7",
            "application/json; charset=utf8",
            "application/json; charset=utf-16",
            "application/json; charset=iso-8859-1",
            "application/json; charset=utf-8; charset=utf-7",
            "application/json; charset=\"utf-8",
            "application/json; boundary=x",
        ] {
            assert!(!is_json_utf8(refused), "{refused}");
        }
    }

    #[test]
    fn origins_parse_to_scheme_host_and_port() {
        let o = |t: &str| t.parse::<WebOrigin>();
        assert_eq!(
            o("HTTP://LocalHost:8080"),
            Ok(WebOrigin::http("localhost", 8080))
        );
        assert_eq!(o("http://localhost"), Ok(WebOrigin::http("localhost", 80)));
        assert_eq!(o("http://[::1]:3000"), Ok(WebOrigin::http("[::1]", 3000)));
        assert_eq!(
            o("https://a.example").unwrap().to_string(),
            "https://a.example:443"
        );
        for bad in [
            "null",
            "localhost:80",
            "ftp://a.example",
            "http://",
            "http://a.example/",
            "http://a.example:80/x",
            "http://user@a.example",
            "http://a.example:99999",
            "http://a.example:+80",
            "http://a.example:",
            "http://[::1",
            "http://a b",
        ] {
            assert!(o(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn issued_session_ids_are_their_agents_and_bounded() {
        let now = Instant::now();
        let mut issued = Issued::default();
        issued.issue("s1", "alice", now);
        issued.issue("s1", "bob", now);
        assert!(issued.owned_by("s1", "alice", now));
        assert!(!issued.owned_by("s1", "bob", now));
        assert!(!issued.owned_by("s2", "alice", now));
        for n in 0..MAX_ISSUED + 10 {
            issued.issue(
                &format!("x{n}"),
                "bob",
                now + Duration::from_millis(n as u64 + 1),
            );
        }
        assert!(issued.map.len() <= MAX_ISSUED);
        assert!(
            !issued.map.contains_key("s1"),
            "the least recently used goes first"
        );
    }

    #[test]
    fn header_checks() {
        let mut h = HeaderMap::new();
        let frame = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"copy"}}"#;
        assert_eq!(header_mismatch(&h, frame), None);
        h.insert("mcp-method", HeaderValue::from_static("tools/call"));
        h.insert("mcp-name", HeaderValue::from_static("copy"));
        assert_eq!(header_mismatch(&h, frame), None);
        h.insert("mcp-name", HeaderValue::from_static("list"));
        assert!(header_mismatch(&h, frame).is_some());
        h.insert("mcp-method", HeaderValue::from_static("tools/list"));
        assert!(header_mismatch(&h, frame).is_some());
    }
}
