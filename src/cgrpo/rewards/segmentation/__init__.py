"""Which pixels of an image are the subject, for ``dino-seg``: the segmenter contracts and the
offline ones (:mod:`~cgrpo.rewards.segmentation.segment`), the model-based ones
(:mod:`~cgrpo.rewards.segmentation.segment_models`), subject isolation before scoring
(:mod:`~cgrpo.rewards.segmentation.subject`) and the ``cgrpo segments`` report
(:mod:`~cgrpo.rewards.segmentation.segment_report`)."""
