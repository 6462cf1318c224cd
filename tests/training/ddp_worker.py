"""Run by test_multiprocess.py under torchrun: 2 CPU processes (gloo) train a tiny config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from cgrpo.config import load_config
from cgrpo.training import Trainer

TINY = [
    "model.options={weights: random, dim: 32, depth: 1, heads: 2, text_max_length: 8}",
    "model.lora.rank=4",
    "sampling.num_steps=4",
    "sampling.group_size=3",
    "sampling.groups_per_step=1",
    "train.steps=2",
    "train.lr=0.01",
    "logging.progress=false",
    "eval.before_after=false",
    "logging.tensorboard=false",
    "logging.sample_every=0",
]

out = Path(sys.argv[1])
trainer = Trainer(load_config(None, TINY), out / "run")
trainer.train()  # ends with the replica check: raises if the processes diverged
report = {
    "rank": trainer.rank,
    "world": trainer.world_size,
    "prompts": [e.prompt + "|" + e.key for e in trainer.examples_for_step(0)],
}
# the check must be able to fail: desynchronise one process on purpose
if trainer.rank == 1:
    with torch.no_grad():
        trainer.policy.trainable_parameters()[0].add_(1.0)
try:
    trainer._check_replicas_in_sync()
    report["desync_detected"] = False
except RuntimeError as e:
    report["desync_detected"] = "not synchronised" in str(e)
(out / f"rank{trainer.rank}.json").write_text(json.dumps(report))
trainer.close()
