"""``cgrpo eval``, ``cgrpo report`` and ``cgrpo compare``: argument definitions and runners.

The top-level CLI (:mod:`cgrpo.cli`) adds a sub-parser per command and calls
``add_*_arguments(parser)``; the runners take the parsed namespace and return an exit
status. User errors raise :class:`cgrpo.config.ConfigError` (one line naming the flag).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cgrpo.config.schema import ConfigError
from cgrpo.evaluation.stats import DEFAULT_RESAMPLES

DREAMBENCH_METRICS = ("dino", "dino-seg", "clip-i", "clip-t", "hpsv3")
BENCHES = ("dreambench", "toybench")

EVAL_DESCRIPTION = """\
Generate images for a benchmark with a model (base or trained adapter) and score them, or
score images made by another system (--images). Results resume: a rerun with the same --out
skips finished images and scores only missing metrics. Writes pairs.csv/jsonl, summary.json/md,
per_kind.csv, per_subject.csv, grids/, pareto.png and report.html into --out."""

EVAL_EPILOG = """\
examples:
  cgrpo eval --bench dreambench --data ../shared/dreambench --config flux.yaml \\
      --adapter runs/flux --metrics dino,clip-t --metric-options metrics.yaml \\
      --reference protocol:customized_grpo_singleip.json --seeds 4
  cgrpo eval --bench toybench --config configs/toy.yaml --adapter runs/toy
  cgrpo eval --bench dreambench --data ../shared/dreambench --images other_system/ \\
      --metrics dino,clip-t --metric-options metrics.yaml
