"""Synergy studies: the same training under several advantage arms and seeds, compared on
held-out items (``cgrpo study``; :func:`run_study`, :func:`build_study_report`)."""

from cgrpo.study.analysis import load_study_results
from cgrpo.study.report import build_study_report
from cgrpo.study.runner import run_study
from cgrpo.study.spec import StudyConfig, load_study, plan_runs

__all__ = [
    "StudyConfig",
    "build_study_report",
    "load_study",
    "load_study_results",
    "plan_runs",
    "run_study",
]
