//! The stdio-to-HTTP bridge: `flightrec proxy --policy P --upstream URL`
//! without `--listen`. A client that can only launch commands talks
//! newline-delimited JSON-RPC on stdin/stdout; the bridge enforces the
//! policy on the same [`Session`] pipeline and sends what it forwards to a
//! Streamable HTTP server, one POST per message, both protocol generations.
//!
//! This file owns only what is the bridge's: stdin/stdout framing, the
//! headers an HTTP server expects that a stdio client never sends
//! (`Mcp-Session-Id` learned from the server, `MCP-Protocol-Version`,
//! and for 2026-07-28 requests `Mcp-Method`/`Mcp-Name` taken from the very
//! body being sent), and reading JSON or SSE answers back through the
//! session. Each request runs on its own task, so pipelined calls are
//! answered as the server answers them.

use crate::audit::Recorder;
use crate::policy::Outcome;
use crate::proxy::ProxyError;
use crate::proxy::body::{Bounded, collect_bounded};
use crate::proxy::gateway::{Gateway, GatewayConfig, lock};
use crate::proxy::jsonrpc::{self, Envelope};
use crate::proxy::session::{ClientAction, Session, Transport};
use crate::proxy::sse::{Event, Events, data_head, split_event};
use crate::proxy::stdio::{Frame, read_frame};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the bridge was started.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub gateway: GatewayConfig,
    pub audit_dir: Option<std::path::PathBuf>,
    /// When the audit journal is forced to disk.
    pub sync: crate::audit::journal::SyncMode,
    pub upstream: Uri,
    pub max_message_bytes: usize,
    /// Server answers (a JSON body, one SSE event) longer than this are not
    /// delivered: the request gets -32603, its row `response_too_large`.
    pub max_response_bytes: usize,
    pub upstream_timeout: Duration,
}

struct Bridge {
    session: Session,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: Uri,
    timeout: Duration,
    max_response_bytes: usize,
    /// The server's `Mcp-Session-Id`, once it gave one.
    server_session: Mutex<Option<String>>,
    /// The negotiated protocol version (from the `initialize` result).
    protocol: Mutex<Option<String>>,
    out: Mutex<std::io::Stdout>,
}

impl Bridge {
    fn send(&self, frame: &[u8]) {
        let mut out = lock(&self.out);
        let _ = out.write_all(frame);
        if frame.last() != Some(&b'\n') {
            let _ = out.write_all(b"\n");
        }
        let _ = out.flush();
    }
}

