"""``cgrpo eval``, ``cgrpo report`` and ``cgrpo compare``: argument definitions and dispatch.

The top-level CLI (:mod:`cgrpo.cli`) adds a sub-parser per command and calls
``add_*_arguments(parser)``; the runners turn the parsed namespace into library calls
(:mod:`cgrpo.evaluation.run`, :mod:`~cgrpo.evaluation.output.report`,
:mod:`~cgrpo.evaluation.stats.tables`), print the result and return an exit status. User errors
raise :class:`cgrpo.config.ConfigError` (one line naming the flag).
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from cgrpo.config.schema import ConfigError
from cgrpo.evaluation.benchmarks.protocol import PROTOCOLS
from cgrpo.evaluation.run import BENCHES
from cgrpo.evaluation.stats.bootstrap import DEFAULT_RESAMPLES

EVAL_DESCRIPTION = """\
Generate images for a benchmark with a model (base or trained adapter) and score them, or
score images made by another system (--images). Results resume: a rerun with the same --out
skips finished images and scores only missing metrics. Writes pairs.csv/jsonl, summary.json/md,
per_kind.csv, per_subject.csv, grids/, pareto.png and report.html into --out."""

EVAL_EPILOG = (
    """\
examples:
  cgrpo eval --protocol paper --data ../shared/dreambench --config configs/flux-uno.yaml \\
      --adapter runs/uno --metric-options configs/eval/paper-metrics.yaml
  cgrpo eval --bench toybench --config configs/toy.yaml --adapter runs/toy
  cgrpo eval --bench dreambench --data ../shared/dreambench --images other_system/ \\
      --metrics dino,clip-t --metric-options metrics.yaml
protocols (explicit flags override their values):
"""
    + "\n".join(
        textwrap.fill(f"{p.name}: {p.summary}", 90, initial_indent="  ", subsequent_indent="    ")
        for p in PROTOCOLS.values()
    )
    + """
