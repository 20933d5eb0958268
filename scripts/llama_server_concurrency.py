#!/usr/bin/env python3
"""llama.cpp's llama-server under the load `wick bench --concurrency` measures.

Starts llama-server on a GGUF file with one slot per stream (continuous batching), then for each
concurrency level sends that many streaming /completion requests at once: a prompt of -p random
token ids, exactly -n generated tokens (end of sequence ignored, greedy). Timings are taken as a
client sees them, as wick's bench takes them: aggregate tokens/s (every stream's tokens over the
wall time), tokens/s per stream after its first token, time to first token and inter-token
latency (p50, p95). Prints a table, or JSON with the same field names as wick's.

    scripts/llama_server_concurrency.py --server /path/to/llama-server --model FILE.gguf \\
        --threads 2 --concurrency 1,2,4,8,16 -p 32 -n 64 -r 2
"""

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request


def percentile(values, p):
    if not values:
        return 0.0
    values = sorted(values)
    rank = math.ceil(p / 100 * len(values))
    return values[min(max(rank, 1), len(values)) - 1]


def stream(port, prompt, n_gen, started, out, index):
    body = json.dumps({
        "prompt": prompt,
        "n_predict": n_gen,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "cache_prompt": False,
    }).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/completion", data=body,
        headers={"Content-Type": "application/json"})
    arrivals = []
    with urllib.request.urlopen(request) as response:
        for line in response:
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[6:])
            if event.get("stop"):
                break
            if event.get("content") is not None or event.get("tokens"):
                arrivals.append(time.perf_counter() - started)
    out[index] = arrivals


def vocab_size(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/props") as response:
        props = json.load(response)
    meta = props.get("model_meta") or {}
    return meta.get("n_vocab") or 32000


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True, help="the llama-server binary")
    parser.add_argument("--model", required=True, help="the GGUF file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("-p", "--n-prompt", type=int, default=32)
    parser.add_argument("-n", "--n-gen", type=int, default=64)
    parser.add_argument("-r", "--repetitions", type=int, default=2)
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",") if int(c) > 0]
    slots = max(levels)
    context = slots * (args.n_prompt + args.n_gen + 16)
    server = subprocess.Popen(
        [args.server, "-m", args.model, "-t", str(args.threads), "-tb", str(args.threads),
         "--parallel", str(slots), "-c", str(context), "--port", str(args.port),
         "--no-warmup", "-ngl", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/health") as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            sys.exit("llama-server did not become healthy")
        vocab = vocab_size(args.port)
        rows = []
        for streams in levels:
            samples, per_stream, ttft, itl = [], [], [], []
            for run in range(args.repetitions + 1):
                prompts = []
                for i in range(streams):
                    rng = random.Random(run * 1000 + i)
                    prompts.append([rng.randrange(vocab) for _ in range(args.n_prompt)])
                out = [None] * streams
                started = time.perf_counter()
                threads = [threading.Thread(target=stream, args=(
                    args.port, prompts[i], args.n_gen, started, out, i)) for i in range(streams)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - started
                if run == 0:
                    continue  # warm-up
                samples.append(streams * args.n_gen / wall)
                for arrivals in out:
                    ttft.append(arrivals[0] * 1e3)
                    itl.extend((b - a) * 1e3 for a, b in zip(arrivals, arrivals[1:]))
                    if len(arrivals) > 1:
                        per_stream.append((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))
            rows.append({
                "model": args.model,
                "backend": "llama-server",
                "n_threads": args.threads,
                "test": f"pp{args.n_prompt}+tg{args.n_gen}",
                "concurrency": streams,
                "n_prompt": args.n_prompt,
                "n_gen": args.n_gen,
                "avg_ts": statistics.mean(samples),
                "stddev_ts": statistics.stdev(samples) if len(samples) > 1 else 0.0,
                "samples_ts": samples,
                "per_stream_ts": statistics.mean(per_stream) if per_stream else 0.0,
                "ttft_p50_ms": percentile(ttft, 50),
                "ttft_p95_ms": percentile(ttft, 95),
                "itl_p50_ms": percentile(itl, 50),
                "itl_p95_ms": percentile(itl, 95),
            })
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"| {'test':<14} | {'c':>3} | {'aggregate t/s':>18} | {'stream t/s':>10} "
                  f"| {'TTFT p50/p95 ms':>15} | {'ITL p50/p95 ms':>15} |")
            for row in rows:
                agg = f"{row['avg_ts']:.2f} ± {row['stddev_ts']:.2f}"
                ttft_s = f"{row['ttft_p50_ms']:.0f} / {row['ttft_p95_ms']:.0f}"
                itl_s = f"{row['itl_p50_ms']:.1f} / {row['itl_p95_ms']:.1f}"
                print(f"| {row['test']:<14} | {row['concurrency']:>3} | {agg:>18} "
                      f"| {row['per_stream_ts']:>10.2f} | {ttft_s:>15} | {itl_s:>15} |")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
