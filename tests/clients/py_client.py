"""Calls wick's `generate` tool with the official MCP Python SDK and prints every token the moment
its progress notification arrives, as JSON lines the Rust test checks:

    PROGRESS {"progress": 3.0, "total": 24.0, "message": " Paris"}
    RESULT {"protocol": "...", "text": "...", "structured": {...}, "is_error": false}

usage: py_client.py URL legacy|2026-07-28|sse [cancel|json]
With `cancel`, the first call is abandoned after 5 tokens and a second, short call follows.
With `json`, the call carries a `json_schema`, and a call with a schema that cannot compile follows
(printed as BAD).
With WICK_API_KEY set, requests carry `Authorization: Bearer $WICK_API_KEY`.
"""

import json
import os
import sys

import anyio
import httpx2
from mcp import Client, ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

URL, MODE = sys.argv[1], sys.argv[2]
CANCEL = len(sys.argv) > 3 and sys.argv[3] == "cancel"
JSON = len(sys.argv) > 3 and sys.argv[3] == "json"
ARGS = {"prompt": "The capital of France is", "max_tokens": 24, "temperature": 0}
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                         "country": {"type": "string", "maxLength": 20}},
        "required": ["city", "country"], "additionalProperties": False}
if JSON:
    ARGS = {"prompt": "Paris as JSON:", "max_tokens": 48, "temperature": 0, "json_schema": CITY}
LONG = {"prompt": "1, 2, 3, 4, 5, 6, 7,", "max_tokens": 1000, "temperature": 0}


def emit(kind, value):
    print(kind, json.dumps(value), flush=True)


async def call(session, protocol):
    tokens = 0
    enough = anyio.Event()

    async def on_progress(progress, total, message):
        nonlocal tokens
        tokens += 1
        emit("PROGRESS", {"progress": progress, "total": total, "message": message})
        if tokens >= 5:
            enough.set()

    if CANCEL:
        async with anyio.create_task_group() as group:
            async def long_call():
                await session.call_tool("generate", LONG, progress_callback=on_progress)
                emit("UNEXPECTED", "the long call finished")

            group.start_soon(long_call)
            await enough.wait()
            group.cancel_scope.cancel()
        emit("CANCELLED", tokens)
    result = await session.call_tool("generate", ARGS, progress_callback=on_progress)
    emit("RESULT", {
        "protocol": protocol,
        "text": result.content[0].text,
        "structured": result.structured_content,
        "is_error": bool(result.is_error),
    })
    if JSON:
        bad = {**ARGS, "json_schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}
        result = await session.call_tool("generate", bad)
        emit("BAD", {"text": result.content[0].text, "is_error": bool(result.is_error)})


async def main():
    if MODE == "sse":
        async with sse_client(URL) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                await call(session, init.protocol_version)
    else:
        key = os.environ.get("WICK_API_KEY")
        server = URL
        if key:
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
            server = streamable_http_client(URL, http_client=http)
        async with Client(server, mode=MODE) as client:
            await call(client, client.protocol_version)


anyio.run(main)
