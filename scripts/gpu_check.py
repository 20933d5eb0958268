"""The Python half of scripts/gpu-check.sh: random-weight models of every family wick runs,
PyTorch's greedy tokens and speed, wick's greedy tokens and speed on the same weights, the
weight-bandwidth bound beside each speed, and one MCP call to `wick serve`.

On a machine without a GPU, `--device cpu --dtype f32 --layers 2` runs the same steps small
(a dry run of the script itself; f32 on both sides should agree on every token)."""

import argparse
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers.utils import logging as transformers_logging
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM,
                          Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

PROMPT_IDS = [11, 22, 33, 44, 55, 66, 77, 88]
COMPARE = 32
SPEED = 128
DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}

# The real models' shapes (config.json of each), one per family wick runs.
SHAPES = {
    "smollm2-135m": (LlamaForCausalLM, lambda: LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2)),
    "qwen2.5-1.5b": (Qwen2ForCausalLM, lambda: Qwen2Config(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, sliding_window=32768,
        max_window_layers=28, use_sliding_window=False, bos_token_id=151643, eos_token_id=151645)),
    "qwen3-0.6b": (Qwen3ForCausalLM, lambda: Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645)),
    "phi3-mini-4k": (Phi3ForCausalLM, lambda: Phi3Config(
        vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
        original_max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
        sliding_window=2047, tie_word_embeddings=False, bos_token_id=1, eos_token_id=32000,
        pad_token_id=32000)),
    "gemma3-270m": (Gemma3ForCausalLM, lambda: Gemma3TextConfig(
        vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        max_position_embeddings=32768, query_pre_attn_scalar=256, sliding_window=512,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=2, eos_token_id=1,
        pad_token_id=0)),
}


def word_tokenizer(vocab_size, path):
    """t0 … tN as whole words: prompts and outputs map 1:1 to token ids on both sides."""
    vocab = {f"t{i}": i for i in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path))


def make_model(name, directory, device, dtype, layers):
    """Random weights (seed 0) made on `device`, saved as safetensors in the Hub's layout."""
    cls, make_config = SHAPES[name]
    config = make_config()
    if layers:
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:layers]
        if hasattr(config, "max_window_layers"):
            config.max_window_layers = layers
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(config).eval()
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(directory, safe_serialization=True)
    word_tokenizer(config.vocab_size, directory / "tokenizer.json")
    return model


