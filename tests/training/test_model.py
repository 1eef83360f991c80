"""The torch decoder: routing, causality, auxiliary losses, and the three dispatch paths agreeing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import training.model
from training.model import Decoder, ModelConfig, MoEFeedForward

TINY = ModelConfig(architecture="llama", vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=8, num_experts=4, experts_per_token=2)


def _model(config: ModelConfig = TINY, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(config).eval()


@pytest.mark.parametrize("architecture", ["llama", "qwen3moe"])
def test_each_token_gets_exactly_k_experts_whose_weights_sum_to_one(architecture: str) -> None:
    config = dataclasses.replace(TINY, architecture=architecture)  # type: ignore[arg-type]
    layer = _model(config).moe_layers()[0]
    experts, weights, _ = layer.route(torch.randn(50, 32))
    assert experts.shape == weights.shape == (50, 2)
    assert all(len(set(row.tolist())) == 2 for row in experts)
    assert torch.allclose(weights.sum(-1), torch.ones(50)) and (weights > 0).all()


def test_more_experts_per_token_than_experts_is_refused() -> None:
    with pytest.raises(ValueError, match="between 1 and 4"):
        dataclasses.replace(TINY, experts_per_token=5)
    with pytest.raises(ValueError, match="not supported"):
        dataclasses.replace(TINY, architecture="gpt2")  # type: ignore[arg-type]


def test_evaluation_is_deterministic() -> None:
    model = _model()
    tokens = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        # Exact on purpose: the same call twice in one process runs the same kernels on the same batch
        # with the same threads, so any difference would be nondeterminism, not rounding.
        assert torch.equal(model(tokens).logits, model(tokens).logits)


# How far the logits before a changed token may move. Changing a token changes which tokens each
# expert's matmul receives, and with it the kernels' summation order: up to about 3e-7 (measured on
# two CPUs). A position that can see the later token moves by about 0.15 (measured with the mask
# off, as the test below does), so a tolerance of 1e-5 is far from both.
CAUSAL_TOLERANCE = 1e-5
CHANGED = 7  # the position whose token is changed


def _moved_by_change(model: Decoder, tokens: torch.Tensor, segments: torch.Tensor | None) -> tuple[float, float]:
    """(largest logit change before position `CHANGED`, from it on) when its token is replaced."""
    changed = tokens.clone()
    changed[:, CHANGED] = (changed[:, CHANGED] + 1) % TINY.vocab_size
    with torch.no_grad():
        first = model(tokens, segments=segments).logits
        after = model(changed, segments=segments).logits
    moved = (first - after).abs()
    return moved[:, :CHANGED].max().item(), moved[:, CHANGED:].max().item()


def _attention_without_causal_mask(attention: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def attend(*args: Any, is_causal: bool = False, **kwargs: Any) -> torch.Tensor:
        return attention(*args, **kwargs)
    return attend


def _document_mask_without_causality(segments: torch.Tensor) -> torch.Tensor:
    return (segments[:, :, None] == segments[:, None, :])[:, None]


@pytest.mark.parametrize("mask", ["causal", "document"])
def test_no_position_sees_a_later_token(mask: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both masks the model builds: the plain causal one, and one document's mask in a packed row.

    The same check is then run with the mask's causality removed, to show that the tolerance
    catches a real leak rather than passing whatever happens.
    """
    model = _model()
    tokens = torch.randint(0, TINY.vocab_size, (2, 12))
    segments = torch.ones_like(tokens) if mask == "document" else None
    before, after = _moved_by_change(model, tokens, segments)
    assert before < CAUSAL_TOLERANCE, before  # nothing before the change may see it
    assert after > 1e-2, after

    if mask == "causal":
        monkeypatch.setattr(F, "scaled_dot_product_attention",
                            _attention_without_causal_mask(F.scaled_dot_product_attention))
    else:
        monkeypatch.setattr(training.model, "document_mask", _document_mask_without_causality)
    leaked, _ = _moved_by_change(model, tokens, segments)
    assert leaked > 1000 * CAUSAL_TOLERANCE, leaked


