#!/usr/bin/env python3
"""Generate greedy-decoding reference outputs for Gemma 3 270M (Q4_K_M GGUF)
with llama.cpp (via llama-cpp-python), for comparison against wick.

For each of a fixed list of plain-text prompts the script:
  * tokenizes the text with llama.cpp's tokenizer, adding BOS
    (``llm.tokenize(text.encode(), add_bos=True, special=False)``),
  * resets the context, evaluates the whole prompt in one batch, and then
    generates ``N_GEN`` (32) tokens greedily with its own loop: take the numpy
    argmax of the last position's logits, ``eval([tok])``, repeat.
    No sampler, no repetition penalty, no chat template.
  * EOS is NOT a stop condition: every prompt gets exactly 32 generated ids,
    and any EOS / <end_of_turn> id is simply recorded and decoding continues.
  * For every generated step it records the margin between the top-1 and
    top-2 logit (and the top-2 id), so tests can skip or tolerate steps where
    a near-tie could flip under a different (but correct) kernel.

Logits are read with ``llama_get_logits_ith(ctx, -1)`` after each ``eval``:
with ``logits_all=False`` llama-cpp-python (0.3.x) no longer copies logits
into ``llm.scores`` (that array is left uninitialized), so ``llm.scores``
must not be used here.

The output JSON looks like::

    {"model": "<gguf file name>", "sha256": "<hex>",
     "llama_cpp_python": "<version>", "n_gen": 32, ...,
     "prompts": [{"text": ..., "prompt_ids": [...], "generated_ids": [...],
                  "margins": [...], "top2_ids": [...],
                  "decoded": "<detokenized continuation>"}, ...]}

Reference produced with llama-cpp-python 0.3.36 (vendored
ggml-org/llama.cpp@0c1e57098), built from source for CPU with
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON
-DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON
-DGGML_AVX512_BF16=ON", model gemma-3-270m-q4_k_m.gguf
(sha256 a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818).

To regenerate (from the repository root)::

    pip install llama-cpp-python==0.3.36
    python3 tests/data/gemma3_reference.py --model <gguf> \\
        --out tests/data/gemma3-270m-llama-cpp.json
"""

import argparse
import hashlib
import json
import os

import numpy as np
import llama_cpp

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Water boils at a temperature of",
    "Les couleurs de l'arc-en-ciel sont",
]

N_GEN = 32
N_CTX = 2048
N_THREADS = 2


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def last_logits(llm, n_vocab):
    """Logits of the last evaluated position, copied into a float32 array."""
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    if not ptr:
        raise RuntimeError("llama_get_logits_ith returned NULL")
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32, copy=True)


def greedy(llm, prompt_ids, n_vocab):
    llm.reset()
    llm.eval(prompt_ids)
    generated, margins, top2_ids = [], [], []
    for _ in range(N_GEN):
        logits = last_logits(llm, n_vocab)
        if not np.all(np.isfinite(logits)):
            raise RuntimeError("non-finite logits")
        tok = int(np.argmax(logits))
        masked = logits.copy()
        masked[tok] = -np.inf
        second = int(np.argmax(masked))
        generated.append(tok)
        top2_ids.append(second)
        margins.append(round(float(logits[tok] - logits[second]), 6))
        llm.eval([tok])
    return generated, margins, top2_ids


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="path to gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--out", required=True, help="output JSON path")
    args = ap.parse_args()

    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=N_CTX,
        n_threads=N_THREADS,
        logits_all=False,
        verbose=False,
        seed=0,
    )
    n_vocab = llm.n_vocab()

    results = []
    for text in PROMPTS:
        prompt_ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        generated, margins, top2_ids = greedy(llm, prompt_ids, n_vocab)
        decoded = llm.detokenize(generated).decode("utf-8", errors="replace")
        results.append(
            {
                "text": text,
                "prompt_ids": prompt_ids,
                "generated_ids": generated,
                "margins": margins,
                "top2_ids": top2_ids,
                "decoded": decoded,
            }
        )
        print(f"{text!r} -> {decoded!r}")
        print(f"  prompt_ids={prompt_ids}")
        print(f"  generated_ids={generated}")
        print(f"  min_margin={min(margins):.4f} at step {int(np.argmin(margins))}")

    out = {
        "model": os.path.basename(args.model),
        "sha256": sha256_file(args.model),
        "llama_cpp_python": llama_cpp.__version__,
        "n_ctx": N_CTX,
        "n_threads": N_THREADS,
        "n_gen": N_GEN,
        "add_bos": True,
        "stop_at_eos": False,
        "prompts": results,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
