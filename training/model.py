"""A decoder that computes what llama.cpp computes, for `llama` (dense and Mixtral-style MoE) and `qwen3moe`.

Weights are kept in GGUF layout, so import and export copy tensors without reshuffling:
- `llama` GGUF files store Q and K permuted for llama.cpp's "normal" RoPE, which rotates adjacent
  pairs (x0, x1), (x2, x3), ...; `qwen3moe` uses "NeoX" RoPE, which rotates the first half of
  each head against the second half, and normalises Q and K per head before it.
- Linear weights are [out, in] (GGUF's ne0 is the input dimension, so numpy shows [out, in]).
- Experts are stacked: gate and up [E, F, D], down [E, D, F].

The router runs in fp32: softmax over experts, the top k, then those k weights renormalised to
sum to 1 (what llama.cpp does for both architectures). Three dispatch paths give the same result:
a per-expert loop over the tokens each expert got (the test oracle), the same after sorting
token slots by expert (contiguous gathers), and `torch._grouped_mm` on CUDA in bf16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Architecture = Literal["llama", "qwen3moe"]
Dispatch = Literal["auto", "naive", "sorted", "grouped"]
ARCHITECTURES: tuple[Architecture, ...] = ("llama", "qwen3moe")


@dataclass(frozen=True)
class ModelConfig:
    architecture: Architecture
    vocab_size: int
    hidden_size: int  # D
    intermediate_size: int  # F: the dense FFN's width, or each expert's
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    context_length: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    num_experts: int = 0  # E; 0 for a dense FFN
    experts_per_token: int = 0  # k
    tie_embeddings: bool = False  # no separate output matrix: logits use the token embeddings
    load_balance_coef: float = 0.01
    router_z_coef: float = 0.001
    dispatch: Dispatch = "auto"
    extra: dict[str, object] = field(default_factory=dict, compare=False)  # GGUF facts kept for export

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r} is not supported; "
                             f"supported: {', '.join(ARCHITECTURES)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.num_heads} heads cannot share {self.num_kv_heads} key/value heads evenly")
        if self.num_experts:
            if not 0 < self.experts_per_token <= self.num_experts:
                raise ValueError(f"experts per token must be between 1 and {self.num_experts} "
                                 f"(the number of experts), not {self.experts_per_token}")
        elif self.architecture == "qwen3moe":
            raise ValueError("every qwen3moe layer is a mixture of experts: set num_experts")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


def rope_tables(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin for each position and frequency: positions [T] or [B, T] -> [..., head_dim / 2]."""
    freqs = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * freqs
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, neox: bool) -> Tensor:
    """Rotate x [B, T, H, Dh] by position (cos, sin [T, Dh/2] or [B, T, Dh/2]); adjacent pairs ("normal")
    or halves ("NeoX")."""
    x32 = x.float()
    cos, sin = _per_head(cos), _per_head(sin)
    if neox:
        a, b = x32.chunk(2, dim=-1)
        rotated = torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
    else:
        a, b = x32[..., 0::2], x32[..., 1::2]
        rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    return rotated.to(x.dtype)


def _per_head(table: Tensor) -> Tensor:
    """[T, Dh/2] or [B, T, Dh/2] -> [B or 1, T, 1, Dh/2], to broadcast over the heads of [B, T, H, Dh]."""
    return (table if table.dim() == 3 else table[None])[:, :, None, :]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.q = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=False)
        self.k = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.v = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.out = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)
        self.qk_norm = c.architecture == "qwen3moe"
        if self.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None) -> Tensor:
        """`mask` [B, 1, T, T] (True: may attend) replaces the plain causal mask, e.g. for packed rows."""
        c = self.config
        b, t, _ = x.shape
        q = self.q(x).view(b, t, c.num_heads, c.head_dim)  # [B, T, H, Dh]
        k = self.k(x).view(b, t, c.num_kv_heads, c.head_dim)  # [B, T, Hkv, Dh]
        v = self.v(x).view(b, t, c.num_kv_heads, c.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        neox = c.architecture == "qwen3moe"
        q, k = apply_rope(q, cos, sin, neox), apply_rope(k, cos, sin, neox)
        # [B, H, T, Dh]; each group of H / Hkv query heads shares one key/value head
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask, is_causal=mask is None,
                                             enable_gqa=c.num_heads != c.num_kv_heads)
        return self.out(out.transpose(1, 2).reshape(b, t, c.num_heads * c.head_dim))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


@dataclass
class RouterStats:
    """What the last forward pass of one MoE layer did, for losses and load statistics."""

    load_balance: Tensor  # scalar: E * sum_e f_e * P_e (1 when routing is uniform)
    z_loss: Tensor  # scalar: mean logsumexp(router logits)^2
    tokens_per_expert: Tensor  # [E] (detached)


