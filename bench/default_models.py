"""Speed of the default MoE model against the dense model it was upcycled from, in one run.

Prints JSON lines: prompt and generation tokens/s for each model, then the MoE/dense ratio.
Top-2 of 4 experts does twice the feed-forward work of the dense model plus the routing, so the
MoE is expected to be slower per token; the ratio shows by how much on this machine.
Run with `make bench` or `python -m bench.default_models` (needs the default models: `make models`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from engine.paths import default_chat_model
from engine.runtime.chat_model import LlamaChatModel
from engine.runtime.llama import default_threads
from engine.runtime.sampling import Sampling
from training.defaults import base_chat_model

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle. " * 6
GENERATED_TOKENS = 64


def measure(label: str, path: Path, threads: int) -> dict[str, float | str | int]:
    model = LlamaChatModel(path, context_size=1024, threads=threads, gpu_layers=0)
    prompt = model.tokenize(PROMPT)
    model.next_token_logits("warm up")
    start = time.perf_counter()
    model.next_token_logits(PROMPT)  # reads the whole prompt: the cache is emptied first
    prompt_s = time.perf_counter() - start
    sampling = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=GENERATED_TOKENS)
    times = [time.perf_counter() for _ in model.stream(prompt, sampling)]  # the prompt is cached now
    model.close()
    return {"bench": "default_models", "model": label, "threads": threads, "prompt_tokens": len(prompt),
            "prompt_tokens_per_s": round(len(prompt) / prompt_s, 1),
            "generation_tokens_per_s": round((len(times) - 1) / (times[-1] - times[0]), 1)}


def main() -> None:
    dense_path = base_chat_model()
    threads = default_threads()
    dense = measure("dense SmolLM2-135M (baseline)", dense_path, threads)
    moe = measure("Cleo MoE 4x135M", default_chat_model(), threads)
    for row in (dense, moe):
        print(json.dumps(row))
    print(json.dumps({
        "bench": "default_models", "model": "moe/dense ratio",
        "prompt": round(float(moe["prompt_tokens_per_s"]) / float(dense["prompt_tokens_per_s"]), 2),
        "generation": round(float(moe["generation_tokens_per_s"]) / float(dense["generation_tokens_per_s"]), 2),
    }))


if __name__ == "__main__":
    main()
