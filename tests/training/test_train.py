"""The training loop on a tiny MoE on the CPU: accumulation, exact resume, DDP, and failures."""

from __future__ import annotations

import dataclasses
import datetime
import errno
import faulthandler
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from training import train as train_module
from training.model import ModelConfig
from training.train import TrainConfig, Trainer, TrainingError

MODEL = ModelConfig(architecture="llama", vocab_size=64, hidden_size=32, intermediate_size=32, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8, num_experts=4, experts_per_token=2)


class Synthetic:
    """Token batches that depend only on (index * world_size + rank): what a resumable loader gives."""

    def __init__(self, rows: int = 2, length: int = 16) -> None:
        self.rows, self.length = rows, length

    def batch(self, index: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(1000 + index * world_size + rank)
        ids = torch.randint(0, 64, (self.rows, self.length + 1), generator=generator)
        return {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}

    def held_out(self) -> Iterator[dict[str, torch.Tensor]]:
        batch = self.batch(10**6, 0, 1)
        yield {**batch, "n_bytes": torch.tensor(3 * batch["labels"].numel())}


def _trainer(tmp_path: Path, **changes: Any) -> Trainer:
    config = TrainConfig(**{"steps": 6, "warmup_steps": 2, "checkpoint_every": 3, "output": str(tmp_path / "run"),
                            "learning_rate": 1e-2, **changes})
    return Trainer(MODEL, config, Synthetic(), device=torch.device("cpu"))


def _parameters(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every parameter whole (FSDP2 keeps a shard per rank: gathered here, on every rank)."""
    return {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for name, p in trainer.model.named_parameters()}


def test_loss_falls_and_held_out_metrics_are_reported(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, steps=30, checkpoint_every=100)
    first, _ = trainer.train_step()
    result = trainer.train(progress=False)
    assert result.last_loss < first
    assert set(result.held_out) == {"loss", "perplexity", "bits_per_byte"}
    assert result.held_out["perplexity"] == pytest.approx(2.718281828 ** result.held_out["loss"], rel=1e-6)


def test_accumulating_micro_batches_equals_one_big_batch(tmp_path: Path) -> None:
    class Halves(Synthetic):
        def batch(self, index: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
            big = Synthetic(rows=4).batch(index // 2, rank, world_size)
            half = slice(0, 2) if index % 2 == 0 else slice(2, 4)
            return {k: v[half] for k, v in big.items()}

    # The load-balancing loss multiplies two batch averages, so it is not additive over micro-batches
    # (as in every MoE trainer); everything else must be.
    model = dataclasses.replace(MODEL, load_balance_coef=0.0)
    one = Trainer(model, TrainConfig(steps=2, output=str(tmp_path / "a")), Synthetic(rows=4))
    two = Trainer(model, TrainConfig(steps=2, micro_batches=2, output=str(tmp_path / "b")), Halves())
    for _ in range(2):
        loss_one, _ = one.train_step()
        loss_two, _ = two.train_step()
        one.step += 1
        two.step += 1
        assert loss_two == pytest.approx(loss_one, rel=1e-5)
    for name, value in _parameters(one).items():
        torch.testing.assert_close(_parameters(two)[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_resuming_after_a_few_steps_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = _trainer(tmp_path / "straight")
    straight.train(progress=False)
    first_half = _trainer(tmp_path / "resumed")
    first_half.train(progress=False, stop_after=3)
    second_half = _trainer(tmp_path / "resumed")
    assert second_half.resume() and second_half.step == 3
    second_half.train(progress=False)
    for name, value in _parameters(straight).items():
        torch.testing.assert_close(_parameters(second_half)[name], value, rtol=0, atol=0, msg=name)


class _Trap:
    """Unpickling this makes a folder: proof that a resume ran code from the checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.marker),)


def test_progress_is_saved_as_json_and_a_checkpoint_of_an_earlier_version_still_resumes(tmp_path: Path) -> None:
    first = _trainer(tmp_path)
    first.train(progress=False, stop_after=3)
    checkpoint = first.latest_checkpoint()
    assert checkpoint is not None and json.loads((checkpoint / "progress.json").read_text())["step"] == 3
    assert not list(checkpoint.glob("*.pt"))
    # What earlier versions wrote: a torch pickle of tensors and plain data, still read (safely).
    (checkpoint / "progress.json").unlink()
    torch.save({"step": 3, "scheduler": first.scheduler.state_dict(), "rng": {"torch": torch.get_rng_state()}},
               checkpoint / "progress.pt")
    again = _trainer(tmp_path)
    assert again.resume() and again.step == 3