--images layout: <subject>/<prompt_index>_<seed>.png (e.g. backpack/03_0.png).
--metric-options: YAML mapping metric -> options, e.g. {dino: {path: /models/dinov2-base}}.
toybench adds held-out measures gt-colour and gt-scene (ground-truth colour match and
coarse scene match; see cgrpo.evaluation.toybench)."""


# ----- shared report options ---------------------------------------------------------------------


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
        "--bench", choices=BENCHES, default="dreambench", help="benchmark (default dreambench)"
    )
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
        "rewards + gt-colour,gt-scene",
    )
    p.add_argument(
        "--metric-options",
        type=Path,
        metavar="FILE.yaml",
        help="YAML mapping metric name -> its options (model paths, ...)",
    )
    p.add_argument("--seeds", type=int, default=1, help="images per pair (default 1)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="base noise seed; image (pair i, seed s) uses seed + 100000*s + i",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="output folder (default: RUN_DIR/eval-<bench> with --adapter, else eval-<bench>)",
    )
    p.add_argument(
        "--reference",
        default="first",
        help="DreamBench reference: first, index:N or protocol:FILE (FILE may be "
        "relative to --data, e.g. protocol:customized_grpo_singleip.json)",
    )
    p.add_argument(
        "--unique-token",
        default="",
        help="DreamBench {0} token, e.g. sks for DreamBooth models (default empty)",
    )
    p.add_argument("--subjects", help="comma-separated subset of subjects")
    p.add_argument("--max-subjects", type=int, help="only the first N subjects")
    p.add_argument("--num-steps", type=int, help="sampler steps (default: config eval.num_steps)")
    p.add_argument("--shift", type=float, help="schedule shift (default: config sampling.shift)")
    p.add_argument(
        "--dynamic-shift",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="FLUX dynamic shift (default: config sampling.dynamic_shift)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="images per generate/score call")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--no-report", action="store_true", help="only pairs.csv/jsonl, no report")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_report_options(p)
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _load_config(args: argparse.Namespace):
    from cgrpo.config.train import load_config

    if args.config is not None:
        return load_config(args.config, args.overrides)
    if args.adapter is not None:
        path = args.adapter / "config.yaml"
        if not path.is_file():
            raise ConfigError(
                "--adapter",
                str(args.adapter),
                "not a run directory (no config.yaml); pass --config too",
            )
        return load_config(path, args.overrides)
    if args.overrides:
        raise ConfigError("overrides", args.overrides, "need --config or --adapter")
    return None


def _metric_options(path: Path | None) -> dict[str, dict[str, Any]]:
    import yaml

    if path is None:
        return {}
    if not path.is_file():
        raise ConfigError("--metric-options", str(path), "file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(
            "--metric-options", str(path), f"not valid YAML ({e})".replace("\n", " ")
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(v, dict | type(None)) for v in data.values()
    ):
        raise ConfigError(
            "--metric-options",
            str(path),
            "must map metric names to option mappings, e.g. {dino: {path: ...}}",
        )
    return {str(k): dict(v or {}) for k, v in data.items()}


def dreambench_items(bench: Any, subjects: set[str] | None = None) -> list[Any]:
    """The pairs of a :class:`~cgrpo.evaluation.dreambench.DreamBench` as ``EvalItem`` s.

    ``subjects`` keeps only those (each item keeps its index in the full benchmark, so its
    noise seed does not change). Pairs with the same reference files share one tensor;
    several references of one pair are resized to the first one's size so they stack.
    """
    import torch

    from cgrpo.data.base import load_image
    from cgrpo.evaluation.harness import EvalItem

    stacks: dict[tuple[Path, ...], torch.Tensor] = {}

    def references(paths: tuple[Path, ...]) -> torch.Tensor:
        if paths not in stacks:
            refs = [load_image(p, "DreamBench reference image") for p in paths]
            size = tuple(refs[0].shape[1:])
            refs = [
                r
                if tuple(r.shape[1:]) == size
                else torch.nn.functional.interpolate(
                    r[None], size=size, mode="bilinear", antialias=True
                )[0]
                for r in refs
            ]
            stacks[paths] = torch.stack(refs)
        return stacks[paths]

    items = []
    for i, pair in enumerate(bench.pairs):
        if subjects is not None and pair.subject not in subjects:
            continue
        items.append(
            EvalItem(
                index=i,
                key=pair.key,
                subject=pair.subject,
                prompt_index=pair.prompt_index,
                prompt=pair.prompt,
                kind=pair.kind,
                references=references(pair.references),
                metadata={
                    "subject": pair.subject,
                    "class_noun": pair.class_noun,
                    "live": pair.live,
                    "kind": pair.kind,
                },
                reference_label=";".join(str(p) for p in pair.references),
            )
        )
    return items


def _select_subjects(available: list[str], args: argparse.Namespace) -> set[str]:
    """The subjects ``--subjects`` / ``--max-subjects`` keep, in benchmark order."""
    subjects = list(available)
    if args.subjects:
        wanted = [s.strip() for s in args.subjects.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in subjects]
        if unknown:
            raise ConfigError(
                "--subjects",
                args.subjects,
                f"unknown {unknown[:5]}; e.g. {', '.join(subjects[:6])}",
            )
        subjects = [s for s in subjects if s in wanted]
    if args.max_subjects is not None:
        _positive(args.max_subjects, "--max-subjects")
        subjects = subjects[: args.max_subjects]
    return set(subjects)


def _check_metric_names(metrics: list[str], toybench: bool) -> None:
    """Fail before hours of generation, not after: every metric must be a known name."""
    import cgrpo.rewards  # noqa: F401  (registers the built-in rewards)
    from cgrpo.evaluation.toybench import HELDOUT_METRICS
    from cgrpo.rewards.base import REWARDS

    for name in metrics:
        if name in HELDOUT_METRICS:
            if not toybench:
                raise ConfigError("--metrics", name, "is a toybench measure (--bench toybench)")
        elif not name.startswith("python:") and name not in REWARDS:
            raise ConfigError(
                "--metrics",
                name,
                "unknown metric; choose from "
                f"{', '.join([*REWARDS.names(), *HELDOUT_METRICS])} "
                "or python:module:function",
            )


def _check_meta(out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Refuse to mix results of different evaluations in one folder; returns the old meta."""
    from cgrpo.evaluation.report import META_FILE

    path = out / META_FILE
    if not path.is_file():
        return {}
    old = json.loads(path.read_text(encoding="utf-8"))
    for key in (
        "bench",
        "mode",
        "data",
        "images",
        "adapter",
        "checkpoint",
        "reference",
        "unique_token",
        "model",
        "world",
        "num_steps",
        "shift",
        "dynamic_shift",
        "base_seed",
    ):
        if key in old and old.get(key) != meta.get(key):
            raise ConfigError(
                "--out",
                str(out),
                f"holds an evaluation with different {key} "
                f"({old.get(key)!r}, now {meta.get(key)!r}); use another --out "
                "or delete that folder",
            )
    return old


