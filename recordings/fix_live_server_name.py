"""Names the server of recordings/live-healthimaging's rows that say `env`.

The stdio proxy names the server after the command it starts until the
server's `serverInfo` arrives; `make_live.sh` starts the server through
`env VAR=… server`, so the first request of each run (`server/discover`,
`initialize`) was recorded with server `env`. This gives those rows the name
every other row of the same session records (awslabs.healthimaging-mcp-server)
and re-chains the directory: every `hash`/`prev_hash` from the first changed
row on, the files' footer hashes and the writer's tip, with the encoding of
docs/audit-schema.md ("The hash chain"). Files keep their names, schema
(1.0) and row order. Afterwards `flightrec audit verify` must pass.

Usage: python fix_live_server_name.py recordings/live-healthimaging
"""
import glob
import hashlib
import json
import os
import struct
import sys

import pyarrow as pa
import pyarrow.parquet as pq

root = sys.argv[1]
files = sorted(glob.glob(os.path.join(root, "date=*", "*.parquet")))
tables = [pq.read_table(f) for f in files]
rows = [r for t in tables for r in t.to_pylist()]

# The server each session names once serverInfo was known.
named = {}
for r in rows:
    if r["server"] != "env":
        named.setdefault(r["session_id"], r["server"])
changed = 0
for r in rows:
    if r["server"] == "env":
        r["server"] = named[r["session_id"]]
        changed += 1


def canonical(row, columns):
    out = b""
    for name in columns:
        v = row[name]
        if v is None:
            out += b"\x00"
            continue
        if name == "shadow":
            v = json.dumps(v, separators=(",", ":"), ensure_ascii=False)
        elif name == "ts":
            # Microseconds since the epoch, as the chain hashes them.
            v = str(int(v.timestamp()) * 1_000_000 + v.microsecond)
        else:
            v = str(v)
        b = v.encode()
        out += b"\x01" + struct.pack(">I", len(b)) + b
    return out


prev = "0" * 64
i = 0
for f, t in zip(files, tables):
    columns = [c for c in t.schema.names if c != "hash"]
    part = rows[i : i + t.num_rows]
    i += t.num_rows
    for r in part:
        r["prev_hash"] = prev
        r["hash"] = hashlib.sha256(canonical(r, columns)).hexdigest()
        prev = r["hash"]
    meta = dict(pq.read_metadata(f).metadata)
    meta.pop(b"ARROW:schema", None)
    meta[b"flightrec.first_hash"] = part[0]["hash"].encode()
    meta[b"flightrec.last_hash"] = part[-1]["hash"].encode()
    new = pa.Table.from_pylist(part, schema=t.schema.with_metadata(meta))
    tmp = os.path.join(os.path.dirname(f), "." + os.path.basename(f) + ".partial")
    dictionary = [
        c
        for c in t.schema.names
        if c not in ("event_id", "ts", "seq", "args_json", "args_sha256", "jsonrpc_id", "prev_hash", "hash")
    ]
    pq.write_table(new, tmp, compression="zstd", use_dictionary=dictionary)
    os.replace(tmp, f)

tip_path = os.path.join(root, "_flightrec", "tip.json")
with open(tip_path) as fh:
    tip = json.load(fh)
tip["last_hash"] = prev
with open(tip_path, "w") as fh:
    fh.write(json.dumps(tip, separators=(",", ":")))
print(f"{changed} rows renamed, {len(rows)} rows re-chained, last hash {prev}")