@pytest.mark.parametrize("version", ["earlier (progress.pt)", "current (progress.json)"])
def test_a_resume_file_holding_a_pickled_object_is_refused_without_running_it(tmp_path: Path, version: str) -> None:
    _trainer(tmp_path).train(progress=False, stop_after=3)
    checkpoint = tmp_path / "run" / "step-0000003"
    marker = tmp_path / "code-ran"
    (checkpoint / "progress.json").unlink()
    target = checkpoint / ("progress.pt" if version.startswith("earlier") else "progress.json")
    torch.save({"step": 3, "scheduler": {}, "rng": {"torch": torch.get_rng_state()}, "note": _Trap(marker)}, target)
    with pytest.raises(TrainingError, match="cannot be resumed") as caught:
        _trainer(tmp_path).resume()
    assert str(target) in str(caught.value) and "Nothing in it was run" in str(caught.value)
    assert not marker.exists()


def test_a_checkpoint_of_another_configuration_is_refused_with_the_fields(tmp_path: Path) -> None:
    _trainer(tmp_path).train(progress=False, stop_after=3)
    other = Trainer(dataclasses.replace(MODEL, num_experts=8), TrainConfig(
        steps=6, warmup_steps=2, learning_rate=5e-3, output=str(tmp_path / "run")), Synthetic())
    with pytest.raises(TrainingError) as caught:
        other.resume()
    assert "model num_experts was 4, now 8" in str(caught.value)
    assert "training learning_rate was 0.01, now 0.005" in str(caught.value)


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, steps=50, checkpoint_every=1, learning_rate=1e6, warmup_steps=1, grad_clip=1e9)
    with pytest.raises(TrainingError) as caught:
        trainer.train(progress=False)
    last_good = trainer.latest_checkpoint()
    assert last_good is not None and str(last_good) in str(caught.value)
    assert not list((tmp_path / "run").glob("*.partial"))
    again = _trainer(tmp_path, steps=50, checkpoint_every=1, learning_rate=1e6, warmup_steps=1, grad_clip=1e9)
    assert again.resume() and all(torch.isfinite(p).all() for p in again.model.parameters())


def test_a_full_disk_while_checkpointing_leaves_the_previous_checkpoint(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _trainer(tmp_path)
    saves = []
    real_save = train_module.dcp.save

    def save(state: Any, checkpoint_id: str, no_dist: bool) -> Any:
        saves.append(checkpoint_id)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(state, checkpoint_id=checkpoint_id, no_dist=no_dist)

    monkeypatch.setattr(train_module.dcp, "save", save)
    with pytest.raises(TrainingError) as caught:
        trainer.train(progress=False)
    assert "No space left" in str(caught.value) and "step-0000003" in str(caught.value)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["step-0000003"]
    resumed = _trainer(tmp_path)
    assert resumed.resume() and resumed.step == 3


def _ddp_rank(rank: int, output: str, port: int, parallel: str) -> None:
    # gloo picks its network interface from the host name, which can hang in containers: use loopback.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank))
    if sys.platform != "win32":  # Windows has no interface named for its loopback
        os.environ["GLOO_SOCKET_IFNAME"] = "lo0" if sys.platform == "darwin" else "lo"
    torch.set_num_threads(1)
    # A stuck collective must fail the test with a stack trace, never hang the suite.
    trace = (Path(output) / f"rank{rank}-stack.txt").open("w")
    faulthandler.dump_traceback_later(90, exit=True, file=trace)
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    trainer = Trainer(MODEL, TrainConfig(steps=3, checkpoint_every=100, output=output, parallel=parallel),  # type: ignore[arg-type]
                      Synthetic(), device=torch.device("cpu"))
    for _ in range(3):
        trainer.train_step()
        trainer.step += 1
    whole = _parameters(trainer)  # a collective under FSDP2: every rank takes part
    if rank == 0:
        torch.save(whole, Path(output) / "ddp.pt")
    torch.distributed.destroy_process_group()
    faulthandler.cancel_dump_traceback_later()
    trace.close()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_on_gloo_equal_one_process(tmp_path: Path, parallel: str) -> None:
    """DDP, and FSDP2 (`fully_shard`), over two processes train exactly as one process does."""
    (tmp_path / "ddp").mkdir()
    with socket.socket() as probe:  # a port nobody else is using right now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        mp.spawn(_ddp_rank, args=(str(tmp_path / "ddp"), port, parallel), nprocs=2)
    except mp.ProcessExitedException:
        stacks = "\n".join(p.read_text() for p in sorted((tmp_path / "ddp").glob("rank*-stack.txt")))
        pytest.fail(f"a {parallel} rank did not finish:\n{stacks}")
    ddp = torch.load(tmp_path / "ddp" / "ddp.pt")
    # One process, two micro-batches per step: batch index i is (step i // 2, rank i % 2) of the DDP run.
    single = Trainer(MODEL, TrainConfig(steps=3, micro_batches=2, output=str(tmp_path / "one")), Synthetic())
    for _ in range(3):
        single.train_step()
        single.step += 1
    for name, value in _parameters(single).items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-5, atol=1e-6, msg=name)