def run_eval(args: argparse.Namespace) -> int:
    """Run ``cgrpo eval``; returns the exit status."""
    from cgrpo.config.schema import to_dict
    from cgrpo.evaluation.report import META_FILE
    from cgrpo.evaluation.resumable import run_evaluation
    from cgrpo.rewards.base import RewardContext, build_reward

    _positive(args.seeds, "--seeds")
    _positive(args.batch_size, "--batch-size")
    if args.images is not None and args.adapter is not None:
        raise ConfigError(
            "--images",
            str(args.images),
            "cannot be combined with --adapter (it scores existing images)",
        )
    config = _load_config(args)
    if args.images is None and config is None:
        raise ConfigError(
            "--config",
            None,
            "required to generate images (or pass --images DIR to score existing ones)",
        )
    meta: dict[str, Any] = {"bench": args.bench, "mode": "images" if args.images else "generate"}
    world = None
    if args.bench == "dreambench":
        from cgrpo.evaluation.dreambench import load_dreambench

        if args.data is None:
            raise ConfigError(
                "--data",
                None,
                "required for --bench dreambench (the DreamBench "
                "folder, e.g. ../shared/dreambench)",
            )
        try:
            bench = load_dreambench(args.data, args.reference, args.unique_token)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(
                "--data/--reference", f"{args.data} {args.reference}", str(e)
            ) from None
        keep = _select_subjects(list(bench.subjects), args)
        items = dreambench_items(bench, keep)
        meta.update(data=str(bench.root), reference=args.reference, unique_token=args.unique_token)
        default_metrics = list(DREAMBENCH_METRICS)
    else:
        from cgrpo.evaluation.toybench import HELDOUT_METRICS, toybench_items

        data_options = {}
        if config is not None and config.data.name == "toyworld":
            data_options = dict(config.data.options)
        items, world = toybench_items(data_options)
        keep = _select_subjects(list(dict.fromkeys(it.subject for it in items)), args)
        items = [it for it in items if it.subject in keep]
        meta["world"] = {"size": world.size, "seed": world.seed}
        names = [r.name for r in config.rewards] if config is not None else []
        default_metrics = list(dict.fromkeys(names)) + list(HELDOUT_METRICS)
    metrics = (
        [m.strip() for m in args.metrics.split(",") if m.strip()]
        if args.metrics
        else default_metrics
    )
    if not metrics:
        raise ConfigError("--metrics", args.metrics, "name at least one metric")
    _check_metric_names(metrics, toybench=world is not None)
    options = {}
    if config is not None:
        for spec in config.rewards:
            options.setdefault(spec.name, dict(spec.options))
    for name, opts in _metric_options(args.metric_options).items():
        options[name] = {**options.get(name, {}), **opts}

    gen_kwargs: dict[str, Any] = {}
    if args.images is None:
        gen_kwargs = {
            "num_steps": args.num_steps or config.eval.num_steps,
            "shift": args.shift if args.shift is not None else config.sampling.shift,
            "dynamic_shift": args.dynamic_shift
            if args.dynamic_shift is not None
            else config.sampling.dynamic_shift,
        }
        meta.update(
            adapter=str(args.adapter.resolve()) if args.adapter else None,
            checkpoint=args.checkpoint if args.adapter else None,
            model=to_dict(config.model),
            base_seed=args.seed,
            **gen_kwargs,
        )
    else:
        meta["images"] = str(args.images.resolve())
    out = args.out or (
        (args.adapter / f"eval-{args.bench}") if args.adapter else Path(f"eval-{args.bench}")
    )
    out.mkdir(parents=True, exist_ok=True)
    old = _check_meta(out, meta)
    device = _device(args.device)
    known = dict(old.get("metric_columns", {}))
    expected = [c for m in metrics for c in known[m]] if all(m in known for m in metrics) else None
    built: list[Any] = []

    def build_metrics() -> list[Any]:
        import torch

        from cgrpo.evaluation.toybench import HELDOUT_METRICS, heldout_metric

        context = RewardContext(device=torch.device(device))
        for name in metrics:
            if name in HELDOUT_METRICS:
                built.append(heldout_metric(name, world))
            else:
                built.append(build_reward(name, options.get(name, {}), context).to(device))
        return built

    def build_policy() -> Any:
        from cgrpo.training.runs import adapter_path, build_policy_from_config

        policy = build_policy_from_config(config, device, with_lora=args.adapter is not None)
        if args.adapter is not None:
            policy.load_adapter(adapter_path(args.adapter, args.checkpoint))
        return policy.eval()

    meta.update(
        metrics=sorted(set(old.get("metrics", [])) | set(metrics)),
        seeds=max(args.seeds, int(old.get("seeds", 0) or 0)),
        metric_columns=known,
    )
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(
        f"eval: {args.bench}, {len(items)} pairs x {args.seeds} seed(s), metrics "
        f"{', '.join(metrics)} -> {out}",
        file=sys.stderr,
    )
    records = run_evaluation(
        items,
        out,
        build_metrics,
        policy_factory=build_policy if args.images is None else None,
        images_dir=args.images,
        seeds=args.seeds,
        base_seed=args.seed,
        batch_size=args.batch_size,
        gen_kwargs=gen_kwargs,
        progress=not args.no_progress,
        expected_columns=expected,
    )
    for name, reward in zip(metrics, built):
        known[name] = list(reward.columns)
        reward.offload()
    meta["metric_columns"] = known
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if args.no_report:
        print(f"{len(records)} scored images in {out / 'pairs.csv'}")
        return 0
    return _report([out], out, args, labels=None)


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
    from cgrpo.evaluation.report import build_report, load_run
    from cgrpo.evaluation.tables import summary_markdown

    _positive(args.resamples, "--resamples")
    runs = [
        load_run(p, labels[i] if labels else None, resamples=args.resamples, seed=args.ci_seed)
        for i, p in enumerate(paths)
    ]
    try:
        files = build_report(
            runs,
            out,
            x_metric=args.x_metric,
            y_metric=args.y_metric,
            title=getattr(args, "title", None),
            grids=not args.no_grids,
            grid_seed=args.grid_seed,
            embed_images=args.embed_images,
        )
    except ValueError as e:
        raise ConfigError(
            "--x-metric/--y-metric", f"{args.x_metric}/{args.y_metric}", str(e)
        ) from None
    if len(runs) == 1:
        text = summary_markdown(runs[0].summary, runs[0].label)
        print(text.split("## By prompt kind")[0].rstrip())
    else:
        from cgrpo.evaluation.report import comparison_markdown

        metrics = list(dict.fromkeys(m for r in runs for m in r.metrics))
        print(comparison_markdown(runs, metrics))
    print(f"\nreport: {files['html']}")
    shot = getattr(args, "screenshot", None)
    if shot is not None:
        from cgrpo.evaluation.screenshot import screenshot

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


