"""MoE training speed: each dispatch path against the ceilings measured in the same run.

Prints JSON lines:
- a bf16 GEMM's TFLOP/s (the ceiling) and a dense SwiGLU FFN with the same active FLOPs;
- an MoE layer's forward+backward TFLOP/s for each dispatch path (naive per-expert loop,
  sort-by-expert, `torch._grouped_mm`), and grouped ÷ dense-equivalent (target ≥ 0.65 on an
  H100/H200);
- a full decoder training step: tokens/s and model TFLOP/s as a share of the GEMM ceiling
  (target ≥ 35% on an H100/H200).
`python -m bench.train_moe` on a GPU; `python -m bench.train_moe --tiny --device cpu` anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from training.model import Decoder, ModelConfig, MoEFeedForward

FULL = {"tokens": 16384, "hidden": 2048, "ffn": 1024, "experts": 64, "k": 8, "layers": 8, "heads": 16,
        "kv_heads": 4, "seq": 2048, "vocab": 32768, "gemm": 8192}
TINY = {"tokens": 512, "hidden": 128, "ffn": 64, "experts": 8, "k": 2, "layers": 2, "heads": 4,
        "kv_heads": 2, "seq": 128, "vocab": 1024, "gemm": 512}


def emit(**row: object) -> None:
    print(json.dumps({"bench": "train_moe", **row}), flush=True)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds per call, after warm-up."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="small sizes that run anywhere")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    s = TINY if args.tiny else FULL
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    emit(measure="setup", device=str(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
         dtype=str(dtype), torch=torch.__version__, sizes=s)

    n = s["gemm"]
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    gemm = 2 * n**3 / timed(lambda: a @ b, device, args.repeats) / 1e12
    emit(measure="gemm_tflops", value=round(gemm, 3))

    tokens, d, f, e, k = s["tokens"], s["hidden"], s["ffn"], s["experts"], s["k"]
    active_flops = 3 * 2 * tokens * k * d * f * 3  # 3 matmuls, 2 flops per multiply-add, forward + 2x backward
    x = torch.randn(tokens, d, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(tokens, d, device=device, dtype=dtype)

    dense_w = [(torch.randn(f * k, d, device=device, dtype=dtype) / d**0.5).requires_grad_() for _ in range(2)]
    dense_down = (torch.randn(d, f * k, device=device, dtype=dtype) / (f * k) ** 0.5).requires_grad_()

    def dense_step() -> None:
        out = F.linear(F.silu(F.linear(x, dense_w[0])) * F.linear(x, dense_w[1]), dense_down)
        out.backward(grad)

    dense = active_flops / timed(dense_step, device, args.repeats) / 1e12
    emit(measure="dense_ffn_equal_active_flops_tflops", value=round(dense, 3))

    config = ModelConfig(architecture="llama", vocab_size=s["vocab"], hidden_size=d, intermediate_size=f,
                         num_layers=s["layers"], num_heads=s["heads"], num_kv_heads=s["kv_heads"],
                         head_dim=d // s["heads"], num_experts=e, experts_per_token=k)
    results = {}
    for path in ("naive", "sorted", "grouped"):
        if path == "grouped" and not hasattr(torch, "_grouped_mm"):
            continue
        torch.manual_seed(0)
        layer = MoEFeedForward(dataclasses.replace(config, dispatch=path)).to(device=device, dtype=dtype)

        def moe_step(layer: MoEFeedForward = layer) -> None:
            layer(x).backward(grad)

        try:
            results[path] = active_flops / timed(moe_step, device, args.repeats if path != "naive" else 3) / 1e12
        except RuntimeError as exc:  # e.g. grouped GEMM unsupported on this device or dtype
            emit(measure="moe_layer_tflops", path=path, error=str(exc)[:200])
            continue
        emit(measure="moe_layer_tflops", path=path, value=round(results[path], 3),
             share_of_dense=round(results[path] / dense, 3))
    if "grouped" in results:
        ratio = results["grouped"] / dense
        emit(measure="grouped_over_dense", value=round(ratio, 3), target=">= 0.65", met=ratio >= 0.65)

    torch.manual_seed(0)
    model = Decoder(config).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    batch = max(1, s["tokens"] // s["seq"])
    ids = torch.randint(0, s["vocab"], (batch, s["seq"] + 1), device=device)

    def train_step() -> None:
        out = model(ids[:, :-1])
        loss = F.cross_entropy(out.logits.float().flatten(0, 1), ids[:, 1:].flatten()) + out.aux_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = timed(train_step, device, args.repeats)
    n_tokens = batch * s["seq"]
    per_token = 6 * _active_parameters(config) + 12 * config.num_layers * s["seq"] * d  # weights + attention
    model_tflops = per_token * n_tokens / seconds / 1e12
    share = model_tflops / gemm
    emit(measure="decoder_train_step", tokens_per_s=round(n_tokens / seconds), model_tflops=round(model_tflops, 3),
         share_of_gemm=round(share, 3), target=">= 0.35", met=share >= 0.35)


def _active_parameters(c: ModelConfig) -> int:
    attention = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    ffn = 3 * c.hidden_size * c.intermediate_size * c.experts_per_token + c.hidden_size * c.num_experts
    return c.num_layers * (attention + ffn) + c.vocab_size * c.hidden_size  # the output projection


if __name__ == "__main__":
    main()