def weight_bytes_per_token(model):
    """Bytes of weights a decode step reads: every parameter once (a tied lm_head is the
    embedding), less an untied input embedding, of which a step reads one row."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    if embedding is not model.get_output_embeddings().weight:
        total -= embedding.numel() * embedding.element_size()
    return total


def copy_bandwidth(device):
    """Bytes/s of a device-to-device copy, counting bytes read and written."""
    source = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    sync(device)
    start, rounds = time.perf_counter(), 10
    for _ in range(rounds):
        target.copy_(source)
    sync(device)
    return 2 * source.numel() * rounds / (time.perf_counter() - start)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def torch_greedy(model, new_tokens, device):
    """Argmax decoding with the KV cache, no logit processors (as wick's --temperature 0
    --repeat-penalty 1 --ignore-eos): the tokens, each step's logits, and decode tokens/s."""
    out = model(torch.tensor([PROMPT_IDS], device=device), use_cache=True)
    tokens, steps = [], []
    sync(device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        logits = out.logits[0, -1].float()
        token = int(logits.argmax())
        tokens.append(token)
        steps.append(logits)
        out = model(torch.tensor([[token]], device=device),
                    past_key_values=out.past_key_values, use_cache=True)
    sync(device)
    return tokens, steps, new_tokens / (time.perf_counter() - start)


def run_wick(wick, *args, timeout=None):
    """`wick` with `args`; its output, or an error with the end of its stderr."""
    run = subprocess.run([wick, *args], capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"wick {args[0]} failed ({run.returncode}): {run.stderr[-2000:]}")
    return run


def wick_greedy(wick, directory, new_tokens, device, dtype):
    prompt = " ".join(f"t{i}" for i in PROMPT_IDS)
    run = run_wick(wick, "generate", prompt, "--model-path", str(directory), "--device", device,
                   "--dtype", dtype, "--temperature", "0", "--repeat-penalty", "1",
                   "--ignore-eos", "--max-tokens", str(new_tokens))
    ids = [int(t[1:]) for t in run.stdout.split() if re.fullmatch(r"t\d+", t)]
    rate = re.search(r"decode ([0-9.]+) tokens/s", run.stderr)
    return ids, float(rate.group(1)) if rate else float("nan")


def agreement(ours, reference, steps):
    """How many leading tokens agree, and where wick's first leave PyTorch's, with PyTorch's
    logits of both tokens there (a gap within bf16's rounding is a near-tie, not a bug)."""
    for i, (a, b) in enumerate(zip(ours, reference)):
        if a != b:
            logits = steps[i]
            return i, (f"step {i}: wick t{a} (torch logit {logits[a]:.4f}), torch t{b} "
                       f"(logit {logits[b]:.4f}), gap {logits[b] - logits[a]:.4f}")
    if len(ours) < len(reference):
        return len(ours), f"wick gave {len(ours)} tokens, torch {len(reference)}"
    return len(reference), None


def wick_concurrency(wick, directory, device, dtype, levels):
    """Aggregate decode tokens/s of `levels` concurrent streams (one forward pass per step)."""
    run = run_wick(wick, "bench", "--model-path", str(directory), "--device", device,
                   "--dtype", dtype, "-q", "--concurrency", ",".join(map(str, levels)),
                   "-p", "32", "-n", "128", "-r", "1", "--json", timeout=600)
    return {row["concurrency"]: row for row in json.loads(run.stdout)}


def mcp_call(wick, directory, device, dtype):
    server = subprocess.Popen(
        [wick, "serve", "--model-path", str(directory), "--device", device, "--dtype", dtype,
         "--port", "0", "-q"],
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
        if result is None:
            return f"no result; {len(progress)} progress notifications"
        streamed = "".join(progress)
        ok = streamed == result["structuredContent"]["text"]
        return f"{len(progress)} progress notifications, text matches result: {ok}, " \
               f"finish {result['structuredContent']['finish_reason']}"
    finally:
        server.terminate()
        server.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wick", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run")
    parser.add_argument("--dtype", default="bf16", choices=DTYPES)
    parser.add_argument("--layers", type=int, default=0,
                        help="fewer layers than the real model (a dry run)")
    parser.add_argument("--models", default=",".join(SHAPES))
    parser.add_argument("--concurrency-models", default="smollm2-135m,qwen2.5-1.5b")
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()
    device, dtype = args.device, DTYPES[args.dtype]
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    bandwidth = copy_bandwidth(device)
    print(f"torch {torch.__version__}, {name}, {args.dtype}; device copy {bandwidth / 1e12:.2f} TB/s"
          " (read + written): the bound below is weight bytes per token / that bandwidth")
    print(f"{'model':<14} {'weights GB':>10} {'agree/32':>9} {'wick tok/s':>11} "
          f"{'torch tok/s':>12} {'bound tok/s':>12}")
    levels = [int(c) for c in args.concurrency.split(",")]
    failures, last = [], None
    for model_name in args.models.split(","):
        directory = Path(args.work) / model_name
        try:
            model = make_model(model_name, directory, device, dtype, args.layers)
            weights = weight_bytes_per_token(model)
            reference, steps, _ = torch_greedy(model, COMPARE, device)
            _, _, torch_rate = torch_greedy(model, SPEED, device)
            del model
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            ours, _ = wick_greedy(args.wick, directory, COMPARE, device, args.dtype)
            _, wick_rate = wick_greedy(args.wick, directory, SPEED, device, args.dtype)
        except Exception as e:  # one family's failure must not hide the others'
            failures.append(model_name)
            print(f"{model_name:<14} FAILED: {e}")
            continue
        agree, gap = agreement(ours, reference, steps)
        bound = bandwidth / weights
        print(f"{model_name:<14} {weights / 1e9:>10.3f} {agree:>9} {wick_rate:>11.1f} "
              f"{torch_rate:>12.1f} {bound:>12.0f}")
        if gap:
            print(f"{'':<14} first disagreement: {gap}")
        if model_name in args.concurrency_models.split(","):
            try:
                rows = wick_concurrency(args.wick, directory, device, args.dtype, levels)
                print(f"{'':<14} concurrent streams: " + "; ".join(
                    f"{c}: {row['avg_ts']:.0f} tok/s aggregate (bound {c * bound:.0f}), "
                    f"{row['per_stream_ts']:.0f} per stream, ITL p50 {row['itl_p50_ms']:.1f} ms"
                    for c, row in rows.items()))
            except Exception as e:
                failures.append(f"{model_name} concurrency")
                print(f"{'':<14} concurrency FAILED: {e}")
        last = directory
    if last is not None:
        print("MCP over loopback:", mcp_call(args.wick, last, device, args.dtype))
    if failures:
        raise SystemExit(f"failed: {', '.join(failures)}")


if __name__ == "__main__":
    main()
