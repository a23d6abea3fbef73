//! The per-session pipeline: one MCP client's conversation with one server,
//! whatever carries it.
//!
//! A transport hands every frame it reads to a [`Session`] and does what
//! the session answers:
//! - a client frame ([`Session::on_client_frame`]) is forwarded to the
//!   server, answered by the proxy itself (a refusal or an error), or held
//!   (the hook for human approvals);
//! - a server frame ([`Session::on_server_frame`]) gives the bytes to send
//!   to the client, and, when it answers a request, a [`Completion`] to hand
//!   back to [`Session::complete`] once those bytes are on their way (the
//!   client is answered before the row is chained and journaled).
//!
//! Every client request gets one audit row. A forwarded request leaves a
//! [`Ticket`] in the session, keyed by its JSON-RPC id: the row so far, its
//! counter reservations (enforced and shadow policies, each with the
//! generation it was taken from) and when it started. The server's answer,
//! the server's exit or the transport's shutdown completes it. An allowed
//! `tools/call` is journaled before it is forwarded, so a crash in between
//! still leaves its row.

use crate::audit::args::{args_sha256, canonical_json, redact};
pub use crate::audit::schema::Transport;
use crate::audit::schema::{AuditRow, ShadowDecision, new_uuid_v7};
use crate::policy::{Call, Category, Outcome, Reservation, Verdict};
use crate::proxy::gateway::{Gateway, Generation, lock};
use crate::proxy::jsonrpc::{self, Envelope, IdKind, ToolCallParams};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What to do with a frame from the client.
#[derive(Debug)]
pub enum ClientAction {
    /// Send these bytes to the server (the client's own bytes, unchanged).
    Forward(Vec<u8>),
    /// Send these bytes to the client; nothing goes to the server.
    Respond(Vec<u8>),
    /// A call waiting for a human's answer: nothing goes anywhere yet.
    Hold(Box<Held>),
    /// Nothing to do (a blank line).
    Ignore,
}

/// A `tools/call` held for a human's answer, with everything needed to
/// forward or refuse it later. The transport sends [`Held::ask`] to the
/// client (when the question goes through the client), then hands the
/// whole to [`Session::wait_held`] off its reading path.
pub struct Held {
    /// The proxy's own `elicitation/create` for the client, if it asks
    /// there (2025-11-25 sessions); `None`: the local queue asks.
    pub ask: Option<Vec<u8>>,
    approval_id: u64,
    answer: std::sync::mpsc::Receiver<crate::proxy::approval::Answer>,
    frame: Vec<u8>,
    /// The pending key (scope + id) and the id as JSON text.
    key: String,
    row: AuditRow,
    tool: String,
    args: Value,
    args_hash: String,
    category: Option<Category>,
    modern: bool,
    started: Instant,
    /// The id of the proxy's `elicitation/create`, when it asked the client.
    ask_id: Option<String>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("approval_id", &self.approval_id)
            .field("tool", &self.tool)
            .finish()
    }
}

/// The rule a frame is refused by when two readers could read it
/// differently (repeated members, members that differ only by case).
const AMBIGUOUS_RULE: &str = "(ambiguous member)";

/// The key of the proxy's approval question in an input-required result.
const APPROVAL_KEY: &str = "flightrec_approval";

/// What asking for an approval needs from the decision.
struct AskContext<'e, 'a> {
    env: &'e Envelope<'a>,
    params: &'e ToolCallParams,
    key: String,
    row: AuditRow,
    redacted: &'e Value,
    hash: &'e str,
    category: Option<Category>,
    modern: bool,
    rule: &'e str,
    message: &'e str,
    policy_sha256: String,
    /// The transport can put the proxy's own request before the answer.
    in_band: bool,
}

/// What [`Session::route`] decided for a client frame.
enum Route {
    Forward,
    /// Forward the client's frame without the proxy's own input-required
    /// fields (an approved 2026-07-28 retry).
    ForwardStripped,
    Answer(Vec<u8>),
    /// Refused and recorded, with nothing to answer (a notification).
    Drop,
    Hold(Box<Held>),
}

impl Route {
    fn refused(answer: Option<Vec<u8>>) -> Route {
        answer.map_or(Route::Drop, Route::Answer)
    }
}

/// Frames a transport sends because time passed (timeouts).
#[derive(Debug, Default)]
pub struct Outbound {
    pub to_client: Vec<Vec<u8>>,
    pub to_server: Vec<Vec<u8>>,
}

/// What to do with a frame from the server.
#[derive(Debug)]
pub struct ServerAction {
    /// Bytes for the client (the server's own bytes unless filtered);
    /// `None`: nothing (a late answer to a request already answered).
    pub send: Option<Vec<u8>>,
    /// The request this frame answered, to complete after sending.
    pub completion: Option<Completion>,
}

/// A forwarded request waiting for its answer.
#[derive(Debug)]
pub struct Ticket {
    row: AuditRow,
    started: Instant,
    /// Counter reservations with the generation each was taken from:
    /// the enforced policy's first (if the call was allowed), then the
    /// shadow policies'.
    reservations: SmallVec<[(Arc<Generation>, Reservation); 2]>,
    /// Journaled with `Recorder::begin` (an allowed tool call).
    begun: bool,
    tools_list: bool,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("policy", &self.policy().sha256)
            .finish()
    }
}

/// How a request ended, ready to be written into its row.
#[derive(Debug)]
pub struct Completion {
    ticket: Ticket,
    outcome: Outcome,
    error_code: Option<i64>,
    error_message: Option<String>,
    response_bytes: usize,
}

#[derive(Debug, Default, Clone)]
struct ClientInfo {
    name: Option<String>,
    version: Option<String>,
}

/// One client's session on a [`Gateway`].
pub struct Session {
    gateway: Arc<Gateway>,
    id: String,
    transport: Transport,
    client: Mutex<ClientInfo>,
    server: Mutex<String>,
    categories: Mutex<HashMap<String, Category>>,
    /// What the pins decided for each tool this session saw listed.
    pins: crate::proxy::pins::SessionPins,
    pending: Mutex<HashMap<String, Ticket>>,
    /// The agent the transport established (an HTTP bearer token's), which
    /// the client cannot override; `None`: `--agent` or the client's name.
    agent: Mutex<Option<String>>,
    /// Ids the client already got an answer for from the proxy (timed out
    /// or cancelled): a late answer from the server is dropped.
    abandoned: Mutex<std::collections::HashSet<String>>,
    /// The client said it can show elicitation forms.
    can_elicit: Mutex<bool>,
    /// Held calls by pending key → approval id (for cancellation).
    held: Mutex<HashMap<String, u64>>,
    /// The proxy's own `elicitation/create` requests awaiting the client's
    /// answer: request id (JSON text) → approval id.
    asks: Mutex<HashMap<String, u64>>,
    /// Multi-round calls: the `requestState` of each input-required result
    /// the server sent in this session → (the call's first `event_id`, the
    /// round that result ended). A retry carrying one continues that call.
    rounds: Mutex<HashMap<String, Round>>,
}

/// A round of a multi-round call the server ended with an input-required
/// result: the call it belongs to, which a retry must repeat exactly.
#[derive(Debug, Clone)]
struct Round {
    /// The call's first `event_id`.
    first: String,
    /// The round that result ended.
    round: u64,
    tool: String,
    args_sha256: String,
}

