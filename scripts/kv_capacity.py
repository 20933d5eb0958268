#!/usr/bin/env python3
"""How many requests a KV-cache budget runs at once: N requests at once, each asking for
`--max-tokens` (2048) but read for only `--stop-after` (64) tokens, as a client that got its
answer early would, against `wick serve` (any OpenAI-compatible server whose /health reports
`stats.active`). Prints the most requests seen running at once (polling /health) and the
aggregate tokens/s.

    wick serve --kv-cache-memory 128MiB --max-active 32 &
    scripts/kv_capacity.py http://127.0.0.1:8080 [--requests 32]
"""

import argparse
import http.client
import json
import threading
import time
import urllib.parse


def connect(url: str) -> http.client.HTTPConnection:
    parts = urllib.parse.urlparse(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)


def one(url: str, model: str, i: int, max_tokens: int, stop_after: int, counts: list) -> None:
    connection = connect(url)
    body = json.dumps(
        {
            "model": model,
            "prompt": f"Request {i}: write a long story about a lighthouse keeper.",
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
    )
    connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    tokens = 0
    for line in response:
        if line.startswith(b"data:") and b'"choices"' in line:
            tokens += 1
            if tokens >= stop_after:
                break
    counts[i] = tokens
    # Closing the connection is how the client says it is done.
    connection.close()


def active(url: str) -> int:
    connection = connect(url)
    connection.request("GET", "/health")
    health = json.loads(connection.getresponse().read())
    connection.close()
    return sum(m.get("stats", {}).get("active", 0) for m in health.get("models", []))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--stop-after", type=int, default=64)
    parser.add_argument("--model", default="small", help="the model id to ask for (wick: as /v1/models lists it)")
    args = parser.parse_args()
    counts = [0] * args.requests
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, active(args.url))
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    start = time.perf_counter()
    threads = [
        threading.Thread(target=one, args=(args.url, args.model, i, args.max_tokens, args.stop_after, counts))
        for i in range(args.requests)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    done.set()
    poller.join()
    print(
        f"{args.requests} requests of max_tokens {args.max_tokens} read for {args.stop_after} tokens: "
        f"at most {peak} running at once; {sum(counts)} tokens in {wall:.1f} s = "
        f"{sum(counts) / wall:.1f} tokens/s"
    )


if __name__ == "__main__":
    main()
