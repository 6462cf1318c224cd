"""``cgrpo preflight``: the pre-flight reward check from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from cgrpo.config.schema import ConfigError

EPILOG = """\
example:
  cgrpo preflight --config configs/toy.yaml --split heldout --kind property
writes OUT/preflight.json, OUT/preflight.html and OUT/groups_<reward>.png; train with the
measured noise as a floor: cgrpo train --config ... advantage.noise_floor_from=OUT/preflight.json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", type=Path, help="training config YAML (e.g. configs/toy.yaml)")
    p.add_argument(
        "--groups", type=int, default=64, help="groups to sample (default 64; G from the config)"
    )
    p.add_argument(
        "--split",
        choices=("train", "heldout"),
        default="train",
        help="train: the training data, as the first training steps sample it; heldout: "
        "the config's eval.data",
    )
    p.add_argument(
        "--kind",
        help="keep only examples whose metadata kind is this (e.g. property: the toy "
        "world's and DreamBench's property edits)",
    )
    p.add_argument("--out", type=Path, help="output folder (default: runs/preflight/<config name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")


def run(args: argparse.Namespace) -> int:
    from cgrpo.config.train import load_config
    from cgrpo.preflight import run_preflight
    from cgrpo.preflight.report import format_table
    from cgrpo.training.rundir import check_output_path

    if args.groups < 1:
        raise ConfigError("--groups", args.groups, "must be >= 1")
    config = load_config(args.config, args.overrides)
    name = args.config.stem if args.config else "default"
    out = args.out or Path("runs") / "preflight" / name
    check_output_path(out, "--out")
    result = run_preflight(
        config,
        groups=args.groups,
        split=args.split,
        kind=args.kind,
        out=out,
        config_path=str(args.config) if args.config else None,
        progress=not args.no_progress,
    )
    print(format_table(result))
    print(
        f"\n{result['groups']} groups of {result['group_size']} in "
        f"{result['seconds']['total']:.0f} s; wrote {out / 'preflight.json'}, "
        f"{out / 'preflight.html'}"
    )
    return 0


__all__ = ["add_arguments", "run"]
