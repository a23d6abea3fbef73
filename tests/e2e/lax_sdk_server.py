"""An MCP server on the official Python SDK (mcp 2.x, stdio) whose tools
take typed arguments, as most real servers' do: pydantic reads them in lax
mode (the text "5000" is the int 5000) and the SDK parses a JSON object
sent inside a string. flightrec's hardening tests use it to check that the
policy reads what such a server runs.

usage: lax_sdk_server.py LOG   (each call appends one JSON line to LOG)
"""
import json
import sys

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel

server = MCPServer("lax-sdk-server")
LOG = sys.argv[1]


class Target(BaseModel):
    environment: str


def log(event):
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(event, sort_keys=True) + "\n")


@server.tool()
def reboot_broker(count: int = 1) -> str:
    """Reboot brokers."""
    log({"tool": "reboot_broker", "count": count})
    return f"rebooted {count}"


@server.tool()
def deploy(target: Target) -> str:
    """Deploy to an environment."""
    log({"tool": "deploy", "environment": target.environment})
    return "deployed to " + target.environment


if __name__ == "__main__":
    server.run()
