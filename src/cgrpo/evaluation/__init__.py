"""Evaluation: DreamBench and toybench harnesses, bootstrap tables, plots and HTML reports.

Modules:

* :mod:`~cgrpo.evaluation.dreambench` -- the DreamBench parser (original layout, prompt kinds,
  reference choice ``first`` / ``index:N`` / ``protocol:FILE``).
* :mod:`~cgrpo.evaluation.toybench` -- toybench items and the held-out ground-truth measures
  ``gt-colour`` and ``gt-scene``.
* :mod:`~cgrpo.evaluation.harness` -- generate-then-score: :func:`evaluate_policy` (in memory,
  for the trainer) and :func:`run_evaluation` (on disk, resumable, or ``--images``).
* :mod:`~cgrpo.evaluation.stats` / :mod:`~cgrpo.evaluation.tables` -- bootstrap CIs over pairs,
  overall / per-kind / per-subject tables, paired comparisons.
* :mod:`~cgrpo.evaluation.report` / :mod:`~cgrpo.evaluation.html` /
  :mod:`~cgrpo.evaluation.plots` -- report files: summaries, Pareto plot, grids, report.html.
* :mod:`~cgrpo.evaluation.cli` -- ``cgrpo eval`` / ``report`` / ``compare``.

Trainer use (held-out rewards before/after training)::

    from cgrpo.evaluation import evaluate_policy, summarize
    records = evaluate_policy(policy, examples, rewards, gen_kwargs={"num_steps": 10}, seeds=1)
    table = summarize(records)        # table.overall["toy-id"].format() -> "0.61 [0.58, 0.64]"
"""

from cgrpo.evaluation.dreambench import DreamBench, DreamBenchPair, load_dreambench
from cgrpo.evaluation.harness import EvalItem, evaluate_policy, run_evaluation
from cgrpo.evaluation.report import RunResults, build_report, load_run
from cgrpo.evaluation.stats import Estimate, bootstrap_ci, paired_bootstrap_ci
from cgrpo.evaluation.tables import Summary, compare_records, summarize

__all__ = [
    "DreamBench",
    "DreamBenchPair",
    "Estimate",
    "EvalItem",
    "RunResults",
    "Summary",
    "bootstrap_ci",
    "build_report",
    "compare_records",
    "evaluate_policy",
    "load_dreambench",
    "load_run",
    "paired_bootstrap_ci",
    "run_evaluation",
    "summarize",
]
