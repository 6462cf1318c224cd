"""Evaluation: DreamBench and toybench harnesses, bootstrap tables, plots and HTML reports.

Modules:

* :mod:`~cgrpo.evaluation.dreambench` -- the DreamBench parser (original layout, prompt kinds,
  reference choice ``first`` / ``index:N`` / ``protocol:FILE``).
* :mod:`~cgrpo.evaluation.toybench` -- toybench items and the held-out ground-truth measures
  ``gt-colour``, ``gt-pattern``, ``gt-shape`` (:mod:`~cgrpo.evaluation.edit_checks`) and
  ``gt-scene``.
* :mod:`~cgrpo.evaluation.harness` -- generate-then-score in memory: :func:`evaluate_policy`;
  :mod:`~cgrpo.evaluation.resumable` -- the same on disk: :func:`run_evaluation` (resumable,
  or ``--images``).
* :mod:`~cgrpo.evaluation.heldout` -- the trainer's before/after check on held-out items
  (records in ``<run>/heldout/{before,after}/``; :func:`load_held_out` reads them back).
* :mod:`~cgrpo.evaluation.stats` / :mod:`~cgrpo.evaluation.tables` -- bootstrap CIs over pairs,
  overall / per-kind / per-subject tables, paired comparisons.
* :mod:`~cgrpo.evaluation.report` / :mod:`~cgrpo.evaluation.html` /
  :mod:`~cgrpo.evaluation.plots` -- report files: summaries, Pareto plot, grids, report.html.
* :mod:`~cgrpo.evaluation.cli` -- ``cgrpo eval`` / ``report`` / ``compare``.

Library use::

    from cgrpo.evaluation import evaluate_policy, load_held_out, summarize
    result = evaluate_policy(policy, examples, rewards, gen_kwargs={"num_steps": 10})
    table = summarize(result.records)  # table.overall["toy-id"].format() -> "0.61 [0.58, 0.64]"
    held = load_held_out("runs/demo")  # a training run's held-out records, before and after
    summarize(held.after).by_kind["property"]["gt-colour"]
"""

from cgrpo.evaluation.dreambench import DreamBench, DreamBenchPair, load_dreambench
from cgrpo.evaluation.harness import EvalItem, PolicyEvaluation, evaluate_policy
from cgrpo.evaluation.heldout import HeldOutResults, load_held_out
from cgrpo.evaluation.report import RunResults, build_report, load_run
from cgrpo.evaluation.resumable import run_evaluation
from cgrpo.evaluation.stats import Estimate, bootstrap_ci, paired_bootstrap_ci
from cgrpo.evaluation.tables import Summary, compare_records, summarize

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
