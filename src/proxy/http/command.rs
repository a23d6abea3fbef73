//! The HTTP proxy with a command upstream (`proxy --listen ADDR -- CMD`):
//! the glue between the HTTP exchanges (`super`) and the server processes
//! (`crate::proxy::child`): which child a POST goes to (and the 503 when
//! none can be had), a forwarded message to its child and its answer back
//! through the session, and GET (the session's stream) and DELETE (the
//! session's end) without an upstream to pass them to.

use super::*;
use crate::proxy::child::{Answer, BindError, SendError};

/// Whether a client frame is an `initialize` request.
pub(super) fn is_initialize(frame: &[u8]) -> bool {
    serde_json::from_slice::<Envelope>(frame)
        .ok()
        .is_some_and(|e| e.method.as_deref() == Some("initialize") && e.id.is_some())
}

/// The child a POST goes to: its MCP session's (a session whose child is
/// gone gets 404), else its stateless session's, spawned when needed. A
/// refusal (no room: 503; the command does not start: 502) is recorded.
pub(super) fn child_for(
    shared: &Arc<Shared>,
    pool: &ChildPool,
    headers: &HeaderMap,
    agent: Option<&str>,
    session: &Arc<Session>,
    frame: &[u8],
) -> Result<Arc<Child>, Box<Response<ProxyBody>>> {
    let id = header(headers, "mcp-session-id");
    let key = match id {
        Some(id) => ChildPool::session_key(id),
        None => ChildPool::stateless_key(&session_key(headers, agent).0),
    };
    // Only an `initialize` (whose id the proxy just issued) starts the
    // child of an MCP session.
    let existing = pool.get(&key);
    if id.is_some() && !is_initialize(frame) {
        let Some(child) = existing else {
            let message = "flightrec: this session has ended: start a new session";
            let answer = session.reject(frame, "(unknown session)", -32600, message);
            return Err(Box::new(json_response(StatusCode::NOT_FOUND, answer)));
        };
        child.attach(session);
        return Ok(child);
    }
    match pool.bind(&key, session) {
        Ok(child) => Ok(child),
        Err(BindError::Full(max)) => {
            let message = format!(
                "flightrec: {max} MCP server processes run (--max-children) and every one has a request in flight; try again later"
            );
            let answer = session.reject(frame, "(too many children)", -32000, &message);
            let mut r = json_response(StatusCode::SERVICE_UNAVAILABLE, answer);
            r.headers_mut().insert(
                HeaderName::from_static("retry-after"),
                HeaderValue::from_static("1"),
            );
            Err(Box::new(r))
        }
        Err(BindError::Spawn(e)) => {
            let message = format!(
                "flightrec: the MCP server command could not be started: {e} ({})",
                shared.config.upstream
            );
            let answer = session.reject(frame, "(upstream unavailable)", -32603, &message);
            Err(Box::new(json_response(StatusCode::BAD_GATEWAY, answer)))
        }
    }
}