class MoEFeedForward(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        e, d, f = c.num_experts, c.hidden_size, c.intermediate_size
        self.router = nn.Linear(d, e, bias=False)  # kept in fp32 (see forward)
        self.gate = nn.Parameter(torch.empty(e, f, d))  # [E, F, D]
        self.up = nn.Parameter(torch.empty(e, f, d))  # [E, F, D]
        self.down = nn.Parameter(torch.empty(e, d, f))  # [E, D, F]
        for weight, fan_in in ((self.gate, d), (self.up, d), (self.down, f)):
            nn.init.normal_(weight, std=1 / math.sqrt(fan_in))
        self.stats: RouterStats | None = None

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [N, D] -> top-k expert ids [N, k], their weights [N, k] (sum 1), router logits [N, E]."""
        logits = F.linear(x.float(), self.router.weight.float())  # [N, E], fp32 whatever the autocast
        probs = logits.softmax(dim=-1)
        weights, experts = probs.topk(self.config.experts_per_token, dim=-1)  # [N, k]
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return experts, weights, logits

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [N, D]
        experts, weights, logits = self.route(flat)
        self.stats = self._stats(experts, logits)
        path = self._path(flat)
        if path == "naive":
            out = self._naive(flat, experts, weights)
        else:
            out = self._sorted(flat, experts, weights, grouped=path == "grouped")
        return out.reshape(shape)

    def _path(self, x: Tensor) -> Dispatch:
        chosen = self.config.dispatch
        if chosen != "auto":
            return chosen
        grouped_ok = x.is_cuda and x.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")
        return "grouped" if grouped_ok else "sorted"

    def _expert(self, e: int, x: Tensor) -> Tensor:
        return F.linear(F.silu(F.linear(x, self.gate[e])) * F.linear(x, self.up[e]), self.down[e])

    def _naive(self, x: Tensor, experts: Tensor, weights: Tensor) -> Tensor:
        """The oracle: each expert on the tokens that chose it, one expert at a time."""
        out = torch.zeros_like(x)
        for e in range(self.config.num_experts):
            token, slot = (experts == e).nonzero(as_tuple=True)
            if token.numel():
                contribution = self._expert(e, x[token]) * weights[token, slot, None].to(x.dtype)
                out = out.index_add(0, token, contribution)
        return out

    def _sorted(self, x: Tensor, experts: Tensor, weights: Tensor, *, grouped: bool) -> Tensor:
        """Token slots sorted by expert, so each expert reads one contiguous block (or one grouped GEMM)."""
        k = self.config.experts_per_token
        flat_experts = experts.reshape(-1)  # [N * k], slot s of token t at t * k + s
        order = flat_experts.argsort(stable=True)
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        counts = torch.bincount(flat_experts, minlength=self.config.num_experts)  # [E]
        xs = x[order // k]  # [N * k, D], grouped by expert
        if grouped:
            offsets = counts.cumsum(0).to(torch.int32)  # no host sync: the GEMM reads the group ends on device
            hidden = F.silu(torch._grouped_mm(xs, self.gate.transpose(1, 2), offs=offsets)) \
                * torch._grouped_mm(xs, self.up.transpose(1, 2), offs=offsets)  # [N * k, F]
            ys = torch._grouped_mm(hidden, self.down.transpose(1, 2), offs=offsets)  # [N * k, D]
        else:
            ys = torch.cat([self._expert(e, block) for e, block in enumerate(xs.split(counts.tolist()))])
        # Back to token order and a weighted sum over each token's k slots: a gather, not atomic adds,
        # so the result is deterministic.
        ys = ys[inverse].view(x.shape[0], k, x.shape[1])  # [N, k, D]
        return (ys * weights[..., None].to(ys.dtype)).sum(dim=1)

    def _stats(self, experts: Tensor, logits: Tensor) -> RouterStats:
        e = self.config.num_experts
        probs = logits.softmax(dim=-1)  # [N, E]
        chosen = F.one_hot(experts, e).sum(dim=1).float()  # [N, E]: 1 where the token chose the expert
        f = chosen.mean(dim=0) / self.config.experts_per_token  # share of the slots each expert got
        p = probs.mean(dim=0)
        return RouterStats(load_balance=e * (f * p).sum(), z_loss=torch.logsumexp(logits, dim=-1).pow(2).mean(),
                           tokens_per_expert=chosen.sum(dim=0).detach())


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config)
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn: nn.Module = MoEFeedForward(config) if config.is_moe else FeedForward(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        return x + self.ffn(self.ffn_norm(x))


def document_mask(segments: Tensor) -> Tensor:
    """segments [B, T] -> [B, 1, T, T]: True where a token may attend (same document, not later).
    Padding (segment 0) attends to padding, so no row of the mask is empty."""
    t = segments.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    return ((segments[:, :, None] == segments[:, None, :]) & causal)[:, None]


@dataclass
class Output:
    logits: Tensor  # [B, T, V]
    aux_loss: Tensor  # scalar: weighted load-balance + z-loss over the MoE layers (0 for dense)


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.output = None if config.tie_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, tokens: Tensor, positions: Tensor | None = None, segments: Tensor | None = None) -> Output:
        """tokens [B, T] -> logits [B, T, V] and the routers' auxiliary loss.

        For rows packed with several documents, `positions` [B, T] restart at each document and
        `segments` [B, T] number them: a token then sees only earlier tokens of its own document,
        exactly as if each document were alone (as llama.cpp runs it).
        """
        c = self.config
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
        cos, sin = rope_tables(positions, c.head_dim, c.rope_theta)  # [T or B, T, Dh / 2]
        mask = None if segments is None else document_mask(segments)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        x = self.norm(x)
        logits = F.linear(x, self.embed.weight if self.output is None else self.output.weight)
        return Output(logits, self._aux_loss(logits))

    def _aux_loss(self, like: Tensor) -> Tensor:
        total = like.new_zeros((), dtype=torch.float32)
        for layer in self.moe_layers():
            assert layer.stats is not None
            total = total + self.config.load_balance_coef * layer.stats.load_balance \
                + self.config.router_z_coef * layer.stats.z_loss
        return total

    def moe_layers(self) -> list[MoEFeedForward]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoEFeedForward)]

    def expert_load(self) -> Tensor:
        """Share of token slots each expert got in the last forward pass: [layers, E]."""
        rows = []
        for layer in self.moe_layers():
            assert layer.stats is not None
            counts = layer.stats.tokens_per_expert
            rows.append(counts / counts.sum().clamp(min=1))
        return torch.stack(rows) if rows else torch.zeros(0, 0)