/// Runs the bridge until the client closes stdin (or SIGTERM/SIGINT);
/// returns 0.
pub fn run(config: BridgeConfig) -> Result<i32, ProxyError> {
    // Stop signals go to one thread (sigwait): blocked before any thread
    // starts, the audit journal's included.
    let signals = crate::proxy::stdio::block_signals();
    let recorder: Option<Recorder> = crate::proxy::gateway::open_recorder(
        config.audit_dir.as_deref(),
        config.sync,
        config.gateway.rotate_age,
    )?;
    let gateway = Arc::new(Gateway::new(config.gateway.clone(), recorder)?);
    gateway.open_approval_queue()?;
    gateway.watch_policy_file();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let server_guess = config
        .upstream
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let bridge = Arc::new(Bridge {
        session: gateway.session(Transport::Bridge, None, server_guess),
        client: {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new()).build(connector)
        },
        upstream: config.upstream.clone(),
        timeout: config.upstream_timeout,
        max_response_bytes: config.max_response_bytes,
        server_session: Mutex::new(None),
        protocol: Mutex::new(None),
        out: Mutex::new(std::io::stdout()),
    });
    if let Some(set) = signals {
        let (bridge, gateway) = (bridge.clone(), gateway.clone());
        std::thread::spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: sigwait on a signal set we initialised.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    return;
                }
                if sig == libc::SIGHUP {
                    gateway.reload_and_report();
                    continue;
                }
                // Stop: what is in flight is recorded as interrupted, the
                // log is flushed, and the process ends.
                for frame in bridge
                    .session
                    .abandon_all(Outcome::Interrupted, "flightrec: the proxy is stopping")
                {
                    bridge.send(&frame);
                }
                let code = match gateway.close() {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("flightrec: AUDIT LOG ERROR: {e}");
                        2
                    }
                };
                crate::proxy::run_exit_hooks();
                std::process::exit(code);
            }
        });
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut tasks = Vec::new();
    loop {
        // A line over --max-message-bytes is skipped as it is read, never
        // held (as on stdio).
        let frame = match read_frame(&mut input, config.max_message_bytes) {
            Ok(Frame::Line(line)) => line,
            Ok(Frame::TooLong(n, _)) => {
                bridge.send(
                    &bridge
                        .session
                        .on_oversized_client_frame(n, config.max_message_bytes),
                );
                continue;
            }
            Ok(Frame::Eof) => break,
            Err(e) => {
                eprintln!("flightrec: reading from the client failed: {e}");
                break;
            }
        };
        match bridge.session.on_client_frame(frame) {
            ClientAction::Respond(answer) => bridge.send(&answer),
            ClientAction::Ignore => {}
            ClientAction::Hold(held) => {
                // Held for a human (the local queue asks): waited for on a
                // blocking thread, then forwarded or refused.
                let bridge = bridge.clone();
                tasks.push(runtime.spawn(async move {
                    let waiting = bridge.clone();
                    let action =
                        tokio::task::spawn_blocking(move || waiting.session.wait_held(*held))
                            .await
                            .unwrap_or(ClientAction::Ignore);
                    match action {
                        ClientAction::Forward(body) => forward(&bridge, body).await,
                        ClientAction::Respond(answer) => bridge.send(&answer),
                        _ => {}
                    }
                }));
            }
            ClientAction::Forward(body) => {
                let bridge = bridge.clone();
                tasks.push(runtime.spawn(async move { forward(&bridge, body).await }));
            }
        }
    }
    // The client left: held calls end (cancelled, recorded); let the
    // requests in flight finish (bounded).
    gateway.approvals().cancel_all(Duration::from_secs(2));
    runtime.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    });
    for frame in bridge.session.abandon_all(
        Outcome::Interrupted,
        "flightrec: the client left before the server answered",
    ) {
        bridge.send(&frame);
    }
    gateway.close()?;
    Ok(0)
}