/// A forwarded message to its child: a request waits (within
/// `--upstream-timeout`, holding one of `--max-concurrent` slots) for the
/// answer the child's reader routes to it by id; a notification or the
/// client's answer to a server request is written and gets 202.
pub(super) async fn forward_to_child(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    body: Vec<u8>,
    exchange: Exchange,
    child: Arc<Child>,
) -> Response<ProxyBody> {
    let Exchange {
        request_id,
        wants_json,
        new_session,
        ..
    } = exchange;
    let timeout = shared.config.upstream_timeout;
    let reply = |answer: Vec<u8>| {
        let mut r = if wants_json {
            json_response(StatusCode::OK, answer)
        } else {
            sse_response(StatusCode::OK, answer)
        };
        if let Some(id) = new_session
            .as_deref()
            .and_then(|i| HeaderValue::from_str(i).ok())
        {
            r.headers_mut().insert("mcp-session-id", id);
        }
        r
    };
    let fail = |outcome: Outcome, code: i64, message: String| {
        let answer = request_id
            .as_deref()
            .and_then(|id| {
                session
                    .gateway()
                    .pipeline(|| session.fail_request(id, outcome, code, &message))
            })
            .unwrap_or_else(|| jsonrpc::error_frame(None, code, &message));
        reply(answer)
    };
    let gone = |child: &Child| {
        if child.stopped() {
            Outcome::Interrupted
        } else {
            Outcome::UpstreamGone
        }
    };
    child.attach(session);
    // Only a request waits for an answer (a POST carrying the client's
    // answer to a server request has an id too).
    let is_request = serde_json::from_slice::<Envelope>(&body)
        .is_ok_and(|e| e.method.is_some() && e.id.is_some());
    let Some(id) = request_id.clone().filter(|_| is_request) else {
        return match child.send(body, timeout).await {
            Ok(()) => empty(StatusCode::ACCEPTED),
            Err(_) => plain(
                StatusCode::BAD_GATEWAY,
                "flightrec: the MCP server did not take the message",
            ),
        };
    };
    let _slot = shared.slots.acquire().await;
    let deadline = tokio::time::Instant::now() + timeout;
    let waiting = match child.request(&id, body, timeout).await {
        Ok(rx) => rx,
        Err(SendError::Gone) => {
            return fail(
                gone(&child),
                -32603,
                "flightrec: the MCP server has exited".into(),
            );
        }
        Err(SendError::Duplicate) => {
            return fail(
                Outcome::NotForwarded,
                -32600,
                format!("flightrec: request id {id} is already in flight on this session's server"),
            );
        }
        Err(SendError::Stuck) => {
            return fail(
                Outcome::Timeout,
                -32001,
                format!("flightrec: the MCP server did not read the request within {timeout:?}"),
            );
        }
    };
    let answer = match tokio::time::timeout_at(deadline, waiting).await {
        Err(_) => {
            child.forget(&id);
            child.cancel(&id, "flightrec: upstream timeout");
            return fail(
                Outcome::Timeout,
                -32001,
                format!(
                    "flightrec: the MCP server did not answer within {timeout:?} (--upstream-timeout)"
                ),
            );
        }
        Ok(Err(_)) => {
            return fail(
                gone(&child),
                -32603,
                "flightrec: the MCP server exited before answering".into(),
            );
        }
        Ok(Ok(answer)) => answer,
    };
    let limit = shared.config.max_response_bytes;
    let action = match answer {
        Answer::Whole(bytes) => session
            .gateway()
            .pipeline(|| session.on_server_frame_in("", bytes)),
        Answer::TooLarge { head, len } => session
            .gateway()
            .pipeline(|| session.on_oversized_server_frame_in("", &head, len, limit)),
    };
    match action {
        crate::proxy::session::ServerAction {
            send: Some(send),
            completion,
        } => {
            let response = reply(send);
            if let Some(c) = completion {
                session.complete(c);
            }
            response
        }
        crate::proxy::session::ServerAction { completion, .. } => {
            // Not delivered (an answer the client could misread): the
            // request ends here.
            if let Some(c) = completion {
                session.complete(c);
            }
            fail(
                Outcome::RpcError,
                -32603,
                "flightrec: the MCP server's answer was not delivered".into(),
            )
        }
    }
}

/// GET (the session's server-to-client stream) and DELETE (end of the
/// session, its child stopped) with a command upstream. Without a session
/// id there is no stream and nothing to end: 405.
pub(super) fn child_stream_or_end(
    pool: &ChildPool,
    method: &Method,
    headers: &HeaderMap,
) -> Response<ProxyBody> {
    let Some(id) = header(headers, "mcp-session-id") else {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "flightrec: without Mcp-Session-Id there is no session stream to open or end",
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    };
    let key = ChildPool::session_key(id);
    if *method == Method::DELETE {
        return if pool.end(&key) {
            empty(StatusCode::OK)
        } else {
            plain(StatusCode::NOT_FOUND, "flightrec: no such session")
        };
    }
    match pool.get(&key) {
        Some(child) => {
            let mut r = Response::new(ChannelBody(child.open_stream()).boxed());
            r.headers_mut().insert(
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("text/event-stream"),
            );
            r
        }
        None => plain(StatusCode::NOT_FOUND, "flightrec: no such session"),
    }
}