@pytest.mark.parametrize("architecture", ["llama", "qwen3moe"])
def test_a_document_packed_after_another_is_computed_as_if_alone(architecture: str) -> None:
    """Packed training rows: positions restart and attention stops at each document's start."""
    config = dataclasses.replace(TINY, architecture=architecture)  # type: ignore[arg-type]
    model = _model(config)
    first, second = torch.randint(0, 97, (1, 5)), torch.randint(0, 97, (1, 7))
    row = torch.cat([first, second, torch.zeros(1, 2, dtype=torch.long)], dim=1)  # 2 padding tokens
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 0, 1]])
    segments = torch.tensor([[1] * 5 + [2] * 7 + [0] * 2])
    with torch.no_grad():
        packed = model(row, positions, segments).logits
        alone = [model(first).logits, model(second).logits]
        unmasked = model(row).logits
    assert torch.allclose(packed[:, :5], alone[0], atol=1e-5)
    assert torch.allclose(packed[:, 5:12], alone[1], atol=1e-5)
    assert not torch.allclose(unmasked[:, 5:12], alone[1], atol=1e-3)  # without the mask it would differ
    assert torch.isfinite(packed).all()  # padding rows attend to padding, never to nothing


def test_load_balance_loss_is_smallest_when_routing_is_uniform() -> None:
    layer = _model().moe_layers()[0]
    with torch.no_grad():
        layer.router.weight.zero_()  # every expert equally likely
    layer(torch.randn(64, 32))
    assert layer.stats is not None
    uniform = layer.stats.load_balance.item()
    with torch.no_grad():
        layer.router.weight.normal_(std=3.0)
    layer(torch.randn(64, 32))
    assert layer.stats is not None
    assert uniform == pytest.approx(1.0, abs=0.15) and layer.stats.load_balance.item() > uniform
    assert layer.stats.z_loss.item() >= 0


def test_auxiliary_loss_reaches_the_router() -> None:
    model = _model().train()
    out = model(torch.randint(0, 97, (2, 10)))
    assert out.aux_loss.item() > 0
    out.aux_loss.backward()
    router_grads = [layer.router.weight.grad for layer in model.moe_layers()]
    assert all(g is not None and g.abs().sum() > 0 for g in router_grads)


def test_dense_model_has_no_auxiliary_loss() -> None:
    model = _model(dataclasses.replace(TINY, num_experts=0, experts_per_token=0))
    out = model(torch.randint(0, 97, (1, 5)))
    assert out.aux_loss.item() == 0 and model.expert_load().numel() == 0


@pytest.mark.parametrize("path", ["sorted", "grouped"])
def test_dispatch_paths_agree_with_the_per_expert_loop_forward_and_backward(path: str) -> None:
    results = {}
    for dispatch in ("naive", path):
        torch.manual_seed(0)
        layer = MoEFeedForward(dataclasses.replace(TINY, dispatch=dispatch))  # type: ignore[arg-type]
        x = torch.randn(40, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
        out = layer(x)
        (out * torch.linspace(-1, 1, 32)).sum().backward()
        results[dispatch] = (out.detach(), x.grad, layer.gate.grad, layer.down.grad, layer.router.weight.grad)
    for naive, other in zip(results["naive"], results[path], strict=True):
        assert other is not None and naive is not None
        torch.testing.assert_close(other, naive, rtol=1e-5, atol=1e-5)


def test_expert_load_is_reported_per_layer() -> None:
    model = _model()
    model(torch.randint(0, 97, (3, 16)))
    load = model.expert_load()
    assert load.shape == (2, 4) and torch.allclose(load.sum(-1), torch.ones(2))


def test_an_upcycled_model_computes_what_the_dense_one_did_until_noise_sets_its_experts_apart() -> None:
    from training.upcycle import upcycle_model

    dense = _model(dataclasses.replace(TINY, num_experts=0, experts_per_token=0))
    tokens = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        expected = dense(tokens).logits
        exact = upcycle_model(dense, 4, 2).eval()
        assert torch.allclose(exact(tokens).logits, expected, atol=1e-5)
        noisy = upcycle_model(dense, 4, 2, noise=0.01, seed=1).eval()
        drift = (noisy(tokens).logits - expected).abs().max().item()
    assert 0 < drift < 0.1
    layer = noisy.moe_layers()[0]
    assert not torch.equal(layer.gate[0], layer.gate[1]) and (layer.router.weight == 0).all()
    with pytest.raises(ValueError, match="dense llama"):
        upcycle_model(noisy, 4, 2)
