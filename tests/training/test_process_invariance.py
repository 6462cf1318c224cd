"""The pieces that make a run independent of the process count, checked in one process."""

from __future__ import annotations

import json

import pytest
import torch

from cgrpo.sampling import initial_noise, sample_trajectory
from cgrpo.training import Trainer
from cgrpo.training.seeds import generator_for
from cgrpo.training.update import stratified_minibatches


def lrs(run_dir) -> list[float]:
    return [json.loads(x)["lr"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_the_warm_up(tiny_config, tmp_path):
    Trainer(tiny_config("train.steps=4", "train.warmup_steps=3"), tmp_path / "straight").train()
    Trainer(tiny_config("train.steps=2", "train.warmup_steps=3"), tmp_path / "split").train()
    Trainer(
        tiny_config("train.steps=4", "train.warmup_steps=3"), tmp_path / "split", resume=True
    ).train()
    expected = [0.01 / 3, 0.02 / 3, 0.01, 0.01]  # the LR each step's updates used
    assert lrs(tmp_path / "straight") == pytest.approx(expected)
    assert lrs(tmp_path / "split") == lrs(tmp_path / "straight")


@pytest.mark.parametrize(("group_size", "groups", "count"), [(3, 4, 2), (4, 3, 4), (5, 2, 1)])
def test_minibatches_do_not_depend_on_how_groups_are_split(group_size, groups, count):
    whole = stratified_minibatches(range(groups), group_size, count, seed=0, step=7)
    rows = sorted(torch.cat(whole).tolist())
    assert rows == list(range(groups * group_size))  # a partition of the rows ...
    assert {len(m) for m in whole} == {groups * group_size // count}  # ... into equal parts
    for per_process in (d for d in range(1, groups) if groups % d == 0):
        if (per_process * group_size) % count:
            continue
        parts = []  # mini-batch m of every process, in global row numbers
        for first in range(0, groups, per_process):
            mine = stratified_minibatches(
                range(first, first + per_process), group_size, count, seed=0, step=7
            )
            assert len({len(m) for m in mine}) == 1
            parts.append([m + first * group_size for m in mine])
        for m in range(count):
            union = sorted(torch.cat([p[m] for p in parts]).tolist())
            assert union == sorted(whole[m].tolist())


def test_minibatches_need_an_even_split():
    with pytest.raises(ValueError, match="do not split 6 rows"):
        stratified_minibatches(range(2), 3, 4, seed=0, step=0)


def test_per_row_generators_make_a_row_independent_of_its_batch(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(), tmp_path / "run")
    policy, sigmas = trainer.policy, trainer.sigmas
    ex = trainer.examples_for_step(0)
    cond = policy.encode([e.prompt for e in ex], [e.references for e in ex]).repeat_interleave(2)
    noise = initial_noise(policy, 4, torch.Generator().manual_seed(0), group_size=2)

    def run(rows: list[int]):
        return sample_trajectory(
            policy,
            cond.select(rows),
            noise[rows],
            sigmas,
            noise_level=0.7,
            generator=[generator_for("row", r) for r in rows],
        )

    whole, tail = run([0, 1, 2, 3]), run([2, 3])
    torch.testing.assert_close(whole.latents[2:], tail.latents, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole.log_probs[2:], tail.log_probs, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="3 generators for a batch of 4"):
        sample_trajectory(policy, cond, noise, sigmas, noise_level=0.7, generator=[None] * 3)
