"""``cgrpo app``: a local web page for trying a trained adapter against its base model.

:mod:`cgrpo.app.tryout` loads a run and compares base and trained images with every reward's
score (no web dependency); :mod:`cgrpo.app.page` is the Gradio page (the ``app`` extra);
:mod:`cgrpo.app.cli` is the command.
"""
