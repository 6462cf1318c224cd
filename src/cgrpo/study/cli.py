"""``cgrpo study``: parse the flags, run the study, write its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cgrpo.config import ConfigError

DEFAULT_STUDY = Path("configs/study/toy.yaml")

EPILOG = """\
A study trains the base config of the study file once per (arm, seed) and compares the arms
on held-out items: per-arm tables with CIs over seeds and held-out clusters, paired
differences against the baseline arm, a Pareto plot, training curves, sample grids and
report.html, all under --out. Re-running the same command skips finished runs and resumes
interrupted ones.

examples:
  cgrpo study                                   # configs/study/toy.yaml into runs/study
  cgrpo study --jobs 2 --out runs/study         # two runs at a time (one core each here)
  cgrpo study --quick --out /tmp/s              # the machinery in a minute, no effect sizes
  cgrpo study --arms naive,sars+tdw --seeds 0,1,2,3,4
  cgrpo study --study my-study.yaml train.steps=300   # your backend and rewards
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument(
        "--study",
        type=Path,
        default=DEFAULT_STUDY,
        help=f"study file: base config, arms, seeds (default: {DEFAULT_STUDY})",
    )
    p.add_argument("--out", type=Path, default=Path("runs/study"), help="study directory")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    p.add_argument(
        "--quick", action="store_true", help="the study file's quick preset (checks machinery)"
    )
    p.add_argument("--arms", help="comma-separated subset of the study's arms")
    p.add_argument("--seeds", help="comma-separated seeds (replace the study's)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild tables, plots and report.html from the finished runs; train nothing",
    )
    p.add_argument("overrides", nargs="*", help="config overrides applied to every run")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(flag, text, "expected comma-separated integers") from None
    if not values:
        raise ConfigError(flag, text, "give at least one value")
    return values


def run(args: argparse.Namespace) -> int:
    from cgrpo.study.report import build_study_report
    from cgrpo.study.runner import StudyInterrupted, run_study
    from cgrpo.study.spec import load_study

    if args.jobs < 1:
        raise ConfigError("--jobs", args.jobs, "must be >= 1")
    study = load_study(
        args.study,
        quick=args.quick,
        arms=[a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None,
        seeds=_int_list(args.seeds, "--seeds") if args.seeds else None,
        overrides=list(args.overrides),
    )
    failed = []
    if not args.report_only:
        try:
            outcomes = run_study(study, args.out, jobs=args.jobs)
        except StudyInterrupted as e:
            print(f"\ncgrpo: {e}", file=sys.stderr)
            return 130
        failed = [o for o in outcomes if o.status == "failed"]
        for o in failed:
            print(f"cgrpo: run {o.run.name} failed: {o.message} (log: {o.log})", file=sys.stderr)
    summary = build_study_report(study, args.out)
    print(summary.markdown)
    print(f"\nstudy directory: {args.out}  (summary.md, report.html, pareto.png, curves.png)")
    return 1 if failed else 0