/// At most this many rounds are remembered per session (clients that
/// never retry): the oldest are forgotten first.
const MAX_ROUNDS: usize = 10_000;

impl Session {
    pub(crate) fn new(
        gateway: Arc<Gateway>,
        transport: Transport,
        id: Option<String>,
        server_guess: String,
    ) -> Self {
        let server = gateway.config().server_name.clone().unwrap_or(server_guess);
        Session {
            gateway,
            id: id.unwrap_or_else(new_uuid_v7),
            agent: Mutex::new(None),
            transport,
            client: Mutex::new(ClientInfo::default()),
            server: Mutex::new(server),
            categories: Mutex::new(HashMap::new()),
            pins: Default::default(),
            pending: Mutex::new(HashMap::new()),
            abandoned: Mutex::new(std::collections::HashSet::new()),
            can_elicit: Mutex::new(false),
            held: Mutex::new(HashMap::new()),
            asks: Mutex::new(HashMap::new()),
            rounds: Mutex::new(HashMap::new()),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Takes over what `from` learned from its handshake (the client's and
    /// the server's names): the session an HTTP server's `Mcp-Session-Id`
    /// starts, after the `initialize` that created it ran without one.
    pub fn inherit(&self, from: &Session) {
        *lock(&self.client) = lock(&from.client).clone();
        *lock(&self.server) = lock(&from.server).clone();
        *lock(&self.can_elicit) = *lock(&from.can_elicit);
    }

    /// Whether any request of this session is waiting for its answer.
    pub fn has_pending(&self) -> bool {
        !lock(&self.pending).is_empty()
    }

    /// Sets the agent for the session's next requests (a transport's
    /// authenticated identity).
    pub fn set_agent(&self, agent: Option<String>) {
        *lock(&self.agent) = agent;
    }

    fn agent(&self) -> String {
        if let Some(a) = lock(&self.agent).clone() {
            return a;
        }
        if let Some(a) = &self.gateway.config().agent {
            return a.clone();
        }
        lock(&self.client)
            .name
            .clone()
            .unwrap_or_else(|| "unknown".into())
    }

    /// A row for a request received now, under the current policy.
    fn base_row(&self, method: &str, id: Option<String>, request_bytes: usize) -> AuditRow {
        let sha = self.gateway.current().policy().sha256.clone();
        self.row_under(sha, method, id, request_bytes)
    }

    /// A row for a request received now, decided under the policy `sha`.
    fn row_under(
        &self,
        policy_sha256: String,
        method: &str,
        id: Option<String>,
        request_bytes: usize,
    ) -> AuditRow {
        let client = lock(&self.client).clone();
        AuditRow {
            event_id: new_uuid_v7(),
            ts_us: crate::time::now_us(),
            session_id: self.id.clone(),
            agent_id: self.agent(),
            client_name: client.name,
            client_version: client.version,
            server: lock(&self.server).clone(),
            transport: self.transport,
            method: method.into(),
            jsonrpc_id: id,
            policy_sha256,
            request_bytes: request_bytes as u64,
            ..AuditRow::default()
        }
    }

    /// A refused frame: records its row and returns the answer for the client.
    fn refuse_frame(&self, mut row: AuditRow, rule: &str, reason: Option<String>) -> AuditRow {
        row.decision = Verdict::Deny.into();
        row.rule = Some(rule.into());
        row.reason = reason;
        row.outcome = Outcome::NotForwarded;
        row
    }

    /// A client frame longer than the transport accepts (it was not kept):
    /// recorded, and answered with a JSON-RPC error.
    pub fn on_oversized_client_frame(&self, bytes: usize, max: usize) -> Vec<u8> {
        let row = self.base_row("<invalid>", None, bytes);
        self.gateway
            .record(self.refuse_frame(row, "(message too large)", None));
        jsonrpc::error_frame(
            None,
            -32600,
            &format!("flightrec: message of {bytes} bytes exceeds --max-message-bytes ({max})"),
        )
    }

    /// Decides what happens to one frame from the client.
    pub fn on_client_frame(&self, frame: Vec<u8>) -> ClientAction {
        self.on_client_frame_in("", frame)
    }

    /// As [`Session::on_client_frame`], for a transport on which every
    /// request has its own exchange (an HTTP POST): requests are told apart
    /// by `scope` plus their id, so two clients sharing a session may use
    /// the same ids. Answers go through [`Session::on_server_frame_in`]
    /// with the same scope.
    pub fn on_client_frame_in(&self, scope: &str, frame: Vec<u8>) -> ClientAction {
        self.on_client_frame_with(scope, frame, self.transport == Transport::Stdio)
    }

    /// As [`Session::on_client_frame_in`]; `in_band`: the transport can
    /// send the client the proxy's own request before this one's answer
    /// (stdio; an HTTP POST answered with an SSE stream), so a 2025-11-25
    /// approval can be asked in the client.
    pub fn on_client_frame_with(&self, scope: &str, frame: Vec<u8>, in_band: bool) -> ClientAction {
        if frame.iter().all(|b| b.is_ascii_whitespace()) {
            return ClientAction::Ignore;
        }
        // The frame moves on unchanged unless the proxy answers it: no copy.
        match self.route(&frame, scope, in_band) {
            Route::Forward => ClientAction::Forward(frame),
            Route::Answer(answer) => ClientAction::Respond(answer),
            Route::Drop => ClientAction::Ignore,
            Route::Hold(mut held) => {
                held.frame = frame;
                ClientAction::Hold(held)
            }
            Route::ForwardStripped => match jsonrpc::strip_retry_fields(&frame) {
                Some(bytes) => ClientAction::Forward(bytes),
                // It parsed a moment ago: cannot happen; never forward it as is.
                None => ClientAction::Ignore,
            },
        }
    }

    /// `None`: forward the frame; `Some`: answer the client with these bytes.
    fn route(&self, frame: &[u8], scope: &str, in_band: bool) -> Route {
        // A JSON-RPC batch: MCP has had none since 2025-06-18, and a server
        // that still runs them would run what the proxy did not decide.
        if frame.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Route::refused(self.refuse(
                "<batch>",
                None,
                frame.len(),
                "(batch refused)",
                -32600,
                "flightrec: JSON-RPC batches are not forwarded (MCP has no batches); send each message on its own",
            ));
        }
        let env: Envelope = match serde_json::from_slice(frame) {
            Ok(e) => e,
            Err(e) => {
                let mut row = self.refuse_frame(
                    self.base_row("<invalid>", None, frame.len()),
                    "(parse error)",
                    Some(e.to_string()),
                );
                row.error_code = Some(-32700);
                self.gateway.record(row);
                return Route::Answer(jsonrpc::error_frame(
                    None,
                    -32700,
                    &format!("Parse error: {e}"),
                ));
            }
        };
        if let Some(variant) = &env.variant {
            // A member a case-insensitive server would read as `method`,
            // `params`, …: the proxy would decide one message and the server
            // run another.
            let message = format!(
                "flightrec: the message has a member `{variant}`, which differs from a JSON-RPC member only by case; it is not forwarded (servers disagree on how to read it)"
            );
            let id = match env.id_kind() {
                IdKind::Valid(id) => Some(id),
                _ => None,
            };
            let method = env.method.clone().unwrap_or_else(|| "<invalid>".into());
            return Route::refused(self.refuse(
                &method,
                id,
                frame.len(),
                AMBIGUOUS_RULE,
                -32600,
                &message,
            ));
        }
        let Some(method) = env.method.as_deref() else {
            // The client's answer to the proxy's own question: consumed here.
            if let Some(id) = env.id_text()
                && let Some(approval) = lock(&self.asks).remove(&id)
            {
                self.on_form_answer(approval, &env);
                return Route::Drop;
            }
            return Route::Forward; // a response to a server request, or junk the server rejects
        };
        let id = match env.id_kind() {
            IdKind::Valid(id) => id,
            IdKind::Missing if method == "notifications/cancelled" => {
                // Forwarded, and the request's row completes as cancelled.
                if let Some(request) = jsonrpc::cancelled_request(env.params) {
                    let key = self.in_flight_key(scope, &request);
                    // A held call: its wait ends, nothing reached the server.
                    if let Some(approval) = lock(&self.held).remove(&key) {
                        let _ = self
                            .gateway
                            .approvals()
                            .answer(approval, crate::proxy::approval::Answer::Cancelled);
                        return Route::Drop;
                    }
                    let ticket = lock(&self.pending).remove(&key);
                    if let Some(mut t) = ticket {
                        self.abandon(key);
                        settle_all(std::mem::take(&mut t.reservations), Outcome::Cancelled);
                        t.row.outcome = Outcome::Cancelled;
                        self.finish(t);
                    }
                }
                return Route::Forward;
            }
            IdKind::Missing if method != "tools/call" => return Route::Forward, // a notification
            IdKind::Missing => {
                // A tools/call the client expects no answer to: the server
                // might still run it. Refused and recorded; nothing to answer.
                self.refuse(
                    method,
                    None,
                    frame.len(),
                    "(tools/call without id)",
                    -32600,
                    "",
                );
                return Route::Drop;
            }
            IdKind::Null | IdKind::Invalid => {
                return Route::refused(self.refuse(
                    method,
                    None,
                    frame.len(),
                    "(invalid id)",
                    -32600,
                    "flightrec: a request id must be a string or an integer",
                ));
            }
        };
        let key = scoped(scope, &id);
        if lock(&self.pending).contains_key(&key) || lock(&self.held).contains_key(&key) {
            // Its answer could not be told from the first one's: one of the
            // two calls would go unrecorded.
            let message = format!("flightrec: request id {id} is already in flight");
            return Route::refused(self.refuse(
                method,
                Some(id),
                frame.len(),
                "(id in flight)",
                -32600,
                &message,
            ));
        }
        if let Some((name, version)) = jsonrpc::client_info(method, env.params) {
            *lock(&self.client) = ClientInfo {
                name: Some(name),
                version,
            };
        }
        if let Some(can) = jsonrpc::client_can_elicit(method, env.params) {
            *lock(&self.can_elicit) = can;
        }
        if method == "tools/call" {
            return self.on_tool_call(&env, Some(id), key, frame.len(), in_band);
        }
        let row = self.base_row(method, Some(id), frame.len());
        lock(&self.pending).insert(
            key,
            Ticket {
                row,
                started: Instant::now(),
                reservations: SmallVec::new(),
                begun: false,
                tools_list: method == "tools/list",
            },
        );
        Route::Forward
    }

    /// The key a client's cancellation names: its request in this exchange,
    /// else (on a transport where each request has its own exchange, HTTP)
    /// the one request of the session waiting under that id, if exactly one
    /// does; a cancellation comes on another POST than its request.
    fn in_flight_key(&self, scope: &str, request: &str) -> String {
        let key = scoped(scope, request);
        if scope.is_empty()
            || lock(&self.pending).contains_key(&key)
            || lock(&self.held).contains_key(&key)
        {
            return key;
        }
        let suffix = scoped("x", request);
        let suffix = &suffix[1..];
        let matching = |keys: &mut dyn Iterator<Item = &String>| -> Vec<String> {
            keys.filter(|k| k.ends_with(suffix))
                .take(2)
                .cloned()
                .collect()
        };
        let mut found = matching(&mut lock(&self.pending).keys());
        found.extend(matching(&mut lock(&self.held).keys()));
        match found.as_slice() {
            [only] => only.clone(),
            _ => key,
        }
    }

    /// Refuses a frame for a reason the transport found (an HTTP header that
    /// does not match the body, a missing token): records its row and
    /// returns the JSON-RPC error for the client.
    pub fn reject(&self, frame: &[u8], rule: &str, code: i64, message: &str) -> Vec<u8> {
        let (method, id) = match serde_json::from_slice::<Envelope>(frame) {
            Ok(env) => (
                env.method.clone().unwrap_or_else(|| "<invalid>".into()),
                match env.id_kind() {
                    IdKind::Valid(id) => Some(id),
                    _ => None,
                },
            ),
            Err(_) => ("<invalid>".into(), None),
        };
        self.refuse(&method, id, frame.len(), rule, code, message)
            .unwrap_or_default()
    }

    /// Ends a forwarded request the transport could not get an answer for
    /// (the upstream is down, timed out or answered with an HTTP error):
    /// completes its row with `outcome` and returns the JSON-RPC error for
    /// the client. `None` when no such request is waiting.
    pub fn fail_request(
        &self,
        id: &str,
        outcome: Outcome,
        code: i64,
        message: &str,
    ) -> Option<Vec<u8>> {
        let mut t = lock(&self.pending).remove(id)?;
        settle_all(std::mem::take(&mut t.reservations), outcome);
        t.row.outcome = outcome;
        t.row.error_code = Some(code);
        t.row.error_message = Some(message.to_string());
        let raw = t
            .row
            .jsonrpc_id
            .as_deref()
            .and_then(|text| RawValue::from_string(text.to_string()).ok());
        self.finish(t);
        Some(jsonrpc::error_frame(raw.as_deref(), code, message))
    }

    /// Refuses a frame: records its row and returns the JSON-RPC error for
    /// the client (with the frame's id when it has a usable one).
    fn refuse(
        &self,
        method: &str,
        id: Option<String>,
        bytes: usize,
        rule: &str,
        code: i64,
        message: &str,
    ) -> Option<Vec<u8>> {
        let raw = id
            .as_deref()
            .and_then(|t| RawValue::from_string(t.to_string()).ok());
        let mut row = self.refuse_frame(
            self.base_row(method, id, bytes),
            rule,
            (!message.is_empty()).then(|| message.to_string()),
        );
        row.error_code = Some(code);
        self.gateway.record(row);
        Some(jsonrpc::error_frame(raw.as_deref(), code, message))
    }

    /// Decides a `tools/call`: forward it, answer it, or hold it.
    fn on_tool_call(
        &self,
        env: &Envelope<'_>,
        id: Option<String>,
        key: String,
        bytes: usize,
        in_band: bool,
    ) -> Route {
        let mut other = None;
        let answer = self.decide_tool_call(env, id, key, bytes, in_band, &mut other);
        match (other, answer) {
            (Some(route), _) => route,
            (None, None) => Route::Forward,
            (None, Some(answer)) => Route::Answer(answer),
        }
    }

    /// `None`: forward; `Some`: answer. An approval sets `other` instead (a
    /// hold, or an approved retry forwarded without its retry fields).
    fn decide_tool_call(
        &self,
        env: &Envelope<'_>,
        id: Option<String>,
        key: String,
        bytes: usize,
        in_band: bool,
        other: &mut Option<Route>,
    ) -> Option<Vec<u8>> {
        let modern = jsonrpc::speaks_2026(env.params);
        if let Some(p) = env.params {
            let problem = match jsonrpc::ambiguity(p.get(), &jsonrpc::TOOL_CALL_MEMBERS) {
                Ok(found) => found,
                Err(e) => Some(format!("could not be read ({e})")),
            };
            if let Some(problem) = problem {
                let exact_repeat = problem.contains("repeats the member");
                return self.refuse(
                    "tools/call",
                    id,
                    bytes,
                    if exact_repeat {
                        "(duplicate keys)"
                    } else {
                        AMBIGUOUS_RULE
                    },
                    -32600,
                    &format!(
                        "flightrec: a tools/call is not forwarded when its params could be read two ways: params: {problem}"
                    ),
                );
            }
        }
        // Only an object: serde would also read `["name", {args}]` as the
        // same params, and a server may read an array otherwise.
        let params: Option<ToolCallParams> = env
            .params
            .filter(|p| p.get().trim_start().starts_with('{'))
            .and_then(|p| serde_json::from_str(p.get()).ok());
        let Some(params) = params else {
            let row = self.base_row("tools/call", id, bytes);
            self.gateway
                .record(self.refuse_frame(row, "(invalid request)", None));
            return Some(jsonrpc::error_frame(
                env.id,
                -32602,
                "flightrec: tools/call needs params with a tool `name`",
            ));
        };
        // The policy hash is the deciding generation's, filled in below.
        let mut row = self.row_under(String::new(), "tools/call", id.clone(), bytes);
        let known = lock(&self.categories).get(&params.name).copied();
        let hash = args_sha256(&params.arguments);
        // A tool whose definition changed (or is not pinned, or looks
        // poisoned) is refused before the policy counts anything.
        let pin_warning = match self.pins.check_call(&params.name) {
            crate::proxy::pins::CallCheck::Pass => None,
            crate::proxy::pins::CallCheck::Warn(reason) => {
                eprintln!("flightrec: warning: allowing a call: {reason}");
                Some(reason)
            }
            crate::proxy::pins::CallCheck::Refuse { rule, reason } => {
                let (redacted, _) = redact(&params.arguments, &self.gateway.config().redact);
                row.policy_sha256 = self.gateway.current().policy().sha256.clone();
                row.tool = Some(params.name.clone());
                row.category =
                    Some(known.unwrap_or_else(|| Category::from_tool_name(&params.name)));
                row.args_json = Some(canonical_json(&redacted));
                row.args_sha256 = Some(hash);
                let row = self.refuse_frame(row, rule, Some(reason.clone()));
                self.gateway.record(row);
                return Some(jsonrpc::refusal_frame(
                    env.id,
                    &format!("[flightrec] refused: {reason}"),
                    json!({"decision": "deny", "rule": rule, "message": reason}),
                    modern,
                ));
            }
        };
        let call = Call {
            ts_us: row.ts_us,
            session: &row.session_id,
            agent: &row.agent_id,
            server: &row.server,
            tool: &params.name,
            category: Some(known.unwrap_or_else(|| Category::from_tool_name(&params.name))),
            risk: None,
            args: &params.arguments,
            args_sha256: Some(&hash),
        };
        // A retry carrying a requestState the server sent in this session
        // for this very call (same tool, same canonical arguments), not used
        // before, continues that call: decided again, counted once (in its
        // first round). Any other state is a new call, decided and counted
        // as one (and the state stays for the call it was issued to).
        let continues = params
            .request_state
            .as_deref()
            .filter(|s| !crate::proxy::approval::is_ours(s))
            .and_then(|s| {
                let mut rounds = lock(&self.rounds);
                let same_call = rounds
                    .get(s)
                    .is_some_and(|r| r.tool == params.name && r.args_sha256 == hash);
                if same_call { rounds.remove(s) } else { None }
            })
            .map(|r| (r.first, r.round));
        let decide = |policy: &crate::policy::Policy,
                      state: &mut (dyn crate::policy::CounterStore + Send)| {
            if continues.is_some() {
                policy.decide_continuation(state, &call)
            } else {
                policy.decide(state, &call)
            }
        };
        // Policy and counters as one unit: the decision, its reservation and
        // the policy hash in the row all come from the same generation.
        let decided = self.gateway.with_current(|generation, state| {
            // An argument the policy reads, written so that the policy and a
            // server would read different values: with another case, inside
            // a string holding JSON, or a number as text.
            if let Some(variant) = generation.arg_reads().iter().find_map(|(path, numeric)| {
                jsonrpc::misread_on_path(&params.arguments, path, *numeric)
            }) {
                return Err(variant);
            }
            let policy = generation.policy();
            let (category, risk) = policy.classify(&params.name, call.category, None);
            let decision = decide(policy, state);
            Ok((generation.clone(), decision, category, risk))
        });
        let (generation, decision, category, risk) = match decided {
            Ok(d) => d,
            Err(variant) => {
                if let Some((first, round)) = continues {
                    // Not this call's continuation after all: it stays usable.
                    if let Some(state) = params.request_state.clone() {
                        self.remember_round(state, first, round, &params.name, &hash);
                    }
                }
                return self.refuse(
                    "tools/call",
                    id,
                    bytes,
                    AMBIGUOUS_RULE,
                    -32600,
                    &format!(
                        "flightrec: a tools/call is not forwarded when the policy and a server could read an argument the policy reads differently: {variant}"
                    ),
                );
            }
        };
        let mut reservations: SmallVec<[(Arc<Generation>, Reservation); 2]> = SmallVec::new();
        let shadow: Vec<ShadowDecision> = self
            .gateway
            .shadows()
            .iter()
            .map(|g| {
                let d = decide(g.policy(), &mut **g.state());
                if !d.reservation.is_empty() {
                    reservations.push((g.clone(), d.reservation));
                }
                ShadowDecision {
                    policy_sha256: g.policy().sha256.clone(),
                    decision: d.verdict,
                    rule: d.rule.as_deref().map(str::to_string),
                }
            })
            .collect();
        let (redacted, _) = redact(&params.arguments, &self.gateway.config().redact);
        row.policy_sha256 = generation.policy().sha256.clone();
        row.tool = Some(params.name.clone());
        row.category = Some(category);
        row.risk = Some(risk);
        row.args_json = Some(canonical_json(&redacted));
        row.args_sha256 = Some(hash.clone());
        row.decision = decision.verdict.into();
        row.rule = decision.rule.as_deref().map(str::to_string);
        row.reason = match (decision.message.as_deref(), pin_warning) {
            (Some(m), Some(w)) => Some(format!("{m}; {w}")),
            (m, w) => m.map(str::to_string).or(w),
        };
        row.retry_after_ms = decision.retry_after_ms;
        row.shadow = shadow;
        if let Some((first, round)) = continues {
            row.continues = Some(first);
            row.round = Some(round + 1);
        }
        if decision.verdict == Verdict::Allow {
            // Journaled before forwarding: a crash from here on leaves a row.
            if let Err(e) = self.gateway.begin(row.clone()) {
                generation.settle(decision.reservation, Outcome::NotForwarded);
                settle_all(reservations, Outcome::NotForwarded);
                eprintln!("flightrec: AUDIT LOG ERROR, refusing the call (fail closed): {e}");
                return Some(jsonrpc::refusal_frame(
                    env.id,
                    "[flightrec] refused: the audit log cannot be written, so the call is not forwarded",
                    json!({"decision": "deny", "rule": "(audit unavailable)"}),
                    modern,
                ));
            }
            reservations.insert(0, (generation, decision.reservation));
            let ticket = Ticket {
                row,
                started: Instant::now(),
                reservations,
                begun: self.gateway.recording(),
                tools_list: false,
            };
            if id.is_some() {
                lock(&self.pending).insert(key, ticket);
            }
            return None;
        }
        // A shadow policy that allowed what the enforced one refused would
        // have forwarded the call: it counts, as replay counts a recorded
        // refusal that a candidate allows.
        settle_all(reservations, Outcome::Ok);
        if decision.verdict == Verdict::Approval {
            let category = call.category;
            let ask = AskContext {
                env,
                params: &params,
                key,
                row,
                redacted: &redacted,
                hash: &hash,
                category,
                modern,
                rule: decision.rule.as_deref().unwrap_or(""),
                message: decision.message.as_deref().unwrap_or(""),
                policy_sha256: generation.policy().sha256.clone(),
                in_band,
            };
            return match self.ask_approval(ask) {
                Ok(route) => {
                    *other = Some(route);
                    None
                }
                Err(answer) => Some(answer),
            };
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
        row.outcome = Outcome::NotForwarded;
        self.gateway.record(row);
        Some(jsonrpc::refusal_frame(
            env.id,
            &text,
            json!({"decision": decision.verdict.as_str(), "rule": decision.rule.as_deref(), "message": decision.message.as_deref(), "retry_after_ms": decision.retry_after_ms}),
            modern,
        ))
    }

    /// A call the policy sends for approval: asked in the client (a
    /// 2026-07-28 input-required result, or a 2025-11-25 `elicitation/create`
    /// on stdio), else in the local queue; refused when there is no way to
    /// ask. `Ok`: the route (hold, or forward an approved retry); `Err`:
    /// the answer for the client, already recorded.
    fn ask_approval(&self, a: AskContext<'_, '_>) -> Result<Route, Vec<u8>> {
        use crate::audit::schema::ApprovalOutcome;
        use crate::proxy::approval::{self, HeldCall, StateClaims};
        let via = self.gateway.config().approve_via;
        let can_elicit = *lock(&self.can_elicit) && via.client();
        let server = a.row.server.clone();
        let reason = a.message.trim_end();
        let stop = if reason.ends_with(['.', '!', '?']) {
            ""
        } else {
            "."
        };
        let question = format!(
            "flightrec: agent \"{}\" (session {}) wants to call {} on {} with arguments {}. Policy rule \"{}\" requires a human's approval: {reason}{stop} Approve this one call?",
            a.row.agent_id,
            a.row.session_id,
            a.params.name,
            server,
            canonical_json(a.redacted),
            a.rule,
        );
        if a.modern {
            if let Some(state) = a
                .params
                .request_state
                .as_deref()
                .filter(|s| approval::is_ours(s))
            {
                return self.approved_retry(a, state);
            }
            if can_elicit {
                // The question travels in the result; the client retries
                // with the answer and this state, bound to this very call.
                let now_ms = (crate::time::now_us() / 1000) as u64;
                let claims = StateClaims {
                    v: 1,
                    s: self.id.clone(),
                    t: a.params.name.clone(),
                    a: a.hash.to_string(),
                    p: a.policy_sha256.clone(),
                    i: now_ms,
                    e: now_ms + self.gateway.config().approval_timeout().as_millis() as u64,
                    n: new_uuid_v7(),
                };
                let state = approval::seal(self.gateway.state_key(), &claims);
                let mut row = a.row;
                row.approval = Some(ApprovalOutcome::Pending);
                row.outcome = Outcome::NotForwarded;
                self.gateway.record(row);
                return Err(jsonrpc::input_required_frame(
                    a.env.id,
                    APPROVAL_KEY,
                    &question,
                    &state,
                ));
            }
        }
        let ask_in_client = can_elicit && !a.modern && a.in_band;
        if !ask_in_client && (!via.queue() || self.gateway.approvals().socket().is_none()) {
            return Err(self.refuse_approval(
                a.env.id,
                a.row,
                None,
                None,
                a.rule,
                &format!(
                    "it requires approval ({}), and there is no way to ask: {}",
                    a.message,
                    match via {
                        crate::proxy::gateway::ApproveVia::Client => {
                            "approvals come only from the client (--approve-via client), and it cannot show an approval form here"
                        }
                        crate::proxy::gateway::ApproveVia::Queue => {
                            "approvals come only from the local queue (--approve-via queue), and none is open"
                        }
                        crate::proxy::gateway::ApproveVia::Both => {
                            "the client cannot show an approval form and no local approval queue is open"
                        }
                    }
                ),
                a.modern,
            ));
        }
        let held = self.gateway.approvals().hold(HeldCall {
            id: 0,
            tool: a.params.name.clone(),
            session: self.id.clone(),
            agent: a.row.agent_id.clone(),
            args: a.redacted.clone(),
            rule: a.rule.to_string(),
            reason: a.message.to_string(),
            waiting_ms: 0,
        });
        let (approval_id, answer) = match held {
            Ok(held) => held,
            Err(refused) => {
                let why = match refused {
                    approval::HoldRefused::Full => format!(
                        "{} calls are already waiting for a human (the most the proxy holds at once); try again later",
                        approval::MAX_HELD
                    ),
                    approval::HoldRefused::AgentFull => format!(
                        "agent \"{}\" already has {} calls waiting for a human (the most one agent may have); try again later",
                        a.row.agent_id,
                        approval::MAX_HELD_PER_AGENT
                    ),
                };
                return Err(
                    self.refuse_approval(a.env.id, a.row, None, None, a.rule, &why, a.modern)
                );
            }
        };
        lock(&self.held).insert(a.key.clone(), approval_id);
        let (ask, ask_id) = if ask_in_client {
            let id = format!("flightrec-approval-{approval_id}");
            let id_text = serde_json::to_string(&id).expect("a string");
            lock(&self.asks).insert(id_text.clone(), approval_id);
            (
                Some(jsonrpc::elicitation_frame(&id, &question)),
                Some(id_text),
            )
        } else {
            (None, None)
        };
        Ok(Route::Hold(Box::new(Held {
            ask,
            approval_id,
            answer,
            frame: Vec::new(),
            key: a.key,
            row: a.row,
            tool: a.params.name.clone(),
            args: a.params.arguments.clone(),
            args_hash: a.hash.to_string(),
            category: a.category,
            modern: a.modern,
            started: Instant::now(),
            ask_id,
        })))
    }

    /// A 2026-07-28 retry carrying the proxy's own `requestState`: checked
    /// (authentic, this session, this tool, these arguments, this policy,
    /// not expired, not used before), then the answer read from
    /// `inputResponses`.
    fn approved_retry(&self, a: AskContext<'_, '_>, state: &str) -> Result<Route, Vec<u8>> {
        use crate::audit::schema::ApprovalOutcome;
        use crate::proxy::approval;
        let now_ms = (crate::time::now_us() / 1000) as u64;
        let problem = match approval::open(self.gateway.state_key(), state) {
            _ if !self.gateway.config().approve_via.client() => {
                Some("approvals do not come from the client (--approve-via queue)".into())
            }
            Err(why) => Some(format!("its requestState is {why}")),
            Ok(c) if c.s != self.id => Some("its requestState belongs to another session".into()),
            Ok(c) if c.t != a.params.name => {
                Some("its requestState was issued for another tool".into())
            }
            Ok(c) if c.a != a.hash => {
                Some("its requestState was issued for other arguments".into())
            }
            Ok(c) if c.p != a.policy_sha256 => {
                Some("the policy changed since the approval was asked".into())
            }
            Ok(c) if now_ms > c.e => Some("its requestState has expired".into()),
            Ok(c) if !self.gateway.use_state_nonce(&c.n, c.e) => {
                Some("its requestState was already used".into())
            }
            Ok(c) => {
                let waited = now_ms.saturating_sub(c.i);
                let answer = a
                    .params
                    .input_responses
                    .as_ref()
                    .and_then(|r| r.get(APPROVAL_KEY))
                    .map(jsonrpc::form_answer)
                    .unwrap_or(jsonrpc::FormAnswer::No);
                let by = format!(
                    "client:{}",
                    a.row
                        .client_name
                        .clone()
                        .unwrap_or_else(|| "unknown".into())
                );
                let mut row = a.row;
                row.approval_ms = Some(waited);
                return match answer {
                    jsonrpc::FormAnswer::Yes => {
                        match self
                            .after_yes(row, by, a.env.id, a.key, a.params, a.hash, a.category, true)
                        {
                            Ok(()) => Ok(Route::ForwardStripped),
                            Err(answer) => Err(answer),
                        }
                    }
                    jsonrpc::FormAnswer::No => Err(self.refuse_approval(
                        a.env.id,
                        row,
                        Some(ApprovalOutcome::Denied),
                        Some(by),
                        a.rule,
                        "the approval was declined",
                        true,
                    )),
                    jsonrpc::FormAnswer::Cancel => Err(self.refuse_approval(
                        a.env.id,
                        row,
                        Some(ApprovalOutcome::Cancelled),
                        Some(by),
                        a.rule,
                        "the approval dialog was cancelled",
                        true,
                    )),
                };
            }
        };
        let problem = problem.unwrap_or_default();
        Err(self.refuse_approval(
            a.env.id,
            a.row,
            Some(ApprovalOutcome::Denied),
            None,
            a.rule,
            &format!("the retry is not approved: {problem}"),
            true,
        ))
    }

    /// A human said yes: the call is decided again with its approval rules
    /// passed (the rest of the policy, and its counters, as of now).
    /// Allowed: journaled and left pending (`Ok`: forward it). Refused by
    /// another rule: recorded and answered (`Err`).
    #[allow(clippy::too_many_arguments)]
    fn after_yes(
        &self,
        mut row: AuditRow,
        by: String,
        id: Option<&RawValue>,
        key: String,
        params: &ToolCallParams,
        hash: &str,
        category: Option<Category>,
        modern: bool,
    ) -> Result<(), Vec<u8>> {
        use crate::audit::schema::ApprovalOutcome;
        row.approval = Some(ApprovalOutcome::Granted);
        row.approved_by = Some(by.clone());
        let call = Call {
            ts_us: crate::time::now_us(),
            session: &row.session_id,
            agent: &row.agent_id,
            server: &row.server,
            tool: &params.name,
            category,
            risk: None,
            args: &params.arguments,
            args_sha256: Some(hash),
        };
        let (generation, d) = self
            .gateway
            .with_current(|g, state| (g.clone(), g.policy().decide_approved(state, &call)));
        if d.verdict == Verdict::Allow {
            row.policy_sha256 = generation.policy().sha256.clone();
            if let Err(e) = self.gateway.begin(row.clone()) {
                generation.settle(d.reservation, Outcome::NotForwarded);
                eprintln!("flightrec: AUDIT LOG ERROR, refusing the call (fail closed): {e}");
                return Err(jsonrpc::refusal_frame(
                    id,
                    "[flightrec] refused: the audit log cannot be written, so the call is not forwarded",
                    json!({"decision": "deny", "rule": "(audit unavailable)"}),
                    modern,
                ));
            }
            let mut reservations = SmallVec::new();
            reservations.push((generation, d.reservation));
            lock(&self.pending).insert(
                key,
                Ticket {
                    row,
                    started: Instant::now(),
                    reservations,
                    begun: self.gateway.recording(),
                    tools_list: false,
                },
            );
            return Ok(());
        }
        let rule = d.rule.as_deref().unwrap_or("");
        let message = d.message.as_deref().unwrap_or("");
        row.reason = Some(format!(
            "approved by {by}, then refused by rule \"{rule}\": {message}"
        ));
        row.retry_after_ms = d.retry_after_ms;
        row.outcome = Outcome::NotForwarded;
        self.gateway.record(row);
        let mut text = format!(
            "[flightrec] approved by {by}, but then {} by policy rule \"{rule}\": {message}",
            match d.verdict {
                Verdict::Throttle => "throttled",
                _ => "denied",
            }
        );
        if let Some(ms) = d.retry_after_ms {
            text.push_str(&format!(" Retry after {ms} ms."));
        }
        Err(jsonrpc::refusal_frame(
            id,
            &text,
            json!({"decision": d.verdict.as_str(), "rule": rule, "message": message, "retry_after_ms": d.retry_after_ms, "approval": "granted"}),
            modern,
        ))
    }

    /// Refuses a call that needed approval and did not get it: records the
    /// row (with how the approval ended) and returns the client's answer,
    /// naming the rule.
    #[allow(clippy::too_many_arguments)]
    fn refuse_approval(
        &self,
        id: Option<&RawValue>,
        mut row: AuditRow,
        approval: Option<crate::audit::schema::ApprovalOutcome>,
        by: Option<String>,
        rule: &str,
        why: &str,
        modern: bool,
    ) -> Vec<u8> {
        let text =
            format!("[flightrec] refused: policy rule \"{rule}\" requires approval, and {why}.");
        row.approval = approval;
        row.approved_by = by;
        row.outcome = Outcome::NotForwarded;
        row.reason = Some(text.clone());
        self.gateway.record(row);
        jsonrpc::refusal_frame(
            id,
            &text,
            json!({"decision": "approval", "rule": rule, "approval": approval.map(|a| a.to_string())}),
            modern,
        )
    }

    /// The client's answer to one of the proxy's `elicitation/create`
    /// requests: yes, no or cancel for the held call (a malformed answer
    /// or an error is a no).
    fn on_form_answer(&self, approval: u64, env: &Envelope<'_>) {
        use crate::proxy::approval::Answer;
        let by = format!(
            "client:{}",
            lock(&self.client)
                .name
                .clone()
                .unwrap_or_else(|| "unknown".into())
        );
        let result: Value = env
            .result
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .unwrap_or(Value::Null);
        let answer = match jsonrpc::form_answer(&result) {
            jsonrpc::FormAnswer::Yes => Answer::Granted { by },
            jsonrpc::FormAnswer::Cancel => Answer::Cancelled,
            jsonrpc::FormAnswer::No => Answer::Denied {
                by,
                reason: env
                    .error
                    .map(|e| format!("the client answered with an error: {}", e.get())),
            },
        };
        let _ = self.gateway.approvals().answer(approval, answer);
    }

    /// Waits (on the calling thread: a transport runs this off its reading
    /// path) for the answer to a held call, at most `--approval-timeout`,
    /// then forwards or refuses it: `Forward` the call's bytes to the
    /// server, or `Respond` to the client.
    pub fn wait_held(&self, held: Held) -> ClientAction {
        let action = self.wait_held_inner(held);
        self.gateway.approvals().done();
        action
    }

    fn wait_held_inner(&self, held: Held) -> ClientAction {
        use crate::audit::schema::ApprovalOutcome;
        use crate::proxy::approval::Answer;
        let timeout = self.gateway.config().approval_timeout();
        let answer = match held.answer.recv_timeout(timeout) {
            Ok(a) => a,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                self.gateway.approvals().forget(held.approval_id);
                Answer::Timeout
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Answer::Denied {
                by: "flightrec".into(),
                reason: Some("the approval channel broke".into()),
            },
        };
        lock(&self.held).remove(&held.key);
        if let Some(ask) = &held.ask_id {
            lock(&self.asks).remove(ask);
        }
        let id_raw = held
            .row
            .jsonrpc_id
            .as_deref()
            .and_then(|t| RawValue::from_string(t.to_string()).ok());
        let mut row = held.row;
        row.approval_ms = Some(held.started.elapsed().as_millis() as u64);
        let rule = row.rule.clone().unwrap_or_default();
        let timeout_text;
        let (outcome, by, why) = match answer {
            Answer::Granted { by } => {
                let params = ToolCallParams {
                    name: held.tool,
                    arguments: held.args,
                    request_state: None,
                    input_responses: None,
                };
                return match self.after_yes(
                    row,
                    by,
                    id_raw.as_deref(),
                    held.key,
                    &params,
                    &held.args_hash,
                    held.category,
                    held.modern,
                ) {
                    Ok(()) => ClientAction::Forward(held.frame),
                    Err(answer) => ClientAction::Respond(answer),
                };
            }
            Answer::Denied { by, reason } => {
                let why = match reason {
                    Some(r) => format!("{by} denied it: {r}"),
                    None => format!("{by} denied it"),
                };
                (ApprovalOutcome::Denied, Some(by), why)
            }
            Answer::Timeout => {
                timeout_text = format!("nobody answered within {timeout:?}");
                (ApprovalOutcome::Timeout, None, timeout_text.clone())
            }
            Answer::Cancelled => (
                ApprovalOutcome::Cancelled,
                None,
                "the call was cancelled while it waited".to_string(),
            ),
        };
        ClientAction::Respond(self.refuse_approval(
            id_raw.as_deref(),
            row,
            Some(outcome),
            by,
            &rule,
            &why,
            held.modern,
        ))
    }

    /// Remembers the `requestState` an input-required result carried, for
    /// the retry of the same call.
    fn remember_round(&self, state: String, first: String, round: u64, tool: &str, hash: &str) {
        let mut rounds = lock(&self.rounds);
        if rounds.len() >= MAX_ROUNDS {
            rounds.clear(); // bounded: clients that never retry
        }
        rounds.insert(
            state,
            Round {
                first,
                round,
                tool: tool.to_string(),
                args_sha256: hash.to_string(),
            },
        );
    }

    /// Remembers an id the proxy answered itself, so that the server's late
    /// answer is not delivered as a second one.
    fn abandon(&self, id: String) {
        let mut set = lock(&self.abandoned);
        if set.len() >= 100_000 {
            set.clear(); // bounded: a server that never answers them all
        }
        set.insert(id);
    }

    /// Answers and records every request the server has kept waiting past
    /// `--upstream-timeout` as of `now`, and tells the server they are
    /// cancelled.
    pub fn expire(&self, now: Instant) -> Outbound {
        let mut out = Outbound::default();
        let Some(timeout) = self.gateway.config().upstream_timeout else {
            return out;
        };
        let expired: Vec<(String, Ticket)> = {
            let mut pending = lock(&self.pending);
            let ids: Vec<String> = pending
                .iter()
                .filter(|(_, t)| now.saturating_duration_since(t.started) >= timeout)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id).map(|t| (id, t)))
                .collect()
        };
        for (id, mut t) in expired {
            let request = t.row.jsonrpc_id.clone().unwrap_or_else(|| id.clone());
            let raw = RawValue::from_string(request.clone()).ok();
            let message = format!(
                "flightrec: the MCP server did not answer within {timeout:?} (--upstream-timeout)"
            );
            out.to_client
                .push(jsonrpc::error_frame(raw.as_deref(), -32001, &message));
            out.to_server.push(jsonrpc::cancelled_frame(
                &request,
                "flightrec: upstream timeout",
            ));
            self.abandon(id);
            settle_all(std::mem::take(&mut t.reservations), Outcome::Timeout);
            t.row.outcome = Outcome::Timeout;
            t.row.error_code = Some(-32001);
            t.row.error_message = Some(message);
            self.finish(t);
        }
        out
    }

    /// A server frame over the size limit (only its first bytes were
    /// kept): the request it answers gets an error and its row.
    pub fn on_oversized_server_frame(&self, head: &[u8], len: usize, limit: usize) -> ServerAction {
        self.on_oversized_server_frame_in("", head, len, limit)
    }

    /// As [`Session::on_oversized_server_frame`], for an answer that came
    /// back on the exchange `scope` (see [`Session::on_client_frame_in`]).
    pub fn on_oversized_server_frame_in(
        &self,
        scope: &str,
        head: &[u8],
        len: usize,
        limit: usize,
    ) -> ServerAction {
        let request = jsonrpc::top_level_id(head);
        let ticket = request
            .as_ref()
            .and_then(|id| lock(&self.pending).remove(&scoped(scope, id)));
        let Some(ticket) = ticket else {
            eprintln!(
                "flightrec: dropped a {len}-byte frame from the server (over the {limit}-byte limit; it answers no request in flight)"
            );
            return ServerAction {
                send: None,
                completion: None,
            };
        };
        let message = format!(
            "flightrec: the MCP server's answer ({len} bytes) exceeds --max-response-bytes ({limit}) and was not delivered"
        );
        let raw = request.and_then(|id| RawValue::from_string(id).ok());
        let mut ticket = ticket;
        ticket.row.latency_us = Some(ticket.started.elapsed().as_micros() as u64);
        settle_all(
            std::mem::take(&mut ticket.reservations),
            Outcome::ResponseTooLarge,
        );
        ServerAction {
            send: Some(jsonrpc::error_frame(raw.as_deref(), -32603, &message)),
            completion: Some(Completion {
                ticket,
                outcome: Outcome::ResponseTooLarge,
                error_code: Some(-32603),
                error_message: Some(message),
                response_bytes: len,
            }),
        }
    }

    /// What to send the client for one frame from the server.
    pub fn on_server_frame(&self, frame: Vec<u8>) -> ServerAction {
        self.on_server_frame_in("", frame)
    }

    /// As [`Session::on_server_frame`], for an answer that came back on the
    /// exchange `scope` (see [`Session::on_client_frame_in`]).
    pub fn on_server_frame_in(&self, scope: &str, frame: Vec<u8>) -> ServerAction {
        let Ok(env) = serde_json::from_slice::<Envelope>(&frame) else {
            return ServerAction {
                send: Some(frame),
                completion: None,
            };
        };
        if let Some(variant) = &env.variant {
            // The client could read it as an answer (or a request) the proxy
            // did not see as one: not delivered. A request it was meant to
            // answer ends by the upstream timeout.
            eprintln!(
                "flightrec: dropped a frame from the server with a member `{variant}`, which differs from a JSON-RPC member only by case"
            );
            return ServerAction {
                send: None,
                completion: None,
            };
        }
        let id = env
            .id_text()
            .filter(|_| env.is_response())
            .map(|id| scoped(scope, &id));
        let ticket = id.as_ref().and_then(|id| lock(&self.pending).remove(id));
        let Some(mut ticket) = ticket else {
            if let Some(id) = id
                && lock(&self.abandoned).remove(&id)
            {
                // The client already got the proxy's answer for it.
                return ServerAction {
                    send: None,
                    completion: None,
                };
            }
            return ServerAction {
                send: Some(frame),
                completion: None,
            };
        };
        // What later requests depend on is learned before the client can
        // send them: the server's name from a handshake result.
        if self.gateway.config().server_name.is_none()
            && matches!(ticket.row.method.as_str(), "initialize" | "server/discover")
            && let Some(name) = env.result.and_then(jsonrpc::server_name)
        {
            *lock(&self.server) = name;
        }
        let (mut outcome, mut error_code, mut error_message) = (Outcome::Ok, None, None);
        if let Some(err) = env.error {
            let v: Value = serde_json::from_str(err.get()).unwrap_or(Value::Null);
            outcome = Outcome::RpcError;
            error_code = v.get("code").and_then(Value::as_i64);
            error_message = v.get("message").and_then(Value::as_str).map(str::to_string);
        } else if let Some(result) = env.result
            && ticket.row.method == "tools/call"
            && let Ok(r) = serde_json::from_str::<jsonrpc::ToolResultHead>(result.get())
        {
            if r.is_error == Some(true) {
                outcome = Outcome::ToolError;
                error_message = r.first_text().map(|s| s.chars().take(500).collect());
            }
            if r.result_type.as_deref() == Some("input_required")
                && let Some(state) = r.request_state
            {
                // A round of a multi-round call: the client's retry with
                // this state continues it (counted once, here).
                let round = ticket.row.round.unwrap_or(1);
                ticket.row.round = Some(round);
                let first = ticket
                    .row
                    .continues
                    .clone()
                    .unwrap_or_else(|| ticket.row.event_id.clone());
                if let (Some(tool), Some(hash)) = (&ticket.row.tool, &ticket.row.args_sha256) {
                    let (tool, hash) = (tool.clone(), hash.clone());
                    self.remember_round(state, first, round, &tool, &hash);
                }
            }
        }
        let filtered = if ticket.tools_list {
            self.filter_tools_list(&env)
        } else {
            None
        };
        let response_bytes = frame.len();
        // The counters hear the outcome now, before the client does: a call
        // the client makes after this answer sees the state it left (and the
        // row's latency is this moment, which replay uses to time it).
        ticket.row.latency_us = Some(ticket.started.elapsed().as_micros() as u64);
        settle_all(std::mem::take(&mut ticket.reservations), outcome);
        ServerAction {
            send: Some(filtered.unwrap_or(frame)),
            completion: Some(Completion {
                ticket,
                outcome,
                error_code,
                error_message,
                response_bytes,
            }),
        }
    }

    /// Settles the request's reservations with its outcome and writes its row.
    pub fn complete(&self, c: Completion) {
        let mut t = c.ticket;
        settle_all(std::mem::take(&mut t.reservations), c.outcome);
        t.row.outcome = c.outcome;
        t.row.error_code = c.error_code;
        t.row.error_message = c.error_message;
        t.row.response_bytes = c.response_bytes as u64;
        self.finish(t);
    }

    fn finish(&self, mut t: Ticket) {
        if t.row.latency_us.is_none() {
            t.row.latency_us = Some(t.started.elapsed().as_micros() as u64);
        }
        if t.begun {
            self.gateway.complete(t.row);
        } else {
            self.gateway.record(t.row);
        }
    }

    /// Ends every request still waiting (the server is gone, or the proxy
    /// is stopping) with `outcome`; returns the error frames for the client.
    pub fn abandon_all(&self, outcome: Outcome, message: &str) -> Vec<Vec<u8>> {
        let waiting: Vec<Ticket> = lock(&self.pending).drain().map(|(_, t)| t).collect();
        let mut frames = Vec::with_capacity(waiting.len());
        for mut t in waiting {
            let id: Option<Box<RawValue>> = t
                .row
                .jsonrpc_id
                .as_deref()
                .and_then(|text| RawValue::from_string(text.to_string()).ok());
            frames.push(jsonrpc::error_frame(id.as_deref(), -32603, message));
            settle_all(std::mem::take(&mut t.reservations), outcome);
            t.row.outcome = outcome;
            self.finish(t);
        }
        frames
    }

    /// Learns categories from annotations and each tool's definition
    /// against the pins, and removes tools the policy always refuses and
    /// tools the pins hide. `None` when nothing changes (the original bytes
    /// go out).
    fn filter_tools_list(&self, env: &Envelope<'_>) -> Option<Vec<u8>> {
        let mut v: Value = serde_json::from_str(env.result?.get()).ok()?;
        let policy = self.gateway.current().policy().clone();
        let tools = v.get_mut("tools")?.as_array_mut()?;
        let hidden = match &self.gateway.config().pins {
            Some(guard) => {
                let server = lock(&self.server).clone();
                self.pins.learn(guard, &server, tools)
            }
            None => Vec::new(),
        };
        let mut hidden = hidden.into_iter();
        {
            let mut cats = lock(&self.categories);
            for t in tools.iter() {
                let Some(name) = t.get("name").and_then(Value::as_str) else {
                    continue;
                };
                if let Some(a) = t.get("annotations").filter(|a| a.is_object()) {
                    cats.insert(name.to_string(), Category::from_annotations(a));
                }
            }
        }
        let before = tools.len();
        tools.retain(|t| {
            !hidden.next().unwrap_or(false)
                && t.get("name")
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
}

/// The key a request waits under: its id, within its exchange's scope.
fn scoped(scope: &str, id: &str) -> String {
    if scope.is_empty() {
        id.to_string()
    } else {
        format!("{scope}\u{1f}{id}")
    }
}

/// Settles each reservation against the generation it was taken from.
fn settle_all(reservations: SmallVec<[(Arc<Generation>, Reservation); 2]>, outcome: Outcome) {
    for (g, r) in reservations {
        g.settle(r, outcome);
    }
}

// For the HTTP transport's admission checks (kept apart from the rest of
// the pipeline): a request refused on its headers alone, before its body
// was read.
impl Session {
    /// Refuses an HTTP request whose body was not read (no valid token, an
    /// origin that is not allowed, headers that cannot be trusted): records
    /// a row with method `<unread>`, `rule`, and `message` as its reason,
    /// and returns the JSON-RPC error (id null) for the client. `bytes`: the
    /// body length the request announced (0 when it named none).
    pub fn refuse_unread(&self, bytes: usize, rule: &str, code: i64, message: &str) -> Vec<u8> {
        self.refuse("<unread>", None, bytes, rule, code, message)
            .unwrap_or_default()
    }
}
