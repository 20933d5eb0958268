#!/usr/bin/env python3
"""JSON-schema output under load, against any OpenAI-compatible server (wick serve,
llama-server): at each concurrency, the same streamed chat requests with and without
`response_format: json_schema`, printing aggregate completion tokens/s, the median
inter-token latency, and how many constrained replies parse as JSON with the required keys.

    scripts/json_schema_load.py http://127.0.0.1:8080 [--model small] [--concurrency 1,8]
                                [--requests 16] [--max-tokens 128]

Standard library only. Requests use temperature 1 with a seed per request, so both servers see
the same requests in the same order.
"""

import argparse
import concurrent.futures
import http.client
import json
import statistics
import time
import urllib.parse

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Paris", "Lima", "Oslo", "Kyoto"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
    },
    "required": ["name", "age", "city", "tags"],
    "additionalProperties": False,
}


def one(url, model, i, constrained, max_tokens):
    parts = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Describe person number {i} as JSON."}],
        "max_tokens": max_tokens,
        "temperature": 1,
        "seed": i,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if constrained:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": SCHEMA, "strict": True},
        }
    connection.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {response.read()[:300]!r}")
    text, arrivals, tokens = "", [], None
    for line in response:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                text += piece
                arrivals.append(time.perf_counter())
    connection.close()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return text, tokens if tokens is not None else len(arrivals), gaps


def valid(text):
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and all(key in value for key in SCHEMA["required"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--model", default="small")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    for streams in [int(c) for c in args.concurrency.split(",")]:
        for constrained in (False, True):
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(streams) as pool:
                results = list(
                    pool.map(
                        lambda i: one(args.url, args.model, i, constrained, args.max_tokens),
                        range(args.requests),
                    )
                )
            elapsed = time.perf_counter() - started
            tokens = sum(r[1] for r in results)
            gaps = [g for r in results for g in r[2]]
            itl = statistics.median(gaps) * 1000 if gaps else float("nan")
            line = (
                f"concurrency {streams:2} {'json_schema' if constrained else 'free       '}: "
                f"{tokens / elapsed:7.1f} tokens/s, ITL p50 {itl:5.1f} ms, "
                f"{tokens / len(results):5.1f} tokens/reply"
            )
            if constrained:
                line += f", valid {sum(valid(r[0]) for r in results)}/{len(results)}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
