#!/usr/bin/env python3
"""Remakes recordings/sample-healthimaging: one synthetic working day of an
imaging team's agents on the AWS HealthImaging MCP server, decided by
flightrec's own core with policies/lenient.yaml (today's policy) exactly as the
live proxy would, and written through the crash-safe recorder.

It is synthetic traffic (the tools, argument shapes and outcomes follow what
the real awslabs.healthimaging-mcp-server does offline: every call answers
with an isError result), made so the demo has a busy day to replay. A
recording captured by `flightrec proxy` from a real client and server joins it
once the proxy lands.

Usage: python3 recordings/make_sample.py [path/to/flightrec]
"""
import json
import os
import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLIGHTREC = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "flightrec")
OUT = os.path.join(ROOT, "recordings", "sample-healthimaging")
POLICY = os.path.join(ROOT, "policies", "lenient.yaml")
SERVER = "awslabs.healthimaging-mcp-server"
rng = random.Random(20261120)
DAY = datetime(2026, 11, 20, tzinfo=timezone.utc)
DS = "0123456789abcdef0123456789abcdef"

def uuid7(ts_ms):
    r = rng.getrandbits(74)
    v = (ts_ms << 80) | (0x7 << 76) | ((r >> 62) << 64) | (0b10 << 62) | (r & ((1 << 62) - 1))
    h = f"{v:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

calls = []

def call(t, session, agent, tool, args, outcome="tool_error", category=None):
    calls.append(dict(ts=t, session=session, agent=agent, tool=tool, args=args, outcome=outcome, category=category))

READS = ["list_datastores", "search_image_sets", "get_image_set", "get_image_set_metadata", "list_image_set_versions"]
# Steady reads and occasional copies through the working day.
for agent, sessions, rate in [("imaging-assistant", 3, 40), ("report-bot", 2, 25), ("records-admin", 1, 6)]:
    for s in range(sessions):
        session = f"{agent}-{s + 1}"
        t = DAY + timedelta(hours=8, minutes=rng.randint(0, 30))
        end = DAY + timedelta(hours=17)
        while t < end:
            t += timedelta(seconds=rng.expovariate(rate / 3600))
            r = rng.random()
            if r < 0.75:
                tool = rng.choice(READS)
                call(t, session, agent, tool, {"datastoreId": DS, "imageSetId": f"set-{rng.randint(1, 400):04d}"}, "ok", "read")
            elif r < 0.93:
                call(t, session, agent, "copy_image_set", {"datastoreId": DS, "sourceImageSetId": f"set-{rng.randint(1, 400):04d}"},
                     rng.choice(["tool_error", "tool_error", "ok", "rpc_error"]), "write")
            elif r < 0.98:
                call(t, session, agent, "update_image_set_metadata", {"datastoreId": DS, "imageSetId": f"set-{rng.randint(1, 400):04d}"}, "ok", "write")
            else:
                call(t, session, agent, "delete_image_set", {"datastoreId": DS, "imageSetId": f"set-{rng.randint(1, 400):04d}"}, "ok", "destructive")

# 10:15: a runaway copy loop, every 500 ms for two minutes, in one session.
t = DAY + timedelta(hours=10, minutes=15)
for i in range(240):
    call(t + timedelta(milliseconds=500 * i), "imaging-assistant-2", "imaging-assistant", "copy_image_set",
         {"datastoreId": DS, "sourceImageSetId": "set-0042", "copyAttempt": i}, "tool_error", "write")
# 14:00: a nightly-style bulk job started early by the report bot.
t = DAY + timedelta(hours=14)
for i in range(30):
    call(t + timedelta(seconds=2 * i), "report-bot-9", "report-bot", "bulk_update_patient_metadata",
         {"datastoreId": DS, "patientId": f"p-{i:03d}"}, "ok", "write")

calls.sort(key=lambda c: c["ts"])
eval_in = "\n".join(json.dumps({
    "ts": c["ts"].isoformat().replace("+00:00", "Z"), "session": c["session"], "agent": c["agent"],
    "server": SERVER, "tool": c["tool"], "args": c["args"], "category": c["category"], "outcome": c["outcome"],
}) for c in calls)
decided = subprocess.run([FLIGHTREC, "policy", "eval", "--policy", POLICY], input=eval_in, capture_output=True, text=True, check=True)
decisions = [json.loads(l) for l in decided.stdout.splitlines()]
policy_sha = subprocess.run(["sha256sum", POLICY], capture_output=True, text=True, check=True).stdout.split()[0]

ops = []
for i, (c, d) in enumerate(zip(calls, decisions)):
    ts_us = int(c["ts"].timestamp() * 1_000_000)
    args = json.dumps(c["args"], separators=(",", ":"), sort_keys=True)
    refused = d["decision"] != "allow"
    ops.append({"op": "record", "row": {
        "schema_version": "1.0", "event_id": uuid7(ts_us // 1000), "seq": 0, "ts_us": ts_us,
        "session_id": c["session"], "agent_id": c["agent"], "client_name": "mcp", "client_version": "2.3.0",
        "server": SERVER, "transport": "stdio", "method": "tools/call", "jsonrpc_id": str(i + 2),
        "tool": c["tool"], "category": c["category"], "risk": None, "args_json": args,
        "args_sha256": __import__("hashlib").sha256(args.encode()).hexdigest(),
        "decision": d["decision"], "rule": d["rule"], "reason": d["message"], "retry_after_ms": d["retry_after_ms"],
        "policy_sha256": policy_sha, "shadow": [],
        "outcome": "not_forwarded" if refused else c["outcome"],
        "error_code": -32603 if (not refused and c["outcome"] == "rpc_error") else None,
        "error_message": ("Error executing tool " + c["tool"]) if (not refused and c["outcome"] == "tool_error") else None,
        "latency_us": None if refused else rng.randint(600_000, 950_000),
        "request_bytes": 150 + len(args), "response_bytes": 0 if refused else 140,
        "prev_hash": "", "hash": "",
    }})

if os.path.exists(OUT):
    subprocess.run(["rm", "-rf", OUT], check=True)
subprocess.run([FLIGHTREC, "audit", "append", OUT], input="\n".join(json.dumps(o) for o in ops), capture_output=True, text=True, check=True)
print(f"wrote {len(ops)} calls to {OUT}")
