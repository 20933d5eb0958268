"""The Python half of scripts/gpu-check.sh: random-weight models, PyTorch's greedy tokens and
speed, wick's greedy tokens and speed on the same weights, and one MCP call to `wick serve`."""

import argparse
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

PROMPT_IDS = [11, 22, 33, 44, 55, 66, 77, 88]
COMPARE = 32
SPEED = 128

SHAPES = {
    "smollm2-135m": (LlamaForCausalLM, LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2)),
    "qwen2.5-1.5b": (Qwen2ForCausalLM, Qwen2Config(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, sliding_window=32768,
        max_window_layers=28, use_sliding_window=False, bos_token_id=151643, eos_token_id=151645)),
}


def word_tokenizer(vocab_size, path):
    """t0 … tN as whole words: prompts and outputs map 1:1 to token ids on both sides."""
    vocab = {f"t{i}": i for i in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path))


def make_model(name, directory):
    cls, config = SHAPES[name]
    torch.manual_seed(0)
    model = cls(config).to(torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True)
    word_tokenizer(config.vocab_size, directory / "tokenizer.json")
    return model


def torch_greedy(model, new_tokens):
    model = model.to("cuda").eval()
    ids = torch.tensor([PROMPT_IDS], device="cuda")
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, repetition_penalty=1.0)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    model.to("cpu")
    return out[0, len(PROMPT_IDS):].tolist(), new_tokens / seconds


def wick_greedy(wick, directory, new_tokens):
    prompt = " ".join(f"t{i}" for i in PROMPT_IDS)
    run = subprocess.run(
        [wick, "generate", prompt, "--model-path", str(directory), "--device", "cuda",
         "--temperature", "0", "--repeat-penalty", "1", "--ignore-eos",
         "--max-tokens", str(new_tokens), "-q"],
        capture_output=True, text=True, check=True)
    ids = [int(t[1:]) for t in run.stdout.split() if re.fullmatch(r"t\d+", t)]
    rate = re.search(r"decode ([0-9.]+) tokens/s", run.stderr)
    return ids, float(rate.group(1)) if rate else float("nan")


def mcp_call(wick, directory):
    server = subprocess.Popen(
        [wick, "serve", "--model-path", str(directory), "--device", "cuda", "--port", "0", "-q"],
        stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"http://\S+/mcp", server.stdout.readline()).group(0)
        for _ in range(600):
            try:
                with urllib.request.urlopen(url.replace("/mcp", "/health")) as r:
                    if json.load(r)["status"] == "ready":
                        break
            except OSError:
                pass
            time.sleep(0.5)
        meta = {"progressToken": "gpu", "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "generate", "_meta": meta,
            "arguments": {"prompt": " ".join(f"t{i}" for i in PROMPT_IDS), "max_tokens": 32,
                          "temperature": 0}}}
        request = urllib.request.Request(url, json.dumps(body).encode(), headers={
            "content-type": "application/json", "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "generate"})
        progress, result = [], None
        with urllib.request.urlopen(request) as response:
            for line in response:
                line = line.decode().strip()
                if not line.startswith("data: {"):
                    continue
                message = json.loads(line[6:])
                if message.get("method") == "notifications/progress":
                    progress.append(message["params"]["message"])
                elif "result" in message:
                    result = message["result"]
        streamed = "".join(progress)
        ok = result is not None and streamed == result["structuredContent"]["text"]
        return f"{len(progress)} progress notifications, text matches result: {ok}, " \
               f"finish {result and result['structuredContent']['finish_reason']}"
    finally:
        server.terminate()
        server.wait(timeout=60)


def wick_concurrency(wick, directory, levels=(1, 8, 32)):
    """Aggregate decode tokens/s of `levels` concurrent streams (one forward pass per step)."""
    result = subprocess.run(
        [wick, "bench", "--model-path", str(directory), "--device", "cuda", "-q",
         "--concurrency", ",".join(map(str, levels)), "-p", "32", "-n", "128", "-r", "1",
         "--json"],
        check=True, capture_output=True, text=True, timeout=600)
    return {row["concurrency"]: row for row in json.loads(result.stdout)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wick", required=True)
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    print(f"{'model':<14} {'agree/32':>9} {'wick tok/s':>11} {'torch tok/s':>12}")
    last = None
    for name in SHAPES:
        directory = Path(args.work) / name
        model = make_model(name, directory)
        reference, _ = torch_greedy(model, COMPARE)
        _, torch_rate = torch_greedy(model, SPEED)
        ours, _ = wick_greedy(args.wick, directory, COMPARE)
        _, wick_rate = wick_greedy(args.wick, directory, SPEED)
        agree = next((i for i, (a, b) in enumerate(zip(ours, reference)) if a != b), min(len(ours), COMPARE))
        print(f"{name:<14} {agree:>9} {wick_rate:>11.1f} {torch_rate:>12.1f}")
        rows = wick_concurrency(args.wick, directory)
        print(f"{name:<14} concurrent streams: " + ", ".join(
            f"{c}: {row['avg_ts']:.0f} tok/s aggregate, {row['per_stream_ts']:.0f} per stream, "
            f"ITL p50 {row['itl_p50_ms']:.1f} ms" for c, row in rows.items()))
        last = directory
    print("MCP over loopback on the GPU:", mcp_call(args.wick, last))


if __name__ == "__main__":
    main()
