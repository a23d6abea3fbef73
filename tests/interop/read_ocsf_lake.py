"""Reads an `export --format ocsf-parquet` directory with DuckDB and pyarrow
and prints what they saw as JSON (tests/export_lake.rs checks it)."""
import json
import sys

import duckdb
import pyarrow.dataset as ds

root = sys.argv[1]
glob = f"{root}/**/*.parquet"
con = duckdb.connect()
seen = {}
rel = f"read_parquet('{glob}', hive_partitioning = true)"
seen["duckdb_count"] = con.execute(f"SELECT count(*) FROM {rel}").fetchone()[0]
seen["duckdb_partitions"] = sorted(
    f"{r[0]}/{r[1]}/{r[2]}:{r[3]}"
    for r in con.execute(
        f'SELECT region, "accountId", "eventDay", count(*) FROM {rel} GROUP BY ALL'
    ).fetchall()
)
seen["duckdb_columns"] = {
    r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall()
}
# Nested attributes are struct fields, reachable without parsing text.
seen["duckdb_blocked_ops"] = sorted(
    set(
        r[0]
        for r in con.execute(
            f"SELECT api.operation FROM {rel} WHERE disposition_id = 2"
        ).fetchall()
    )
)
seen["duckdb_profiles"] = [
    list(r[0])
    for r in con.execute(f"SELECT DISTINCT metadata.profiles FROM {rel}").fetchall()
]

dataset = ds.dataset(root, format="parquet", partitioning="hive")
table = dataset.to_table()
seen["pyarrow_count"] = table.num_rows
seen["pyarrow_types"] = {f.name: str(f.type) for f in table.schema}


def strip(v):
    """Nulls out: an OCSF event omits what is unknown."""
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v


events = []
for row in table.to_pylist():
    for k in ("region", "accountId", "eventDay"):
        row.pop(k, None)
    events.append(strip(row))
# unmapped.shadow keeps a null rule as the audit log has it: compare as is.
seen["pyarrow_events"] = events
print(json.dumps(seen, default=str))
