"""An MCP server on the official Python SDK (mcp 2.x) speaking Streamable
HTTP, for flightrec's HTTP proxy tests: a few imaging tools, one of them
annotated read-only.

usage: sdk_http_server.py PORT [--json]   (--json: JSON answers, not SSE)
"""
import sys

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("flightrec-http-test-server")


@server.tool()
def copy_image_set(datastore_id: str, source_image_set_id: str) -> str:
    """Copy an image set."""
    return f"copied {source_image_set_id} in {datastore_id}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def list_image_sets(datastore_id: str) -> str:
    """List image sets."""
    return f"sets of {datastore_id}: set-1, set-2"


@server.tool()
def delete_image_set(image_set_id: str) -> str:
    """Delete an image set."""
    return f"deleted {image_set_id}"


@server.tool()
async def slow_copy(ms: int) -> str:
    """Copy slowly (sleeps `ms` milliseconds)."""
    import anyio

    await anyio.sleep(ms / 1000)
    return f"slow copy done after {ms} ms"


if __name__ == "__main__":
    port = int(sys.argv[1])
    server.run(
        transport="streamable-http",
        host="127.0.0.1",
        port=port,
        json_response="--json" in sys.argv,
    )
