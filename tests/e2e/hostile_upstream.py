"""A hostile-but-realistic MCP upstream for flightrec's hardening tests.

It behaves the way real servers do where they differ from flightrec's own
reading of a frame, and writes down every tool it executes, read two ways:

- **go**: as Go's `encoding/json` reads into a struct: a member matches a
  field by exact name or, failing that, case-insensitively (Unicode simple
  folding), and the last matching member wins; objects read as maps keep
  the last of duplicate keys. Invalid UTF-8 becomes U+FFFD.
- **strict**: exact member names, duplicate keys make the frame unreadable.

Over HTTP it serves every verb (a body on PUT, PATCH, DELETE or any other
method is read like a POST's), decodes a body in the charset its
`Content-Type` names (as the TypeScript SDK does), issues `Mcp-Session-Id`
on `initialize` and ends a session on DELETE. A tool whose name starts
with `ask_` answers its first round with a 2026-07-28 `input_required`
result and a fresh `requestState`; any call carrying a `requestState` the
server issued completes (the server does not check that the state was
issued for this tool: many do not). Every other tool runs at once; over
HTTP, `sse_vanish` runs and then its SSE answer stream ends without the
answer, `wrong_id` is answered under another id, `slow_json` answers
after a second, and `cr_smuggle`'s answer hides after a lone CR (an SSE client reads it, a reader that ends
lines at LF only does not).

Each execution is one JSON line in the log file:
    {"event": "executed", "reader": "go"|"strict", "verb": ..., "tool": ...,
     "args": {...}, "session": ..., "transport": "http"|"stdio"}
Other events: "ended" (a DELETE ended a session), "received" (every HTTP
request: verb, path, whether it had an Authorization header).

usage: hostile_upstream.py --log FILE (--stdio | --http PORT)
       PORT 0 picks a free port; the chosen one is printed as `PORT n`.
"""

import json
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG_LOCK = threading.Lock()
LOG_PATH = None
ISSUED_STATES = set()
SESSIONS = set()


