"""The reward models, each registered in ``REWARDS`` by its module: toy (``toy-id``,
``toy-prompt``), DINO (``dino``, ``dino-seg``), CLIP (``clip-i``, ``clip-t``), HPSv3 (with its
inputs in :mod:`~cgrpo.rewards.models.hpsv3_inputs`) and the VLM judge (``vlm``)."""
