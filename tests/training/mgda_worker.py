"""Run by test_mgda.py under torchrun: W CPU processes (gloo) train a tiny config with mgda.

``python mgda_worker.py OUT [override ...]``: each process writes ``OUT/rank{r}.json`` (the
smoothed alpha after every update, as this process holds it) and ``OUT/rank{r}.safetensors``
(its final LoRA).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ddp_worker import TINY

from cgrpo.config import load_config
from cgrpo.training import Trainer


def record_alphas(trainer: Trainer) -> list[list[float]]:
    """The optimizer's smoothed alpha after each balanced update, as training runs."""
    alphas: list[list[float]] = []
    real = trainer._apply_mgda

    def apply_and_record(*args: Any) -> None:
        real(*args)
        alphas.append(list(trainer.optimizer.param_groups[0]["mgda_alpha"]))

    trainer._apply_mgda = apply_and_record  # type: ignore[method-assign]
    return alphas


def main(out: Path, overrides: list[str]) -> None:
    from safetensors.torch import save_file

    trainer = Trainer(load_config(None, [*TINY, *overrides]), out / "run")
    alphas = record_alphas(trainer)
    trainer.train()  # ends with the replica check: raises if the processes diverged
    save_file(trainer.policy.adapter_state_dict(), str(out / f"rank{trainer.rank}.safetensors"))
    (out / f"rank{trainer.rank}.json").write_text(json.dumps({"alphas": alphas}))
    trainer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
