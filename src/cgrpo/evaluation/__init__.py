"""Evaluation: DreamBench and toybench harnesses, bootstrap tables, plots and HTML reports."""

from cgrpo.evaluation.dreambench import DreamBench, DreamBenchPair, load_dreambench
from cgrpo.evaluation.stats import Estimate, bootstrap_ci, paired_bootstrap_ci

__all__ = [
    "DreamBench",
    "DreamBenchPair",
    "Estimate",
    "bootstrap_ci",
    "load_dreambench",
    "paired_bootstrap_ci",
]