def log(event):
    with LOG_LOCK:
        with open(LOG_PATH, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")


def fold(key):
    """Unicode simple case folding, close to Go's bytes.EqualFold."""
    out = []
    for c in key:
        if c in "\u0130\u0131":  # dotted capital I, dotless i: an `i` to simple lowercasing
            out.append("i")
            continue
        up = c.upper()
        out.append(up.lower() if len(up) == 1 else c.lower())
    return "".join(out)


class Pairs(list):
    """A JSON object as its members in order (duplicates kept)."""


def parse_pairs(text):
    return json.loads(text, object_pairs_hook=Pairs)


def as_map(v):
    """A Go map[string]any: the last of duplicate keys wins; nested too."""
    if isinstance(v, Pairs):
        out = {}
        for k, x in v:
            out[k] = as_map(x)
        return out
    if isinstance(v, list):
        return [as_map(x) for x in v]
    return v


def go_field(obj, name):
    """A struct field: exact or case-insensitive match, the last one wins."""
    found = None
    have = False
    for k, v in obj:
        if k == name or fold(k) == fold(name):
            found, have = v, True
    return found, have


def read_go(text):
    """(method, id, tool, args, request_state) as a Go server reads them."""
    try:
        v = parse_pairs(text)
    except ValueError:
        return None
    if not isinstance(v, Pairs):
        return None
    method, _ = go_field(v, "method")
    ident, _ = go_field(v, "id")
    params, _ = go_field(v, "params")
    tool = args = state = None
    if isinstance(params, Pairs):
        tool, _ = go_field(params, "name")
        args, _ = go_field(params, "arguments")
        state, _ = go_field(params, "requestState")
    return {
        "method": method if isinstance(method, str) else None,
        "id": as_map(ident),
        "tool": tool if isinstance(tool, str) else None,
        "args": as_map(args) if args is not None else {},
        "state": state if isinstance(state, str) else None,
    }


def read_strict(text):
    def no_dups(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key")
        return dict(pairs)

    try:
        v = json.loads(text, object_pairs_hook=no_dups)
    except ValueError:
        return None
    if not isinstance(v, dict):
        return None
    params = v.get("params")
    tool = args = state = None
    if isinstance(params, dict):
        tool = params.get("name")
        args = params.get("arguments")
        state = params.get("requestState")
    return {
        "method": v.get("method") if isinstance(v.get("method"), str) else None,
        "id": v.get("id"),
        "tool": tool if isinstance(tool, str) else None,
        "args": args if args is not None else {},
        "state": state if isinstance(state, str) else None,
    }


TOOLS = [
    {"name": "list_brokers", "description": "List brokers.", "inputSchema": {"type": "object"}},
    {"name": "reboot_broker", "description": "Reboot a broker.", "inputSchema": {"type": "object"}},
    {"name": "copy_image_set", "description": "Copy an image set.", "inputSchema": {"type": "object"}},
    {"name": "ask_reboot", "description": "Reboot after asking.", "inputSchema": {"type": "object"}},
]


def answer(text, verb, transport, session):
    """The JSON-RPC answer to one message (or None), after logging what
    each reader would execute."""
    go = read_go(text)
    strict = read_strict(text)
    primary = go or strict
    if primary is None:
        return {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
    for reader, r in (("go", go), ("strict", strict)):
        if r and r["method"] == "tools/call" and r["tool"]:
            runs = not r["tool"].startswith("ask_") or (r["state"] in ISSUED_STATES)
            if runs:
                log({
                    "event": "executed",
                    "reader": reader,
                    "verb": verb,
                    "tool": r["tool"],
                    "args": r["args"],
                    "session": session,
                    "transport": transport,
                })
    method, ident = primary["method"], primary["id"]
    if method is None:
        return None  # a response or junk
    if ident is None:
        return None  # a notification
    if method == "initialize":
        return {"jsonrpc": "2.0", "id": ident, "result": {
            "protocolVersion": "2025-11-25",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "hostile-upstream", "version": "1"},
        }}
    if method == "tools/list":
        return {"jsonrpc": "2.0", "id": ident, "result": {"tools": TOOLS}}
    if method == "tools/call":
        tool = primary["tool"] or ""
        if tool.startswith("ask_") and primary["state"] not in ISSUED_STATES:
            state = "rs-" + uuid.uuid4().hex
            ISSUED_STATES.add(state)
            return {"jsonrpc": "2.0", "id": ident, "result": {
                "resultType": "input_required",
                "inputRequests": {"confirm": {"method": "elicitation/create", "params": {
                    "mode": "form", "message": "sure?", "requestedSchema": {"type": "object"}}}},
                "requestState": state,
            }}
        return {"jsonrpc": "2.0", "id": ident, "result": {
            "content": [{"type": "text", "text": "ran " + tool}],
            "isError": False,
        }}
    return {"jsonrpc": "2.0", "id": ident, "result": {}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def any_verb(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        session = self.headers.get("Mcp-Session-Id")
        log({
            "event": "received",
            "verb": self.command,
            "path": self.path,
            "authorization": self.headers.get("Authorization") is not None,
            "x_agent_id": self.headers.get("X-Agent-Id"),
            "x_session_id": self.headers.get("X-Session-Id"),
            "session": session,
            "bytes": len(raw),
        })
        if self.command == "DELETE" and session:
            SESSIONS.discard(session)
            log({"event": "ended", "session": session})
            self.reply(200, b"", "text/plain")
            return
        if not raw:
            self.reply(405 if self.command != "GET" else 200, b"", "text/plain")
            return
        ctype = self.headers.get("Content-Type") or ""
        charset = "utf-8"
        for part in ctype.split(";")[1:]:
            k, _, v = part.strip().partition("=")
            if k.strip().lower() == "charset":
                charset = v.strip().strip('"')
        try:
            text = raw.decode(charset, errors="replace")
        except LookupError:
            text = raw.decode("utf-8", errors="replace")
        reply = answer(text, self.command, "http", session)
        tool = (read_go(text) or {}).get("tool") or ""
        if tool == "sse_vanish":
            # The tool ran; the answer stream breaks before its answer (a
            # crash, a restart, a load balancer's idle cut).
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b": working\n\n")
            self.wfile.flush()
            self.close_connection = True
            return
        if tool == "slow_json":
            # The tool takes a second; its answer is plain JSON.
            import time
            time.sleep(1)
        if tool == "cr_smuggle" and reply is not None:
            # The answer hidden after a lone CR: an SSE client ends the
            # `id:` line there and reads a `data:` line.
            reply["result"]["content"][0]["text"] = "smuggled"
            body = b"id: 1\rdata: " + json.dumps(reply).encode() + b"\n\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if tool == "wrong_id" and reply is not None:
            reply["id"] = 424242
        extra = {}
        go = read_go(text) or {}
        if go.get("method") == "initialize":
            sid = uuid.uuid4().hex
            SESSIONS.add(sid)
            extra["Mcp-Session-Id"] = sid
        if reply is None:
            self.reply(202, b"", "text/plain", extra)
        else:
            self.reply(200, json.dumps(reply).encode(), "application/json", extra)

    def reply(self, status, body, ctype, extra=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def __getattr__(self, name):
        if name.startswith("do_"):
            return self.any_verb
        raise AttributeError(name)


def serve_stdio():
    for raw in sys.stdin.buffer:
        text = raw.decode("utf-8", errors="replace")
        if not text.strip():
            continue
        reply = answer(text, "stdio", "stdio", None)
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


def main():
    global LOG_PATH
    args = sys.argv[1:]
    LOG_PATH = args[args.index("--log") + 1]
    if "--stdio" in args:
        serve_stdio()
        return
    port = int(args[args.index("--http") + 1])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("PORT", server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
