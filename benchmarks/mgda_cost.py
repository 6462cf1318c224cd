"""What ``mgda`` costs against ``linear`` on the embedded default (configs/toy.yaml).

Both strategies train the same config from the same seed in one process, in alternating
rounds (linear, mgda, linear, mgda, ...), so both see the same machine load. Per step the
trainer logs ``time/update`` (stage 4: forwards and backwards, the balancing) and
``time/step`` (sampling, scoring and update); the first step of every run is left out
(warm-up), the medians over the rest are compared as ratios mgda / linear.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mgda_cost.py --steps 4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUIET = [
    "eval.before_after=false",
    "logging.sample_every=0",
    "logging.checkpoint_every=0",
    "logging.tensorboard=false",
    "logging.progress=false",
]
TINY = [  # --tiny: a random small pocket model, so a test can run the script in seconds
    "model.options={weights: random, dim: 32, depth: 1, heads: 2, text_max_length: 8}",
    "model.lora.rank=4",
    "sampling.num_steps=4",
    "sampling.group_size=3",
    "sampling.groups_per_step=2",
]


def run_once(strategy: str, steps: int, overrides: list[str], out: Path) -> list[dict]:
    from cgrpo.config import load_config
    from cgrpo.training import Trainer

    cfg = load_config(
        REPO / "configs" / "toy.yaml",
        [*QUIET, *overrides, f"train.steps={steps}", f"advantage.strategy={strategy}"],
    )
    Trainer(cfg, out).train()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows[1:]  # the first step warms up


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="training steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each strategy")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (tests)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    overrides = TINY if args.tiny else []
    times: dict[str, dict[str, list[float]]] = {
        s: {"time/update": [], "time/step": []} for s in ("linear", "mgda")
    }
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for strategy in ("linear", "mgda"):
                rows = run_once(strategy, args.steps, overrides, Path(tmp) / f"{strategy}-{r}")
                for key, values in times[strategy].items():
                    values.extend(row[key] for row in rows)
    medians = {s: {k: statistics.median(v) for k, v in t.items()} for s, t in times.items()}
    result = {
        "steps_timed": len(times["linear"]["time/step"]),
        "median_s": medians,
        "ratio_update": medians["mgda"]["time/update"] / medians["linear"]["time/update"],
        "ratio_step": medians["mgda"]["time/step"] / medians["linear"]["time/step"],
    }
    print("| strategy | update s (median) | step s (median) |\n|---|---:|---:|")
    for s, m in medians.items():
        print(f"| {s} | {m['time/update']:.3f} | {m['time/step']:.3f} |")
    print(
        f"mgda / linear: update x{result['ratio_update']:.2f}, "
        f"whole step x{result['ratio_step']:.2f} ({result['steps_timed']} steps each)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
