#!/usr/bin/env python3
"""Streams chat completions from any OpenAI-compatible server (wick's `/v1`, llama-server's,
vLLM's) with the official `openai` SDK, N at once, and prints what a client sees: aggregate
tokens/s (every stream's tokens over the wall time), time to first token and inter-token latency
(p50, p95). Each stream generates exactly -n tokens (`ignore_eos`, greedy), so servers compare on
the same work.

    scripts/openai_load.py --base http://127.0.0.1:8080/v1 --model small \\
        --concurrency 1,8 -n 64 -r 2 [--json]

Needs `pip install openai` (tests/clients/requirements.txt pins the version the tests use).
"""

import argparse
import asyncio
import json
import statistics
import time

import openai

from llama_server_concurrency import percentile

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "List some facts about the planet Mars.",
    "Describe a busy market in the morning.",
]


async def one(client, model, prompt, n_gen):
    started = time.perf_counter()
    stamps = []
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=n_gen,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})
    tokens = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return started, stamps, tokens


async def level(client, model, streams, n_gen):
    started = time.perf_counter()
    results = await asyncio.gather(*[
        one(client, model, PROMPTS[i % len(PROMPTS)], n_gen) for i in range(streams)])
    wall = time.perf_counter() - started
    ttft = [(s[0] - t0) * 1e3 for t0, s, _ in results if s]
    itl = [(b - a) * 1e3 for _, s, _ in results for a, b in zip(s, s[1:])]
    tokens = sum(n for _, _, n in results)
    return {"tokens": tokens, "wall": wall, "ttft": ttft, "itl": itl}


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the server's /v1 URL")
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("-n", type=int, default=64, help="tokens per stream")
    parser.add_argument("-r", type=int, default=2, help="repetitions per level (after a warm-up)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    client = openai.AsyncOpenAI(base_url=args.base, api_key=args.api_key, max_retries=0,
                                timeout=600)
    await level(client, args.model, 1, 8)  # warm-up
    rows = []
    for streams in [int(c) for c in args.concurrency.split(",")]:
        runs = [await level(client, args.model, streams, args.n) for _ in range(args.r)]
        rates = [run["tokens"] / run["wall"] for run in runs]
        ttft = [t for run in runs for t in run["ttft"]]
        itl = [t for run in runs for t in run["itl"]]
        rows.append({
            "concurrency": streams, "n_gen": args.n,
            "avg_ts": statistics.mean(rates),
            "stddev_ts": statistics.stdev(rates) if len(rates) > 1 else 0.0,
            "ttft_p50_ms": percentile(ttft, 50), "ttft_p95_ms": percentile(ttft, 95),
            "itl_p50_ms": percentile(itl, 50), "itl_p95_ms": percentile(itl, 95),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"| streams | n | aggregate t/s | TTFT p50/p95 ms | ITL p50/p95 ms |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['n_gen']} | {r['avg_ts']:.1f} ± {r['stddev_ts']:.1f} "
              f"| {r['ttft_p50_ms']:.0f} / {r['ttft_p95_ms']:.0f} "
              f"| {r['itl_p50_ms']:.1f} / {r['itl_p95_ms']:.1f} |")


asyncio.run(main())
