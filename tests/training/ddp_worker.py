"""Run by test_multiprocess.py under torchrun: W CPU processes (gloo) train a tiny config.

``python ddp_worker.py OUT [override ...]``: each process writes ``OUT/rank{r}.json`` (its
groups, per-step rows and rewards, whether a forced divergence is caught) and
``OUT/rank{r}.safetensors`` (its final LoRA).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from cgrpo.config import load_config
from cgrpo.training import Trainer

TINY = [
    "model.options={weights: random, dim: 32, depth: 1, heads: 2, text_max_length: 8}",
    "model.lora.rank=4",
    "sampling.num_steps=4",
    "train.steps=3",
    "train.lr=0.01",
    "train.warmup_steps=4",
    "train.micro_batch=4",
    "logging.progress=false",
    "eval.before_after=false",
    "logging.tensorboard=false",
    "logging.sample_every=0",
    "logging.checkpoint_every=0",
]


def record_steps(trainer: Trainer) -> dict[str, list[Any]]:
    """Record each step's rollout rows (``prompt|key``) and reward columns as training runs."""
    record: dict[str, list[Any]] = {"rows": [], "rewards": []}
    sample, score = trainer.sample, trainer.score

    def sample_and_record(step: int):
        rollout = sample(step)
        record["rows"].append([f"{e.prompt}|{e.key}" for e in rollout.examples])
        return rollout

    def score_and_record(rollout):
        rewards = score(rollout)
        record["rewards"].append({k: v.tolist() for k, v in rewards.columns.items()})
        return rewards

    trainer.sample, trainer.score = sample_and_record, score_and_record
    return record


def main(out: Path, overrides: list[str]) -> None:
    from safetensors.torch import save_file

    trainer = Trainer(load_config(None, [*TINY, *overrides]), out / "run")
    record = record_steps(trainer)
    trainer.train()  # ends with the replica check: raises if the processes diverged
    rank = trainer.rank
    save_file(trainer.policy.adapter_state_dict(), str(out / f"rank{rank}.safetensors"))
    report = {"world": trainer.world_size, "groups": list(trainer.step_groups()), **record}
    # the check must be able to fail: desynchronise one process on purpose
    if rank == 1:
        with torch.no_grad():
            trainer.policy.trainable_parameters()[0].add_(1.0)
    try:
        trainer._check_replicas_in_sync()
        report["desync_detected"] = False
    except RuntimeError as e:
        report["desync_detected"] = "not synchronised" in str(e)
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    trainer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
