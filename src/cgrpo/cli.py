"""The ``cgrpo`` command line.

Every subcommand here works; each lives in the module that owns its job and is wired in
:func:`build_parser`. Errors in what the user gave (config values, paths, images) print
one line and exit with status 2 (config) or 1 (anything else); ``CGRPO_DEBUG=1`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cgrpo import __version__
from cgrpo.config.schema import ConfigError

if TYPE_CHECKING:
    from cgrpo.training.signals import StopSignals

TRAIN_EPILOG = """\
overrides: any config field as dotted key=value (values are YAML), e.g.
  cgrpo train --config configs/toy.yaml train.steps=40 sampling.group_size=12 \\
      advantage.strategy=linear rewards.toy-id.weight=2
List every field with its help text: cgrpo config --describe
Multi-GPU: accelerate launch -m cgrpo.cli train --config ...   (one group set per process)
"""


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="GRPO fine-tuning of a backend with the configured rewards",
        description="Run GRPO (SARS + TDW by default) and write a run directory: "
        "config.yaml, metrics.jsonl, tensorboard/, samples/, checkpoints/, "
        "final/ (adapter) and summary.md.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="YAML preset (e.g. configs/toy.yaml)")
    p.add_argument("--output", type=Path, help="run directory (default: runs/<config name>)")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a run from its latest checkpoint (uses its saved config)",
    )
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from cgrpo.training.signals import StopSignals, exit_code

    with StopSignals() as signals:  # SIGTERM behaves like Ctrl-C from here on
        try:
            return _train(args, signals)
        except KeyboardInterrupt as e:  # before the trainer could save anything
            print(
                f"cgrpo: interrupted ({getattr(e, 'name', 'SIGINT')}) during start-up, "
                "before any training step; nothing to save",
                file=sys.stderr,
            )
            return exit_code(e)


def _train(args: argparse.Namespace, signals: StopSignals) -> int:
    from cgrpo.config.train import load_config
    from cgrpo.evaluation.heldout import held_out_table
    from cgrpo.rewards.base import RewardFailure
    from cgrpo.training import Stopped, Trainer
    from cgrpo.training.faults import fault_point

    fault_point("startup")
    if args.resume:
        for flag, given in (("--config", args.config), ("--output", args.output)):
            if given:
                raise ConfigError(
                    flag,
                    str(given),
                    "not allowed with --resume (the run continues in its own directory "
                    "with its saved config; pass overrides instead)",
                )
        if not (args.resume / "config.yaml").is_file():
            raise ConfigError("--resume", str(args.resume), "not a run directory (no config.yaml)")
        config = load_config(args.resume / "config.yaml", args.overrides)
        run_dir = args.resume
    else:
        config = load_config(args.config, args.overrides)
        name = args.config.stem if args.config else "default"
        run_dir = args.output or Path("runs") / name
    try:
        trainer = Trainer(config, run_dir, resume=bool(args.resume))
    except RewardFailure as e:  # e.g. a reward server that is down at start
        print(f"cgrpo: error: {e}", file=sys.stderr)
        return 1
    try:
        summary = trainer.train()
    except Stopped as e:
        if e.__cause__ is not None:  # a bug (TrainingCrashed): its traceback first
            traceback.print_exception(e.__cause__, file=sys.stderr)
        print(f"cgrpo: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        signals.defer = True  # the run is saved; a late signal only waits for the exit
        trainer.close()
    if trainer.is_main:
        table = held_out_table(run_dir)
        if table:
            print(
                "\nHeld-out rewards, base model vs trained adapter "
                f"({summary['after']['n']} items, deterministic sampling):"
            )
            print(table)
        print(f"\nrun directory: {run_dir}  (summary.md, metrics.jsonl, samples/, final/)")
    return 0


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="generate PNGs from the base model or a trained adapter",
        description="Generate images for a reference image and prompt(s) with "
        "deterministic sampling. Use --run for a trained adapter, or --config "
        "for the base model.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="config YAML (base model, no adapter)")
    src.add_argument("--run", type=Path, help="run directory (its config and final adapter)")
    p.add_argument(
        "--checkpoint", default="final", help="final, latest or step-NNNNNN (with --run)"
    )
    p.add_argument(
        "--reference",
        type=Path,
        action="append",
        required=True,
        help="reference image (repeat for several references)",
    )
    p.add_argument("--prompt", action="append", required=True, help="prompt (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=1, help="images per prompt")
    p.add_argument("--num-steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("samples"))
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    p.set_defaults(func=_run_sample)


#: Seeds feed torch.Generator.manual_seed, which takes 64-bit values; image i uses seed + i.
MAX_SEED = 2**63 - 1


def _check_sample_args(args: argparse.Namespace) -> None:
    for prompt in args.prompt:
        if not prompt.strip():
            raise ConfigError("--prompt", prompt, "must not be empty")
    for flag, value in (("--num-images", args.num_images), ("--num-steps", args.num_steps)):
        if value < 1:
            raise ConfigError(flag, value, "must be >= 1")
    last = MAX_SEED - len(args.prompt) * args.num_images + 1
    if not 0 <= args.seed <= last:
        raise ConfigError("--seed", args.seed, f"must be between 0 and {last}")


def _run_sample(args: argparse.Namespace) -> int:
    _check_sample_args(args)
    import torch

    from cgrpo.config.train import load_config
    from cgrpo.data.base import load_image
    from cgrpo.evaluation.output.plots import to_pil
    from cgrpo.sampling import generate
    from cgrpo.training.rundir import check_output_path
    from cgrpo.training.runs import build_policy_from_config, load_run_policy

    check_output_path(args.out, "--out")
    refs = [load_image(p, "reference image") for p in args.reference]
    size = refs[0].shape[1:]
    if any(r.shape[1:] != size for r in refs):
        refs = [
            torch.nn.functional.interpolate(
                r[None], size=tuple(size), mode="bilinear", antialias=True
            )[0]
            for r in refs
        ]
    references = torch.stack(refs)
    if args.run:
        config, policy = load_run_policy(args.run, args.checkpoint)
    else:
        config = load_config(args.config, args.overrides)
        policy = build_policy_from_config(config).eval()
    prompts = [p for p in args.prompt for _ in range(args.num_images)]
    images = generate(
        policy,
        prompts,
        [references] * len(prompts),
        num_steps=args.num_steps,
        shift=config.sampling.shift,
        dynamic_shift=config.sampling.dynamic_shift,
        seed=args.seed,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for i, (prompt, image) in enumerate(zip(prompts, images)):
        slug = "".join(c if c.isalnum() else "_" for c in prompt)[:48].strip("_")
        path = args.out / f"{i:03d}_{slug}_seed{args.seed + i}.png"
        to_pil(image).save(path)
        print(path)
    return 0


def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="show a resolved config or list every field",
        description="Print the resolved config (preset + overrides) as YAML, "
        "or with --describe every field with its type, default and help.",
    )
    p.add_argument("--config", type=Path, help="YAML preset")
    p.add_argument("--describe", action="store_true", help="list every field with help text")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    p.set_defaults(func=_run_config)


def _run_config(args: argparse.Namespace) -> int:
    import yaml

    from cgrpo.config.schema import describe, to_dict
    from cgrpo.config.train import Config, load_config

    if args.describe:
        for key, tp, default, text in describe(Config):
            print(f"{key:36s} {tp:18s} {default!s:14s} {text}")
        return 0
    print(
        yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False), end=""
    )
    return 0


def _add_command(
    sub: argparse._SubParsersAction, name: str, module: Any, help_text: str, description: str
) -> None:
    """A subcommand whose options and runner live in ``module`` (``add_arguments``, ``run``)."""
    p = sub.add_parser(name, help=help_text, description=description)
    module.add_arguments(p)
    p.set_defaults(func=module.run)


def _add_serve_reward(sub: argparse._SubParsersAction) -> None:
    from cgrpo.rewards.serving import server

    _add_command(
        sub,
        "serve-reward",
        server,
        "serve a registered reward over HTTP (JSON + PNG)",
        "Serve any registered reward on 127.0.0.1 (by default) so "
        "that training can use it out of process through the `remote` reward.",
    )


def _add_evaluation(sub: argparse._SubParsersAction) -> None:
    from cgrpo.evaluation import cli as ev

    p = sub.add_parser(
        "eval",
        help="generate and score a benchmark (DreamBench, toybench) or score existing images",
        description="Evaluate a base model or a trained adapter on DreamBench "
        "or toybench (resumable), or score images made by another system; "
        "writes per-pair CSV, tables with 95% bootstrap CIs, grids, a Pareto "
        "plot and report.html.",
    )
    ev.add_eval_arguments(p)
    p.set_defaults(func=ev.run_eval)
    p = sub.add_parser(
        "report",
        help="rebuild tables, plots and report.html from eval outputs",
        description="Rebuild the report of one or more evaluation directories "
        "(several: one Pareto plot across them).",
    )
    ev.add_report_arguments(p)
    p.set_defaults(func=ev.run_report)
    p = sub.add_parser(
        "compare",
        help="metric deltas between two evaluations, with CIs",
        description="Per-metric differences B - A over the pairs both "
        "evaluations scored, with paired bootstrap 95% CIs.",
    )
    ev.add_compare_arguments(p)
    p.set_defaults(func=ev.run_compare)


def _add_segments(sub: argparse._SubParsersAction) -> None:
    from cgrpo.evaluation.output import segment_report

    _add_command(
        sub,
        "segments",
        segment_report,
        "write the masks and cut-outs dino-seg compared, with an overlay grid",
        "Segment the items of an evaluation folder (generated images and "
        "references) or of a config's dataset (references) exactly as the dino-seg reward "
        "does, and write what it compares, the masks, segments.jsonl (sources, mask areas) "
        "and overlay.png to check by eye.",
    )


def _add_preflight(sub: argparse._SubParsersAction) -> None:
    from cgrpo.preflight import cli as preflight_cli

    _add_command(
        sub,
        "preflight",
        preflight_cli,
        "check, before training, that each reward can rank a group's samples",
        "Sample groups from the base policy exactly as training does, score them clean "
        "and under imperceptible changes, and report per reward the within-group spread, "
        "its noise, the groups with signal, agreement with monitors and between rewards, "
        "with one verdict line each; writes preflight.json and an HTML page of example "
        "groups sorted by each reward.",
    )


def _add_study(sub: argparse._SubParsersAction) -> None:
    from cgrpo.study import cli as study_cli

    _add_command(
        sub,
        "study",
        study_cli,
        "compare advantage arms (naive, SARS, TDW, ...) over seeds on held-out items",
        "Train one base config under several arms of overrides, several seeds "
        "each, and compare the arms on held-out items with confidence intervals.",
    )


def _add_app(sub: argparse._SubParsersAction) -> None:
    from cgrpo.app import cli as app_cli

    _add_command(
        sub,
        "app",
        app_cli,
        "a local web page to try a trained adapter: base | trained with scores",
        "Serve a page on 127.0.0.1 where you pick a reference from the run's data or upload "
        "one, type a prompt and a seed, and see the base model and the trained adapter side "
        "by side with every reward's score (needs the extra: pip install 'cgrpo[app]').",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cgrpo",
        description="Customized-GRPO: online RL for subject-driven image generators with "
        "competing rewards (identity vs prompt), with synergy-aware reward shaping (SARS) "
        "and time-aware dynamic weighting (TDW).",
    )
    parser.add_argument("--version", action="version", version=f"cgrpo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_sample(sub)
    _add_config(sub)
    _add_evaluation(sub)
    _add_study(sub)
    _add_serve_reward(sub)
    _add_segments(sub)
    _add_app(sub)
    _add_preflight(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    debug = os.environ.get("CGRPO_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        if debug:
            raise
        print(f"cgrpo: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        if debug:
            raise
        print(f"cgrpo: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
