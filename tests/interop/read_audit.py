"""Reads a flightrec audit directory with the real DuckDB and pyarrow and
prints what they saw as JSON (checked by tests/interop.rs)."""
import json
import sys

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq

root = sys.argv[1]
out = {}

con = duckdb.connect()
rel = con.sql(f"SELECT * FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true)")
out["duckdb_columns"] = dict(zip(rel.columns, [str(t) for t in rel.types]))
out["duckdb_count"] = con.execute(
    f"SELECT count(*) FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true)"
).fetchone()[0]
out["duckdb_by_date"] = {
    str(d): n
    for d, n in con.execute(
        f"SELECT date, count(*) FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true) GROUP BY date ORDER BY date"
    ).fetchall()
}
out["duckdb_decisions"] = {
    d: n
    for d, n in con.execute(
        f"SELECT decision, count(*) FROM read_parquet('{root}/**/*.parquet') GROUP BY decision"
    ).fetchall()
}
out["duckdb_shadow_items"] = con.execute(
    f"SELECT sum(len(shadow)) FROM read_parquet('{root}/**/*.parquet')"
).fetchone()[0]
out["duckdb_max_ts"] = str(
    con.execute(f"SELECT max(ts) FROM read_parquet('{root}/**/*.parquet')").fetchone()[0]
)

dataset = ds.dataset(root, format="parquet", partitioning="hive")
table = dataset.to_table()
out["pyarrow_count"] = table.num_rows
out["pyarrow_types"] = {f.name: str(f.type) for f in table.schema}
first_file = sorted(dataset.files)[0]
meta = pq.read_metadata(first_file).metadata or {}
out["pyarrow_file_meta"] = {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"flightrec.")}
# Recompute the hash chain of every file exactly as docs/audit-schema.md shows.
import hashlib
import struct

def canonical(row, columns):
    data = b""
    for name in columns:
        if name == "hash":
            continue
        v = row[name]
        if v is None:
            data += b"\x00"
            continue
        if name == "shadow":
            v = json.dumps(v, separators=(",", ":"), ensure_ascii=False)
        else:
            v = str(v)
        b = v.encode()
        data += b"\x01" + struct.pack(">I", len(b)) + b
    return data

checked = mismatched = 0
prev = "0" * 64
for path in sorted(dataset.files, key=lambda p: p.rsplit("/", 1)[-1]):
    t = pq.read_table(path)
    i = t.schema.get_field_index("ts")
    t = t.set_column(i, "ts", t["ts"].cast("int64"))
    for row in t.to_pylist():
        checked += 1
        if hashlib.sha256(canonical(row, t.schema.names)).hexdigest() != row["hash"] or row["prev_hash"] != prev:
            mismatched += 1
        prev = row["hash"]
out["python_chain_checked"] = checked
out["python_chain_mismatched"] = mismatched
print(json.dumps(out))