--images layout: <subject>/<prompt_index>_<seed>.png (e.g. backpack/03_0.png).
--metric-options: YAML mapping metric -> options, e.g. {dino: {path: /models/dino-vits16}}.
toybench adds held-out measures gt-colour, gt-pattern, gt-shape (ground-truth checks of
the three property edits) and gt-scene (coarse scene match); see cgrpo.evaluation.benchmarks.toybench."""
)


def _shift(value: str) -> float | str:
    if value == "dynamic":
        return value
    try:
        shift = float(value)
    except ValueError:
        shift = 0.0
    if not shift > 0:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number > 0 or 'dynamic'")
    return shift


def _add_report_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("report")
    g.add_argument(
        "--resamples",
        type=int,
        default=DEFAULT_RESAMPLES,
        help="bootstrap resamples for the confidence intervals (default 1000)",
    )
    g.add_argument("--ci-seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    g.add_argument(
        "--x-metric",
        help="identity metric of the Pareto plot (default: dino-seg, "
        "dino, clip-i, toy-id or gt-colour, the first present)",
    )
    g.add_argument(
        "--y-metric",
        help="prompt metric of the Pareto plot (default: hpsv3, "
        "clip-t, toy-prompt or gt-scene, the first present)",
    )
    g.add_argument("--grid-seed", type=int, default=0, help="seed shown in the image grids")
    g.add_argument("--no-grids", action="store_true", help="skip the per-subject image grids")
    g.add_argument(
        "--embed-images",
        action="store_true",
        help="inline images in report.html as base64 (a single movable file)",
    )


def _positive(value: int, flag: str) -> None:
    if value < 1:
        raise ConfigError(flag, value, "must be >= 1")


# ----- eval ----------------------------------------------------------------------------------


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``cgrpo eval`` (see :data:`EVAL_DESCRIPTION`)."""
    parser.description = EVAL_DESCRIPTION
    parser.epilog = EVAL_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    p = parser
    p.add_argument(
        "--protocol",
        choices=tuple(PROTOCOLS),
        help="a published evaluation preset (see below); explicit flags override its values",
    )
    p.add_argument("--bench", choices=BENCHES, help="benchmark (default dreambench)")
    p.add_argument(
        "--data",
        type=Path,
        help="DreamBench folder in its original layout "
        "(prompts_and_classes.txt + <subject>/NN.jpg)",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="train/backend config YAML: the model "
        "(toybench: also its world and rewards); default with --adapter: the run's",
    )
    p.add_argument(
        "--adapter",
        type=Path,
        metavar="RUN_DIR",
        help="evaluate this training run's adapter (default: the base model)",
    )
    p.add_argument(
        "--checkpoint",
        default="final",
        help="adapter checkpoint with --adapter: final, latest or step-NNNNNN",
    )
    p.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="score these images instead of generating (<subject>/<prompt_index>_<seed>.png)",
    )
    p.add_argument(
        "--metrics",
        help="comma-separated metric (reward) names; default "
        "dreambench: dino,dino-seg,clip-i,clip-t,hpsv3; toybench: the config's "
        "rewards + gt-colour,gt-pattern,gt-shape,gt-scene",
    )
    p.add_argument(
        "--metric-options",
        type=Path,
        metavar="FILE.yaml",
        help="YAML mapping metric name -> its options (model paths, ...); "
        "template for --protocol paper: configs/eval/paper-metrics.yaml",
    )
    p.add_argument("--seeds", type=int, help="images per pair (default 1)")
    p.add_argument(
        "--seed",
        type=int,
        help="base noise seed (default 0; paper: 3407); image (pair i, seed s) uses "
        "seed + 100000*s + i, or seed + s with --shared-seed",
    )
    p.add_argument(
        "--shared-seed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="give every pair the same noise (image s: seed + s), as UNO's DreamBench script "
        "does (default off; paper: on)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="output folder (default: RUN_DIR/eval-<bench> with --adapter, else eval-<bench>)",
    )
    p.add_argument(
        "--reference",
        help="DreamBench reference: first (default), index:N or protocol:FILE (FILE may be "
        "relative to --data; paper: protocol:customized_grpo_singleip.json)",
    )
    p.add_argument(
        "--unique-token",
        default="",
        help="DreamBench {0} token, e.g. sks for DreamBooth models (default empty)",
    )
    p.add_argument("--subjects", help="comma-separated subset of subjects")
    p.add_argument("--max-subjects", type=int, help="only the first N subjects")
    p.add_argument(
        "--num-steps", type=int, help="sampler steps (default: config eval.num_steps; paper: 25)"
    )
    p.add_argument(
        "--shift",
        type=_shift,
        metavar="{NUMBER,dynamic}",
        help="schedule shift: a static shift, or 'dynamic' for FLUX/UNO's resolution-dependent "
        "shift (default: config sampling.shift / sampling.dynamic_shift; paper: dynamic)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        help="FLUX guidance scale (default: config model.options.guidance; paper: 4)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="images per generate/score call")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--no-report", action="store_true", help="only pairs.csv/jsonl, no report")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_report_options(p)
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")


def _names(value: str | None) -> list[str] | None:
    return None if value is None else [s.strip() for s in value.split(",") if s.strip()]


def run_eval(args: argparse.Namespace) -> int:
    """Run ``cgrpo eval``; returns the exit status."""
    from cgrpo.evaluation.run import EvalSettings, evaluate_benchmark

    settings = EvalSettings(
        bench=args.bench,
        data=args.data,
        config=args.config,
        overrides=list(args.overrides),
        adapter=args.adapter,
        checkpoint=args.checkpoint,
        images=args.images,
        metrics=_names(args.metrics),
        metric_options=args.metric_options,
        seeds=args.seeds,
        seed=args.seed,
        shared_seed=args.shared_seed,
        out=args.out,
        reference=args.reference,
        unique_token=args.unique_token,
        subjects=_names(args.subjects),
        max_subjects=args.max_subjects,
        num_steps=args.num_steps,
        shift=args.shift,
        guidance=args.guidance,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        protocol=args.protocol,
    )
    outcome = evaluate_benchmark(settings)
    if args.no_report:
        print(f"{len(outcome.records)} scored images in {outcome.out / 'pairs.csv'}")
        return 0
    return _report([outcome.out], outcome.out, args, labels=None)


