#!/usr/bin/env python3
"""Reference vectors for SmolLM2-135M-Instruct Q4_1 from an independent implementation
(llama.cpp through the PyPI package llama-cpp-python).

For each prompt: the prompt's token ids (llama.cpp's tokenizer), 64 tokens that llama.cpp
generates greedily, and, teacher-forced over prompt + those 64 tokens, the log-softmax of the
logits at each of the 64 generated positions, kept as the top-K (K=64) ids and logprobs.
tests/unit/test_model.c feeds the same ids through tokd and compares the distributions.

Regenerate:  pip install llama-cpp-python==0.3.36 numpy
             python3 tests/data/smollm2/gen_reference.py models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import json
import sys

import numpy as np
from llama_cpp import Llama

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n",
    "The three primary colors are",
    "Photosynthesis is the process by which",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Here is a list of fruits: apple, banana,",
    "In 1969, astronauts",
    "To make a cup of tea, first",
    "The quick brown fox",
]
N_GEN = 64
TOP_K = 64


def main():
    path = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else "tests/data/smollm2/reference.json"
    llm = Llama(model_path=path, n_ctx=512, n_batch=512, logits_all=True, n_threads=2, verbose=False, seed=0)
    cases = []
    for prompt in PROMPTS:
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        gen = []
        for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            gen.append(int(tok))
            if len(gen) == N_GEN:
                break
        # teacher-forced pass over prompt + generated tokens
        llm.reset()
        llm.eval(ids + gen)
        logits = np.array(llm.scores[: len(ids) + len(gen)], dtype=np.float64)
        positions = []
        for i in range(len(gen)):
            row = logits[len(ids) - 1 + i]
            row = row - row.max()
            lp = row - np.log(np.exp(row).sum())
            top = np.argsort(-lp)[:TOP_K]
            positions.append({"ids": [int(t) for t in top], "logprobs": [round(float(lp[t]), 6) for t in top]})
        cases.append({"prompt": prompt, "prompt_ids": [int(t) for t in ids], "gen_ids": gen, "positions": positions})
        print(repr(prompt), "->", repr(llm.detokenize(gen).decode(errors="replace")[:80]), file=sys.stderr)
    meta = {"model": "SmolLM2-135M-Instruct.Q4_1.gguf",
            "model_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "generator": "llama-cpp-python 0.3.36 (llama.cpp), CPU, greedy, teacher-forced logits_all",
            "top_k": TOP_K, "n_gen": N_GEN}
    with open(out, "w") as f:
        json.dump({"meta": meta, "cases": cases}, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
