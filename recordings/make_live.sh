#!/usr/bin/env bash
# Remakes recordings/live-healthimaging: a real session recorded by
# `flightrec proxy` between the official MCP Python SDK (mcp 2.x, scripted by
# tests/e2e/sdk_client.py) and the real awslabs.healthimaging-mcp-server,
# offline with fake AWS credentials (every call ends as an isError result:
# the server cannot reach AWS). Decided by policies/lenient.yaml.
#
# Needs the test peers that `bash .ci/run` installs (.venv-sdk, .venv-hi).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
out=recordings/live-healthimaging
rm -rf "$out"
ds=12345678901234567890123456789012
set_id=abcdefabcdefabcdefabcdefabcdefab
copy="{\"tool\":\"copy_image_set\",\"args\":{\"datastore_id\":\"$ds\",\"source_image_set_id\":\"$set_id\",\"source_datastore_id\":\"$ds\",\"copy_image_set_information\":{\"sourceImageSet\":{\"latestVersionId\":\"1\"}}}}"
calls="[{\"tool\":\"list_datastores\"},{\"tool\":\"search_image_sets\",\"args\":{\"datastore_id\":\"$ds\"}},$copy,$copy,$copy,{\"tool\":\"get_image_set\",\"args\":{\"datastore_id\":\"$ds\",\"image_set_id\":\"$set_id\"}},$copy]"
for mode in auto legacy; do
  .venv-sdk/bin/python tests/e2e/sdk_client.py "$mode" "$calls" -- \
    target/release/flightrec proxy --policy policies/lenient.yaml --audit-dir "$out" --agent imaging-assistant -- \
    env AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=AKIAFAKEFAKEFAKEFAKE AWS_SECRET_ACCESS_KEY=fake AWS_EC2_METADATA_DISABLED=true \
    .venv-hi/bin/awslabs.healthimaging-mcp-server > /dev/null
done
rm -rf "$out/_flightrec/journal" "$out/_flightrec/lock"
target/release/flightrec audit verify "$out"
