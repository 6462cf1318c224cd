"""Evaluation: DreamBench and toybench harnesses, bootstrap tables, plots and HTML reports.

Layout (the harness at the top, three rooms below it):

* the harness -- :mod:`~cgrpo.evaluation.harness` generates and scores in memory
  (:func:`evaluate_policy`); :mod:`~cgrpo.evaluation.resumable` does the same on disk
  (:func:`run_evaluation`, resumable, or ``--images``); :mod:`~cgrpo.evaluation.heldout` is
  the trainer's before/after check on held-out items (records in
  ``<run>/heldout/{before,after}/``; :func:`load_held_out` reads them back);
  :mod:`~cgrpo.evaluation.run` is ``cgrpo eval`` as a library call and
  :mod:`~cgrpo.evaluation.cli` the ``cgrpo eval`` / ``report`` / ``compare`` commands;
  :mod:`~cgrpo.evaluation.results` holds the per-pair records (``pairs.jsonl``,
  ``eval.json``) that every room reads.
* :mod:`~cgrpo.evaluation.benchmarks` -- what is evaluated: ``dreambench`` (the DreamBench
  parser: original layout, prompt kinds, reference choice ``first`` / ``index:N`` /
  ``protocol:FILE``), ``protocol`` (``--protocol paper``), ``toybench`` (items and the
  held-out ground-truth measures ``gt-colour``, ``gt-scene``), ``edit_checks``
  (``gt-pattern``, ``gt-shape``), ``ground_truth`` (their shared pieces) and
  ``check_accuracy`` (how often the checks are right).
* :mod:`~cgrpo.evaluation.stats` -- ``bootstrap`` (CIs over pairs, clustered by subject),
  ``tables`` (overall / per-kind / per-subject tables, paired comparisons), ``scales``.
* :mod:`~cgrpo.evaluation.output` -- report files: ``runs`` (an evaluation folder read
  back), ``report`` (summaries, Pareto plot, grids), ``html`` (report.html), ``plots``,
  ``screenshot``, ``segment_report`` (``cgrpo segments``: what ``dino-seg`` compared).

Library use::

    from cgrpo.evaluation import evaluate_policy, load_held_out, summarize
    result = evaluate_policy(policy, examples, rewards, gen_kwargs={"num_steps": 10})
    table = summarize(result.records)  # table.overall["toy-id"].format() -> "0.61 [0.58, 0.64]"
    held = load_held_out("runs/demo")  # a training run's held-out records, before and after
    summarize(held.after).by_kind["property"]["gt-colour"]
"""

from cgrpo.evaluation.benchmarks.dreambench import DreamBench, DreamBenchPair, load_dreambench
from cgrpo.evaluation.harness import EvalItem, PolicyEvaluation, evaluate_policy
from cgrpo.evaluation.heldout import HeldOutResults, load_held_out
from cgrpo.evaluation.output.report import build_report
from cgrpo.evaluation.output.runs import RunResults, load_run
from cgrpo.evaluation.resumable import run_evaluation
from cgrpo.evaluation.stats.bootstrap import Estimate, bootstrap_ci, paired_bootstrap_ci
from cgrpo.evaluation.stats.tables import Summary, compare_records, summarize

__all__ = [
    "DreamBench",
    "DreamBenchPair",
    "Estimate",
    "EvalItem",
    "HeldOutResults",
    "PolicyEvaluation",
    "RunResults",
    "Summary",
    "bootstrap_ci",
    "build_report",
    "compare_records",
    "evaluate_policy",
    "load_dreambench",
    "load_held_out",
    "load_run",
    "paired_bootstrap_ci",
    "run_evaluation",
    "summarize",
]
