"""What is evaluated: benchmark items, presets and the toy world's ground-truth measures.

* :mod:`~cgrpo.evaluation.benchmarks.dreambench` -- DreamBench in its original layout: the
  750 (subject, prompt) pairs, prompt kinds, reference choice.
* :mod:`~cgrpo.evaluation.benchmarks.protocol` -- ``cgrpo eval --protocol paper``.
* :mod:`~cgrpo.evaluation.benchmarks.toybench` -- toybench items and the held-out measures
  (``gt-colour``, ``gt-scene``; :func:`~cgrpo.evaluation.benchmarks.toybench.heldout_metric`
  builds any of the four).
* :mod:`~cgrpo.evaluation.benchmarks.edit_checks` -- ``gt-pattern`` and ``gt-shape``.
* :mod:`~cgrpo.evaluation.benchmarks.ground_truth` -- an item's identity and requested scene,
  shared by the measures.
* :mod:`~cgrpo.evaluation.benchmarks.check_accuracy` -- how often each check is right
  (``python -m cgrpo.evaluation.benchmarks.check_accuracy``).
"""