async fn forward(bridge: &Bridge, body: Vec<u8>) {
    let env = serde_json::from_slice::<Envelope>(&body).ok();
    let id = env.as_ref().and_then(|e| e.id_text());
    let method = env.as_ref().and_then(|e| e.method.clone());
    let modern = env.as_ref().is_some_and(|e| jsonrpc::speaks_2026(e.params));
    let tool = env
        .as_ref()
        .filter(|e| e.method.as_deref() == Some("tools/call"))
        .and_then(|e| e.params)
        .and_then(|p| serde_json::from_str::<jsonrpc::ToolCallParams>(p.get()).ok())
        .map(|p| p.name);
    let fail = |outcome: Outcome, code: i64, message: String| {
        if let Some(id) = &id
            && let Some(answer) = bridge
                .session
                .gateway()
                .pipeline(|| bridge.session.fail_request(id, outcome, code, &message))
        {
            bridge.send(&answer);
        }
    };
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(bridge.upstream.clone())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(s) = lock(&bridge.server_session).clone() {
        req = req.header("mcp-session-id", s);
    }
    if modern {
        // 2026-07-28 servers check these against the body; they are taken
        // from the body that is sent, so they always agree.
        req = req.header("mcp-protocol-version", "2026-07-28");
        if let Some(m) = &method {
            req = req.header("mcp-method", m.as_str());
        }
        if let Some(t) = &tool {
            req = req.header("mcp-name", t.as_str());
        }
    } else if let Some(v) = lock(&bridge.protocol).clone() {
        req = req.header("mcp-protocol-version", v);
    }
    let Ok(req) = req.body(Full::new(Bytes::from(body))) else {
        return fail(
            Outcome::UpstreamGone,
            -32603,
            "flightrec: bad request".into(),
        );
    };
    let resp = match tokio::time::timeout(bridge.timeout, bridge.client.request(req)).await {
        Err(_) => {
            return fail(
                Outcome::Timeout,
                -32001,
                format!(
                    "flightrec: the MCP server did not answer within {:?}",
                    bridge.timeout
                ),
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
    if let Some(s) = parts
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    {
        *lock(&bridge.server_session) = Some(s.to_string());
    }
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let limit = bridge.max_response_bytes;
    if content_type.starts_with("text/event-stream") {
        let mut events = Events::new(incoming, limit);
        while let Some(event) = events.next().await {
            match event {
                Event::Whole(text) => {
                    if let (Some(data), _) = split_event(&text) {
                        deliver(bridge, data.into_bytes(), method.as_deref());
                    }
                }
                Event::TooLarge { head, len } => too_large(bridge, &data_head(&head), len),
            }
        }
    } else {
        match collect_bounded(incoming, limit).await {
            Ok(Bounded::TooLarge { head, len }) => {
                // The answer to this POST: its request, whatever the head
                // shows.
                let head = id
                    .as_deref()
                    .map(|id| format!("{{\"id\":{id}}}").into_bytes())
                    .unwrap_or(head);
                too_large(bridge, &head, len);
            }
            Ok(Bounded::Whole(bytes)) => {
                if !bytes.is_empty() && content_type.starts_with("application/json") {
                    deliver(bridge, bytes, method.as_deref());
                } else if !parts.status.is_success() {
                    fail(
                        Outcome::RpcError,
                        -32603,
                        format!("flightrec: the MCP server answered HTTP {}", parts.status),
                    );
                }
                // Else a notification's 202: nothing to deliver.
            }
            Err(e) => fail(
                Outcome::UpstreamGone,
                -32603,
                format!("flightrec: the MCP server's answer broke off: {e}"),
            ),
        }
    }
    // An answer that never came (a stream that ended without it).
    if let Some(id) = &id {
        fail_if_pending(bridge, id);
    }
}

fn fail_if_pending(bridge: &Bridge, id: &str) {
    let answer = bridge.session.gateway().pipeline(|| {
        bridge.session.fail_request(
            id,
            Outcome::UpstreamGone,
            -32603,
            "flightrec: the MCP server's stream ended without an answer",
        )
    });
    if let Some(answer) = answer {
        bridge.send(&answer);
    }
}

/// A server answer over `--max-response-bytes` (only its head was kept):
/// the request it answers gets -32603 and its row `response_too_large`,
/// exactly as on stdio.
fn too_large(bridge: &Bridge, head: &[u8], len: usize) {
    let limit = bridge.max_response_bytes;
    let action = bridge
        .session
        .gateway()
        .pipeline(|| bridge.session.on_oversized_server_frame(head, len, limit));
    if let Some(bytes) = &action.send {
        bridge.send(bytes);
    }
    if let Some(c) = action.completion {
        bridge.session.complete(c);
    }
}

/// One message from the server through the session to the client.
fn deliver(bridge: &Bridge, message: Vec<u8>, method: Option<&str>) {
    if method == Some("initialize")
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&message)
        && let Some(version) = v["result"]["protocolVersion"].as_str()
    {
        *lock(&bridge.protocol) = Some(version.to_string());
    }
    let action = bridge
        .session
        .gateway()
        .pipeline(|| bridge.session.on_server_frame(message));
    if let Some(bytes) = &action.send {
        bridge.send(bytes);
    }
    if let Some(c) = action.completion {
        bridge.session.complete(c);
    }
}
