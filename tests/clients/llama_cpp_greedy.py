"""Greedy decoding of a GGUF file through llama.cpp's Python binding, for tests/hub.rs.

Usage: llama_cpp_greedy.py MODEL.gguf STEPS PROMPT...
Prints one JSON object per prompt: the prompt's token ids as llama.cpp tokenizes it (the
model's BOS added as its vocabulary says), and each greedy step's token with its lead over the
runner-up, in logits.
"""

import json
import sys

import numpy as np
from llama_cpp import Llama

path, steps, prompts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
llm = Llama(model_path=path, n_ctx=256, n_threads=2, verbose=False, logits_all=True)
for prompt in prompts:
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    llm.reset()
    llm.eval(ids)
    chosen = []
    for _ in range(steps):
        logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        first, second = np.argsort(-logits)[:2]
        chosen.append([int(first), float(logits[first] - logits[second])])
        llm.eval([int(first)])
    print(json.dumps({"prompt_ids": ids, "steps": chosen}), flush=True)
