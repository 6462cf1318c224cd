"""W processes through torch.distributed (gloo on the CPU) train what one process trains.

One process with ``groups_per_step = W * g`` and W processes with ``g`` each sample the same
groups with the same noise (every draw is keyed by the group, not the process), split the
update into the same mini-batches, and DDP's gradient average equals the one-process mean,
so the LoRA, the LR sequence and every reward agree (up to float rounding).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import TINY, record_steps
from safetensors.torch import load_file

from cgrpo.config import load_config
from cgrpo.training import Trainer

TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")


def lr_sequence(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["lr"] for line in lines]


@pytest.mark.slow
@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
@pytest.mark.parametrize(
    ("world", "group_size", "groups", "updates"),
    [
        # 2 updates per step do not divide a group of 3: mini-batches take slots across groups
        (2, 3, 2, 2),
        # one sample per mini-batch and process
        (3, 3, 1, 3),
    ],
)
def test_processes_train_the_one_process_lora(world, group_size, groups, updates, tmp_path):
    shared = [
        f"sampling.group_size={group_size}",
        f"train.updates_per_step={updates}",
        # PPO clipping is a step function of the ratio: after the first update of a step, a
        # ratio within rounding of 1 +- eps may be clipped in one run and not in the other.
        # A wide clip range keeps the comparison smooth (the equality itself does not need it).
        "train.clip_range=100",
    ]
    out = tmp_path / "ddp"
    worker = Path(__file__).with_name("ddp_worker.py")
    args = [*shared, f"sampling.groups_per_step={groups}"]
    proc = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node", str(world), str(worker), str(out), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    loras = [load_file(str(out / f"rank{r}.safetensors")) for r in range(world)]

    one = Trainer(
        load_config(None, [*TINY, *shared, f"sampling.groups_per_step={world * groups}"]),
        tmp_path / "one",
    )
    reference = record_steps(one)
    one.train()
    expected_lora = one.policy.adapter_state_dict()

    rows = group_size * groups
    for rank, report in enumerate(reports):
        assert report["world"] == world
        assert report["groups"] == list(range(rank * groups, (rank + 1) * groups))
        for step, step_rows in enumerate(report["rows"]):
            # whole groups only: each group's G rows sit on one process, in a run of G
            assert len(step_rows) == rows
            for j in range(groups):
                assert len(set(step_rows[j * group_size : (j + 1) * group_size])) == 1
            # ... and they are the one-process run's rows at this process's positions
            assert step_rows == reference["rows"][step][rank * rows : (rank + 1) * rows]
            for name, values in report["rewards"][step].items():
                ref = reference["rewards"][step][name][rank * rows : (rank + 1) * rows]
                torch.testing.assert_close(torch.tensor(values), torch.tensor(ref))
        assert report["desync_detected"]

    # the LR schedule does not depend on the process count (warm-up 4 at lr 0.01)
    assert lr_sequence(out / "run") == pytest.approx([0.0025, 0.005, 0.0075], rel=1e-9)
    assert lr_sequence(tmp_path / "one") == lr_sequence(out / "run")
    # every process ends with the same LoRA, and it is the one-process LoRA
    assert loras[0].keys() == expected_lora.keys()
    for key, value in expected_lora.items():
        assert all(torch.equal(lora[key], loras[0][key]) for lora in loras[1:]), key
        # float rounding only: 1e-5 is 0.1% of one Adam step at lr 0.01
        torch.testing.assert_close(loras[0][key], value, rtol=1e-4, atol=1e-5)
    assert (out / "run" / "final" / "adapter.safetensors").is_file()
