"""Questions the S3 tests ask a real S3-compatible server (boto3), and
pyarrow reading shipped audit files through its own S3 filesystem.

usage: s3_tool.py ENDPOINT COMMAND ARGS...
  mkbucket NAME [--lock]      create a bucket (Object Lock enabled)
  keys BUCKET PREFIX          every key under PREFIX, one per line
  head BUCKET KEY             JSON: lock mode, retain-until, version id
  delete-version BUCKET KEY   try to delete the key's current version
  put BUCKET KEY TEXT         write an object
  get BUCKET KEY              print an object
  copy BUCKET FROM TO         replace TO with a copy of FROM
  query BUCKET PREFIX         JSON: rows, distinct events, files (DuckDB httpfs, else pyarrow)
"""
import json
import sys


def client(endpoint):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def main():
    endpoint, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if cmd == "mkbucket":
        client(endpoint).create_bucket(Bucket=args[0], ObjectLockEnabledForBucket="--lock" in args)
    elif cmd == "keys":
        pages = client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=args[0], Prefix=args[1])
        for page in pages:
            for obj in page.get("Contents", []):
                print(obj["Key"])
    elif cmd == "head":
        h = client(endpoint).head_object(Bucket=args[0], Key=args[1])
        until = h.get("ObjectLockRetainUntilDate")
        print(json.dumps({
            "lock_mode": h.get("ObjectLockMode"),
            "retain_until": until.isoformat() if until else None,
            "version": h.get("VersionId"),
        }))
    elif cmd == "delete-version":
        s3 = client(endpoint)
        version = s3.head_object(Bucket=args[0], Key=args[1])["VersionId"]
        try:
            s3.delete_object(Bucket=args[0], Key=args[1], VersionId=version)
            print("deleted")
        except Exception as e:  # botocore.exceptions.ClientError
            print("refused:", e.response["Error"]["Code"])
    elif cmd == "get":
        sys.stdout.write(client(endpoint).get_object(Bucket=args[0], Key=args[1])["Body"].read().decode(errors="replace"))
    elif cmd == "copy":
        client(endpoint).copy_object(Bucket=args[0], Key=args[2], CopySource={"Bucket": args[0], "Key": args[1]})
    elif cmd == "put":
        client(endpoint).put_object(Bucket=args[0], Key=args[1], Body=args[2].encode())
    elif cmd == "query":
        # DuckDB's httpfs when it can be loaded (it is downloaded on first
        # use: not on an offline machine), else pyarrow's S3 filesystem.
        try:
            import duckdb

            con = duckdb.connect()
            con.execute("LOAD httpfs")
            host = endpoint.split("://", 1)[1]
            con.execute(f"SET s3_endpoint='{host}'; SET s3_use_ssl=false; SET s3_url_style='path';"
                        "SET s3_access_key_id='testing'; SET s3_secret_access_key='testing'; SET s3_region='us-east-1'")
            rows, events, files = con.execute(
                f"SELECT count(*), count(DISTINCT event_id), count(DISTINCT filename) FROM "
                f"read_parquet('s3://{args[0]}/{args[1]}/*/*.parquet', hive_partitioning = true, "
                f"union_by_name = true, filename = true)").fetchone()
            print(json.dumps({"engine": "duckdb", "rows": rows, "events": events, "files": files}))
            return
        except Exception:
            pass
        import pyarrow.dataset as ds
        from pyarrow import fs

        host = endpoint.split("://", 1)[1]
        s3 = fs.S3FileSystem(
            access_key="testing", secret_key="testing", region="us-east-1",
            endpoint_override=host, scheme="http",
        )
        data = ds.dataset(f"{args[0]}/{args[1]}", filesystem=s3, format="parquet", partitioning="hive")
        table = data.to_table(columns=["seq", "event_id", "hash"])
        print(json.dumps({
            "engine": "pyarrow",
            "rows": table.num_rows,
            "events": len(set(table.column("event_id").to_pylist())),
            "files": len(data.files),
        }))
    else:
        sys.exit(f"unknown command {cmd}")


main()
