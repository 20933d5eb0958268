#!/usr/bin/env python3
"""Make a random-weight GGUF shaped exactly like Qwen2.5-1.5B-Instruct, quantized to Q4_K_M (or --type).

What it makes
-------------
A llama.cpp-compatible GGUF (architecture "qwen2") whose tensors have exactly the names,
shapes and layout of Qwen2.5-1.5B-Instruct converted by llama.cpp's convert_hf_to_gguf.py:

    hidden 1536, intermediate 8960, 28 layers, 12 attention heads, 2 KV heads, head_dim 128,
    vocab 151936, rope theta 1e6, RMS-norm eps 1e-6, context 32768, tied embeddings
    (no output.weight), biases on attn_q/attn_k/attn_v.

The tokenizer is the real Qwen2 one: every `tokenizer.*` key and array is copied verbatim from
llama.cpp's vocabulary-only models/ggml-vocab-qwen2.gguf. That file holds 151936 tokens, the
same as Qwen2.5's padded embedding size, so token_embd gets 151936 rows. Should a vocab file
have fewer tokens than 151936, token_embd is sized to the vocabulary's token count instead
(llama.cpp requires the two to agree) and the script says so on stderr. Note that the copied
special-token ids are the vocab file's (bos = eos = pad = 151643, "<|endoftext|>"), not
Qwen2.5-Instruct's eos 151645 "<|im_end|>"; this does not matter for fixed-length benchmarks.

Weights are random: matrices, embeddings and biases ~ N(0, 0.02) drawn from numpy's PCG64 with
--seed (deterministic for a given seed and numpy version), norm weights are all 1.0. Matrices
are F16, norms and biases F32, as convert_hf_to_gguf.py --outtype f16 writes them. The F16
file is written tensor by tensor (peak memory is one tensor, about 0.5 GB for token_embd),
next to --out, then quantized with `llama-quantize <f16> <out> Q4_K_M` (or the --type given:
any type llama-quantize names, e.g. Q8_0) and deleted.

Why
---
The real Qwen2.5-1.5B-Instruct weights are not always downloadable (offline machines, CI),
but speed depends only on shapes, dtypes and the tokenizer, not on the weight values. This
script lets anyone rebuild the very file a benchmark row was measured on, bit for bit given
the same seed, numpy and llama-quantize, without fetching the real model. Its outputs are
gibberish; never use it to judge quality.

Usage
-----
    pip install gguf numpy
    python3 scripts/make-qwen2-1.5b-shaped.py \\
        --vocab    /path/to/llama.cpp/models/ggml-vocab-qwen2.gguf \\
        --quantize /path/to/llama.cpp/build/bin/llama-quantize \\
        --out      /tmp/qwen2-1.5b-shaped-q4_k_m.gguf \\
        [--type Q4_K_M] [--seed 0] [--threads N]

Needs about 3.1 GB free disk beside --out for the F16 intermediate (the result is ~1.1 GB).
Check it with e.g. `llama-bench -m /tmp/qwen2-1.5b-shaped-q4_k_m.gguf`.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("the gguf package is missing: pip install gguf")

ARCH = "qwen2"
NAME = "Qwen2.5-1.5B-Instruct-shaped (random weights)"
HIDDEN = 1536
INTERMEDIATE = 8960
LAYERS = 28
HEADS = 12
KV_HEADS = 2
HEAD_DIM = 128
VOCAB = 151936
ROPE_THETA = 1000000.0
RMS_EPS = 1e-6
CONTEXT = 32768
STD = 0.02
CHUNK = 1 << 22  # elements drawn per numpy call, so no tensor ever exists in float32 whole


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def copy_tokenizer(vocab_path, writer):
    """Copy every tokenizer.* field from the vocab GGUF; return its token count.

    GGUFReader keeps each field as raw numpy `parts`; `data` holds the indices of the parts
    that are values (one per array element, or one for a scalar). Strings are copied as raw
    bytes, and each value keeps its original GGUF type."""
    reader = gguf.GGUFReader(vocab_path)
    n_tokens = None
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            if len(field.types) != 2:
                raise ValueError(f"{key}: nested arrays are not supported")
            if sub == gguf.GGUFValueType.STRING:
                val = [bytes(field.parts[i]) for i in field.data]
            else:
                val = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_key_value(key, val, vtype, sub_type=sub)
            if key == "tokenizer.ggml.tokens":
                n_tokens = len(val)
        elif vtype == gguf.GGUFValueType.STRING:
            writer.add_key_value(key, bytes(field.parts[field.data[0]]), vtype)
        else:
            writer.add_key_value(key, field.parts[field.data[0]].tolist()[0], vtype)
    if n_tokens is None:
        raise ValueError(f"{vocab_path} has no tokenizer.ggml.tokens")
    return n_tokens


def tensor_plan(n_vocab):
    """(name, numpy shape [rows, cols] as in PyTorch, kind) in write order."""
    plan = [("token_embd.weight", (n_vocab, HIDDEN), "mat")]
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    for i in range(LAYERS):
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", (HIDDEN,), "norm"),
            (b + "attn_q.weight", (q, HIDDEN), "mat"),
            (b + "attn_q.bias", (q,), "bias"),
            (b + "attn_k.weight", (kv, HIDDEN), "mat"),
            (b + "attn_k.bias", (kv,), "bias"),
            (b + "attn_v.weight", (kv, HIDDEN), "mat"),
            (b + "attn_v.bias", (kv,), "bias"),
            (b + "attn_output.weight", (HIDDEN, q), "mat"),
            (b + "ffn_norm.weight", (HIDDEN,), "norm"),
            (b + "ffn_gate.weight", (INTERMEDIATE, HIDDEN), "mat"),
            (b + "ffn_up.weight", (INTERMEDIATE, HIDDEN), "mat"),
            (b + "ffn_down.weight", (HIDDEN, INTERMEDIATE), "mat"),
        ]
    plan.append(("output_norm.weight", (HIDDEN,), "norm"))
    return plan


def make_tensor(rng, shape, kind):
    if kind == "norm":
        return np.ones(shape, dtype=np.float32)
    dtype = np.float16 if kind == "mat" else np.float32
    out = np.empty(int(np.prod(shape)), dtype=dtype)
    for start in range(0, out.size, CHUNK):
        n = min(CHUNK, out.size - start)
        chunk = rng.standard_normal(n, dtype=np.float32)
        chunk *= STD
        out[start:start + n] = chunk
    return out.reshape(shape)


def write_f16(vocab_path, f16_path, seed):
    writer = gguf.GGUFWriter(str(f16_path), ARCH)
    writer.add_name(NAME)
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    n_vocab = copy_tokenizer(vocab_path, writer)
    if n_vocab != VOCAB:
        log(f"note: {vocab_path} has {n_vocab} tokens, not Qwen2.5's {VOCAB}; "
            f"token_embd gets {n_vocab} rows")

    plan = tensor_plan(n_vocab)
    for name, shape, kind in plan:
        dtype = np.float16 if kind == "mat" else np.float32
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        writer.add_tensor_info(name, shape, np.dtype(dtype), nbytes)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    n_params = 0
    for name, shape, kind in plan:
        t = make_tensor(rng, shape, kind)
        writer.write_tensor_data(t)
        n_params += t.size
        del t
    writer.close()
    return n_vocab, n_params


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", required=True, type=Path, help="ggml-vocab-qwen2.gguf")
    ap.add_argument("--quantize", required=True, type=Path, help="llama-quantize binary")
    ap.add_argument("--out", required=True, type=Path, help="the GGUF to write")
    ap.add_argument("--type", default="Q4_K_M",
                    help="llama-quantize's type for the result (default Q4_K_M; e.g. Q8_0)")
    ap.add_argument("--seed", type=int, default=0, help="weights RNG seed (default 0)")
    ap.add_argument("--threads", type=int, default=None,
                    help="llama-quantize threads (default: its own, all cores)")
    args = ap.parse_args()

    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    f16 = out.with_name(out.stem + ".f16-intermediate.gguf")
    try:
        t0 = time.monotonic()
        n_vocab, n_params = write_f16(args.vocab, f16, args.seed)
        t1 = time.monotonic()
        log(f"wrote {f16} ({f16.stat().st_size} bytes, {n_params} parameters, "
            f"vocab {n_vocab}) in {t1 - t0:.1f} s")

        cmd = [str(args.quantize), str(f16), str(out), args.type]
        if args.threads:
            cmd.append(str(args.threads))
        log("running: " + " ".join(cmd))
        subprocess.run(cmd, check=True)
        t2 = time.monotonic()
        log(f"quantized to {out} ({out.stat().st_size} bytes) in {t2 - t1:.1f} s")
    finally:
        if f16.exists():
            os.remove(f16)


if __name__ == "__main__":
    main()
