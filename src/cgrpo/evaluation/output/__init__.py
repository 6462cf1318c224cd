"""Report files from evaluation folders: summaries, Pareto plot, image grids, report.html.

* :mod:`~cgrpo.evaluation.output.runs` -- an evaluation folder read back
  (:func:`~cgrpo.evaluation.output.runs.load_run`).
* :mod:`~cgrpo.evaluation.output.report` -- every report file for one run or several
  (:func:`~cgrpo.evaluation.output.report.build_report`).
* :mod:`~cgrpo.evaluation.output.html` -- the static, offline ``report.html``.
* :mod:`~cgrpo.evaluation.output.plots` -- the Pareto figure and per-subject image grids.
* :mod:`~cgrpo.evaluation.output.screenshot` -- a PNG of a page with headless Chromium.
* :mod:`~cgrpo.evaluation.output.segment_report` -- ``cgrpo segments``: what ``dino-seg``
  compared (masks, cut-outs, an overlay grid), to check by eye.
"""