def format_deltas(deltas: list[Any], label_a: str, label_b: str) -> str:
    """The ``cgrpo compare`` table (``*``: the interval excludes zero)."""
    width = max([len(d.metric) for d in deltas] + [6])
    lines = [
        f"A = {label_a}",
        f"B = {label_b}",
        "",
        f"{'metric':<{width}}  {'A':>9}  {'B':>9}  {'B - A':>9}  {'95% CI (paired)':>22}"
        f"  {'pairs':>5}",
    ]
    for d in deltas:
        ci = f"[{d.delta.low:+.4f}, {d.delta.high:+.4f}]"
        lines.append(
            f"{d.metric:<{width}}  {d.mean_a:>9.4f}  {d.mean_b:>9.4f}  "
            f"{d.delta.mean:>+9.4f}  {ci:>22}  {d.delta.n:>5}" + ("  *" if d.significant else "")
        )
    lines += ["", "* the interval excludes 0"]
    return "\n".join(lines)


def run_compare(args: argparse.Namespace) -> int:
    """Run ``cgrpo compare``; returns the exit status."""
    from cgrpo.evaluation.results import find_results, read_records
    from cgrpo.evaluation.tables import compare_records

    _positive(args.resamples, "--resamples")
    dirs = [find_results(args.run_a), find_results(args.run_b)]
    a, b = (read_records(d) for d in dirs)
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    try:
        deltas = compare_records(a, b, metrics, resamples=args.resamples, seed=args.ci_seed)
    except ValueError as e:
        raise ConfigError("--metrics", args.metrics, str(e)) from None
    if not deltas:
        raise ConfigError("RUN_A/RUN_B", f"{dirs[0]} {dirs[1]}", "the runs share no metric")
    print(format_deltas(deltas, str(dirs[0]), str(dirs[1])))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "a": str(dirs[0]),
                    "b": str(dirs[1]),
                    "deltas": [
                        {
                            "metric": d.metric,
                            "mean_a": d.mean_a,
                            "mean_b": d.mean_b,
                            **{f"delta_{k}": v for k, v in d.delta.to_dict().items()},
                            "significant": d.significant,
                        }
                        for d in deltas
                    ],
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    return 0


__all__ = [
    "BENCHES",
    "DREAMBENCH_METRICS",
    "add_compare_arguments",
    "add_eval_arguments",
    "add_report_arguments",
    "dreambench_items",
    "format_deltas",
    "run_compare",
    "run_eval",
    "run_report",
]