# ----- report -------------------------------------------------------------------------------


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``cgrpo report RUN...``."""
    parser.description = (
        "Rebuild tables, plots, grids and report.html from saved per-pair "
        "results (pairs.jsonl) of one or more evaluations; with several, "
        "the Pareto plot and tables compare them."
    )
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN",
        help="evaluation folder (holding pairs.jsonl) or a run folder with one eval-* folder",
    )
    parser.add_argument("--labels", help="comma-separated display names, one per RUN")
    parser.add_argument(
        "--out",
        type=Path,
        help="report folder (default: the evaluation folder for one RUN; 'report' for several)",
    )
    parser.add_argument("--title", help="report title")
    parser.add_argument(
        "--screenshot",
        type=Path,
        metavar="FILE.png",
        help="also save a 1200x900 screenshot of report.html (needs chromium; "
        "see scripts/install_chromium.sh)",
    )
    _add_report_options(parser)


def _report(
    paths: list[Path], out: Path, args: argparse.Namespace, labels: list[str] | None
) -> int:
    from cgrpo.evaluation.output.report import comparison_markdown, report_runs
    from cgrpo.evaluation.stats.tables import summary_markdown

    _positive(args.resamples, "--resamples")
    # a ValueError names its cause itself: an --x-metric/--y-metric that is not scored,
    # or the file and line of a bad record
    runs, files = report_runs(
        paths,
        out,
        labels=labels,
        resamples=args.resamples,
        ci_seed=args.ci_seed,
        x_metric=args.x_metric,
        y_metric=args.y_metric,
        title=getattr(args, "title", None),
        grids=not args.no_grids,
        grid_seed=args.grid_seed,
        embed_images=args.embed_images,
    )
    if len(runs) == 1:
        text = summary_markdown(runs[0].summary, runs[0].label)
        print(text.split("## By prompt kind")[0].rstrip())
    else:
        metrics = list(dict.fromkeys(m for r in runs for m in r.metrics))
        print(comparison_markdown(runs, metrics))
    print(f"\nreport: {files['html']}")
    shot = getattr(args, "screenshot", None)
    if shot is not None:
        from cgrpo.evaluation.output.screenshot import screenshot

        print(f"screenshot: {screenshot(files['html'], shot)}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    """Run ``cgrpo report``; returns the exit status."""
    from cgrpo.evaluation.results import find_results

    labels = None
    if args.labels:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(args.runs):
            raise ConfigError("--labels", args.labels, f"give one label per RUN ({len(args.runs)})")
    out = args.out or (find_results(args.runs[0]) if len(args.runs) == 1 else Path("report"))
    return _report(list(args.runs), out, args, labels)


# ----- compare ------------------------------------------------------------------------------


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``cgrpo compare RUN_A RUN_B``."""
    parser.description = (
        "Per-metric difference B - A on the pairs both evaluations scored, "
        "with a paired bootstrap confidence interval."
    )
    parser.add_argument("run_a", type=Path, metavar="RUN_A", help="baseline evaluation folder")
    parser.add_argument("run_b", type=Path, metavar="RUN_B", help="evaluation folder to compare")
    parser.add_argument("--metrics", help="comma-separated metrics (default: all shared)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES)
    parser.add_argument("--ci-seed", type=int, default=0)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the deltas as JSON")


def run_compare(args: argparse.Namespace) -> int:
    """Run ``cgrpo compare``; returns the exit status."""
    from cgrpo.evaluation.results import find_results, read_records
    from cgrpo.evaluation.stats.tables import compare_records, deltas_json, deltas_table

    _positive(args.resamples, "--resamples")
    dirs = [find_results(args.run_a), find_results(args.run_b)]
    a, b = (read_records(d) for d in dirs)
    try:
        deltas = compare_records(
            a, b, _names(args.metrics), resamples=args.resamples, seed=args.ci_seed
        )
    except ValueError as e:
        raise ConfigError("--metrics", args.metrics, str(e)) from None
    if not deltas:
        raise ConfigError("RUN_A/RUN_B", f"{dirs[0]} {dirs[1]}", "the runs share no metric")
    print(deltas_table(deltas, str(dirs[0]), str(dirs[1])))
    if args.json is not None:
        data = deltas_json(deltas, str(dirs[0]), str(dirs[1]))
        args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0


__all__ = [
    "add_compare_arguments",
    "add_eval_arguments",
    "add_report_arguments",
    "run_compare",
    "run_eval",
    "run_report",
]
