#!/usr/bin/env python3
"""Time to first token for requests that share a long prefix, against any OpenAI-compatible
server (wick serve, llama-server): N requests one after another, each the same ~1,500-token
document followed by a distinct question, streamed through POST /v1/completions.

    scripts/shared_prefix_ttft.py http://127.0.0.1:8080 [--requests 16] [--words 1100]

Prints each request's time to first token and the median, and, where the server reports it,
usage.prompt_tokens_details.cached_tokens (wick) or timings.prompt_n (llama-server).
"""

import argparse
import http.client
import json
import statistics
import time
import urllib.parse


def document(words: int) -> str:
    topics = ["rivers", "mountains", "markets", "harbours", "forests", "bridges", "libraries"]
    sentences = []
    i = 0
    while sum(len(s.split()) for s in sentences) < words:
        topic = topics[i % len(topics)]
        sentences.append(
            f"Note {i}: the {topic} of district {i * 7 % 31} were surveyed in year {1900 + i}, "
            f"and the report counted {i * 13 % 97} of them in good order."
        )
        i += 1
    return " ".join(sentences)


def first_token(url: str, prompt: str, model: str) -> tuple[float, dict]:
    parts = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    body = json.dumps(
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": 4,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    start = time.perf_counter()
    connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise SystemExit(f"{response.status}: {response.read()[:500]!r}")
    ttft = None
    last = {}
    for line in response:
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if ttft is None and chunk.get("choices"):
            ttft = time.perf_counter() - start
        last = chunk
    connection.close()
    return ttft, last


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--words", type=int, default=1100)
    parser.add_argument("--model", default="small", help="the model id to ask for (wick: as /v1/models lists it)")
    args = parser.parse_args()
    prefix = document(args.words)
    times = []
    for i in range(args.requests):
        question = f"\nQuestion {i}: in which year were the {i}th rivers of district {i} surveyed?\nAnswer:"
        ttft, last = first_token(args.url, prefix + question, args.model)
        usage = last.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        timings = last.get("timings") or {}
        note = f"prompt {usage.get('prompt_tokens', '?')}, cached {cached}" if cached is not None else ""
        if timings:
            note = f"prompt_n {timings.get('prompt_n')} (computed), cache_n {timings.get('cache_n')}"
        print(f"request {i:2}: first token {ttft * 1e3:8.1f} ms  {note}", flush=True)
        times.append(ttft)
    print(f"median {statistics.median(times) * 1e3:.1f} ms over {len(times)} requests")


if __name__ == "__main__":
    main()
