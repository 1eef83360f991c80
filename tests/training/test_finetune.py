"""A tiny MoE trained on real chat data, exported, and run by llama.cpp: what the app will load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.helpers.data import needs_shared_data
from tests.helpers.models import DefaultModels
from training.data import chat_data
from training.evaluate import gguf_perplexity
from training.finetune import SHARED_DATA, TrainingBatches
from training.gguf_io import save_gguf
from training.model import Decoder, ModelConfig
from training.tokenizer import Tokenizer
from training.train import TrainConfig, Trainer
from training.upcycle import diversify_experts


@needs_shared_data
def test_a_model_trained_here_runs_in_llama_cpp_with_the_same_perplexity(
    tmp_path: Path, default_models: DefaultModels
) -> None:
    tokenizer = Tokenizer.from_gguf(default_models.dense_base)
    data = chat_data([SHARED_DATA / "fastchat_dummy_conversation.json"], tokenizer, seq_len=64, batch_size=4,
                     seed=0, held_out_fraction=0.05, limit=120)
    config = ModelConfig(architecture="llama", vocab_size=tokenizer.vocab_size, hidden_size=64,
                         intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                         num_experts=4, experts_per_token=2, tie_embeddings=True)
    trainer = Trainer(config, TrainConfig(steps=40, learning_rate=3e-3, warmup_steps=5, checkpoint_every=1000,
                                          output=str(tmp_path / "run")), TrainingBatches(data))
    before = trainer.evaluate()["perplexity"]
    result = trainer.train(progress=False)
    assert result.held_out["perplexity"] < before / 3  # it learned something real

    exported = save_gguf(trainer.model, tokenizer.to_gguf_fields().to_metadata(), tmp_path / "tiny.gguf",
                         dtype="f32", name="tiny")
    assert data.held_out is not None
    in_llama_cpp = gguf_perplexity(exported, data.held_out.sequential())
    assert abs(in_llama_cpp - result.held_out["perplexity"]) / result.held_out["perplexity"] < 1e-3


def test_diversified_experts_differ_a_little_and_keep_the_output() -> None:
    torch.manual_seed(0)
    config = ModelConfig(architecture="llama", vocab_size=50, hidden_size=32, intermediate_size=32, num_layers=1,
                         num_heads=4, num_kv_heads=4, head_dim=8, num_experts=4, experts_per_token=2)
    model = Decoder(config).eval()
    layer = model.moe_layers()[0]
    with torch.no_grad():
        for weight in (layer.gate, layer.up, layer.down):
            weight.copy_(weight[:1].expand_as(weight))  # upcycled: identical experts
    tokens = torch.randint(0, 50, (1, 8))
    before = model(tokens).logits
    diversify_experts(model, 0.01, seed=0)
    after = model(tokens).logits
    assert not torch.equal(layer.gate[0], layer.gate[1])
    assert np.abs((after - before).detach().numpy()).max() < 0.05 * before.detach().std().item()
