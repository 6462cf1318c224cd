"""Statistics over per-pair records: bootstrap intervals, summary tables, metric scales.

* :mod:`~cgrpo.evaluation.stats.bootstrap` -- percentile bootstrap CIs (independent, over
  clusters, hierarchical, paired): :class:`~cgrpo.evaluation.stats.bootstrap.Estimate`.
* :mod:`~cgrpo.evaluation.stats.tables` -- overall / per-kind / per-subject summaries and
  paired comparisons of records (:func:`~cgrpo.evaluation.stats.tables.summarize`).
* :mod:`~cgrpo.evaluation.stats.scales` -- the scale each metric is reported on (table
  headers).
"""
