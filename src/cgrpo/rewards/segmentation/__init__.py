"""Which pixels of an image are the subject, for ``dino-seg``: the segmenter contracts and the
offline ones (:mod:`~cgrpo.rewards.segmentation.segment`), the model-based ones
(:mod:`~cgrpo.rewards.segmentation.segment_models`) and subject isolation before scoring
(:mod:`~cgrpo.rewards.segmentation.subject`). The ``cgrpo segments`` report, which writes out
what ``dino-seg`` compared, reads evaluation folders and so lives in
:mod:`cgrpo.evaluation.output.segment_report`."""
