"""The local API under load, side by side with llama.cpp's own `llama-server`, in one run.

For 1, 2, 4 and 8 concurrent streaming clients (the official `openai` client, greedy, 128 tokens
each) prints JSON lines with the aggregate tokens/s and the p50/p95 time to first token of Cleo's
API (`cleo serve`) and of `llama-server` (built by `bench/llama_server.py`) on the same GGUF, with
the same threads, the same context per request and `--parallel N`; their ratio; and the issue's
targets: 8 clients >= 0.9x llama-server's tokens/s, 1 client >= 0.95x.

Both servers run in their own processes at the same time, each idle while the other is measured;
rounds alternate which goes first so a drift in machine speed favours neither. If llama-server
cannot be built, the output says why and the baseline is llama.cpp's batched decoding in this
process (all sequences in one batch per step, no HTTP), labelled as such.

Run with `make bench` or `python -m bench.api [--threads N] [--context N] [--rounds N]`
(builds the default models if they are missing; the first run builds llama-server, 10-60 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from openai import AsyncOpenAI

from bench.llama_server import BuildFailed, locate_or_build
from engine.paths import default_chat_model
from engine.runtime.llama import default_threads

CLIENTS = (1, 2, 4, 8)
MAX_TOKENS = 128
TARGETS = {1: 0.95, 8: 0.9}  # clients -> the least share of llama-server's tokens/s
# Subjects the default model writes about at length; each client gets its own.
SUBJECTS = ("a lighthouse keeper who finds a message in a bottle", "a clockmaker who repairs a stopped town clock",
            "a girl who trains a dragon in the mountains", "a sailor lost in a storm near an island",
            "a baker who opens a shop in a busy city", "a robot that learns to paint landscapes",
            "an old farmer and the last apple harvest", "two friends who explore a forest at night")
STARTUP_S = 180.0
# Each slot gets its own `context` tokens (no shared pool), on the CPU, with flash attention off as
# Cleo's llama-cpp-python loads models; the rest is llama-server's defaults.
SERVER_OPTIONS = ("--no-kv-unified", "-ngl", "0", "-fa", "off", "--no-webui")


def emit(**row: object) -> None:
    print(json.dumps({"bench": "api", **row}), flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    name: str
    url: str  # the OpenAI base URL, ending in /v1
    token: str
    process: subprocess.Popen[bytes]
    log: Path
    extra_body: dict[str, object]


def _wait_ready(server: Server, path: str) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{server.name} exited with {server.process.returncode} while starting:\n{tail}")
        try:
            reply = httpx.get(server.url.removesuffix("/v1") + path, timeout=2.0,
                              headers={"Authorization": f"Bearer {server.token}"})
            if reply.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} did not answer on {server.url} within {STARTUP_S:.0f} s")


@contextmanager
def running(name: str, command: list[str], env: dict[str, str], token: str, port: int, ready_path: str,
            log_folder: Path, extra_body: dict[str, object]) -> Iterator[Server]:
    log = log_folder / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server(name, f"http://127.0.0.1:{port}/v1", token, process, log, extra_body)
    try:
        _wait_ready(server, ready_path)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cleo_server(model: Path, threads: int, context: int, parallel: int, home: Path,
                log_folder: Path) -> AbstractContextManager[Server]:
    """`cleo serve` in a fresh CLEO_HOME (no user settings leak in), CPU only like the baseline, with
    `parallel` sequences of `context` tokens each (one server for every number of clients)."""
    token, port = secrets.token_urlsafe(24), free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CLEO_")},
           "CLEO_HOME": str(home), "CLEO_API_TOKEN": token, "CLEO_THREADS": str(threads),
           "CLEO_CONTEXT_SIZE": str(context), "CLEO_GPU_LAYERS": "0"}
    command = [sys.executable, "-m", "app", "serve", "--model", str(model), "--port", str(port),
               "--parallel", str(parallel)]
    return running("cleo", command, env, token, port, "/v1/models", log_folder, {})


def llama_server(binary: Path, model: Path, threads: int, context: int, parallel: int,
                 log_folder: Path) -> AbstractContextManager[Server]:
    """llama-server with `parallel` slots of `context` tokens each (it splits `-c` across the slots)."""
    token, port = secrets.token_urlsafe(24), free_port()
    command = [str(binary), "-m", str(model), "-t", str(threads), "-tb", str(threads), "-c", str(context * parallel),
               "-np", str(parallel), *SERVER_OPTIONS, "--host", "127.0.0.1", "--port", str(port), "--api-key", token]
    # It may not hold EOS back for Cleo, but here it never stops early: every reply is 128 tokens.
    return running(f"llama-server-np{parallel}", command, dict(os.environ), token, port, "/health",
                   log_folder, {"ignore_eos": True})


@dataclass(frozen=True)
class Reply:
    ttft_s: float
    tokens: int
    prompt_tokens: int


async def one_stream(client: AsyncOpenAI, server: Server, model_id: str, prompt: str, max_tokens: int) -> Reply:
    start = time.perf_counter()
    first, pieces, usage = 0.0, 0, None
    stream = await client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": prompt}], stream=True, temperature=0.0,
        max_tokens=max_tokens, stream_options={"include_usage": True}, extra_body=server.extra_body or None)
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            pieces += 1
            if not first:
                first = time.perf_counter() - start
    tokens = usage.completion_tokens if usage else pieces
    return Reply(first, tokens, usage.prompt_tokens if usage else 0)


async def load(server: Server, model_id: str, prompts: list[str], max_tokens: int) -> tuple[float, list[Reply]]:
    """All prompts at once, one streaming client each: the wall time and each reply."""
    clients = [AsyncOpenAI(base_url=server.url, api_key=server.token, timeout=600.0, max_retries=0) for _ in prompts]
    start = time.perf_counter()
    replies = await asyncio.gather(*(one_stream(c, server, model_id, p, max_tokens)
                                     for c, p in zip(clients, prompts, strict=True)))
    seconds = time.perf_counter() - start
    for client in clients:
        await client.close()
    return seconds, list(replies)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]  # nearest rank: a value that was measured


@dataclass
class Side:
    rates: list[float]
    ttfts: list[float]
    tokens: list[int]
    prompt_tokens: list[int]

    def add(self, seconds: float, replies: list[Reply]) -> None:
        self.rates.append(sum(r.tokens for r in replies) / seconds)
        self.ttfts += [r.ttft_s for r in replies]
        self.tokens += [r.tokens for r in replies]
        self.prompt_tokens += [r.prompt_tokens for r in replies]

    def summary(self, prefix: str) -> dict[str, object]:
        return {f"{prefix}_tps": round(statistics.median(self.rates), 2),
                f"{prefix}_tps_rounds": [round(rate, 1) for rate in self.rates],  # the spread: how far to trust it
                f"{prefix}_ttft_p50_s": round(percentile(self.ttfts, 0.5), 3),
                f"{prefix}_ttft_p95_s": round(percentile(self.ttfts, 0.95), 3),
                f"{prefix}_tokens_per_reply": round(statistics.mean(self.tokens), 1),
                f"{prefix}_prompt_tokens": round(statistics.mean(self.prompt_tokens), 1)}


def prompts_for(clients: int, round_: int) -> list[str]:
    """A prompt per client, none asked before in this run: a cached reply would time the cache."""
    return [f"Write a long story about {SUBJECTS[i % len(SUBJECTS)]}. This is part {clients}, chapter "
            f"{round_ + 1}; describe every place and every person in detail." for i in range(clients)]


def result_row(clients: int, rounds: int, cleo: Side, base: Side, baseline: str) -> dict[str, object]:
    row: dict[str, object] = {"measure": "concurrent_streams", "clients": clients, "rounds": rounds,
                              "baseline": baseline, **cleo.summary("cleo"), **base.summary("server"),
                              "load_average_1m": round(os.getloadavg()[0], 2)}  # others' work skews both
    ratio = float(row["cleo_tps"]) / float(row["server_tps"])  # type: ignore[arg-type]
    row["ratio"] = round(ratio, 3)
    if clients in TARGETS:
        row.update(target=f">= {TARGETS[clients]}", met=ratio >= TARGETS[clients])
    return row


def against_llama_server(cleo: Server, binary: Path, model: Path, model_id: str, args: argparse.Namespace,
                         log_folder: Path) -> list[dict[str, object]]:
    rows = []
    asyncio.run(load(cleo, model_id, ["Say hello."], 8))  # the first request pays for loading and compiling
    for clients in args.clients:
        with llama_server(binary, model, args.threads, args.context, clients, log_folder) as server:
            asyncio.run(load(server, model_id, ["Say hello."], 8))
            sides = {"cleo": Side([], [], [], []), "server": Side([], [], [], [])}
            for round_ in range(args.rounds):
                order = (("cleo", cleo), ("server", server))
                for name, target in order if round_ % 2 == 0 else reversed(order):
                    sides[name].add(*asyncio.run(load(target, model_id, prompts_for(clients, round_), MAX_TOKENS)))
        rows.append(result_row(clients, args.rounds, sides["cleo"], sides["server"], "llama-server"))
        emit(**rows[-1])
    return rows


def batched_decode(path: Path, prompts: list[str], max_tokens: int, threads: int,
                   context: int) -> tuple[float, list[Reply]]:
    """The fallback baseline: llama.cpp alone, every prompt a sequence of one context, all read in one
    batch, then one batch per step with a token of each, greedy, EOS ignored as llama-server is told to."""
    import llama_cpp

    from engine.runtime.chat_model import LlamaChatModel

    chat = LlamaChatModel(path, context_size=context, threads=threads, gpu_layers=0)
    prompt_tokens = [chat.chat_tokens([{"role": "user", "content": p}]) for p in prompts]  # the model's template
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_seq_max = context * len(prompts), len(prompts)
    params.n_threads = params.n_threads_batch = threads
    params.n_batch = max(512, sum(map(len, prompt_tokens)))
    ctx = llama_cpp.llama_init_from_model(chat._llm.model, params)
    batch = llama_cpp.llama_batch_init(params.n_batch, 0, len(prompts))
    greedy = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    llama_cpp.llama_sampler_chain_add(greedy, llama_cpp.llama_sampler_init_greedy())

    def decode(entries: list[tuple[int, int, int, bool]]) -> None:  # (token, position, sequence, wants logits)
        batch.n_tokens = len(entries)
        for i, (token, position, sequence, wanted) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, 1, wanted
            batch.seq_id[i][0] = sequence
        assert llama_cpp.llama_decode(ctx, batch) == 0

    try:
        start = time.perf_counter()
        decode([(t, pos, seq, pos == len(tokens) - 1)
                for seq, tokens in enumerate(prompt_tokens) for pos, t in enumerate(tokens)])
        outputs = list(itertools.accumulate(len(t) for t in prompt_tokens))  # batch index of each last token
        first = 0.0
        for step in range(max_tokens):
            picked = [llama_cpp.llama_sampler_sample(greedy, ctx, index - 1 if step == 0 else seq)
                      for seq, index in enumerate(outputs)]
            first = first or time.perf_counter() - start
            if step + 1 < max_tokens:
                decode([(t, len(prompt_tokens[seq]) + step, seq, True) for seq, t in enumerate(picked)])
        seconds = time.perf_counter() - start
    finally:
        llama_cpp.llama_sampler_free(greedy)
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        chat.close()
    return seconds, [Reply(first, max_tokens, len(t)) for t in prompt_tokens]


def against_batched_decode(cleo: Server, model: Path, model_id: str, args: argparse.Namespace,
                           why: str) -> list[dict[str, object]]:
    rows = []
    asyncio.run(load(cleo, model_id, ["Say hello."], 8))
    label = f"llama.cpp batched decode in this process, no HTTP ({why})"
    for clients in args.clients:
        cleo_side, base = Side([], [], [], []), Side([], [], [], [])
        for round_ in range(args.rounds):
            prompts = prompts_for(clients, round_)
            cleo_side.add(*asyncio.run(load(cleo, model_id, prompts, MAX_TOKENS)))
            base.add(*batched_decode(model, prompts, MAX_TOKENS, args.threads, args.context))
        rows.append(result_row(clients, args.rounds, cleo_side, base, label))
        emit(**rows[-1])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=default_threads(), help="threads for both servers")
    parser.add_argument("--context", type=int, default=2048, help="context tokens per request, for both servers")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per number of clients")
    parser.add_argument("--clients", type=lambda text: tuple(int(n) for n in text.split(",")), default=CLIENTS,
                        help="numbers of concurrent clients, comma-separated (default: 1,2,4,8)")
    parser.add_argument("--baseline", choices=("llama-server", "batched-decode"), default="llama-server",
                        help="batched-decode: llama.cpp in this process instead (where llama-server cannot be built)")
    args = parser.parse_args(argv)
    # Stopped by a signal, the servers it started must stop too: exit through the `finally`s.
    signal.signal(signal.SIGTERM, lambda _signal, _frame: sys.exit(143))
    model = default_chat_model()
    if not model.exists():
        from training import defaults  # builds the default models, as `make models` does

        defaults.prepare(report=lambda line: print(line, file=sys.stderr, flush=True))
    model_id = model.stem  # the id Cleo's API gives a model file; llama-server answers to any
    built, baseline_error = None, ""
    if args.baseline == "llama-server":
        try:
            built = locate_or_build(report=lambda line: print(line, file=sys.stderr, flush=True))
            emit(measure="baseline", binary=str(built.binary), built_now=built.built_now,
                 build_seconds=round(built.build_seconds, 1), options=" ".join(SERVER_OPTIONS))
        except BuildFailed as exc:
            baseline_error = f"llama-server unavailable: {exc}"
            emit(measure="baseline", error=str(exc), fallback="llama.cpp batched decode in this process")
    else:
        baseline_error = "chosen with --baseline"
    emit(measure="setup", model=model.name, threads=args.threads, context_per_request=args.context,
         max_tokens=MAX_TOKENS, rounds=args.rounds, clients=list(args.clients), cpus=os.cpu_count(),
         load_average_1m=round(os.getloadavg()[0], 2))
    with tempfile.TemporaryDirectory(prefix="cleo-bench-api-") as scratch:
        folder = Path(scratch)
        with cleo_server(model, args.threads, args.context, max(args.clients), folder / "home", folder) as cleo:
            if built is None:
                rows = against_batched_decode(cleo, model, model_id, args, baseline_error.splitlines()[0])
            else:
                rows = against_llama_server(cleo, built.binary, model, model_id, args, folder)
    met = {f"clients_{r['clients']}": bool(r["met"]) for r in rows if "met" in r}
    emit(measure="targets", all_met=all(met.values()) if met else None, **met)
    return 0


if __name__ == "__main__":
    sys.exit(main())
