"""`python -m training …` (also `cleo-train`): Cleo's model training from the terminal.

    python -m training finetune-default [--steps N] [--seq-len T] [--batch-size B] [--limit N]

Runs the same under `torchrun --nproc_per_node N -m training …` (DDP).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.errors import KnownError
from engine.paths import folders
from training.finetune import Recipe, finetune_default
from training.train import TrainingError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cleo-train", description="Train Cleo's models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    finetune = commands.add_parser("finetune-default", help="fine-tune Cleo's default MoE on the shared chat data")
    defaults = Recipe()
    finetune.add_argument("--steps", type=int, default=defaults.steps)
    finetune.add_argument("--seq-len", type=int, default=defaults.seq_len)
    finetune.add_argument("--batch-size", type=int, default=defaults.batch_size)
    finetune.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    finetune.add_argument("--limit", type=int, help="read only this many conversations (a quick run)")
    finetune.add_argument("--data", nargs="*", default=(), help="chat files (default: ../shared/data)")
    finetune.add_argument("--output", type=Path, default=None, help="run folder (checkpoints, report)")
    args = parser.parse_args(argv)
    recipe = Recipe(steps=args.steps, seq_len=args.seq_len, batch_size=args.batch_size,
                    learning_rate=args.learning_rate, limit=args.limit, data=tuple(args.data))
    output = args.output or folders().cache / "training" / "finetune-default"
    try:
        report = finetune_default(recipe, output)
    except (KnownError, TrainingError) as exc:
        print(f"cleo-train: {exc.user_text() if isinstance(exc, KnownError) else exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
