"""The official MCP Python SDK through a load balancer, for tests/replicas.rs. Prints JSON lines:

    CALL {"session": "...", "text": "...", "streamed": "...", "structured": {...}}

usage:
  py_replicas.py URL session CALLS
      One 2025-11-25 session making CALLS `generate` calls; `session` is the Mcp-Session-Id
      each call carried.
  py_replicas.py URL failover
      A 2025-11-25 session makes a call, prints WAITING and waits for a line on stdin (the test
      stops the replica meanwhile), then calls again. If the session has ended (the SDK's
      "Session terminated"), it prints EXPIRED, opens a new session and calls once more.
  py_replicas.py URL model MODEL
      A 2026-07-28 client lists the tools, then calls `generate` with `model` MODEL: the SDK
      copies arguments annotated `x-mcp-header` into Mcp-Param-* headers.
"""

import json
import sys

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

URL, MODE = sys.argv[1], sys.argv[2]
ARGS = {"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0}


def emit(kind, value):
    print(kind, json.dumps(value), flush=True)


class Watch:
    """Records the session id and Mcp-Param-* headers of the last tools/call request."""

    def __init__(self):
        self.session = None
        self.params = {}

    async def on_request(self, request):
        if request.headers.get("mcp-method") == "tools/call" or b'"tools/call"' in request.content:
            self.session = request.headers.get("mcp-session-id")
            self.params = {
                k: v for k, v in request.headers.items() if k.lower().startswith("mcp-param-")
            }


def connect(watch, mode):
    http = httpx2.AsyncClient(timeout=120, event_hooks={"request": [watch.on_request]})
    return Client(streamable_http_client(URL, http_client=http), mode=mode)


async def call(client, watch, args):
    streamed = []

    async def on_progress(progress, total, message):
        streamed.append(message)

    result = await client.call_tool("generate", args, progress_callback=on_progress)
    emit("CALL", {
        "session": watch.session,
        "params": watch.params,
        "text": result.content[0].text,
        "streamed": "".join(streamed),
        "structured": result.structured_content,
        "is_error": bool(result.is_error),
    })


async def main():
    watch = Watch()
    if MODE == "session":
        async with connect(watch, "legacy") as client:
            for _ in range(int(sys.argv[3])):
                await call(client, watch, ARGS)
    elif MODE == "failover":
        expired = False
        try:
            async with connect(watch, "legacy") as client:
                await call(client, watch, ARGS)
                emit("WAITING", watch.session)
                await anyio.to_thread.run_sync(sys.stdin.readline)
                try:
                    await call(client, watch, ARGS)
                except Exception as e:
                    if "Session terminated" not in str(e):
                        raise
                    expired = True
                    emit("EXPIRED", str(e))
        except Exception as e:
            # Closing a session the server no longer knows may fail too; that is expected here.
            if not expired:
                raise
            emit("CLOSE", repr(e))
        if expired:
            async with connect(watch, "legacy") as client:
                await call(client, watch, ARGS)
    elif MODE == "model":
        async with connect(watch, "2026-07-28") as client:
            await client.list_tools()
            await call(client, watch, dict(ARGS, model=sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {MODE}")


anyio.run(main)
