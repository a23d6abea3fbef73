"""A scripted MCP client using the official Python SDK (mcp 2.x): it launches
`flightrec proxy … -- SERVER…` over stdio, lists tools, makes the calls given
as JSON, and prints what it received as one JSON object.

usage: sdk_client.py MODE CALLS_JSON -- COMMAND ARGS…   (MODE: auto | legacy)
       sdk_client.py MODE CALLS_JSON -- http://HOST:PORT/PATH  (Streamable HTTP)

With FLIGHTREC_ELICIT=accept|refuse|decline|cancel the client declares the
elicitation capability and answers every form that way (accept: approve =
true; refuse: accept with approve = false); the messages it was asked are
printed under "elicited".
"""
import asyncio
import json
import os
import sys

from mcp import Client, StdioServerParameters
from mcp import types


async def main():
    mode = sys.argv[1]
    calls = json.loads(sys.argv[2])
    cmd = sys.argv[sys.argv.index("--") + 1 :]
    if cmd[0].startswith("http://"):
        params = cmd[0]
    else:
        params = StdioServerParameters(command=cmd[0], args=cmd[1:])
    out = {"tools": [], "calls": [], "elicited": []}
    answer = os.environ.get("FLIGHTREC_ELICIT")
    extra = {}
    if answer:

        async def elicit(context, p):
            out["elicited"].append(p.message)
            if answer == "accept":
                return types.ElicitResult(action="accept", content={"approve": True})
            if answer == "refuse":
                return types.ElicitResult(action="accept", content={"approve": False})
            return types.ElicitResult(action=answer)

        extra["elicitation_callback"] = elicit
    async with Client(params, mode=mode, **extra) as client:
        tools = await client.list_tools()
        out["tools"] = sorted(t.name for t in tools.tools)
        for call in calls:
            try:
                r = await client.call_tool(call["tool"], call.get("args", {}))
                text = " ".join(getattr(c, "text", "") for c in r.content)
                out["calls"].append({"tool": call["tool"], "isError": bool(r.is_error), "text": text})
            except Exception as e:  # JSON-RPC errors surface as exceptions
                out["calls"].append({"tool": call["tool"], "error": str(e)})
    print(json.dumps(out))


asyncio.run(main())
